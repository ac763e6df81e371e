//! The `soap-register` binary starts as every polyhub binary does; e2e/tests/standalone.rs
//! runs it against the real stores.

#[test]
fn answers_help_and_refuses_unknown_settings() {
    e2e::check_service_binary(
        env!("CARGO_BIN_EXE_soap-register").as_ref(),
        "soap-register",
    );
}
