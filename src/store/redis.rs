//! The Redis store: durable, shared by every replica.
//!
//! One commit round per task group: read the instance records the events refer to
//! (`HMGET` of the record hashes), plan the round in Rust ([`crate::ingest::plan`]), then run `commit.lua`, which
//! re-checks those records and applies everything or nothing. A concurrent replica, or a
//! command redis-rs resent after a lost reply, makes the check fail; the round is then
//! re-read and re-planned, and the events it already applied show up as duplicates.
//! Every key of a group shares one hash tag, so the same code fits Redis Cluster.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands as _, RedisError};

use super::background::FoldThreads;
use super::bucket;
use super::journal::{self, BucketSums, Sums};
use super::sealed;
use super::{Fields, Store, StoreError, group_by_task, keys, parse_series};
use crate::domain::{Labels, MICROS_PER_SEC, Micros, SeriesId, TaskEvent, TaskName, Tenant, now_micros};
use crate::ingest::plan::{self, Disposition, InstanceState, Plan, Semantics};

/// How often a round is re-planned after other replicas changed its instances.
const MAX_ATTEMPTS: usize = 8;

/// Timeouts of the Redis connection; keep them below the gRPC deadlines clients use.
#[derive(Debug, Clone, Copy)]
pub struct RedisTimeouts {
    pub connect: Duration,
    pub response: Duration,
}

impl Default for RedisTimeouts {
    fn default() -> Self {
        RedisTimeouts {
            connect: Duration::from_secs(1),
            response: Duration::from_secs(2),
        }
    }
}

/// A cheap-to-clone handle on Redis: three shared, multiplexed, self-reconnecting
/// connections (redis-rs' `ConnectionManager`): one for commits and reads, one for folds,
/// one for building the filters of sealed generations.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    /// A connection of its own for folding journals: a fold moves whole buckets (an
    /// `MGET` reply and a script of up to megabytes), and on the commits' connection every
    /// round queued behind it would wait for those bytes and that script.
    fold_conn: ConnectionManager,
    /// A connection of its own for building the filters of sealed generations: an
    /// `HSCAN` queued behind a fold's megabytes waits for them, and a build is a hundred
    /// `HSCAN`s in a row.
    scan_conn: ConnectionManager,
    /// Where folds compute, at the lowest CPU priority (see [`super::background`]).
    fold_threads: FoldThreads,
    sem: Arc<Semantics>,
    script: Arc<redis::Script>,
    generations: Generations,
    flush_script: Arc<redis::Script>,
    /// How long a journal outlives its last fold, ms: the longest bucket retention.
    journal_ttl_ms: i64,
    /// Makes every journal entry's token unique: this process' random id and a counter.
    tokens: Arc<(u64, AtomicU64)>,
    /// Whether a ping loaded both scripts into Redis yet. Until then every concurrent
    /// first `EVALSHA` gets NOSCRIPT and loads the script itself (about 180 loads in the
    /// first rounds of a stream); a Redis that restarts later without them is handled
    /// the same way, by the `EVALSHA` that finds them missing.
    scripts_loaded: Arc<AtomicBool>,
    /// Task prefixes whose journal may hold entries to fold. Short critical sections
    /// only, never held across `.await` (as for `indexed_tasks`).
    dirty: Arc<Mutex<HashMap<String, Pending>>>,
    /// Task prefixes a commit round of this process is folding right now.
    helping: Arc<Mutex<HashSet<String>>>,
    /// Bytes of buckets the last fold of each task's journal wrote (see `Pending::due`).
    fold_writes: Arc<Mutex<HashMap<String, usize>>>,
    /// Per bucket a fold wrote lately: the lengths of its base and its tail then (see
    /// [`tail_is_long`]).
    bucket_sizes: Arc<Mutex<HashMap<String, (usize, usize)>>>,
    /// Tasks already in the task index; saves an `SADD` per round. Short critical
    /// sections only, never held across `.await`.
    indexed_tasks: Arc<Mutex<Remembered<(Tenant, TaskName)>>>,
    /// Records of instances this process started lately. Short critical sections only.
    recent_starts: Arc<Mutex<RecentStarts>>,
    /// Filters of the sealed record generations, built in the background (see
    /// `sealed.rs`).
    filters: Arc<sealed::Filters>,
    /// Filters built at once, at most: after a start every task's sealed generations
    /// need one, and each is an `HSCAN` of up to millions of fields.
    filter_builds: Arc<tokio::sync::Semaphore>,
}

/// The records of the instances this process started lately, so that planning their
/// finish needs no read: the commit script checks every record a plan assumed anyway, so
/// a record that changed since (another replica finished the instance, it expired) only
/// makes the round re-read and re-plan. A rejection writes nothing for the script to
/// check, so one planned from a remembered record is planned again from Redis. Keyed by
/// a hash of task and instance id (a collision is just such a stale record). Bounded:
/// two maps of at most [`RecentStarts::MAX`] entries; when the newer fills up, the older
/// is dropped. An entry is the open record itself (start and series, re-encoded when
/// used): no allocation per start, and dropping a full map is one free, not 100,000.
#[derive(Debug, Default)]
struct RecentStarts {
    current: HashMap<u64, (Micros, SeriesId), rustc_hash::FxBuildHasher>,
    previous: HashMap<u64, (Micros, SeriesId), rustc_hash::FxBuildHasher>,
}

impl RecentStarts {
    /// About 3 MB per map; a finish usually comes seconds to minutes after its start.
    const MAX: usize = 100_000;

    fn key(task_seed: u64, id: &str) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(id.as_bytes(), task_seed)
    }

    /// The open record remembered under `key`, forgotten as it is handed out.
    fn take(&mut self, key: u64) -> Option<InstanceState> {
        let (start, series) = self.current.remove(&key).or_else(|| self.previous.remove(&key))?;
        Some(InstanceState::Open { start, series })
    }

    fn insert(&mut self, key: u64, start: Micros, series: SeriesId) {
        if self.current.len() >= Self::MAX {
            // The dropped map's table becomes the new current one: it is cleared in
            // place, not grown again from empty by rehashing onto fresh pages.
            std::mem::swap(&mut self.previous, &mut self.current);
            self.current.clear();
        }
        self.current.insert(key, (start, series));
    }
}

/// A journal this process appended to (or found) and has not folded yet.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// When this process first appended to it since it was last folded.
    since: Option<Instant>,
    /// When this process last appended to it.
    last: Option<Instant>,
    /// Its length after that append.
    len: i64,
    /// Bytes this process appended to it since `since`.
    bytes: usize,
}

impl Pending {
    /// A journal found in Redis at start: fold it at once.
    const LEFT_BEHIND: Pending = Pending {
        since: None,
        last: None,
        len: 0,
        bytes: 0,
    };

    fn new(now: Instant, len: i64, bytes: usize) -> Self {
        Pending {
            since: Some(now),
            last: Some(now),
            len,
            bytes,
        }
    }

    fn appended(&mut self, now: Instant, len: i64, bytes: usize) {
        self.last = Some(now);
        self.len = len;
        self.bytes += bytes;
    }

    /// Whether a fold is worth its cost now. A fold rewrites every bucket it touches
    /// whole, so it waits for a batch of entries to spread that over: it folds once the
    /// journal is a fold's worth ([`FOLD_MAX_ENTRIES`]); once its first entry has waited
    /// [`FOLD_DELAY`], if [`FOLD_MIN_BYTES`] were appended by then, and as many as the
    /// task's last fold wrote (`last_write`, bytes of buckets), else once it has waited
    /// [`FOLD_MAX_DELAY`]; or as soon as nothing was appended for [`FOLD_QUIET`] (the load
    /// stopped: nothing more to batch with).
    ///
    /// `last_write` keeps a fold's cost in step with what it adds: after a stream load a
    /// busy task's buckets hold hundreds of bins, and its folds wrote 0.47-0.73 MB each
    /// while unary calls appended a few hundred KB in the delay; a stream appends more
    /// than its folds write, so its journal folds as before.
    fn due(&self, now: Instant, last_write: usize) -> bool {
        let waited = |at: Option<Instant>, d: Duration| at.is_none_or(|t| now.duration_since(t) >= d);
        self.len >= FOLD_MAX_ENTRIES as i64
            || (waited(self.since, FOLD_DELAY) && self.bytes >= FOLD_MIN_BYTES.max(last_write))
            || waited(self.since, FOLD_MAX_DELAY)
            || waited(self.last, FOLD_QUIET)
    }

    /// Whether the flusher has fallen behind on this journal: longer than
    /// [`FOLD_BACKLOG`] entries, or [`FOLD_BACKLOG_BYTES`] appended by this process and
    /// not folded.
    fn behind(&self) -> bool {
        self.len > FOLD_BACKLOG || self.bytes > FOLD_BACKLOG_BYTES
    }
}

/// What one fold of a journal's head did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Folded {
    /// Everything the journal held when read.
    All,
    /// As many entries as one fold takes; more may be left.
    More,
    /// Nothing: another flusher folded those entries first.
    Raced,
}

/// What was written to an index lately, forgotten every [`Remembered::FOR`]: if Redis
/// loses its data (a flush, a restart without persistence, a failover), the index is
/// written again within that time. (The series index is not cached: a filtered query
/// would miss a series until then; the commit script checks it, cheaply.)
#[derive(Debug)]
struct Remembered<T> {
    items: HashSet<T>,
    since: std::time::Instant,
}

impl<T: std::hash::Hash + Eq> Remembered<T> {
    const FOR: Duration = Duration::from_secs(60);

    fn new() -> Self {
        Remembered {
            items: HashSet::new(),
            since: std::time::Instant::now(),
        }
    }

    fn contains(&mut self, item: &T) -> bool {
        if self.since.elapsed() > Self::FOR {
            self.items.clear();
            self.since = std::time::Instant::now();
        }
        self.items.contains(item)
    }

    fn insert(&mut self, item: T) {
        self.items.insert(item);
    }
}

/// How often the flusher looks for journals due to be folded ([`Pending::due`]).
pub const FOLD_EVERY: Duration = Duration::from_millis(1000);
/// A journal nothing was appended to for this long is folded at the next pass.
const FOLD_QUIET: Duration = Duration::from_millis(500);
/// How long a journal entry waits to be folded while appends keep coming, when the
/// journal has grown by [`FOLD_MIN_BYTES`] by then (see [`Pending::due`]). Queries read
/// the journal too, so this delays nothing anyone sees.
const FOLD_DELAY: Duration = Duration::from_secs(5);
/// What a journal must have grown by for a fold after [`FOLD_DELAY`]; a journal that
/// grows slower waits up to [`FOLD_MAX_DELAY`]. A fold costs about the same whatever it
/// adds (it rewrites whole the buckets it touches: an hour bucket of a busy series is
/// ~16 KB), so folding a slow journal every 5 s cost the most for the least. Under unary
/// calls at 10,000/s after a stream load the 50 bench tasks were folded 10 times a
/// second (120-122 folds in 12 s); with this rule and [`FOLD_MAX_ENTRIES`] at 8,192, 13-16.
/// That open loop's p99 was 4.2-4.9 ms with no folding at all against 13.8-42 ms with it
/// (two runs each); fewer folds gave 6.3-10.5 ms against 18.7-25.2 ms in one set of runs
/// and moved less than the machine's noise in another. Streams append this much within the
/// delay (a busy task ~600 KB/s, the least busy ~45 KB/s), so they fold as before.
const FOLD_MIN_BYTES: usize = 256 * 1024;
/// Longest a journal entry waits to be folded while appends keep coming.
const FOLD_MAX_DELAY: Duration = Duration::from_secs(30);
/// Most journal entries read at once, and the length at which a journal is folded. A fold
/// rewrites every bucket it touches whole, so few large folds beat many small ones: under
/// unary calls (an entry of one or two events per round) 512 meant a busy task's hour and
/// day buckets were rewritten twice a second (202 folds in 10 s at 10,000 calls/s after a
/// stream load; 72 at 2,048, and p99 32 and 23 ms against 14 and 19 ms). At 2,048 the
/// busiest tasks still folded every second or two (see [`FOLD_MIN_BYTES`]). A stream's
/// journal, whose entries are larger, reaches [`FOLD_MIN_BYTES`] long before this.
const FOLD_MAX_ENTRIES: isize = 8192;
/// Distinct (series, minute, field) one fold sums, at most (unless one entry alone has
/// more), before it writes them: this bounds the buckets one fold writes (its script
/// renames each into place, a few microseconds of Redis per bucket). Each rolls up into
/// as many as six buckets.
///
/// A busy task's few seconds of journal hold thousands of distinct fields (a dozen
/// series, each with a couple of hundred HDR bins in a minute), so at 5,000 its journal
/// took many folds, and each rewrote the same minute, hour and day buckets whole: in a
/// 4 s completed stream the hottest task was folded 26 times and bucket writes were 37 %
/// of the AOF's bytes. At 20,000 each task was folded once (bucket writes 13 %, the AOF
/// 77 bytes per event instead of 107); the service's CPU per event fell by 12 % (2.70
/// against 3.06 µs, five 8 s runs each, side by side), and the unary open loop's p99
/// did not grow.
const FOLD_MAX_FIELDS: usize = 20_000;
/// How long a fold's staged bucket value lives if its script never runs (the fold
/// stopped between staging and committing): far longer than a fold takes.
const STAGED_TTL_MS: u64 = 300_000;
/// Staged bucket values sent in one pipeline.
const STAGE_CHUNK: usize = 256;
/// Journals folded at once by the flusher: one. A fold reads up to megabytes of journal
/// and rewrites tens of buckets, and each pass starts the folds that are due at once, so
/// two at a time made bursts that held up the commits beside them: unary calls at 10,000/s
/// had p99 2.29, 2.33 and 3.15 ms (p999 5.1-9.5 ms) with one at a time against 2.92, 3.01
/// and 3.62 ms (p999 15.0-19.8 ms) with two, alternating, on a fresh Redis; 8 s streams
/// were as fast (451,439-455,168 paired and 508,426-519,086 completed events/s against
/// 450,497-470,638 and 517,015-520,175) and their journals took 1.4-1.6 s to fold after
/// the load instead of 1.0-1.4 s.
const FOLD_CONCURRENCY: usize = 1;
/// Threads that compute folds: the flusher's one fold, and a commit round's that helps
/// when folding has fallen behind (`Pending::behind`), so neither waits for the other
/// while a core is free.
const FOLD_THREADS: usize = 2;
/// Tasks whose last fold's size is remembered (see [`Pending::due`]), at most.
const MAX_REMEMBERED_FOLD_WRITES: usize = 100_000;
/// Buckets whose base and tail lengths are remembered (see [`tail_is_long`]), at most:
/// about 100 bytes each.
const MAX_REMEMBERED_BUCKET_SIZES: usize = 200_000;
/// A tail shorter than this is never long (see [`tail_is_long`]): a small bucket's sums
/// are appended until then.
const TAIL_MIN_BYTES: usize = 4096;

/// How a fold writes one bucket (see `lua/flush.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// Read base and tail, add the sums, write one sorted base again.
    Whole,
    /// Append the sums to the tail, unread.
    Append,
    /// The same, and have the script say how long the base is: this process does not
    /// know yet.
    AppendAndMeasure,
}

/// Whether a fold writes a bucket whole (reading its base and tail, adding, and writing
/// one sorted base again) instead of appending to its tail: once the tail is half as long
/// as the base, and [`TAIL_MIN_BYTES`]. So an append costs what the fold adds, a bucket
/// is written whole once per half its size appended instead of at every fold, and a read
/// parses at most half as much again as the bucket holds (or 4 KiB). (A bucket whose period
/// is over is written whole: see [`RedisStore::fold`].)
fn tail_is_long(base: usize, tail: usize) -> bool {
    tail >= (base / 2).max(TAIL_MIN_BYTES)
}

/// Folds of one journal in one pass of the flusher, at most [`FOLD_MAX_ENTRIES`] each,
/// before it goes on to the others.
const FOLDS_PER_PASS: usize = 16;
/// Journal entries beyond which a commit round folds before it answers (one round at a
/// time per task in this process): a safety valve for when the flusher falls behind.
const FOLD_BACKLOG: i64 = 2 * FOLD_MAX_ENTRIES as i64;
/// Bytes this process appended to a journal and has not folded beyond which a commit
/// round folds before it answers, as for [`FOLD_BACKLOG`]: a stream's entries are large
/// (a busy task's journal grows by ~600 KB/s), so they reach this first.
const FOLD_BACKLOG_BYTES: usize = 16 * 1024 * 1024;
/// How often a read retries when flushers keep folding the journal while it reads.
const READ_ATTEMPTS: usize = 64;
/// Journal entries a read merges itself; a longer journal it folds first.
const READ_FOLDS_AFTER: i64 = 64;

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

fn store_error(e: RedisError) -> StoreError {
    if e.code() == Some("OOM") {
        return StoreError::Full(format!(
            "Redis is at maxmemory and refuses writes ({}); free memory or raise maxmemory",
            e.detail().unwrap_or("OOM")
        ));
    }
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return StoreError::Unavailable(format!("Redis: {e}"));
    }
    match e.code() {
        Some("LOADING" | "BUSY" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "READONLY") => {
            StoreError::Unavailable(format!("Redis: {e}"))
        }
        _ => StoreError::Internal(format!("Redis: {e}")),
    }
}

/// Seconds since the epoch, by this replica's clock (what Redis expires keys by).
fn unix_now_secs() -> i64 {
    now_micros().div_euclid(MICROS_PER_SEC)
}

/// How far replicas' clocks may disagree (NTP keeps them within milliseconds): near a
/// generation's end a round also reads the next generation.
pub(crate) const MAX_CLOCK_SKEW_S: i64 = 300;

/// Instance records are kept in record hashes per generation, a fixed window of time
/// (see `lua/commit.lua`): a hash expires `keep_s` after its window ends, so every record
/// lives at least as long as the longest record TTL, and at most one window longer.
/// Replicas' clocks may differ by at most [`MAX_CLOCK_SKEW_S`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Generations {
    /// Length of one generation, s.
    length_s: i64,
    /// How long a generation's hashes outlive its end, s: the longest record TTL.
    keep_s: i64,
}

/// The generations one round reads, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Live {
    gens: Vec<i64>,
    /// Position of the current generation in `gens`.
    current: usize,
    /// How many of `gens`, from the newest, are not sealed ([`Generations::sealed`]).
    open: usize,
}

impl Generations {
    /// Half the longest record TTL (at least a minute): a round reads four generations,
    /// and a record outlives its TTL by half of it at most.
    fn new(sem: &Semantics) -> Self {
        let keep_s = sem.open_ttl().max(sem.dedupe_horizon).div_euclid(1_000_000).max(1);
        Generations {
            length_s: (keep_s / 2).max(60),
            keep_s,
        }
    }

    /// The generations that can hold a live record at `now_s`, newest first: in the last
    /// [`MAX_CLOCK_SKEW_S`] of a generation the next one too (a replica whose clock is
    /// ahead may have started writing it), the current, and each older one whose hashes
    /// have not expired.
    fn live(&self, now_s: i64) -> Live {
        let current = now_s.div_euclid(self.length_s);
        let oldest = (now_s - self.keep_s).div_euclid(self.length_s);
        let ahead = (current + 1) * self.length_s - now_s <= MAX_CLOCK_SKEW_S;
        let newest = current + i64::from(ahead);
        let gens: Vec<i64> = (oldest..=newest).rev().collect();
        Live {
            open: gens.iter().take_while(|g| !self.sealed(**g, now_s)).count(),
            gens,
            current: usize::from(ahead),
        }
    }

    /// Whether no replica can write a new record to `generation` any more at `now_s`:
    /// [`MAX_CLOCK_SKEW_S`] after its end, the slowest clock has left it too. From then
    /// on it only loses records (see `sealed.rs`).
    fn sealed(&self, generation: i64, now_s: i64) -> bool {
        now_s >= (generation + 1) * self.length_s + MAX_CLOCK_SKEW_S
    }

    fn expire_at_ms(&self, generation: i64) -> i64 {
        ((generation + 1) * self.length_s + self.keep_s) * 1000
    }
}

impl RedisStore {
    /// Opens the connection managers on `url` (`redis://host:port/db`). They connect lazily:
    /// the service can start while Redis is down, and reports NOT_SERVING until it is up.
    ///
    /// # Errors
    /// When the URL is not a Redis URL.
    pub fn open(url: &str, timeouts: RedisTimeouts, sem: Arc<Semantics>) -> Result<Self, StoreError> {
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| StoreError::Internal(format!("the Redis URL `{url}` is not valid: {e}")))?
            // Without TCP_NODELAY a command written while the one before is unacknowledged
            // waits for that acknowledgement (Nagle's algorithm): commit rounds and folds
            // share the connections, many in flight at once.
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info)
            .map_err(|e| StoreError::Internal(format!("the Redis URL `{url}` is not valid: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeouts.connect))
            .set_response_timeout(Some(timeouts.response))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connect = || {
            ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                .map_err(|e| StoreError::Internal(format!("cannot set up Redis connection to `{url}`: {e}")))
        };
        let conn = connect()?;
        let fold_conn = connect()?;
        let scan_conn = connect()?;
        let fold_threads = FoldThreads::start(FOLD_THREADS)
            .map_err(|e| StoreError::Internal(format!("cannot start the threads that fold journals: {e}")))?;
        let journal_ttl_ms = crate::buckets::Resolution::ALL
            .iter()
            .map(|res| (res.secs() + sem.retention.of(*res)) * 1000)
            .max()
            .unwrap_or(0);
        Ok(RedisStore {
            conn,
            fold_conn,
            scan_conn,
            fold_threads,
            generations: Generations::new(&sem),
            sem,
            script: Arc::new(redis::Script::new(include_str!("lua/commit.lua"))),
            flush_script: Arc::new(redis::Script::new(include_str!("lua/flush.lua"))),
            journal_ttl_ms,
            tokens: Arc::new((rand::random(), AtomicU64::new(0))),
            scripts_loaded: Arc::new(AtomicBool::new(false)),
            dirty: Arc::new(Mutex::new(HashMap::new())),
            helping: Arc::new(Mutex::new(HashSet::new())),
            fold_writes: Arc::new(Mutex::new(HashMap::new())),
            bucket_sizes: Arc::new(Mutex::new(HashMap::new())),
            indexed_tasks: Arc::new(Mutex::new(Remembered::new())),
            recent_starts: Arc::new(Mutex::new(RecentStarts::default())),
            filters: Arc::new(sealed::Filters::default()),
            filter_builds: Arc::new(tokio::sync::Semaphore::new(sealed::BUILDS_AT_ONCE)),
        })
    }

    /// Runs a fold's computation on a fold thread.
    async fn compute<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, StoreError> {
        self.fold_threads
            .run(work)
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))
    }

    fn next_token(&self) -> String {
        let n = self.tokens.1.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{n:x}", self.tokens.0)
    }

    fn lock_bucket_sizes(&self) -> std::sync::MutexGuard<'_, HashMap<String, (usize, usize)>> {
        self.bucket_sizes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers the lengths of base and tail of each bucket a fold wrote, from its
    /// script's reply (`lengths[0]` is its 1; per bucket the base's length, -1 when the
    /// script did not look, and the tail's), for the next fold's choice to append or to
    /// write whole.
    fn remember_bucket_sizes<T>(
        &self,
        prefix: &str,
        now: i64,
        buckets: &[(String, T, String, Write)],
        lengths: &[redis::Value],
    ) {
        let length = |i: usize| match lengths.get(i) {
            Some(redis::Value::Int(n)) => usize::try_from(*n).ok(),
            _ => None,
        };
        let mut sizes = self.lock_bucket_sizes();
        for (j, (key, _, value, write)) in buckets.iter().enumerate() {
            let Some(tail) = length(2 * j + 2) else {
                continue;
            };
            let Some(suffix) = key.strip_prefix(prefix).and_then(|s| s.strip_prefix(':')) else {
                continue;
            };
            if keys::bucket_end_of_suffix(suffix).is_some_and(|end| end <= now) {
                // Over: written whole from now on.
                sizes.remove(key);
                continue;
            }
            let base = match (write, length(2 * j + 1)) {
                (Write::Whole, _) => value.len(),
                (_, Some(base)) => base,
                (_, None) => match sizes.get(key) {
                    Some(&(base, _)) => base,
                    None => continue,
                },
            };
            if sizes.len() >= MAX_REMEMBERED_BUCKET_SIZES && !sizes.contains_key(key) {
                // Only a hint: a bucket whose sizes are forgotten is measured again by
                // its next fold's script.
                sizes.clear();
            }
            sizes.insert(key.clone(), (base, tail));
        }
    }

    fn lock_fold_writes(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.fold_writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_helping(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.helping.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_dirty(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Folds journals into the buckets every [`FOLD_EVERY`] until `stop`, then
    /// once more. Starts with the journals any replica left behind.
    pub async fn run_flusher(self, stop: CancellationToken) {
        match self.journals_in_redis().await {
            Ok(found) => {
                if !found.is_empty() {
                    tracing::info!(journals = found.len(), "found journals to fold");
                }
                self.lock_dirty()
                    .extend(found.into_iter().map(|prefix| (prefix, Pending::LEFT_BEHIND)));
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the journals left in Redis; folding this replica's only"),
        }
        let mut failing = false;
        // A pass every FOLD_EVERY, start to start: under heavy load a pass takes a good
        // part of the interval, and a pause after it would leave the journals longer.
        let mut tick = tokio::time::interval(FOLD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is now
        loop {
            let stopping = tokio::select! {
                () = stop.cancelled() => true,
                _ = tick.tick() => false,
            };
            // Said once when folding starts failing and once when it recovers, not on
            // every pass (Redis at maxmemory would make it every second).
            let outcome = self.fold_dirty(stopping).await;
            if stopping {
                if let Some((_, error)) = outcome {
                    tracing::warn!(%error, "stopping before every journal is folded; they stay in Redis, and the next replica to start folds them");
                }
                return;
            }
            match outcome {
                Some((failed, error)) if !failing => {
                    failing = true;
                    let waiting = self.lock_dirty().len();
                    tracing::warn!(failed, waiting, %error, "cannot fold journals into the buckets; retrying every {FOLD_EVERY:?} (queries still see every event)");
                }
                None if failing => {
                    failing = false;
                    tracing::info!("folding journals again");
                }
                _ => {}
            }
        }
    }

    /// One pass of the flusher over the journals marked dirty that are due (all of them
    /// when `all`: the last pass before the process stops); how many failed, and the
    /// first error. A pass ends at the first fold Redis did not answer: each further one
    /// would wait for the connection's retries in turn (about half a second each: with 50
    /// journals due, a pass took 13 s, and a stop behind it its whole grace period). The
    /// journals it did not fold stay marked for the next pass.
    async fn fold_dirty(&self, all: bool) -> Option<(usize, StoreError)> {
        let now = Instant::now();
        let due: Vec<(String, Pending)> = {
            let mut dirty = self.lock_dirty();
            let writes = self.lock_fold_writes();
            let due: Vec<String> = dirty
                .iter()
                .filter(|(prefix, pending)| all || pending.due(now, writes.get(*prefix).copied().unwrap_or(0)))
                .map(|(prefix, _)| prefix.clone())
                .collect();
            due.into_iter()
                .filter_map(|prefix| dirty.remove_entry(&prefix))
                .collect()
        };
        // What a pass cut short must not forget (the stream below owns `due`).
        let mut unfinished: HashMap<String, Pending> = due.iter().cloned().collect();
        let mut results = futures::stream::iter(due)
            .map(|(prefix, pending)| async move {
                let mut outcome = self.fold_head(&prefix).await;
                for _ in 1..FOLDS_PER_PASS {
                    if !matches!(outcome, Ok(Folded::More)) {
                        break;
                    }
                    outcome = self.fold_head(&prefix).await;
                }
                (prefix, pending, outcome)
            })
            .buffer_unordered(FOLD_CONCURRENCY);
        let mut failed: Option<(usize, StoreError)> = None;
        while let Some((prefix, pending, outcome)) = results.next().await {
            let mut unreachable = false;
            let again = match outcome {
                Ok(Folded::All) => false,
                Ok(Folded::More | Folded::Raced) => true,
                Err(e) => {
                    tracing::debug!(task = %prefix, error = %e, "cannot fold the journal yet");
                    unreachable = matches!(e, StoreError::Unavailable(_));
                    failed.get_or_insert((0, e)).0 += 1;
                    true
                }
            };
            unfinished.remove(&prefix);
            if again {
                // Still due; a round that appended meanwhile has put its own times in.
                self.lock_dirty().entry(prefix).or_insert(pending);
            }
            if unreachable {
                // Redis did not answer: the journals stay in Redis (at the last pass before
                // the process stops, the next replica to start folds them).
                break;
            }
        }
        drop(results);
        if !unfinished.is_empty() {
            let mut dirty = self.lock_dirty();
            for (prefix, pending) in unfinished {
                dirty.entry(prefix).or_insert(pending);
            }
        }
        failed
    }

    /// Folds the oldest entries of one journal (at most [`FOLD_MAX_ENTRIES`]).
    async fn fold_head(&self, prefix: &str) -> Result<Folded, StoreError> {
        let mut conn = self.fold_conn.clone();
        let entries: Vec<String> = conn
            .lrange(keys::journal(prefix), 0, FOLD_MAX_ENTRIES - 1)
            .await
            .map_err(store_error)?;
        if entries.is_empty() {
            return Ok(Folded::All);
        }
        let full = entries.len() == usize::try_from(FOLD_MAX_ENTRIES).unwrap_or(usize::MAX);
        Ok(match self.fold(&mut conn, prefix, entries).await? {
            false => Folded::Raced,
            true if full => Folded::More,
            true => Folded::All,
        })
    }

    /// Folds `entries`, the journal's first ones as read, into the buckets, in as
    /// many scripts as [`FOLD_MAX_FIELDS`] asks. `Ok(false)` when the journal no longer
    /// starts with them (another flusher folded them).
    ///
    /// Summing the entries and adding the sums into the stored buckets take milliseconds
    /// of CPU (2,048 entries of a busy task: 1-12 ms measured under unary calls, a whole
    /// bucket rewritten per key), so both run on the fold threads, at the lowest CPU
    /// priority (see [`super::background`]).
    async fn fold(&self, conn: &mut ConnectionManager, prefix: &str, entries: Vec<String>) -> Result<bool, StoreError> {
        let retention = self.sem.retention;
        let mut entries = entries;
        let mut start = 0;
        let mut written = 0;
        while start < entries.len() {
            let (back, summed) = self
                .compute(move || {
                    let summed = Sums::of_head(&entries[start..], FOLD_MAX_FIELDS)
                        .map(|(sums, n)| (sums.buckets(&retention, unix_now_secs()), n));
                    (entries, summed)
                })
                .await?;
            entries = back;
            let (rolled, n) = summed.map_err(|e| StoreError::Internal(e.to_string()))?;
            // Per bucket: append the sums to its tail, without reading it; or, once the
            // tail is long (as the last fold found it), read base and tail, add, and
            // write the bucket whole. The script puts the values in place only if no
            // other fold ran in between (see `lua/flush.lua`).
            let now = unix_now_secs();
            let hashes: Vec<(String, BucketSums, Write)> = {
                let sizes = self.lock_bucket_sizes();
                rolled
                    .into_iter()
                    .filter(|(_, (_, fields))| !fields.is_empty())
                    .map(|(suffix, sums)| {
                        let key = format!("{prefix}:{suffix}");
                        let write = match sizes.get(&key) {
                            // A bucket that is over is written whole: it gets few more
                            // folds, if any (late events, the last seconds of its
                            // period), and a tail left on it would be kept, and read,
                            // for as long as the bucket.
                            _ if keys::bucket_end_of_suffix(&suffix).is_some_and(|end| end <= now) => Write::Whole,
                            Some(&(base, tail)) if tail_is_long(base, tail) => Write::Whole,
                            Some(_) => Write::Append,
                            None => Write::AppendAndMeasure,
                        };
                        (key, sums, write)
                    })
                    .collect()
            };
            let mut to_read = Vec::new();
            for (key, ..) in hashes.iter().filter(|(.., write)| *write == Write::Whole) {
                to_read.push(key.clone());
                to_read.push(keys::tail(key));
            }
            let stored = self.read_stored(conn, &to_read).await?;
            let read_bytes: usize = stored.iter().flatten().map(String::len).sum();
            let mut stored = stored.into_iter();
            let hashes: Vec<_> = hashes
                .into_iter()
                .map(|(key, sums, write)| {
                    let read = (write == Write::Whole).then(|| (stored.next().flatten(), stored.next().flatten()));
                    (key, sums, write, read)
                })
                .collect();
            let buckets = self
                .compute(move || {
                    hashes
                        .into_iter()
                        .map(|(key, (expire_at_ms, mut fields), write, read)| {
                            let bad = |e: bucket::BadBucket| StoreError::Internal(format!("bucket `{key}`: {e}"));
                            let value = match read {
                                // What a tail gets: the sums as lines, each after a '\n'.
                                None => format!("\n{}", bucket::add_deltas("", &fields).map_err(bad)?),
                                Some((base, tail)) => {
                                    let tail = bucket::decode(bucket::join(None, tail)).map_err(bad)?;
                                    for (name, value) in tail.iter() {
                                        *fields.entry(name.to_owned()).or_default() += value;
                                    }
                                    bucket::add_deltas(base.as_deref().unwrap_or(""), &fields).map_err(bad)?
                                }
                            };
                            Ok((key, expire_at_ms, value, write))
                        })
                        .collect::<Result<Vec<_>, StoreError>>()
                })
                .await??;
            // Whole values go to staged keys first, as plain `SET`s, which Redis runs
            // between other clients' commands; the script then only renames them (see
            // `lua/flush.lua`).
            let token = self.next_token();
            let whole: Vec<(String, &String)> = buckets
                .iter()
                .filter(|(.., write)| *write == Write::Whole)
                .map(|(key, _, value, _)| (keys::staged(key, &token), value))
                .collect();
            for chunk in whole.chunks(STAGE_CHUNK) {
                let mut pipe = redis::pipe();
                for (staged, value) in chunk {
                    pipe.cmd("SET")
                        .arg(staged)
                        .arg(value)
                        .arg("PX")
                        .arg(STAGED_TTL_MS)
                        .ignore();
                }
                pipe.query_async::<()>(conn).await.map_err(store_error)?;
            }
            let mut inv = self.flush_script.prepare_invoke();
            inv.key(keys::journal(prefix))
                .arg(n)
                .arg(journal::token(&entries[start]))
                .arg(self.journal_ttl_ms)
                .arg(buckets.len());
            for (key, expire_at_ms, value, write) in &buckets {
                inv.key(key).key(keys::tail(key)).arg(*expire_at_ms);
                match write {
                    Write::Whole => inv.arg("w").arg(""),
                    Write::Append => inv.arg("a").arg(value),
                    Write::AppendAndMeasure => inv.arg("b").arg(value),
                };
            }
            for (staged, _) in &whole {
                inv.key(staged);
            }
            let folded: redis::Value = inv.invoke_async(conn).await.map_err(store_error)?;
            match folded {
                redis::Value::Array(lengths) => {
                    let wrote: usize = buckets.iter().map(|(_, _, value, _)| value.len()).sum();
                    tracing::debug!(
                        task = %prefix,
                        entries = n,
                        buckets = buckets.len(),
                        whole = whole.len(),
                        read_bytes,
                        wrote,
                        "folded"
                    );
                    written += wrote;
                    self.remember_bucket_sizes(prefix, now, &buckets, &lengths);
                }
                redis::Value::Int(0) => return Ok(false),
                _ => {
                    return Err(StoreError::Unavailable(format!(
                        "a fold of `{prefix}` found a staged bucket value gone (it was staged more than \
                         {STAGED_TTL_MS} ms before, or evicted: Redis must run with maxmemory-policy \
                         noeviction); nothing was folded, the next pass retries"
                    )));
                }
            }
            start += n;
        }
        let mut writes = self.lock_fold_writes();
        if writes.len() >= MAX_REMEMBERED_FOLD_WRITES && !writes.contains_key(prefix) {
            // Only a hint for `Pending::due`: forgetting it folds as if never folded.
            writes.clear();
        }
        writes.insert(prefix.to_owned(), written);
        Ok(true)
    }

    /// Folds the task's journal first when it is longer than [`READ_FOLDS_AFTER`] entries,
    /// so that a read does not parse a long journal (and the next reads again). When
    /// Redis is full and refuses the fold, the read merges the whole journal instead.
    async fn fold_long_journal(&self, prefix: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let len: i64 = conn.llen(keys::journal(prefix)).await.map_err(store_error)?;
        if len <= READ_FOLDS_AFTER {
            return Ok(());
        }
        for _ in 0..READ_ATTEMPTS {
            match self.fold_head(prefix).await {
                Ok(Folded::All) => return Ok(()),
                Ok(Folded::More | Folded::Raced) => {}
                Err(StoreError::Full(why)) => {
                    tracing::debug!(%why, "Redis is full: reading the journal beside the buckets");
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads `keys` and the task's whole journal and adds the journal's increments to
    /// what was read, so the read sees every acknowledged event, folded or not. It writes
    /// nothing, so it also works when Redis is full. (Redis refuses even a read-only
    /// `MULTI` then, so this checks instead that no fold ran meanwhile: a fold always
    /// removes the journal's first entry, and entry tokens are unique.)
    async fn read_hashes_with_journal(&self, prefix: &str, keys: Vec<String>) -> Result<Vec<Fields>, StoreError> {
        let mut conn = self.conn.clone();
        let journal_key = keys::journal(prefix);
        for _ in 0..READ_ATTEMPTS {
            let entries: Vec<String> = conn.lrange(&journal_key, 0, -1).await.map_err(store_error)?;
            let mut out = self.read_buckets(&mut conn, &keys).await?;
            let head: Option<String> = conn.lindex(&journal_key, 0).await.map_err(store_error)?;
            let first = entries.first().map(|e| journal::token(e));
            if first.is_some() && first != head.as_deref().map(journal::token) {
                continue; // folded while we read: read again
            }
            super::add_journal(
                &entries,
                prefix,
                &keys,
                &mut out,
                &self.sem.retention,
                unix_now_secs(),
                false,
            )
            .map_err(StoreError::Internal)?;
            return Ok(out);
        }
        Err(StoreError::Contention)
    }

    /// The stored form of the buckets `keys` (`None`: absent).
    async fn read_stored<K: AsRef<str>>(
        &self,
        conn: &mut ConnectionManager,
        keys: &[K],
    ) -> Result<Vec<Option<String>>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        // In chunks, so one huge query does not hold one reply buffer of everything.
        for chunk in keys.chunks(512) {
            let values: Vec<Option<String>> = redis::cmd("MGET")
                .arg(chunk.iter().map(AsRef::as_ref).collect::<Vec<&str>>())
                .query_async(conn)
                .await
                .map_err(store_error)?;
            out.extend(values);
        }
        Ok(out)
    }

    /// Reads the buckets `keys` (an absent one is empty).
    async fn read_buckets(&self, conn: &mut ConnectionManager, keys: &[String]) -> Result<Vec<Fields>, StoreError> {
        // Each bucket's base, then its tail.
        let both: Vec<String> = keys.iter().flat_map(|key| [key.clone(), keys::tail(key)]).collect();
        let mut stored = self.read_stored(conn, &both).await?.into_iter();
        keys.iter()
            .map(|key| {
                let (base, tail) = (stored.next().flatten(), stored.next().flatten());
                if base.is_none() && tail.is_none() {
                    return Ok(Fields::default());
                }
                bucket::decode(bucket::join(base, tail))
                    .map_err(|e| StoreError::Internal(format!("bucket `{key}`: {e}")))
            })
            .collect()
    }

    /// Every task journal in Redis (`SCAN`), by task prefix.
    async fn journals_in_redis(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        let pattern = keys::journal(&format!("{}:{{*}}", keys::SCHEMA));
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(store_error)?;
            out.extend(found.iter().filter_map(|k| keys::journal_prefix(k).map(str::to_owned)));
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// Reads a server setting (`CONFIG GET`), for the start-up checks.
    ///
    /// # Errors
    /// When Redis is unavailable or refuses `CONFIG`.
    pub async fn config_get(&self, name: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        let pairs: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async(&mut conn)
            .await
            .map_err(store_error)?;
        Ok(pairs.into_iter().nth(1))
    }

    async fn index_task(&self, tenant: &Tenant, task: &TaskName) -> Result<(), StoreError> {
        let key = (tenant.clone(), task.clone());
        if self.lock_indexed().contains(&key) {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let _: i64 = conn
            .sadd(keys::task_index(tenant), task.as_str())
            .await
            .map_err(store_error)?;
        self.lock_indexed().insert(key);
        Ok(())
    }

    fn lock_recent_starts(&self) -> std::sync::MutexGuard<'_, RecentStarts> {
        self.recent_starts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers the records a committed round opened (see [`RecentStarts`]).
    fn remember_starts(&self, task_seed: u64, writes: &[plan::InstanceWrite<'_>]) {
        let mut opened = writes.iter().filter_map(|w| match w.state {
            InstanceState::Open { start, series } => Some((RecentStarts::key(task_seed, w.id), start, series)),
            _ => None,
        });
        if let Some(first) = opened.next() {
            let mut recent = self.lock_recent_starts();
            for (key, start, series) in std::iter::once(first).chain(opened) {
                recent.insert(key, start, series);
            }
        }
    }

    fn lock_indexed(&self) -> std::sync::MutexGuard<'_, Remembered<(Tenant, TaskName)>> {
        self.indexed_tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads, plans and commits one task group, re-planning when the check fails.
    async fn commit_group(
        &self,
        prefix: &str,
        group: &[(usize, &TaskEvent)],
        now: Micros,
    ) -> Result<Vec<(usize, Disposition)>, StoreError> {
        if let Some((_, first)) = group.first() {
            self.index_task(&first.tenant, &first.task).await?;
        }
        let live = self.generations.live(now.div_euclid(1_000_000));
        let filters = self.sealed_filters(prefix, &live);
        // The first attempt is optimistic: only a finish needs its start's record to be
        // planned, and not even that when this process wrote the start lately; starts and
        // completed events are planned as if their record were absent, which is what the
        // script checks. A retry, a duplicate or a pending finish makes that check fail,
        // and the next attempt reads every record.
        let task_seed = xxhash_rust::xxh3::xxh3_64(prefix.as_bytes());
        let mut finish_ids = plan::instance_ids(group, |e| matches!(e.kind, crate::domain::EventKind::Finish(_)));
        let mut known: Vec<(&str, plan::StoredRecord)> = Vec::new();
        if !finish_ids.is_empty() {
            let mut recent = self.lock_recent_starts();
            finish_ids.retain(|id| match recent.take(RecentStarts::key(task_seed, id)) {
                Some(record) => {
                    known.push((id, plan::StoredRecord::from_state(record)));
                    false
                }
                None => true,
            });
        }
        let remembered = !known.is_empty();
        let mut conn = self.conn.clone();
        for attempt in 0..MAX_ATTEMPTS {
            let read = if attempt == 0 {
                let mut read = self.read_records(&mut conn, prefix, &finish_ids, &live).await?;
                read.extend(known.drain(..).map(|(id, record)| (id, Some(record))));
                read
            } else {
                let all_ids = plan::instance_ids(group, |_| true);
                self.read_records(&mut conn, prefix, &all_ids, &live).await?
            };
            let plan = plan::plan_task(prefix, group, read, &self.sem, now);
            if attempt == 0
                && remembered
                && plan
                    .dispositions
                    .iter()
                    .any(|(_, d)| matches!(d, Disposition::Rejected(_)))
            {
                // A rejection writes nothing, so the script would check nothing of it: one
                // planned from a remembered start (a finish before it) must be planned
                // again from the record in Redis, which may have changed meanwhile (the
                // id started again after its record was lost).
                continue;
            }
            if plan.instance_writes.is_empty() && plan.increments.is_empty() {
                // Only duplicates and rejections: nothing to write, nothing to check.
                return Ok(plan.dispositions);
            }
            let entry = if plan.increments.is_empty() {
                String::new()
            } else {
                journal::encode(&self.next_token(), &plan.increments)
            };
            let commit = self.invocation(prefix, &plan, &live, filters.as_deref(), &entry);
            let reply: Vec<i64> = Self::eval(&mut conn, &self.script, &commit)
                .await
                .map_err(store_error)?;
            if let [0, journal_len] = reply[..] {
                self.remember_starts(task_seed, &plan.instance_writes);
                let behind = !entry.is_empty() && {
                    let now = Instant::now();
                    let mut dirty = self.lock_dirty();
                    // `get_mut` first: `entry` would allocate the key on every round.
                    match dirty.get_mut(prefix) {
                        Some(pending) => {
                            pending.appended(now, journal_len, entry.len());
                            pending.behind()
                        }
                        None => {
                            let pending = Pending::new(now, journal_len, entry.len());
                            dirty.insert(prefix.to_owned(), pending);
                            pending.behind()
                        }
                    }
                };
                if behind && self.lock_helping().insert(prefix.to_owned()) {
                    // The flusher is behind: this round helps it before it answers, which
                    // slows ingest down to what can be folded (else the journal grows
                    // without bound). The round is committed whatever happens here.
                    match self.fold_head(prefix).await {
                        Ok(Folded::All) => {
                            // Nothing left of what this process appended.
                            if let Some(pending) = self.lock_dirty().get_mut(prefix) {
                                pending.bytes = 0;
                            }
                        }
                        Ok(Folded::More | Folded::Raced) => {}
                        Err(e) => tracing::debug!(error = %e, "cannot help fold the journal"),
                    }
                    self.lock_helping().remove(prefix);
                }
                return Ok(plan.dispositions);
            }
            tracing::debug!(
                changed = reply.len(),
                "instance records changed under the round; re-planning"
            );
        }
        Err(StoreError::Contention)
    }

    /// The filters of `live`'s sealed generations of the task `prefix`, when each has one
    /// (none sealed: an empty list); `None` otherwise, after starting to build the
    /// missing ones. A generation counts as sealed only when this machine's clock says so
    /// too: a round's `now` is the caller's, and a test may run rounds in the future.
    fn sealed_filters(&self, prefix: &str, live: &Live) -> Option<Vec<Arc<sealed::Filter>>> {
        let sealed = &live.gens[live.open..];
        let oldest = *live.gens.last()?;
        self.filters.forget_before(oldest);
        let wall_s = unix_now_secs();
        let mut ready = Vec::with_capacity(sealed.len());
        let mut complete = true;
        for generation in sealed {
            if !self.generations.sealed(*generation, wall_s) {
                return None;
            }
            let key = keys::records(prefix, *generation);
            match self.filters.lookup(&key, *generation) {
                sealed::Lookup::Ready(filter) => ready.push(filter),
                sealed::Lookup::Build => {
                    self.spawn_filter_build(key, *generation);
                    complete = false;
                }
                sealed::Lookup::None => complete = false,
            }
        }
        complete.then_some(ready)
    }

    /// Builds the filter of one sealed record hash in the background, on a connection of
    /// its own, [`sealed::BUILDS_AT_ONCE`] at a time.
    fn spawn_filter_build(&self, key: String, generation: i64) {
        let mut conn = self.scan_conn.clone();
        let filters = self.filters.clone();
        let builds = self.filter_builds.clone();
        tokio::spawn(async move {
            // The semaphore is never closed: a permit always comes.
            let _permit = builds.acquire_owned().await;
            let started = Instant::now();
            let result = build_filter(&mut conn, &key).await;
            match &result {
                Ok(Some(_)) => tracing::debug!(%key, took = ?started.elapsed(), "filter of a sealed generation built"),
                Ok(None) => tracing::info!(
                    %key,
                    "a sealed record generation holds more than {} records: it gets no filter",
                    sealed::MAX_FILTERED_RECORDS
                ),
                Err(e) => tracing::warn!(%key, error = %e, "cannot build the filter of a sealed record generation"),
            }
            filters.built(&key, generation, result.map_err(|_| ()));
        });
    }

    /// The current record of each instance in `ids` (its value in the newest live
    /// generation that holds it).
    async fn read_records<'a>(
        &self,
        conn: &mut ConnectionManager,
        prefix: &str,
        ids: &[&'a str],
        live: &Live,
    ) -> Result<plan::RecordsRead<'a>, StoreError> {
        let mut read: plan::RecordsRead<'a> = ids.iter().map(|id| (*id, None)).collect();
        if ids.is_empty() {
            return Ok(read);
        }
        // Most records are in the current generation (or the one ahead): read those first,
        // and the older generations only for the ids not found there.
        let (recent, older) = live.gens.split_at(live.current + 1);
        let mut missing: Vec<&'a str> = ids.to_vec();
        for gens in [recent, older] {
            if missing.is_empty() || gens.is_empty() {
                break;
            }
            let mut pipe = redis::pipe();
            for generation in gens {
                pipe.cmd("HMGET").arg(keys::records(prefix, *generation)).arg(&missing);
            }
            let replies: Vec<Vec<Option<String>>> = pipe.query_async(conn).await.map_err(store_error)?;
            // Newest generation first: the first value found is the current one.
            for values in replies {
                for (id, value) in missing.iter().zip(values) {
                    if let Some(v) = value {
                        let slot = read.entry(*id).or_default();
                        if slot.is_none() {
                            *slot = Some(plan::StoredRecord::from_text(v));
                        }
                    }
                }
            }
            missing.retain(|id| read.get(id).is_some_and(Option::is_none));
        }
        Ok(read)
    }

    /// The `EVALSHA` of `lua/commit.lua` for `plan` (see its header for the layout), built
    /// straight into one command buffer: a `ScriptInvocation` keeps every argument in a
    /// `Vec` of its own and copies them all again into the command.
    fn invocation(
        &self,
        prefix: &str,
        plan: &Plan<'_>,
        live: &Live,
        filters: Option<&[Arc<sealed::Filter>]>,
        entry: &str,
    ) -> redis::Cmd {
        let n_gen = live.gens.len();
        let n_series = plan.series_writes.len();
        let n_keys = n_gen + 1 + usize::from(n_series > 0);
        let n_args = 9 + n_gen + 3 * plan.instance_writes.len() + 2 * n_series;
        let bytes = entry.len()
            + 64 * n_keys
            + plan
                .instance_writes
                .iter()
                .map(|w| 48 + w.id.len() + w.expected.as_ref().map_or(0, String::len))
                .sum::<usize>();
        let mut cmd = redis::Cmd::with_capacity(3 + n_keys + n_args, bytes);
        cmd.arg("EVALSHA").arg(self.script.get_hash()).arg(n_keys);
        for generation in &live.gens {
            cmd.arg(keys::records(prefix, *generation));
        }
        cmd.arg(keys::journal(prefix));
        if let Some(first) = plan.series_writes.first() {
            cmd.arg(&first.key);
        }
        cmd.arg(n_gen)
            .arg(live.current + 1)
            .arg(n_series)
            .arg(self.journal_ttl_ms)
            .arg(entry);
        for generation in &live.gens {
            cmd.arg(self.generations.expire_at_ms(*generation));
        }
        // Each new record is encoded into one reused buffer, and copied from there into
        // the command (`Cmd::arg` copies).
        let mut buf = String::with_capacity(48);
        // Records the plan assumed absent (most: every start and completed event on a
        // first attempt) go without an expected value; first those the sealed
        // generations' filters rule out, which the script checks only in the open
        // generations.
        let absent: Vec<(&plan::InstanceWrite<'_>, bool)> = plan
            .instance_writes
            .iter()
            .filter(|w| w.expected.is_none())
            .map(|w| {
                let cleared = filters.is_some_and(|filters| {
                    let hash = sealed::id_hash(w.id);
                    !filters.iter().any(|f| f.may_hold(hash))
                });
                (w, cleared)
            })
            .collect();
        let cleared = absent.iter().filter(|(_, cleared)| *cleared).count();
        let read = plan.instance_writes.len() - absent.len();
        cmd.arg(if filters.is_some() { live.open } else { n_gen })
            .arg(cleared)
            .arg(absent.len());
        for want in [true, false] {
            for (w, _) in absent.iter().filter(|(_, cleared)| *cleared == want) {
                cmd.arg(w.id).arg(encoded(&mut buf, &w.state));
            }
        }
        cmd.arg(read);
        for w in plan.instance_writes.iter() {
            if let Some(expected) = &w.expected {
                cmd.arg(w.id).arg(expected).arg(encoded(&mut buf, &w.state));
            }
        }
        for s in &plan.series_writes {
            cmd.arg(&s.series).arg(&s.labels_json);
        }
        cmd
    }

    /// Runs an `EVALSHA` of `script`, loading the script first when Redis does not have
    /// it (a restarted Redis, or a new one), as `ScriptInvocation` does.
    async fn eval<T: redis::FromRedisValue>(
        conn: &mut ConnectionManager,
        script: &redis::Script,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        match cmd.query_async(conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                script.load_async(conn).await?;
                cmd.query_async(conn).await
            }
            result => result,
        }
    }
}

/// `state`'s stored form, encoded into `buf` (cleared first).
fn encoded<'b>(buf: &'b mut String, state: &InstanceState) -> &'b str {
    buf.clear();
    state.encode_into(buf);
    buf
}

/// Scans the sealed record hash `key` into a filter of its ids; `None` when it holds more
/// than [`sealed::MAX_FILTERED_RECORDS`]. It gains no record while it is scanned, so the
/// scan sees every id it holds (`HSCAN` returns every field present from its start to its
/// end).
async fn build_filter(conn: &mut ConnectionManager, key: &str) -> Result<Option<sealed::Filter>, StoreError> {
    let len: usize = conn.hlen(key).await.map_err(store_error)?;
    if len > sealed::MAX_FILTERED_RECORDS {
        return Ok(None);
    }
    let mut filter = sealed::Filter::with_capacity(len);
    let mut cursor: u64 = 0;
    loop {
        let (next, fields): (u64, Vec<Vec<u8>>) = redis::cmd("HSCAN")
            .arg(key)
            .arg(cursor)
            .arg("COUNT")
            .arg(sealed::SCAN_COUNT)
            .query_async(conn)
            .await
            .map_err(store_error)?;
        // Field, value, field, value...: the fields are the instance ids.
        for id in fields.iter().step_by(2) {
            filter.insert(sealed::id_hash(&String::from_utf8_lossy(id)));
        }
        if next == 0 {
            return Ok(Some(filter));
        }
        cursor = next;
    }
}

impl Store for RedisStore {
    async fn apply(&self, events: &[TaskEvent], now: Micros) -> Result<Vec<Disposition>, StoreError> {
        let groups = group_by_task(events);
        let results = futures::future::try_join_all(
            groups
                .iter()
                .map(|(prefix, group)| self.commit_group(prefix, group, now)),
        )
        .await?;
        let mut out = vec![Disposition::Duplicate; events.len()];
        for (i, d) in results.into_iter().flatten() {
            out[i] = d;
        }
        Ok(out)
    }

    async fn series(&self, tenant: &Tenant, task: &TaskName) -> Result<Vec<(SeriesId, Labels)>, StoreError> {
        let mut conn = self.conn.clone();
        let raw: HashMap<String, String> = conn
            .hgetall(keys::series_index(&keys::task_prefix(tenant, task)))
            .await
            .map_err(store_error)?;
        parse_series(raw)
    }

    async fn read_hashes(
        &self,
        tenant: &Tenant,
        task: &TaskName,
        keys: Vec<String>,
    ) -> Result<Vec<Fields>, StoreError> {
        let prefix = keys::task_prefix(tenant, task);
        self.fold_long_journal(&prefix).await?;
        self.read_hashes_with_journal(&prefix, keys).await
    }

    async fn tasks(&self, tenant: &Tenant) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        let mut tasks: Vec<String> = conn.smembers(keys::task_index(tenant)).await.map_err(store_error)?;
        tasks.sort();
        Ok(tasks)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await.map_err(store_error)?;
        // The service pings before it serves: load the scripts once, up front.
        if !self.scripts_loaded.load(Ordering::Relaxed) {
            self.script.load_async(&mut conn).await.map_err(store_error)?;
            self.flush_script.load_async(&mut conn).await.map_err(store_error)?;
            self.scripts_loaded.store(true, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_is_long_at_half_its_base_and_never_under_4_kib() {
        assert!(!tail_is_long(100, 0));
        assert!(
            !tail_is_long(100, TAIL_MIN_BYTES - 1),
            "a small bucket's tail grows to 4 KiB"
        );
        assert!(tail_is_long(100, TAIL_MIN_BYTES));
        assert!(!tail_is_long(100_000, 49_999));
        assert!(tail_is_long(100_000, 50_000));
        assert!(tail_is_long(0, TAIL_MIN_BYTES), "a tail without a base");
    }

    #[test]
    fn a_journal_is_folded_when_long_old_or_quiet() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Appends every 100 ms, `per` bytes each, to a journal whose last fold wrote
        // `last_write` bytes: not due while they keep coming, until the first has waited
        // `due_at` ms.
        let busy = |per: usize, last_write: usize, due_at: u64| {
            let mut busy = Pending::new(t0, 1, per);
            for ms in (100..due_at).step_by(100) {
                busy.appended(at(ms), 1 + ms as i64 / 100, per);
                assert!(
                    !busy.due(at(ms + 50), last_write),
                    "appends of {per} bytes keep coming, short and young at {ms} ms"
                );
            }
            busy.appended(at(due_at), 1 + due_at as i64 / 100, per);
            assert!(
                busy.due(at(due_at + 50), last_write),
                "appends of {per} bytes: due at {due_at} ms"
            );
        };
        // 50 appends by FOLD_DELAY: FOLD_MIN_BYTES by then (a stream's journal).
        busy(FOLD_MIN_BYTES / 40, 0, 5_000);
        // Far less by then (a journal of single events): it waits for FOLD_MAX_DELAY...
        busy(100, 0, 30_000);
        // ... or until it holds FOLD_MIN_BYTES, after FOLD_DELAY.
        busy(FOLD_MIN_BYTES.div_ceil(100), 0, 9_900);
        // After a fold that wrote more than FOLD_MIN_BYTES, until it holds that much.
        busy(FOLD_MIN_BYTES.div_ceil(100), 3 * FOLD_MIN_BYTES, 29_900);
        // A fold that wrote less than FOLD_MIN_BYTES changes nothing.
        busy(FOLD_MIN_BYTES / 40, FOLD_MIN_BYTES / 2, 5_000);

        let mut long = Pending::new(t0, 1, 10);
        long.appended(at(10), FOLD_MAX_ENTRIES as i64, 10);
        assert!(long.due(at(20), usize::MAX), "a fold's worth of entries");

        let quiet = Pending::new(t0, 3, 10);
        assert!(!quiet.due(at(400), 0));
        assert!(quiet.due(at(500), usize::MAX), "nothing appended for FOLD_QUIET");
        assert!(Pending::LEFT_BEHIND.due(t0, usize::MAX), "found at start: at once");
    }

    #[test]
    fn recent_starts_keep_at_most_two_maps_and_forget_the_oldest_first() {
        let mut recent = RecentStarts::default();
        let seed = xxhash_rust::xxh3::xxh3_64(b"task");
        let n = 2 * RecentStarts::MAX + 10;
        for i in 0..n {
            recent.insert(RecentStarts::key(seed, &i.to_string()), i as Micros, SeriesId(7));
        }
        assert!(recent.current.len() + recent.previous.len() <= 2 * RecentStarts::MAX);
        assert_eq!(
            recent.take(RecentStarts::key(seed, "0")),
            None,
            "the oldest are forgotten"
        );
        let last = (n - 1).to_string();
        assert_eq!(
            recent.take(RecentStarts::key(seed, &last)),
            Some(InstanceState::Open {
                start: (n - 1) as Micros,
                series: SeriesId(7)
            })
        );
        assert_eq!(
            recent.take(RecentStarts::key(seed, &last)),
            None,
            "a record is used once"
        );
        let other = xxhash_rust::xxh3::xxh3_64(b"other-task");
        assert_ne!(
            RecentStarts::key(seed, "a"),
            RecentStarts::key(other, "a"),
            "tasks differ"
        );
    }

    fn generations(keep_s: i64) -> Generations {
        Generations {
            length_s: (keep_s / 2).max(60),
            keep_s,
        }
    }

    #[test]
    fn a_round_reads_every_generation_whose_hashes_have_not_expired() {
        let g = generations(7200);
        for now in [0, 1, 3299, 3300, 3599, 3600, 3601, 1_800_000_000, 1_800_003_599] {
            let live = g.live(now);
            let current = now.div_euclid(3600);
            assert_eq!(live.gens[live.current], current);
            let near_the_end = (current + 1) * 3600 - now <= MAX_CLOCK_SKEW_S;
            assert_eq!(
                live.gens.contains(&(current + 1)),
                near_the_end,
                "the next generation is read near the end of this one only (now {now})"
            );
            for generation in current - 10..=current {
                let alive = g.expire_at_ms(generation) > now * 1000;
                assert_eq!(
                    live.gens.contains(&generation),
                    alive,
                    "now {now}, generation {generation}"
                );
            }
            assert!(live.gens.windows(2).all(|w| w[0] == w[1] + 1), "newest first");
            for (i, generation) in live.gens.iter().enumerate() {
                let ended = (generation + 1) * 3600;
                assert_eq!(
                    i >= live.open,
                    now >= ended + MAX_CLOCK_SKEW_S,
                    "now {now}, generation {generation}: sealed once the slowest clock left it"
                );
            }
        }
    }

    #[test]
    fn a_record_outlives_its_ttl_by_at_most_one_generation() {
        let g = generations(7200);
        for written in [0_i64, 1, 3599, 3600, 1_800_000_123] {
            let expires_s = g.expire_at_ms(written.div_euclid(g.length_s)) / 1000;
            assert!(expires_s >= written + 7200);
            assert!(expires_s <= written + 7200 + g.length_s);
        }
    }
}
