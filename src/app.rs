//! Builds the server from a [`Config`] and runs it until a stop signal, draining like a
//! Kubernetes pod should: health NOT_SERVING, wait the drain period, stop accepting,
//! let in-flight RPCs and the last commit finish within the grace period.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::Instrument as _;

use crate::config::{Config, Derived};
use crate::grpc::{IngestApi, QueryApi};
use crate::ingest::Committer;
use crate::pb;
use crate::store::{AnyStore, MemoryStore, RedisStore, Store};

/// Service names whose health is readiness (NOT_SERVING while the store is unreachable
/// or the service drains). The empty name is liveness: SERVING while the process runs.
pub const READINESS_SERVICES: [&str; 3] = [
    "tasktime.v1.IngestService",
    "tasktime.v1.QueryService",
    "tasktime.v1.GateService",
];

/// How often readiness re-checks the store.
const READINESS_INTERVAL: Duration = Duration::from_secs(1);
/// A readiness ping that takes longer than this counts as "store unreachable" (a paused
/// Redis accepts connections but never answers).
const READINESS_PING_TIMEOUT: Duration = Duration::from_secs(1);

/// A bound, wired, not yet running service.
#[derive(Debug)]
pub struct App {
    listener: TcpListener,
    addr: SocketAddr,
    config: Config,
    derived: Derived,
    store: AnyStore,
}

impl App {
    /// Validates the config, opens the store and binds the listener (port 0 picks a free
    /// port; [`App::local_addr`] tells which).
    ///
    /// # Errors
    /// Invalid config, unusable Redis URL, or an address that cannot be bound.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let derived = config.validate()?;
        let store = match &config.redis_url {
            _ if config.null_store => {
                tracing::warn!("using the NULL store: every event is accepted and DROPPED; for benchmarks only");
                AnyStore::Null(crate::store::NullStore)
            }
            None => {
                tracing::warn!(
                    "using the embedded in-memory store: data is NOT durable and is lost when the process exits; pass --redis-url for durable storage"
                );
                AnyStore::Memory(MemoryStore::new(derived.semantics.clone()))
            }
            Some(url) => {
                let store = RedisStore::open(url, config.redis_timeouts, derived.semantics.clone())?;
                check_redis(&store).await;
                AnyStore::Redis(store)
            }
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} (--listen / TASKTIME_LISTEN)", config.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "listening");
        Ok(App {
            listener,
            addr,
            config,
            derived,
            store,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` completes, then drains and returns.
    ///
    /// # Errors
    /// When the server fails (not when it is stopped).
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let App {
            listener,
            config,
            derived,
            store,
            ..
        } = self;
        let tracker = TaskTracker::new();
        let stop_committer = CancellationToken::new();
        let stop_background = CancellationToken::new();
        let draining = CancellationToken::new();

        let (committer, handle) = Committer::new(
            store.clone(),
            config.queue_capacity_events,
            config.max_round_events,
            config.commit_timeout,
            config.commit_concurrency,
        );
        let committer_done = tracker.spawn(
            committer
                .run(stop_committer.clone())
                .instrument(tracing::info_span!("committer")),
        );

        // The Redis store folds its journals in the background; it stops after the last
        // commit, and folds once more as it does.
        let stop_flusher = CancellationToken::new();
        let flusher_done = match &store {
            AnyStore::Redis(redis) => Some(
                tracker.spawn(
                    redis
                        .clone()
                        .run_flusher(stop_flusher.clone())
                        .instrument(tracing::info_span!("flusher")),
                ),
            ),
            _ => None,
        };

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_service_status("", ServingStatus::Serving).await;
        let first_ping = tokio::time::timeout(READINESS_PING_TIMEOUT, store.ping()).await;
        set_readiness(&health, matches!(first_ping, Ok(Ok(())))).await;
        let readiness = tracker.spawn(
            watch_readiness(store.clone(), health.clone(), stop_background.clone())
                .instrument(tracing::info_span!("readiness")),
        );

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let ingest = IngestApi::new(
            handle,
            config.limits,
            config.max_event_age(),
            config.stream_concurrency,
            config.commit_timeout,
            draining.clone(),
        );
        let query = QueryApi::new(store.clone(), derived.query.clone());
        let gate = crate::grpc::GateApi::new(store.clone(), derived.query.clone());

        // Drain sequence, run inside tonic's shutdown future so the server keeps serving
        // while health already says NOT_SERVING.
        let stopping = CancellationToken::new();
        let drain = {
            let health = health.clone();
            let stopping = stopping.clone();
            let draining = draining.clone();
            let stop_background = stop_background.clone();
            let drain_period = config.drain_period;
            async move {
                shutdown.await;
                tracing::info!(drain = ?drain_period, "stop requested: draining");
                // Stop the readiness watcher first, so it cannot mark the service ready
                // again after the drain said NOT_SERVING.
                stop_background.cancel();
                let _ = readiness.await;
                set_readiness(&health, false).await;
                tokio::time::sleep(drain_period).await;
                draining.cancel();
                stopping.cancel();
                tracing::info!("no longer accepting connections; finishing in-flight requests");
            }
        };

        let server = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(crate::grpc::wire::ingest_service_server::IngestServiceServer::new(
                ingest,
            ))
            .add_service(pb::query_service_server::QueryServiceServer::new(query))
            .add_service(pb::gate_service_server::GateServiceServer::new(gate))
            .serve_with_incoming_shutdown(incoming(listener), drain);
        let mut server = tokio::spawn(server);

        let served = tokio::select! {
            result = &mut server => Some(result),
            () = stopping.cancelled() => None,
        };
        // One grace period for all that is left: the RPCs still running, the last commit
        // and the last fold share it, so the process is gone by drain + grace whatever
        // the store does (an orchestrator kills it soon after anyway). What is cut there
        // was never acknowledged, and retrying it is safe.
        let grace = config.grace_period;
        let deadline = tokio::time::Instant::now() + grace;
        let result = match served {
            Some(result) => result,
            None => match tokio::time::timeout_at(deadline, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(?grace, "grace period over: cutting the RPCs still running");
                    server.abort();
                    Ok(Ok(()))
                }
            },
        };
        stop_background.cancel();
        stop_committer.cancel();
        tracker.close();
        if tokio::time::timeout_at(deadline, committer_done).await.is_err() {
            tracing::warn!(
                ?grace,
                "grace period over: the last commit is cut; its events were not acknowledged"
            );
        }
        stop_flusher.cancel();
        if let Some(flusher) = flusher_done {
            if tokio::time::timeout_at(deadline, flusher).await.is_err() {
                tracing::warn!(
                    ?grace,
                    "grace period over: the last journal fold is cut; the next replica to start folds it"
                );
            }
        }
        if tokio::time::timeout_at(deadline, tracker.wait()).await.is_err() {
            tracing::warn!(
                ?grace,
                "grace period over: stopping with background tasks still running"
            );
        }
        tracing::info!("stopped");
        result.context("server task failed")?.context("server failed")
    }
}

async fn set_readiness(health: &HealthReporter, ready: bool) {
    let status = if ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for name in READINESS_SERVICES {
        health.set_service_status(name, status).await;
    }
}

async fn watch_readiness(store: AnyStore, health: HealthReporter, stop: CancellationToken) {
    let mut was_ready = None;
    loop {
        let ping = tokio::select! {
            result = tokio::time::timeout(READINESS_PING_TIMEOUT, store.ping()) => result,
            () = stop.cancelled() => return,
        };
        let ready = match ping {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                if was_ready != Some(false) {
                    tracing::warn!(error = %e, "store unreachable: readiness is NOT_SERVING");
                }
                false
            }
            Err(_) => {
                if was_ready != Some(false) {
                    tracing::warn!(timeout = ?READINESS_PING_TIMEOUT, "store did not answer a ping: readiness is NOT_SERVING");
                }
                false
            }
        };
        if was_ready != Some(ready) {
            if ready && was_ready.is_some() {
                tracing::info!("store reachable again: readiness is SERVING");
            }
            set_readiness(&health, ready).await;
            was_ready = Some(ready);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(READINESS_INTERVAL) => {}
        }
    }
}

/// Warns loudly when Redis is set up to lose data: an evicting `maxmemory-policy`, or
/// no persistence at all.
async fn check_redis(store: &RedisStore) {
    if let Err(e) = store.ping().await {
        tracing::warn!(error = %e, "Redis is not reachable yet; the service starts and reports NOT_SERVING until it is");
        return;
    }
    match store.config_get("maxmemory-policy").await {
        Ok(Some(policy)) if policy != "noeviction" => tracing::warn!(
            policy = %policy,
            "Redis evicts keys under memory pressure (maxmemory-policy): acknowledged data can silently disappear; set maxmemory-policy noeviction"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read Redis maxmemory-policy (CONFIG GET refused?)"),
    }
    let aof = store.config_get("appendonly").await.ok().flatten();
    let save = store.config_get("save").await.ok().flatten();
    if aof.as_deref() != Some("yes") && save.as_deref().is_none_or(str::is_empty) {
        tracing::warn!(
            "Redis has no persistence (appendonly no, no save points): a Redis restart loses every acknowledged event; enable AOF (appendonly yes)"
        );
    } else if aof.as_deref() != Some("yes") {
        tracing::warn!(
            "Redis persists only by RDB snapshots: a crash loses what was acknowledged since the last snapshot; enable AOF"
        );
    }
    // Not a risk to data, a latency hint: each task's instance records of one generation
    // live in one hash, which Redis frees in one go when it expires.
    if store.config_get("lazyfree-lazy-expire").await.ok().flatten().as_deref() == Some("no") {
        tracing::info!(
            "Redis frees expired keys in the foreground (lazyfree-lazy-expire no): with millions of instances an hour, expiring a generation's record hash pauses Redis; set lazyfree-lazy-expire yes"
        );
    }
}

/// The connections the server accepts, with `TCP_NODELAY`: a response is a small write,
/// and with Nagle's algorithm it waited for the client to acknowledge the write before
/// it (up to the client's delayed-ACK timer, 40 ms on Linux). A stream with 8 requests
/// in flight got about one answer per 40 ms that way: 713,000 events/s against the null
/// store, 1,945,000 with this (tonic's own `serve` sets it; `serve_with_incoming` leaves
/// it to the caller).
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;

    #[tokio::test]
    async fn accepted_connections_do_not_wait_for_acknowledgements() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        let mut incoming = incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let accepted = incoming.next().await.expect("a connection").expect("accepted");
        assert!(
            accepted.nodelay().expect("TCP_NODELAY readable"),
            "Nagle's algorithm is on"
        );
    }
}
