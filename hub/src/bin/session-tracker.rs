//! `session-tracker` alone in its process (`cargo run --bin session-tracker`, or
//! `session-tracker --config polyhub.toml`): the same configuration as `hub serve`,
//! the same wiring, one service.

fn main() -> std::process::ExitCode {
    hub::launch::service_main(hub::Service::SessionTracker)
}
