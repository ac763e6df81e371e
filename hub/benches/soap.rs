//! The SOAP services under load, beside their baselines in the same run.
//!
//!     scripts/bench soap        (sets up PostgreSQL and wrk, then runs this)
//!
//! 1. LookupUser over SOAP 1.1 (POST, envelope read and written), 32 wrk
//!    connections, vs the same lookup by username by pgbench, 32 connections.
//! 2. The resident memory of an idle `hub serve` process (every service).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use hub_testkit::{Service, TestSetup, free_port};

use std::process::{Command, Stdio};
use std::time::Duration;

const LOOKUP: &str = "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\"><soapenv:Body>\
<u:LookupUser xmlns:u=\"urn:polyhub:users:v1\"><u:username>bench</u:username></u:LookupUser>\
</soapenv:Body></soapenv:Envelope>";

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let setup = TestSetup::new(&[Service::SoapRegister, Service::SoapLookup]).production_hashing();
    let database_url = setup.config.database.url.expose().clone();
    let key_path = setup.keys.private.clone();
    let hub = setup.start().await;
    hub.hub
        .registration()
        .register(hub_core::RegisterUser {
            username: "bench".into(),
            email: "bench@example.com".into(),
            password: "correct horse battery".into(),
        })
        .await
        .unwrap();
    let lookup_url = format!("{}/user/soap", hub.url(Service::SoapLookup));

    // 1. LookupUser vs the direct SELECT.
    let script = hub_testkit::scratch_dir().join("lookup.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"text/xml; charset=utf-8\"\nwrk.body = '{LOOKUP}'\n"
        ),
    )
    .unwrap();
    let (lookup_rate, lookup_p99) =
        tokio::task::spawn_blocking(move || support::wrk(&lookup_url, &[], Some(&script)))
            .await
            .unwrap();
    let (select_rate, select_p99) = tokio::task::spawn_blocking(move || {
        support::pgbench(
            &database_url,
            "SELECT id, username, created_at FROM users WHERE lower(username) = 'bench';",
            &[],
        )
    })
    .await
    .unwrap();
    println!(
        "| LookupUser (SOAP 1.1 POST), 32 connections (wrk) | {lookup_rate:.0} req/s, p99 {lookup_p99:.2} ms | the same SELECT, 32 connections (pgbench) {select_rate:.0}/s, p99 {select_p99:.2} ms | ratio {:.2} |",
        lookup_rate / select_rate
    );
    hub.stop().await;

    // 2. An idle `hub serve`: every service, one process.
    let mut child = Command::new(env!("CARGO_BIN_EXE_hub"))
        .arg("serve")
        .env_clear()
        .env("POLYHUB_DATABASE__URL", hub_testkit::fresh_database_url())
        .env("POLYHUB_TOKENS__SIGNING_KEY_PATH", &key_path)
        .env("POLYHUB_LOG__LEVEL", "warn")
        .env("POLYHUB_SERVICES__REST_AUTH__PORT", free_port().to_string())
        .env(
            "POLYHUB_SERVICES__SOAP_REGISTER__PORT",
            free_port().to_string(),
        )
        .env(
            "POLYHUB_SERVICES__SOAP_LOOKUP__PORT",
            free_port().to_string(),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "| idle `hub serve` (rest-auth, soap-register, soap-lookup) | {:.1} MiB RSS | | | target < 20 MiB |",
        idle as f64 / 1024.0
    );
}
