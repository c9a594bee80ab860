//! Generated protobuf and gRPC code for `tasktime.v1`, and its file descriptor set
//! (for server reflection and the JSON mapping). Nothing here is written by hand.

#![allow(missing_docs, unreachable_pub, missing_debug_implementations, clippy::all)]

tonic::include_proto!("tasktime.v1");

/// The encoded `FileDescriptorSet` of every tasktime proto (and the well-known types
/// they import), for server reflection and JSON transcoding.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tasktime_descriptor");
