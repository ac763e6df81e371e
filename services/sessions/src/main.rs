//! polyhub's session API (port 5004) with the outbox relay, alone in its process:
//! `cargo run -p sessions`, or `sessions --config polyhub.toml`. It reads the same
//! configuration as `hub serve` and is built from the same libraries.

fn main() -> std::process::ExitCode {
    hub::launch::service_main("sessions")
}
