//! Compiles the protos with protox (a pure-Rust protobuf compiler), so building
//! tasktime needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/tasktime/v1/tasktime.proto"];
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=proto-server");
    let fds = protox::compile(protos, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // The descriptor set serves reflection and the JSON mapping of `tasktime record`.
    std::fs::write(out.join("tasktime_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    // Maps as BTreeMap: labels are kept sorted (their series id hashes them in order),
    // so decoding straight into one saves a HashMap and a copy per event.
    tonic_prost_build::configure().btree_map(".").compile_fds(fds)?;

    // The server's decoding view of IngestService (see proto-server/ingest_wire.proto):
    // its requests only, generated apart (same package), with bytes as `Bytes` and the
    // public messages taken from `crate::pb`.
    let wire = protox::compile(["proto-server/ingest_wire.proto"], ["proto-server"])?;
    let wire_out = out.join("wire");
    std::fs::create_dir_all(&wire_out)?;
    std::fs::write(wire_out.join("descriptor.bin"), prost::Message::encode_to_vec(&wire))?;
    let mut wire_build = tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&wire_out)
        .bytes(".");
    // The request itself is indexed, not decoded, by `crate::grpc::wire::WireRecordRequest`:
    // its events are parsed one by one, borrowing from the request's bytes.
    wire_build = wire_build.extern_path(".tasktime.v1.WireRecordRequest", "crate::grpc::wire::WireRecordRequest");
    for public in [
        "Start",
        "Finish",
        "Completed",
        "Outcome",
        "RecordResponse",
        "EventError",
    ] {
        wire_build = wire_build.extern_path(format!(".tasktime.v1.{public}"), format!("crate::pb::{public}"));
    }
    wire_build.compile_fds(wire)?;
    Ok(())
}
