//! Generates the gRPC code from proto/ with protox (a pure-Rust protobuf
//! compiler), so no system protoc is needed, and keeps the descriptor set
//! for server reflection.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../../proto";
    println!("cargo:rerun-if-changed={proto}");
    let files = protox::compile(
        [
            "polyhub/images/v1/images.proto",
            "polyhub/events/v1/events.proto",
        ],
        [proto],
    )?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("images_descriptor.bin"), files.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Upload chunks are the transport's own buffers, not copies of them.
        .bytes(".polyhub.images.v1.UploadImageRequest.chunk")
        .compile_fds(files)?;
    Ok(())
}
