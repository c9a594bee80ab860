//! Where folds compute: threads of their own, at the lowest CPU priority.
//!
//! Summing a journal's entries and adding the sums into the buckets take milliseconds of
//! CPU per fold (tens of milliseconds for a busy task's 8,192 entries on a loaded
//! machine). On a runtime thread that held up every commit and RPC queued behind it;
//! on tokio's blocking pool it ran at the same priority as the request path, and on two
//! cores shared with Redis two folds at once took the CPU that Redis and the runtime
//! needed: unary calls that overlapped a burst of folds waited 4-20 ms for their commit
//! script's reply (measured per commit, stop 25). Folding is background work (a query
//! reads the journal too, so no one waits for a fold), so here it gets the CPU the
//! request path leaves: on Linux these threads' nice value is [`NICE`]. When folding falls
//! behind, commit rounds wait for it before they answer (see `Pending::behind`), so ingest
//! still slows down to what can be folded.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError, mpsc};

/// The fold threads' nice value (Linux: 19 is the lowest priority; the runtime's threads
/// stay at the process' own).
pub(crate) const NICE: i32 = 19;

type Job = Box<dyn FnOnce() + Send>;

/// A handle on the fold threads. Cheap to clone; the threads end when the last handle is
/// dropped.
#[derive(Clone, Debug)]
pub(crate) struct FoldThreads {
    jobs: mpsc::Sender<Job>,
}

/// Why a computation on a fold thread gave no result.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FoldThreadError {
    #[error("the fold threads are gone")]
    Gone,
    #[error("a fold's computation panicked: {0}")]
    Panicked(String),
}

impl FoldThreads {
    /// Starts `threads` threads (at least one): as many as folds may compute at once (the
    /// flusher's and a commit round's that helps it), so that two folds do not queue for
    /// one thread's CPU when the machine has cores to spare.
    ///
    /// # Errors
    /// When the OS cannot start a thread.
    pub(crate) fn start(threads: usize) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads.max(1) {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("tasktime-fold-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        match job {
                            Ok(job) => job(),
                            Err(mpsc::RecvError) => break,
                        }
                    }
                })?;
        }
        Ok(FoldThreads { jobs })
    }

    /// Runs `work` on a fold thread and waits for its result. A panic in `work` is
    /// returned as an error; the thread goes on with the next job.
    ///
    /// # Errors
    /// [`FoldThreadError`].
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, FoldThreadError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let out = std::panic::catch_unwind(AssertUnwindSafe(work)).map_err(|panic| {
                panic
                    .downcast_ref::<&str>()
                    .map(ToString::to_string)
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".to_owned())
            });
            // The caller may have stopped waiting (its RPC was cancelled): nothing to do.
            let _ = done.send(out);
        });
        self.jobs.send(job).map_err(|_| FoldThreadError::Gone)?;
        result
            .await
            .map_err(|_| FoldThreadError::Gone)?
            .map_err(FoldThreadError::Panicked)
    }
}

/// Lowers the calling thread's CPU priority to [`NICE`] (on Linux a thread's nice value is
/// its own). Where that is refused, folds run at normal priority: slower answers under
/// load, nothing lost.
#[cfg(target_os = "linux")]
fn lower_priority() {
    let thread = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(thread), NICE) {
        tracing::warn!(error = %e, nice = NICE, "cannot lower a fold thread's CPU priority; folds compete with requests for the CPU");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_work_and_survives_a_panic() {
        let thread = FoldThreads::start(1).expect("a thread starts");
        assert_eq!(thread.run(|| 6 * 7).await.expect("runs"), 42);
        let err = thread
            .run(|| -> u32 { panic!("bad bucket") })
            .await
            .expect_err("a panic is an error");
        assert!(
            matches!(&err, FoldThreadError::Panicked(m) if m == "bad bucket"),
            "{err}"
        );
        // The thread goes on.
        assert_eq!(thread.run(|| "after").await.expect("runs after a panic"), "after");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn every_thread_runs_at_the_lowest_priority() {
        let threads = FoldThreads::start(2).expect("threads start");
        // Both threads wait at a barrier, so the two jobs run on different threads.
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let job = |barrier: Arc<std::sync::Barrier>| {
            move || {
                barrier.wait();
                let tid = rustix::thread::gettid();
                (
                    tid,
                    rustix::process::getpriority_process(Some(tid)).expect("getpriority"),
                )
            }
        };
        let (a, b) = tokio::join!(
            threads.run(job(Arc::clone(&barrier))),
            threads.run(job(Arc::clone(&barrier)))
        );
        let (a, b) = (a.expect("runs"), b.expect("runs"));
        assert_ne!(a.0, b.0, "two threads ran them");
        assert_eq!((a.1, b.1), (NICE, NICE));
    }
}
