//! The gRPC edge: tonic services that convert protobuf to domain types
//! ([`convert`]), call the core, and map errors to `tonic::Status` ([`status`]).

pub mod convert;
pub mod gate;
pub use gate::GateApi;
pub mod ingest;
pub mod query;
pub mod status;
pub mod wire;

pub use ingest::IngestApi;
pub use query::QueryApi;
