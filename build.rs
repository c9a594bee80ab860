//! Compiles the protos with protox (a pure-Rust protobuf compiler), so building
//! tasktime needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/tasktime/v1/tasktime.proto"];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(protos, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // The descriptor set serves reflection and the JSON mapping of `tasktime record`.
    std::fs::write(out.join("tasktime_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    // Maps as BTreeMap: labels are kept sorted (their series id hashes them in order),
    // so decoding straight into one saves a HashMap and a copy per event.
    tonic_prost_build::configure().btree_map(".").compile_fds(fds)?;
    Ok(())
}
