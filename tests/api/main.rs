//! The one integration test binary: the service over real TCP, against the embedded
//! store and real `redis-server` processes the tests start themselves.

#![allow(unreachable_pub, missing_debug_implementations)]

mod helpers;

mod accuracy;
mod backpressure;
mod bad_input;
mod bench_smoke;
mod cli;
mod conformance;
mod env_config;
mod faults;
mod gate;
mod model;
mod network;
mod process;
mod storage;
