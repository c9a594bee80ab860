//! `tasktime.v1.IngestService`: validates events, hands them to the group committer and
//! answers only after the commit that holds them returned.

use std::pin::Pin;

use futures::stream::{FuturesOrdered, StreamExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::domain::{Limits, Micros, now_micros};
use crate::grpc::convert::{self, EventContext};
use crate::grpc::status::{self, Violation};
use crate::ingest::{Disposition, IngestHandle};
use crate::pb;
use crate::pb::ingest_service_server::IngestService;

/// The ingest service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct IngestApi {
    handle: IngestHandle,
    limits: Limits,
    max_age: Micros,
    stream_concurrency: usize,
    /// Cancelled when the service starts draining: streams stop reading new requests.
    draining: CancellationToken,
}

impl IngestApi {
    /// A service feeding `handle`.
    pub fn new(
        handle: IngestHandle,
        limits: Limits,
        max_age: Micros,
        stream_concurrency: usize,
        draining: CancellationToken,
    ) -> Self {
        IngestApi {
            handle,
            limits,
            max_age,
            stream_concurrency,
            draining,
        }
    }

    /// Validates, commits and tallies one request.
    async fn process(&self, request: pb::RecordRequest) -> Result<pb::RecordResponse, Status> {
        let n = request.events.len();
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
        for (i, e) in request.events.into_iter().enumerate() {
            match convert::event(i, e, &ctx) {
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
        let dispositions = self.handle.submit(valid).await.map_err(|e| status::from_ingest(&e))?;
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
    #[tracing::instrument(skip_all, fields(events = request.get_ref().events.len()))]
    async fn record(&self, request: Request<pb::RecordRequest>) -> Result<Response<pb::RecordResponse>, Status> {
        self.process(request.into_inner()).await.map(Response::new)
    }

    type RecordStreamStream = ResponseStream;

    /// Processes up to `stream_concurrency` requests of the stream at once and answers in
    /// order. When the service drains, it stops reading, finishes what it read, and ends
    /// the stream with UNAVAILABLE so the client resends what got no response.
    async fn record_stream(
        &self,
        request: Request<Streaming<pb::RecordRequest>>,
    ) -> Result<Response<Self::RecordStreamStream>, Status> {
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
                                pending.push_back(async move { api.process(req).await });
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
