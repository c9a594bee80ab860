//! `tasktime.v1.IngestService`: validates events, hands them to the group committer and
//! answers only after the commit that holds them returned.
//!
//! Every RPC answers by itself before the client's deadline (`grpc-timeout`): it waits for
//! its commit at most `commit_timeout`, and never past the deadline less a margin. When
//! the wait runs out it answers UNAVAILABLE with RetryInfo; the commit may still land, and
//! a retry then reports those events as duplicates (the delivery contract).

use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, StreamExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::domain::{Limits, Micros, now_micros};
use crate::grpc::convert::{self, EventContext, RequestCache};
use crate::grpc::status::{self, Violation};
use crate::grpc::wire::WireRecordRequest;
use crate::grpc::wire::ingest_service_server::IngestService;
use crate::ingest::{Disposition, IngestError, IngestHandle};
use crate::pb;

/// The ingest service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct IngestApi {
    handle: IngestHandle,
    limits: Limits,
    max_age: Micros,
    stream_concurrency: usize,
    /// The longest an RPC waits for its commit (shortened by the client's deadline).
    commit_timeout: Duration,
    /// Cancelled when the service starts draining: streams stop reading new requests.
    draining: CancellationToken,
}

/// How long before the client's deadline an RPC gives up waiting and answers: a tenth of
/// the deadline, within these bounds. The answer still has to travel, and the deadline
/// started counting before the request was decoded.
const DEADLINE_MARGIN_MIN: Duration = Duration::from_millis(20);
const DEADLINE_MARGIN_MAX: Duration = Duration::from_millis(500);

/// The client's deadline from the `grpc-timeout` header (`<digits><unit>`, gRPC over HTTP/2
/// spec), as an instant measured from `received`. `None` when absent or malformed (tonic's
/// server ignores a malformed header the same way).
fn client_deadline(metadata: &tonic::metadata::MetadataMap, received: Instant) -> Option<Instant> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let value: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(value.checked_mul(3600)?),
        "M" => Duration::from_secs(value.checked_mul(60)?),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    };
    let margin = (timeout / 10).clamp(DEADLINE_MARGIN_MIN, DEADLINE_MARGIN_MAX);
    received.checked_add(timeout.saturating_sub(margin))
}

impl IngestApi {
    /// A service feeding `handle`.
    pub fn new(
        handle: IngestHandle,
        limits: Limits,
        max_age: Micros,
        stream_concurrency: usize,
        commit_timeout: Duration,
        draining: CancellationToken,
    ) -> Self {
        IngestApi {
            handle,
            limits,
            max_age,
            stream_concurrency,
            commit_timeout,
            draining,
        }
    }

    /// Validates, commits and tallies one request, answering by `answer_by` (the client's
    /// deadline less a margin) at the latest.
    async fn process(
        &self,
        request: WireRecordRequest,
        answer_by: Option<Instant>,
    ) -> Result<pb::RecordResponse, Status> {
        let started = Instant::now();
        if let Some(reason) = request.malformed() {
            return Err(status::invalid_argument(vec![Violation {
                field: "events".into(),
                description: reason.to_owned(),
            }]));
        }
        let n = request.len();
        if n > self.limits.max_events_per_request {
            return Err(status::invalid_argument(vec![Violation {
                field: "events".into(),
                description: format!(
                    "the request has {n} events; the limit is {}: split it into smaller requests",
                    self.limits.max_events_per_request
                ),
            }]));
        }
        let ctx = EventContext {
            limits: self.limits,
            now: now_micros(),
            max_age: self.max_age,
        };
        let mut valid = Vec::with_capacity(n);
        let mut valid_index = Vec::with_capacity(n);
        let mut rejected = Vec::new();
        let mut cache = RequestCache::for_events(n);
        for (i, e) in request.events().enumerate() {
            match convert::event(i, e, &ctx, &mut cache) {
                Ok(event) => {
                    valid.push(event);
                    valid_index.push(i);
                }
                Err(reason) => rejected.push(pb::EventError {
                    index: index_u32(i),
                    reason,
                }),
            }
        }
        // The converted events own what they keep: the request's bytes go now, not after
        // the commit.
        drop(request);
        let wait = answer_by.map_or(self.commit_timeout, |by| {
            by.saturating_duration_since(started).min(self.commit_timeout)
        });
        // Dropping the submit future leaves the batch queued: it may still be committed
        // (a retry is then a duplicate), or the committer skips it as abandoned.
        let dispositions = tokio::time::timeout(wait, self.handle.submit(valid))
            .await
            .map_err(|_| status::from_ingest(&IngestError::Timeout(wait)))?
            .map_err(|e| status::from_ingest(&e))?;
        let mut response = pb::RecordResponse::default();
        for (d, i) in dispositions.into_iter().zip(valid_index) {
            match d {
                Disposition::Accepted { over_range } => {
                    response.accepted += 1;
                    response.over_range += u32::from(over_range);
                }
                Disposition::Duplicate => response.duplicates += 1,
                Disposition::Rejected(reason) => rejected.push(pb::EventError {
                    index: index_u32(i),
                    reason: format!("events[{i}]: {reason}"),
                }),
            }
        }
        rejected.sort_by_key(|e| e.index);
        response.rejected = rejected;
        Ok(response)
    }
}

fn index_u32(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

type ResponseStream = Pin<Box<dyn futures::Stream<Item = Result<pb::RecordResponse, Status>> + Send>>;

#[tonic::async_trait]
impl IngestService for IngestApi {
    #[tracing::instrument(skip_all, fields(events = request.get_ref().len()))]
    async fn record(&self, request: Request<WireRecordRequest>) -> Result<Response<pb::RecordResponse>, Status> {
        let answer_by = client_deadline(request.metadata(), Instant::now());
        self.process(request.into_inner(), answer_by).await.map(Response::new)
    }

    type RecordStreamStream = ResponseStream;

    /// Processes up to `stream_concurrency` requests of the stream at once and answers in
    /// order. When the service drains, it stops reading, finishes what it read, and ends
    /// the stream with UNAVAILABLE so the client resends what got no response.
    async fn record_stream(
        &self,
        request: Request<Streaming<WireRecordRequest>>,
    ) -> Result<Response<Self::RecordStreamStream>, Status> {
        // A stream's deadline covers the whole stream; no request waits past it.
        let answer_by = client_deadline(request.metadata(), Instant::now());
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(self.stream_concurrency);
        let this = self.clone();
        tokio::spawn(async move {
            let mut pending = FuturesOrdered::new();
            let mut reading = true;
            let mut drained = false;
            loop {
                if !reading && pending.is_empty() {
                    break;
                }
                tokio::select! {
                    biased;
                    Some(result) = pending.next(), if !pending.is_empty() => {
                        let result: Result<pb::RecordResponse, Status> = result;
                        let failed = result.is_err();
                        if tx.send(result).await.is_err() || failed {
                            return; // client gone, or the stream ends with that error
                        }
                    }
                    () = this.draining.cancelled(), if reading => {
                        reading = false;
                        drained = true;
                    }
                    message = inbound.message(), if reading && pending.len() < this.stream_concurrency => {
                        match message {
                            Ok(Some(req)) => {
                                let api = this.clone();
                                pending.push_back(async move { api.process(req, answer_by).await });
                            }
                            Ok(None) => reading = false,
                            Err(status) => {
                                tracing::debug!(%status, "record stream broke");
                                return;
                            }
                        }
                    }
                }
            }
            if drained {
                let _ = tx
                    .send(Err(status::from_ingest(&crate::ingest::IngestError::ShuttingDown)))
                    .await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as ResponseStream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadline_of(header: &str) -> Option<Duration> {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("grpc-timeout", header.parse().expect("ascii"));
        let now = Instant::now();
        client_deadline(&metadata, now).map(|at| at - now)
    }

    #[test]
    fn the_answer_is_due_a_tenth_of_the_deadline_before_it() {
        assert_eq!(deadline_of("2000000u"), Some(Duration::from_millis(1800)));
        assert_eq!(deadline_of("2S"), Some(Duration::from_millis(1800)));
        assert_eq!(deadline_of("1M"), Some(Duration::from_millis(59_500)), "margin capped");
        assert_eq!(deadline_of("100m"), Some(Duration::from_millis(80)), "margin floored");
        assert_eq!(deadline_of("5m"), Some(Duration::ZERO));
    }

    #[test]
    fn a_malformed_or_missing_timeout_is_no_deadline() {
        for bad in ["", "S", "10", "10x", "123456789S", "-1S"] {
            assert_eq!(deadline_of(bad), None, "{bad:?}");
        }
        assert_eq!(
            client_deadline(&tonic::metadata::MetadataMap::new(), Instant::now()),
            None
        );
    }
}
