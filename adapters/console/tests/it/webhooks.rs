//! The admin's webhook page: a refused address says why beside the form,
//! an endpoint added shows its secret once and then its state, and the
//! page is an admin's only.

use hub_core::Role;
use hub_testkit::{Service, TestHub};
use reqwest::{StatusCode, header};

use crate::pages::{PASSWORD, client, encoded, form_csrf, register, session_cookies, sign_in};

#[tokio::test]
async fn admins_add_rotate_and_delete_endpoints_and_see_why_one_is_refused() {
    let hub = TestHub::with(&[Service::RestAuth]).await;
    let base = hub.url(Service::RestAuth);
    let http = client();
    for name in ["hookroot", "hookbea"] {
        register(&http, &base, name).await;
    }
    hub.hub
        .administration()
        .set_role("hookroot", Role::Admin)
        .await
        .unwrap();
    let root = session_cookies(&sign_in(&http, &base, "hookroot", PASSWORD).await);
    let bea = session_cookies(&sign_in(&http, &base, "hookbea", PASSWORD).await);
    let get = |cookies: &str| {
        http.get(format!("{base}/admin/hooks"))
            .header(header::COOKIE, cookies.to_owned())
            .send()
    };
    let post = |path: String, cookies: &str, fields: Vec<(&'static str, String)>| {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http.post(format!("{base}{path}"))
            .header(header::ORIGIN, &base)
            .header(header::COOKIE, cookies.to_owned())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(encoded(&fields))
            .send()
    };
    assert_eq!(get(&bea).await.unwrap().status(), StatusCode::FORBIDDEN);

    let page = get(&root).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    assert!(page.contains("No webhook endpoint yet."), "{page}");
    let csrf = form_csrf(&page, "/admin/hooks");

    // Loopback is not allowed here: refused beside the form, nothing stored.
    let refused = post(
        "/admin/hooks".into(),
        &root,
        vec![
            ("csrf", csrf.clone()),
            ("url", "http://127.0.0.1:9/in".into()),
            ("events", "user.*".into()),
            ("description", String::new()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let refused = refused.text().await.unwrap();
    assert!(refused.contains("WEBHOOK_TARGET_REFUSED"), "{refused}");
    assert!(refused.contains("No webhook endpoint yet."));

    // A public address (checked, never called: nothing is delivered while
    // no event of its types is written).
    let added = post(
        "/admin/hooks".into(),
        &root,
        vec![
            ("csrf", csrf.clone()),
            ("url", "http://192.0.0.170/hooks".into()),
            ("events", "user.deleted".into()),
            ("description", "HR".into()),
        ],
    )
    .await
    .unwrap();
    let status = added.status();
    let added = added.text().await.unwrap();
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "192.0.0.0/24 is reserved: {added}"
    );
    let added = post(
        "/admin/hooks".into(),
        &root,
        vec![
            ("csrf", csrf.clone()),
            ("url", "http://93.184.216.34/hooks".into()),
            ("events", "user.deleted".into()),
            ("description", "HR".into()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(added.status(), StatusCode::OK);
    let added = added.text().await.unwrap();
    assert!(added.contains("whsec_"), "{added}");
    assert!(added.contains("http://93.184.216.34/hooks") && added.contains("Active"));
    // Shown once: the list never shows it again.
    let listed = get(&root).await.unwrap().text().await.unwrap();
    assert!(!listed.contains("whsec_"));

    let endpoint = hub.hub.webhooks().unwrap().list(None).await.unwrap()[0].id;
    let rotated = post(
        format!("/admin/hooks/{endpoint}/rotate"),
        &root,
        vec![("csrf", csrf.clone())],
    )
    .await
    .unwrap();
    assert_eq!(rotated.status(), StatusCode::OK);
    assert!(rotated.text().await.unwrap().contains("whsec_"));
    let deleted = post(
        format!("/admin/hooks/{endpoint}/delete"),
        &root,
        vec![("csrf", csrf.clone())],
    )
    .await
    .unwrap();
    assert_eq!(deleted.status(), StatusCode::SEE_OTHER);
    assert!(
        hub.hub
            .webhooks()
            .unwrap()
            .list(None)
            .await
            .unwrap()
            .is_empty()
    );
    // Without the page's token, nothing happens.
    let forged = post(
        "/admin/hooks".into(),
        &root,
        vec![
            ("url", "http://93.184.216.34/hooks".into()),
            ("events", "*".into()),
        ],
    )
    .await
    .unwrap();
    assert_ne!(forged.status(), StatusCode::OK);
    assert!(
        hub.hub
            .webhooks()
            .unwrap()
            .list(None)
            .await
            .unwrap()
            .is_empty()
    );
}
