//! `soap-register` alone in its process (`cargo run --bin soap-register`, or
//! `soap-register --config polyhub.toml`): the same configuration as `hub serve`,
//! the same wiring, one service.

fn main() -> std::process::ExitCode {
    hub::launch::service_main(hub::Service::SoapRegister)
}
