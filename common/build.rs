//! Compiles `proto/` once for the whole workspace with a protoc that ships with the build:
//! messages always, gRPC services with the `io` feature.

// `set_var` is unsafe in edition 2024; a build script is single-threaded, so it is sound here.
#![allow(unsafe_code)]

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // PROTOC tells prost-build which binary to run, so no system protoc is needed.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let proto_root = "../proto";
    let files = [
        "../proto/reelfarm/v1/sequence.proto",
        "../proto/reelfarm/v1/worker.proto",
    ];
    // Without the `io` feature only the messages are generated: no tonic in the farm core.
    let services = std::env::var_os("CARGO_FEATURE_IO").is_some();
    tonic_prost_build::configure()
        .build_client(services)
        .build_server(services)
        .compile_protos(&files, &[proto_root])?;
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    Ok(())
}
