//! tasktime measures how quickly and how easily customers complete their tasks.
//!
//! Product apps send task start and finish events; tasktime pairs them exactly once,
//! keeps the durations in HDR histograms in Redis (or the embedded in-memory store),
//! and answers dashboards and release gates.
//!
//! Crate map:
//! - [`domain`]: validated newtypes (task names, labels, events, selectors); pure.
//! - [`histogram`]: HDR bin arithmetic, merging and the V2+DEFLATE export; pure.
//! - [`ingest`]: the pairing rules (pure) and the group committer (async).
//! - [`store`]: the store trait, [`store::MemoryStore`] and [`store::RedisStore`].
//! - [`query`]: stats over a selector, from merged buckets.
//! - [`ledger`]: the ledger load client that proves nothing acknowledged is lost or doubled.
//! - [`gate`]: release-gate statistics (percentile and rate intervals, verdicts); pure.
//! - [`grpc`]: the tonic services, the one place that maps protobuf to domain types.
//! - [`app`]: builds and runs the server; [`config`] and [`telemetry`] feed it.
//! - [`cli`]: the `tasktime` subcommands; [`bench`] is the load generator behind `tasktime bench`.

pub mod app;
pub mod bench;
pub mod buckets;
pub mod cli;
pub mod config;
pub mod domain;
pub mod gate;
pub mod grpc;
pub mod histogram;
pub mod ingest;
pub mod ledger;
pub mod pb;
pub mod query;
pub mod store;
pub mod telemetry;

pub use app::App;
pub use config::Config;
