//! Generates the greeter's tonic code from proto/greeter.proto with protox, so no `protoc` is
//! needed, and keeps the encoded descriptors (annotations included) for server reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    println!(
        "cargo:rerun-if-changed={}",
        proto_dir.join("greeter.proto").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        proto_dir.join("google/api").display()
    );

    let mut compiler = protox::Compiler::new([&proto_dir])?;
    compiler.include_imports(true);
    compiler.open_file("greeter.proto")?;
    // These bytes keep the google.api.http options that a decoded prost_types set would drop;
    // the gateway's reflection schema source reads the bindings from them.
    let encoded = compiler.encode_file_descriptor_set();
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("greeter_descriptor.bin"), &encoded)?;

    let fds = prost_types::FileDescriptorSet::decode(encoded.as_slice())?;
    tonic_prost_build::configure()
        .build_client(false)
        .compile_fds(fds)?;
    Ok(())
}
