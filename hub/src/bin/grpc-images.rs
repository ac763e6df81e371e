//! `grpc-images` alone in its process (`cargo run --bin grpc-images`, or
//! `grpc-images --config polyhub.toml`): the same configuration as `hub serve`,
//! the same wiring, one service.

fn main() -> std::process::ExitCode {
    hub::launch::service_main(hub::Service::GrpcImages)
}
