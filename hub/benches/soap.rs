//! The SOAP services under load, beside their baselines in the same run.
//!
//!     scripts/bench soap        (sets up PostgreSQL and wrk, then runs this)
//!
//! 1. LookupUser over SOAP 1.1 (POST, envelope read and written), 32 wrk
//!    connections, vs the same lookup by username by pgbench, 32 connections.
//! 2. LookupUser with a WS-Security header, vs anonymous LookupUser in the
//!    same run: a UsernameToken (PasswordText, with a Timestamp, as zeep
//!    sends it), the same with a fresh Nonce per call (recorded in
//!    PostgreSQL), a BinarySecurityToken carrying an access token, and a
//!    UsernameToken with the verified-credential cache off (every call a
//!    full PBKDF2 verification at production strength).
//! 3. The resident memory of an idle `hub serve` process (every service).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use hub_testkit::{Service, TestSetup, free_port};

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use hub_core::{Credential, LoginAttempt, LoginName};
use hub_runtime::config::BudgetConfig;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const LOOKUP: &str = "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\"><soapenv:Body>\
<u:LookupUser xmlns:u=\"urn:polyhub:users:v1\"><u:username>bench</u:username></u:LookupUser>\
</soapenv:Body></soapenv:Envelope>";

const PASSWORD: &str = "correct horse battery";
const WSSE: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
const WSU: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd";

/// A budget that never refuses within a benchmark.
const UNLIMITED: BudgetConfig = BudgetConfig {
    burst: u32::MAX,
    replenish_ms: 1,
};

fn now() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap()
}

fn timestamp() -> String {
    format!(
        "<wsu:Timestamp><wsu:Created>{}</wsu:Created></wsu:Timestamp>",
        now()
    )
}

/// bench's UsernameToken; with `nonce`, a Nonce whose text is that
/// placeholder (wrk's script puts a fresh one there per request) and a
/// Created.
fn username_token(nonce: Option<&str>) -> String {
    let nonce = nonce.map_or(String::new(), |placeholder| {
        format!(
            "<wsse:Nonce>{placeholder}</wsse:Nonce><wsu:Created>{}</wsu:Created>",
            now()
        )
    });
    format!(
        "<wsse:UsernameToken><wsse:Username>bench</wsse:Username><wsse:Password>{PASSWORD}</wsse:Password>{nonce}</wsse:UsernameToken>"
    )
}

/// The LookupUser envelope with `security` in its Security header.
fn secured(security: &str) -> String {
    format!(
        "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:wsse=\"{WSSE}\" xmlns:wsu=\"{WSU}\">\
         <s:Header><wsse:Security s:mustUnderstand=\"1\">{security}</wsse:Security></s:Header><s:Body>\
         <u:LookupUser xmlns:u=\"urn:polyhub:users:v1\"><u:username>bench</u:username></u:LookupUser>\
         </s:Body></s:Envelope>"
    )
}

/// wrk POSTing `body`; with `nonce`, that placeholder in it is replaced by
/// a Nonce unique to the thread and request (16 hex digits, valid base64).
async fn run_wrk(url: &str, body: String, nonce: Option<&'static str>) -> (f64, f64) {
    let script: PathBuf = hub_testkit::scratch_dir().join("secured.lua");
    let lua = match nonce {
        None => format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"text/xml; charset=utf-8\"\nwrk.body = '{body}'\n"
        ),
        Some(placeholder) => {
            let (head, tail) = body.split_once(placeholder).unwrap();
            format!(
                "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"text/xml; charset=utf-8\"\n\
                 local threads = 0\nfunction setup(thread) threads = threads + 1; thread:set(\"id\", threads) end\n\
                 local sent = 0\nlocal head = '{head}'\nlocal tail = '{tail}'\n\
                 function request() sent = sent + 1; return wrk.format(nil, nil, nil, head .. string.format(\"%04x%012x\", id, sent) .. tail) end\n"
            )
        }
    };
    // The first refusal of each thread is printed, for the failure's message.
    let lua = format!(
        "{lua}local told = false\nfunction response(status, headers, body) if status ~= 200 and not told then told = true; print(status, body) end end\n"
    );
    std::fs::write(&script, lua).unwrap();
    // One request first, so a body the service refuses says why.
    let probe = body.replace(nonce.unwrap_or("\u{0}"), "00000000000000ff");
    let answer = reqwest::Client::new()
        .post(url)
        .header("content-type", "text/xml; charset=utf-8")
        .body(probe)
        .send()
        .await
        .unwrap();
    let status = answer.status();
    assert!(
        status.is_success(),
        "{status}: {}",
        answer.text().await.unwrap()
    );
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || support::wrk(&url, &[], Some(&script)))
        .await
        .unwrap()
}

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
    let mut setup =
        TestSetup::new(&[Service::SoapRegister, Service::SoapLookup]).production_hashing();
    // Every load client comes from one address: no per-client budget may
    // refuse what is being timed.
    setup.config.limits.anonymous_lookup_per_client = UNLIMITED;
    setup.config.limits.soap_calls_per_account = UNLIMITED;
    let database_url = setup.config.database.url.expose().clone();
    let key_path = setup.keys.private.clone();
    let hub = setup.start().await;
    hub.hub
        .registration()
        .register(hub_core::RegisterUser {
            username: "bench".into(),
            email: "bench@example.com".into(),
            password: PASSWORD.into(),
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

    // 2. LookupUser with WS-Security, beside anonymous LookupUser.
    let token = hub
        .hub
        .sign_in()
        .unwrap()
        .sign_in(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            LoginAttempt {
                name: LoginName::Username("bench".into()),
                credential: Credential::Password(PASSWORD.into()),
                user_agent: None,
                device_token: None,
            },
        )
        .await
        .unwrap()
        .signed_in()
        .expect("no second factor")
        .outcome
        .token
        .token;
    let lookup_url = format!("{}/user/soap", hub.url(Service::SoapLookup));
    let anonymous = run_wrk(&lookup_url, LOOKUP.to_owned(), None).await;
    let password_text = run_wrk(
        &lookup_url,
        secured(&format!("{}{}", timestamp(), username_token(None))),
        None,
    )
    .await;
    let nonced = run_wrk(
        &lookup_url,
        secured(&username_token(Some("NONCE"))),
        Some("NONCE"),
    )
    .await;
    let bearer = run_wrk(
        &lookup_url,
        secured(&format!(
            "<wsse:BinarySecurityToken ValueType=\"urn:ietf:params:oauth:token-type:jwt\">{}</wsse:BinarySecurityToken>",
            base64::engine::general_purpose::STANDARD.encode(&token)
        )),
        None,
    )
    .await;
    hub.stop().await;

    // The same UsernameToken with the cache off, on its own hub: every call
    // verifies the password at production strength, and the login budgets
    // (which a cache miss spends) are lifted so the hashing is what is timed.
    let mut setup =
        TestSetup::new(&[Service::SoapRegister, Service::SoapLookup]).production_hashing();
    setup.config.limits.anonymous_lookup_per_client = UNLIMITED;
    setup.config.limits.soap_calls_per_account = UNLIMITED;
    setup.config.soap.security.credential_cache_seconds = 0;
    // 32 connections hashing at once: let them queue on the pool rather
    // than be refused as OVERLOADED (which is what the defaults answer).
    setup.config.hashing.max_waiting = 64;
    setup.config.hashing.max_per_client = 64;
    setup.config.hashing.max_wait_ms = 60_000;
    let limits = &mut setup.config.services.rest_auth.login_limit;
    limits.per_ip_burst = u32::MAX;
    limits.per_user_burst = u32::MAX;
    let uncached_hub = setup.start().await;
    uncached_hub
        .hub
        .registration()
        .register(hub_core::RegisterUser {
            username: "bench".into(),
            email: "bench@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap();
    let uncached = run_wrk(
        &format!("{}/user/soap", uncached_hub.url(Service::SoapLookup)),
        secured(&format!("{}{}", timestamp(), username_token(None))),
        None,
    )
    .await;
    uncached_hub.stop().await;

    let (anon_rate, anon_p99) = anonymous;
    println!(
        "| LookupUser anonymous (baseline, same run) | {anon_rate:.0} req/s, p99 {anon_p99:.2} ms | | 1.00 |"
    );
    for (what, (rate, p99), goal) in [
        (
            "UsernameToken PasswordText + Timestamp (cache on)",
            password_text,
            "≥ 0.5",
        ),
        (
            "UsernameToken PasswordText + Nonce + Created (cache on, nonce recorded)",
            nonced,
            "≥ 0.5",
        ),
        ("BinarySecurityToken (bearer access token)", bearer, "≥ 0.8"),
        (
            "UsernameToken PasswordText + Timestamp, cache off (a PBKDF2 verification per call)",
            uncached,
            "(the trade-off)",
        ),
    ] {
        println!(
            "| LookupUser with {what} | {rate:.0} req/s, p99 {p99:.2} ms | anonymous {anon_rate:.0} req/s | {:.2} | goal {goal} |",
            rate / anon_rate
        );
    }

    // 3. An idle `hub serve`: every service, one process.
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
