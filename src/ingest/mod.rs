//! Ingestion: the pairing rules ([`plan`], pure) and the group committer that turns many
//! concurrent requests into one store round ([`committer`]).

pub mod committer;
pub mod plan;

pub use committer::{Committer, IngestError, IngestHandle};
pub use plan::{Disposition, InstanceState, Semantics};
