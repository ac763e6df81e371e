//! A withdrawn admin loses the admin pages at once, and cannot give the
//! role back to themselves (or take it from anyone).

use hub_core::{Role, Username};
use hub_testkit::{Service, TestHub};
use reqwest::{StatusCode, header};

use crate::pages::{PASSWORD, client, encoded, form_csrf, register, session_cookies, sign_in};

const SERVICES: &[Service] = &[Service::RestAuth];

async fn role_of(hub: &TestHub, name: &str) -> Role {
    hub.hub
        .users()
        .find_by_username(&Username::parse(name).unwrap())
        .await
        .unwrap()
        .unwrap()
        .role
}

/// Finding: after `POST /admin/user/B/role role=user`, B's console still
/// opened the admin pages, and B's own `role=admin` post gave it back.
#[tokio::test]
async fn a_withdrawn_admin_is_refused_at_once_in_the_console() {
    let hub = TestHub::with(SERVICES).await;
    let base = hub.url(Service::RestAuth);
    let http = client();
    for name in ["root", "bea"] {
        register(&http, &base, name).await;
    }
    hub.hub
        .administration()
        .set_role("root", Role::Admin)
        .await
        .unwrap();
    let root = session_cookies(&sign_in(&http, &base, "root", PASSWORD).await);
    let get = |path: &str, cookies: &str| {
        http.get(format!("{base}{path}"))
            .header(header::COOKIE, cookies.to_owned())
            .send()
    };
    let set_role = |cookies: &str, csrf: &str, name: &str, role: &str| {
        http.post(format!("{base}/admin/user/{name}/role"))
            .header(header::ORIGIN, &base)
            .header(header::COOKIE, cookies.to_owned())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(encoded(&[("csrf", csrf), ("role", role)]))
            .send()
    };
    let page = get("/admin/user/bea", &root).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let root_csrf = form_csrf(&page.text().await.unwrap(), "/admin/user/bea/role");
    let granted = set_role(&root, &root_csrf, "bea", "admin").await.unwrap();
    assert_eq!(granted.status(), StatusCode::SEE_OTHER);

    // Bea signs in as an admin and keeps her admin page's CSRF token.
    let bea = session_cookies(&sign_in(&http, &base, "bea", PASSWORD).await);
    let page = get("/admin/user/bea", &bea).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    // (Her own page has no role form; every form of a session carries
    // the same token.)
    let bea_csrf = form_csrf(&page.text().await.unwrap(), "/account/signout");

    let withdrawn = set_role(&root, &root_csrf, "bea", "user").await.unwrap();
    assert_eq!(withdrawn.status(), StatusCode::SEE_OTHER);
    assert_eq!(role_of(&hub, "bea").await, Role::User);

    // Her console session died with the role it was opened under...
    for page in ["/admin/users", "/admin/system"] {
        let answer = get(page, &bea).await.unwrap();
        assert_eq!(answer.status(), StatusCode::SEE_OTHER, "{page}");
        assert_eq!(answer.headers()[header::LOCATION], "/account/signin");
    }
    let answer = set_role(&bea, &bea_csrf, "bea", "admin").await.unwrap();
    assert_eq!(answer.headers()[header::LOCATION], "/account/signin");
    assert_eq!(role_of(&hub, "bea").await, Role::User);

    // ...and signed in again she is a user: no admin page, no role back,
    // and no withdrawing root's either.
    let bea = session_cookies(&sign_in(&http, &base, "bea", PASSWORD).await);
    let answer = get("/admin/users", &bea).await.unwrap();
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    let page = get("/account", &bea).await.unwrap().text().await.unwrap();
    let csrf = form_csrf(&page, "/account/signout");
    for (name, role) in [("bea", "admin"), ("root", "user")] {
        let answer = set_role(&bea, &csrf, name, role).await.unwrap();
        assert_eq!(answer.status(), StatusCode::FORBIDDEN, "{name} {role}");
    }
    assert_eq!(role_of(&hub, "bea").await, Role::User);
    assert_eq!(role_of(&hub, "root").await, Role::Admin);
}

/// Finding: `GET /admin/users?q=a%00b` was 500 `INTERNAL` (PostgreSQL text
/// cannot hold NUL); a search with a control character is the client's
/// mistake, 400.
#[tokio::test]
async fn a_search_with_a_control_character_is_a_bad_request() {
    let hub = TestHub::with(SERVICES).await;
    let base = hub.url(Service::RestAuth);
    let http = client();
    register(&http, &base, "root").await;
    hub.hub
        .administration()
        .set_role("root", Role::Admin)
        .await
        .unwrap();
    let root = session_cookies(&sign_in(&http, &base, "root", PASSWORD).await);
    for query in ["a%00b", "a%07b", "%1B%5B2J"] {
        let answer = http
            .get(format!("{base}/admin/users?q={query}"))
            .header(header::COOKIE, &root)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{query}");
    }
    let answer = http
        .get(format!("{base}/admin/users?q=ro"))
        .header(header::COOKIE, &root)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(answer.text().await.unwrap().contains("root"));
}
