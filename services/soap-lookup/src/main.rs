//! polyhub's SOAP username lookup service (port 5016), alone in its process:
//! `cargo run -p soap-lookup`, or `soap-lookup --config polyhub.toml`. It reads the same
//! configuration as `hub serve` and is built from the same libraries.

fn main() -> std::process::ExitCode {
    hub::launch::service_main("soap-lookup")
}
