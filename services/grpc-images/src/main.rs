//! polyhub's gRPC image service (port 5015), alone in its process:
//! `cargo run -p grpc-images`, or `grpc-images --config polyhub.toml`. It reads the same
//! configuration as `hub serve` and is built from the same libraries.

fn main() -> std::process::ExitCode {
    hub::launch::service_main("grpc-images")
}
