//! polyhub's REST/JSON auth service (port 5001), alone in its process:
//! `cargo run -p rest-auth`, or `rest-auth --config polyhub.toml`. It reads the same
//! configuration as `hub serve` and is built from the same libraries.

fn main() -> std::process::ExitCode {
    hub::launch::service_main("rest-auth")
}
