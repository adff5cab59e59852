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
        .bytes(".forwarding.v1.ForwardingReq.body")
        .bytes(".forwarding.v1.ForwardingResp.body")
        .bytes(".forwarding.v1.Header.value")
        .compile_protos(&files, &["proto"])?;
    Ok(())
}
