//! Reading a typical RegisterUser envelope: target under 20 µs.
//! `scripts/bench envelope` (or `cargo bench -p hub-soap --bench envelope`)
//!
//! The baseline, measured in the same run, is a bare quick-xml pass over the
//! same bytes (every event, no namespaces, no checks): the ratio is what the
//! hardening and the namespace-aware checks cost.

use axum::body::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use hub_soap::{Limits, SoapVersion, read_call};
use std::hint::black_box;

const REGISTER: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
<soap-env:Envelope xmlns:soap-env=\"http://schemas.xmlsoap.org/soap/envelope/\">\
<soap-env:Body><ns0:RegisterUser xmlns:ns0=\"urn:polyhub:users:v1\">\
<ns0:username>alice.smith</ns0:username><ns0:email>alice.smith@example.com</ns0:email>\
<ns0:password>correct horse battery staple</ns0:password></ns0:RegisterUser>\
</soap-env:Body></soap-env:Envelope>";

/// The same call with a WS-Security header (a UsernameToken and a
/// timestamp), whose block the reader keeps as bytes.
const REGISTER_WITH_SECURITY: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
<soap-env:Envelope xmlns:soap-env=\"http://schemas.xmlsoap.org/soap/envelope/\">\
<soap-env:Header><wsse:Security soap-env:mustUnderstand=\"1\" \
xmlns:wsse=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd\" \
xmlns:wsu=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd\">\
<wsu:Timestamp wsu:Id=\"TS-1\"><wsu:Created>2026-01-01T00:00:00Z</wsu:Created>\
<wsu:Expires>2026-01-01T00:05:00Z</wsu:Expires></wsu:Timestamp>\
<wsse:UsernameToken wsu:Id=\"UT-1\"><wsse:Username>alice.smith</wsse:Username>\
<wsse:Password>correct horse battery staple</wsse:Password></wsse:UsernameToken>\
</wsse:Security></soap-env:Header>\
<soap-env:Body><ns0:RegisterUser xmlns:ns0=\"urn:polyhub:users:v1\">\
<ns0:username>alice.smith</ns0:username><ns0:email>alice.smith@example.com</ns0:email>\
<ns0:password>correct horse battery staple</ns0:password></ns0:RegisterUser>\
</soap-env:Body></soap-env:Envelope>";

fn envelope(c: &mut Criterion) {
    let limits = Limits::default();
    c.bench_function("baseline/quick_xml_events", |b| {
        b.iter(|| {
            let mut reader = quick_xml::Reader::from_str(black_box(REGISTER));
            let mut events = 0usize;
            while !matches!(
                reader.read_event(),
                Ok(quick_xml::events::Event::Eof) | Err(_)
            ) {
                events += 1;
            }
            events
        })
    });
    // `Bytes::from_static` is a pointer and a length: no copy per iteration.
    c.bench_function("read_call/RegisterUser", |b| {
        b.iter(|| {
            read_call(
                SoapVersion::V11,
                black_box(Bytes::from_static(REGISTER.as_bytes())),
                &limits,
            )
        })
    });
    c.bench_function("read_call/RegisterUser+wsse:Security", |b| {
        b.iter(|| {
            read_call(
                SoapVersion::V11,
                black_box(Bytes::from_static(REGISTER_WITH_SECURITY.as_bytes())),
                &limits,
            )
        })
    });
}

criterion_group!(benches, envelope);
criterion_main!(benches);
