//! One codegen strategy for the workspace: generate at build time with a
//! vendored protoc, so no system protoc is needed and the generated code can
//! never drift from the .proto files.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: a build script is single-threaded here; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let files = [
        "proto/forwarding/v1/forwarding.proto",
        "proto/forwarding/v1/registry.proto",
        "proto/forwarding/v1/sync.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure()
        // A Rust backend that implements only `Send` still compiles: the
        // other methods answer UNIMPLEMENTED, which is what the contract
        // expects of a backend that does not declare `streaming`.
        .generate_default_stubs(true)
        .bytes(".forwarding.v1.ForwardingReq.body")
        .bytes(".forwarding.v1.ForwardingResp.body")
        .bytes(".forwarding.v1.Header.value")
        .bytes(".forwarding.v1.BodyChunk.data")
        .bytes(".forwarding.v1.WebSocketMessage.binary")
        .compile_protos(&files, &["proto"])?;
    Ok(())
}
