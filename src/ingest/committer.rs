//! Group commit: ingest requests put their validated events on a bounded queue; one
//! committer takes everything queued, applies it to the store in one round, and then
//! completes every waiting request. No timer: the next round starts when the last one
//! returns, so an idle service answers in one store round trip and a busy one commits
//! ever larger rounds.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::domain::{TaskEvent, now_micros};
use crate::ingest::plan::Disposition;
use crate::store::{Store, StoreError};

/// Why a batch was not committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// More events are waiting than the queue holds; retry after a short backoff.
    #[error("the ingest queue is full ({queued} events waiting, capacity {capacity}); retry with backoff")]
    QueueFull { queued: usize, capacity: usize },
    /// The batch is larger than the queue itself; it can never be accepted whole.
    #[error("a batch of {events} events is larger than the ingest queue ({capacity}); send smaller batches")]
    BatchTooLarge { events: usize, capacity: usize },
    /// The service is shutting down and takes no new work.
    #[error("the service is shutting down; retry on another replica")]
    ShuttingDown,
    /// The commit did not finish in time; its events may or may not be applied, and
    /// retrying them is safe (they would be reported as duplicates).
    #[error("the store did not commit within {0:?}; retrying is safe")]
    Timeout(Duration),
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Job {
    events: Vec<TaskEvent>,
    reply: oneshot::Sender<Result<Vec<Disposition>, IngestError>>,
    /// Holds the batch's share of the queue until it is committed.
    _permit: OwnedSemaphorePermit,
}

/// Sends batches to the committer. Cheap to clone.
#[derive(Clone)]
pub struct IngestHandle {
    tx: mpsc::UnboundedSender<Job>,
    capacity: Arc<Semaphore>,
    capacity_events: usize,
}

impl std::fmt::Debug for IngestHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestHandle")
            .field("capacity_events", &self.capacity_events)
            .finish_non_exhaustive()
    }
}

impl IngestHandle {
    /// Queues a batch and waits until it is committed.
    ///
    /// # Errors
    /// [`IngestError::QueueFull`] at once when the queue has no room; the store's error when
    /// the round failed (then none of this batch was applied, or it is safe to retry).
    pub async fn submit(&self, events: Vec<TaskEvent>) -> Result<Vec<Disposition>, IngestError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let n = events.len();
        if n > self.capacity_events {
            return Err(IngestError::BatchTooLarge {
                events: n,
                capacity: self.capacity_events,
            });
        }
        let permits = u32::try_from(n).unwrap_or(u32::MAX);
        let permit = Arc::clone(&self.capacity)
            .try_acquire_many_owned(permits)
            .map_err(|e| match e {
                tokio::sync::TryAcquireError::Closed => IngestError::ShuttingDown,
                tokio::sync::TryAcquireError::NoPermits => IngestError::QueueFull {
                    queued: self.capacity_events - self.capacity.available_permits(),
                    capacity: self.capacity_events,
                },
            })?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                events,
                reply,
                _permit: permit,
            })
            .map_err(|_| IngestError::ShuttingDown)?;
        rx.await.unwrap_or(Err(IngestError::ShuttingDown))
    }
}

/// The committer task; see the module docs.
#[derive(Debug)]
pub struct Committer<S> {
    rx: mpsc::UnboundedReceiver<Job>,
    store: S,
    max_round_events: usize,
    commit_timeout: Duration,
    /// Rounds in flight at once.
    concurrency: usize,
}

impl<S: Store> Committer<S> {
    /// A committer and the handle that feeds it. `capacity_events` bounds the events
    /// queued or in flight; `max_round_events` bounds one store round.
    pub fn new(
        store: S,
        capacity_events: usize,
        max_round_events: usize,
        commit_timeout: Duration,
        concurrency: usize,
    ) -> (Self, IngestHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = IngestHandle {
            tx,
            capacity: Arc::new(Semaphore::new(capacity_events)),
            capacity_events,
        };
        (
            Committer {
                rx,
                store,
                max_round_events,
                commit_timeout,
                concurrency: concurrency.max(1),
            },
            handle,
        )
    }

    /// Runs rounds until `stop` is cancelled and then until every queued batch is
    /// committed (the last commit always finishes).
    ///
    /// Up to `concurrency` rounds are in flight at once, so the next round is planned
    /// while the store executes the last one. Rounds may touch the same instances: the
    /// store's check-and-set makes the later one re-read and re-plan, never double count.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut closed = false;
        loop {
            tokio::select! {
                biased;
                Some(()) = futures::StreamExt::next(&mut in_flight), if !in_flight.is_empty() => {}
                () = stop.cancelled(), if !closed => {
                    // Take nothing new; what is queued is still committed.
                    self.rx.close();
                    closed = true;
                }
                job = self.rx.recv(), if in_flight.len() < self.concurrency => {
                    let Some(first) = job else {
                        // Closed and drained: finish the rounds in flight, then stop.
                        while futures::StreamExt::next(&mut in_flight).await.is_some() {}
                        break;
                    };
                    let mut jobs = vec![first];
                    let mut events = jobs[0].events.len();
                    while events < self.max_round_events {
                        match self.rx.try_recv() {
                            Ok(job) => {
                                events += job.events.len();
                                jobs.push(job);
                            }
                            Err(_) => break,
                        }
                    }
                    // A batch whose RPC already answered (it gave up waiting at its
                    // deadline) is not committed: nobody waits for it, and the client
                    // retries it. Its queue permits return at once.
                    jobs.retain(|job| !job.reply.is_closed());
                    if !jobs.is_empty() {
                        in_flight.push(round(self.store.clone(), self.commit_timeout, jobs));
                    }
                }
            }
        }
        tracing::info!("committer stopped: every queued batch is committed");
    }
}

/// Commits one round and answers every job in it.
async fn round<S: Store>(store: S, commit_timeout: Duration, mut jobs: Vec<Job>) {
    let sizes: Vec<usize> = jobs.iter().map(|j| j.events.len()).collect();
    // Sized once: growing it by doubling reallocated up to megabytes per round, each time
    // on fresh pages the kernel had to zero (a tenth of the service's CPU under a stream).
    let mut all: Vec<TaskEvent> = Vec::with_capacity(sizes.iter().sum());
    for job in &mut jobs {
        all.append(&mut job.events);
    }
    let result = match tokio::time::timeout(commit_timeout, store.apply(&all, now_micros())).await {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, events = all.len(), "commit round failed");
            Err(IngestError::Store(e))
        }
        Err(_) => {
            tracing::warn!(timeout = ?commit_timeout, events = all.len(), "commit round timed out");
            Err(IngestError::Timeout(commit_timeout))
        }
    };
    match result {
        Ok(dispositions) => {
            let mut rest = dispositions.into_iter();
            for (job, size) in jobs.into_iter().zip(sizes) {
                let mine: Vec<Disposition> = rest.by_ref().take(size).collect();
                let _ = job.reply.send(Ok(mine));
            }
        }
        Err(e) => {
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
}
