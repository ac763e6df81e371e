//! Reading a typical RegisterUser envelope: target under 20 µs.
//! `cargo bench -p hub-soap --bench envelope`

use criterion::{Criterion, criterion_group, criterion_main};
use hub_soap::{Limits, SoapVersion, read_call};
use std::hint::black_box;

const REGISTER: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
<soap-env:Envelope xmlns:soap-env=\"http://schemas.xmlsoap.org/soap/envelope/\">\
<soap-env:Body><ns0:RegisterUser xmlns:ns0=\"urn:polyhub:users:v1\">\
<ns0:username>alice.smith</ns0:username><ns0:email>alice.smith@example.com</ns0:email>\
<ns0:password>correct horse battery staple</ns0:password></ns0:RegisterUser>\
</soap-env:Body></soap-env:Envelope>";

fn envelope(c: &mut Criterion) {
    let limits = Limits::default();
    c.bench_function("read_call/RegisterUser", |b| {
        b.iter(|| read_call(SoapVersion::V11, black_box(REGISTER.as_bytes()), &limits))
    });
}

criterion_group!(benches, envelope);
criterion_main!(benches);
