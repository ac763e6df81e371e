//! `soap-lookup` alone in its process (`cargo run --bin soap-lookup`, or
//! `soap-lookup --config polyhub.toml`): the same configuration as `hub serve`,
//! the same wiring, one service.

fn main() -> std::process::ExitCode {
    hub::launch::service_main(hub::Service::SoapLookup)
}
