//! The table "Same input, same code, every protocol" in docs/ERRORS.md,
//! checked row by row against `hub serve`: REST with a plain HTTP client,
//! SOAP with zeep through both SOAP versions, lookups also through the legacy
//! GET. The documented code is the expected one, so the docs cannot drift.

use std::path::Path;

use hub_e2e::{ROOT, python_json, serve};
use serde_json::{Value, json};

struct Row {
    case: String,
    rest: bool,
    soap: bool,
    code: String,
}

fn documented_rows() -> Vec<Row> {
    let doc = std::fs::read_to_string(Path::new(ROOT).join("docs/ERRORS.md")).unwrap();
    let section = doc
        .split("## Same input, same code, every protocol")
        .nth(1)
        .expect("docs/ERRORS.md has the consistency table");
    section
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| l.starts_with('|') && !l.starts_with("|---") && !l.starts_with("| case"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            Row {
                case: cells[1].to_owned(),
                rest: cells[3] != "—",
                soap: cells[4] != "—",
                code: cells[5].to_owned(),
            }
        })
        .collect()
}

/// The input of each case: (username, email, password).
fn input(case: &str, taken: &str) -> (String, String, String) {
    let fresh = format!("u{}", &uuid::Uuid::now_v7().simple().to_string()[18..]);
    let good = "correct horse battery".to_owned();
    match case {
        "bad username" => ("no way!".into(), format!("{fresh}@example.com"), good),
        "bad email" => (fresh, "not-an-email".into(), good),
        "weak password" => (
            fresh.clone(),
            format!("{fresh}@example.com"),
            "short".into(),
        ),
        "taken username" => (taken.to_uppercase(), format!("{fresh}@example.com"), good),
        "taken email" => (fresh, format!("{}@EXAMPLE.com", taken.to_uppercase()), good),
        "unknown user" | "unknown user at login" => (fresh, String::new(), good),
        "bad credentials" => (taken.to_owned(), String::new(), "wrong password!".into()),
        other => panic!("no input for the documented case {other:?}"),
    }
}

fn error_code(body: &Value) -> String {
    body["error"]["code"].as_str().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_bad_input_gets_the_same_code_on_every_protocol() {
    let rows = documented_rows();
    assert_eq!(rows.len(), 8, "every documented case is checked");
    let hub = serve();
    let http = reqwest::Client::new();
    let rest = hub.url("rest-auth").to_owned();
    let taken = format!("taken{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let registered = http
        .post(format!("{rest}/register"))
        .json(&json!({"username": taken, "email": format!("{taken}@example.com"), "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);

    let mut soap_cases = Vec::new();
    let mut expected_soap = Vec::new();
    for row in &rows {
        let (username, email, password) = input(&row.case, &taken);
        let registering = !email.is_empty();
        if row.rest {
            let (path, body) = if registering {
                (
                    "/register",
                    json!({"username": username, "email": email, "password": password}),
                )
            } else {
                (
                    "/login",
                    json!({"username": username, "password": password}),
                )
            };
            let resp = http
                .post(format!("{rest}{path}"))
                .json(&body)
                .send()
                .await
                .unwrap();
            let body: Value = resp.json().await.unwrap();
            assert_eq!(
                error_code(&body),
                row.code,
                "REST {path}, {}: {body}",
                row.case
            );
        }
        if row.soap {
            for soap in ["Soap11", "Soap12"] {
                soap_cases.push(if registering {
                    json!({"op": "register", "soap": soap,
                           "args": {"username": username, "email": email, "password": password}})
                } else {
                    json!({"op": "lookup", "soap": soap, "args": {"username": username}})
                });
                expected_soap.push(format!("{} over {soap}", row.code));
            }
            if !registering {
                let resp = http
                    .get(format!(
                        "{}/user/soap?username={username}",
                        hub.url("soap-lookup")
                    ))
                    .send()
                    .await
                    .unwrap();
                let text = resp.text().await.unwrap();
                assert!(
                    text.contains(&format!(">{}<", row.code)),
                    "legacy GET, {}: {text}",
                    row.case
                );
            }
        }
    }
    let outcomes = python_json(
        &Path::new(ROOT).join("e2e/clients/soap_cases.py"),
        &[
            &format!("{}/register?wsdl", hub.url("soap-register")),
            &format!("{}/user/soap?wsdl", hub.url("soap-lookup")),
            &Value::Array(soap_cases).to_string(),
        ],
    )
    .await;
    let outcomes: Vec<String> = outcomes
        .as_array()
        .unwrap()
        .iter()
        .zip(&expected_soap)
        .map(|(got, want)| {
            let version = want.rsplit(' ').next().unwrap();
            format!("{} over {version}", got.as_str().unwrap())
        })
        .collect();
    assert_eq!(outcomes, expected_soap);
}
