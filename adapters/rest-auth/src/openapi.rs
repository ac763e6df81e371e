//! The OpenAPI 3.1 document, generated from the handlers' annotations and the
//! body types, plus the shared `/health` and `/ready`.

use utoipa::openapi::path::OperationBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, HttpMethod, Ref};
use utoipa::{Modify, OpenApi};

use crate::api;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "polyhub rest-auth",
        description = "Register, sign in and out, and profiles. Every error has the shape \
                       {\"error\":{\"code\",\"message\"},\"request_id\"}; codes are stable.",
    ),
    paths(
        crate::login,
        crate::mfa::login_mfa,
        crate::mfa::login_enrol,
        crate::mfa::list,
        crate::mfa::begin_totp,
        crate::mfa::confirm_totp,
        crate::mfa::remove_totp,
        crate::mfa::recovery_codes,
        crate::mfa::admin_list,
        crate::mfa::admin_reset,
        crate::mfa::forgot,
        crate::mfa::reset,
        crate::mfa::verify_email,
        crate::register,
        crate::profile,
        crate::update_profile,
        crate::logout,
        crate::import_users,
        crate::webhooks::list,
        crate::webhooks::add,
        crate::webhooks::get,
        crate::webhooks::delete,
        crate::webhooks::rotate_secret,
        crate::webhooks::replay,
        crate::webhooks::enable,
        crate::oauth::token,
        crate::oauth::introspect,
        crate::oauth::revoke,
        crate::oauth::userinfo,
        crate::oauth::userinfo_post,
        crate::oauth::discovery,
        crate::jwks,
        crate::test_db,
    ),
    components(schemas(api::ErrorBody, api::ErrorDetail, api::Health, api::Readiness)),
    modifiers(&Shared),
)]
struct ApiDoc;

/// What every service shares: bearer auth, `/health` and `/ready`.
struct Shared;

fn json_response(description: &str, schema: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name(schema))),
        )
        .build()
}

impl Modify for Shared {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    Http::builder()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .build(),
                ),
            );
        }
        let health = OperationBuilder::new()
            .tag("operations")
            .summary(Some("Liveness: the process answers"))
            .response("200", json_response("Alive", "Health"))
            .build();
        let ready = OperationBuilder::new()
            .tag("operations")
            .summary(Some("Readiness: every dependency answers"))
            .response("200", json_response("Ready", "Readiness"))
            .response("503", json_response("A dependency is down", "Readiness"))
            .build();
        openapi
            .paths
            .add_path_operation("/health", vec![HttpMethod::Get], health);
        openapi
            .paths
            .add_path_operation("/ready", vec![HttpMethod::Get], ready);
    }
}

/// The document as JSON.
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!(r#"{{"error":"cannot render the OpenAPI document: {e}"}}"#))
}
