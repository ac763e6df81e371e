//! polyhub's last-connection tracker (port 5020), alone in its process:
//! `cargo run -p session-tracker`, or `session-tracker --config polyhub.toml`. It reads the same
//! configuration as `hub serve` and is built from the same libraries.

fn main() -> std::process::ExitCode {
    hub::launch::service_main("session-tracker")
}
