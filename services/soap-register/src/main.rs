//! polyhub's SOAP user registration service (port 5002), alone in its process:
//! `cargo run -p soap-register`, or `soap-register --config polyhub.toml`. It reads the same
//! configuration as `hub serve` and is built from the same libraries.

fn main() -> std::process::ExitCode {
    hub::launch::service_main("soap-register")
}
