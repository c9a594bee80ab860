//! Storage: the [`Store`] trait and its implementations, [`MemoryStore`] (embedded,
//! not durable) and [`RedisStore`]. Both run the same pairing plan
//! ([`crate::ingest::plan`]) and the same key schema ([`keys`]), so they answer alike.

mod background;
mod bucket;
mod journal;
pub mod keys;
pub mod memory;
pub mod null;
pub mod redis;
mod sealed;

use std::collections::HashMap;
use std::future::Future;

use crate::domain::{Labels, Micros, SeriesId, TaskEvent, TaskName, Tenant};
use crate::ingest::plan::Disposition;

pub use self::memory::MemoryStore;
pub use self::null::NullStore;
pub use self::redis::RedisStore;

/// Why the store could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or did not answer in time; retrying later is safe.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The store refuses writes because it is out of memory (Redis `maxmemory`, `noeviction`).
    #[error("storage is full: {0}")]
    Full(String),
    /// Other replicas kept changing the same instances; retrying is safe.
    #[error("the same instances were being changed concurrently by another replica; retry")]
    Contention,
    /// The store answered something this version cannot read.
    #[error("unexpected answer from the store: {0}")]
    Internal(String),
}

impl StoreError {
    /// Whether a client should retry the same request later.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, StoreError::Internal(_))
    }
}

/// A hash's fields: name -> integer value. The names are the store's own field names, not
/// a client's text, so they are hashed with Fx, not SipHash (which was a fifth of the
/// service's CPU in a query over a month of buckets).
pub type FieldMap = rustc_hash::FxHashMap<String, i64>;

/// A hash read back from the store (counters, histograms): its fields and their values.
///
/// The Redis store keeps a bucket as the text it stored, with where each line's name is
/// and its value, and does not build a map of it. A query over a month reads hundreds of
/// buckets of thousands of fields each and looks at each field once, and building a map
/// per bucket (a `String` and a hash insert per field) was half of the service's CPU in
/// such a query. A name can occur twice, in the stored text and among the fields added
/// to it (a journal not folded yet); its value is the sum of both. (Two of them with the
/// same fields may be laid out differently: compare their [`Fields::to_map`].)
#[derive(Debug, Clone, Default)]
pub struct Fields {
    text: String,
    /// Per line of `text`: where its name starts and ends, and its value.
    lines: Vec<(usize, usize, i64)>,
    added: FieldMap,
}

impl Fields {
    /// The fields of a map.
    pub fn from_map(added: FieldMap) -> Self {
        Fields {
            added,
            ..Fields::default()
        }
    }

    /// Adds `delta` to the field `name`.
    pub fn add(&mut self, name: &str, delta: i64) {
        match self.added.get_mut(name) {
            Some(v) => *v += delta,
            None => {
                self.added.insert(name.to_owned(), delta);
            }
        }
    }

    /// Every field's name and value; a name that occurs twice comes twice (see above).
    pub fn iter(&self) -> impl Iterator<Item = (&str, i64)> + '_ {
        let stored = self.lines.iter().map(|&(from, to, v)| (&self.text[from..to], v));
        stored.chain(self.added.iter().map(|(n, v)| (n.as_str(), *v)))
    }

    /// The value of the field `name` (`None`: it has none). Looks at every field.
    pub fn get(&self, name: &str) -> Option<i64> {
        self.iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .reduce(|a, b| a + b)
    }

    /// Whether it has no field.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.added.is_empty()
    }

    /// Its fields as one map, each name once.
    pub fn to_map(&self) -> FieldMap {
        let mut out = FieldMap::default();
        for (name, value) in self.iter() {
            *out.entry(name.to_owned()).or_default() += value;
        }
        out
    }
}

/// A commit round's increments as the journal entry the Redis store appends for them
/// (for the microbenchmarks, `benches/hot_paths.rs`, with [`fold_entries`]).
pub fn journal_entry(token: &str, increments: &crate::ingest::plan::Increments) -> String {
    journal::encode(token, increments)
}

/// What the Redis store's flusher computes from a run of journal entries, without Redis
/// (for the microbenchmarks, `benches/hot_paths.rs`; the same calls as the flusher's
/// fold, with no limit on the fields one fold sums): the entries summed, rolled up into
/// the buckets they touch (minute, hour and day, of each series and of the task's
/// total), and each added to its stored form in `stored` (by key without the task
/// prefix; absent is empty). Returns each bucket's key and new stored form.
///
/// # Errors
/// The first entry or stored bucket this version cannot read, named.
pub fn fold_entries(
    entries: &[String],
    stored: &HashMap<String, String>,
    retention: &crate::buckets::Retention,
    now_secs: i64,
) -> Result<Vec<(String, String)>, String> {
    let (sums, _) = journal::Sums::of_head(entries, usize::MAX).map_err(|e| e.to_string())?;
    sums.buckets(retention, now_secs)
        .into_iter()
        .map(|(key, (_, fields))| {
            let text = bucket::add_deltas(stored.get(&key).map_or("", String::as_str), &fields)
                .map_err(|e| format!("bucket `{key}`: {e}"))?;
            Ok((key, text))
        })
        .collect()
}

/// Adds the increments of the journal `entries` of the task `prefix` to `read`, the
/// buckets `keys` as stored (full keys), so a read sees every acknowledged event, folded
/// or not: each line read is added straight into the buckets of `keys` it rolls up into
/// ([`journal::Wanted`]). With `whole`, the journal is summed and rolled up into every
/// bucket it touches, as a fold does (the reference the tests and microbenchmarks
/// compare with).
///
/// # Errors
/// The first entry this version cannot read, named.
pub fn add_journal(
    entries: &[String],
    prefix: &str,
    keys: &[String],
    read: &mut [Fields],
    retention: &crate::buckets::Retention,
    now_secs: i64,
    whole: bool,
) -> Result<(), String> {
    fn suffix<'k>(key: &'k str, prefix: &str) -> Option<&'k str> {
        key.strip_prefix(prefix).and_then(|k| k.strip_prefix(':'))
    }
    if !whole {
        let wanted = journal::Wanted::of_keys(
            keys.iter()
                .enumerate()
                .filter_map(|(at, k)| Some((at, suffix(k, prefix)?))),
        );
        for entry in entries {
            wanted
                .add_entry(entry, retention, now_secs, read)
                .map_err(|e| e.to_string())?;
        }
        return Ok(());
    }
    let mut sums = journal::Sums::default();
    for entry in entries {
        sums.add_entry(entry).map_err(|e| e.to_string())?;
    }
    let rolled = sums.buckets(retention, now_secs);
    for (key, fields) in keys.iter().zip(read) {
        if let Some((_, deltas)) = suffix(key, prefix).and_then(|s| rolled.get(s)) {
            for (field, delta) in deltas {
                fields.add(field, *delta);
            }
        }
    }
    Ok(())
}

/// What a store does. Handles are cheap to clone and shared by every task.
pub trait Store: Clone + Send + Sync + 'static {
    /// Applies validated events exactly once per instance and returns one disposition per
    /// event, in order. When it returns `Ok`, every accepted event is committed.
    ///
    /// # Errors
    /// When the store is unavailable or full; then nothing of the failed task groups is
    /// applied, and retrying the same events is safe.
    fn apply(
        &self,
        events: &[TaskEvent],
        now: Micros,
    ) -> impl Future<Output = Result<Vec<Disposition>, StoreError>> + Send;

    /// The series (label sets) a task has.
    ///
    /// # Errors
    /// When the store is unavailable.
    fn series(
        &self,
        tenant: &Tenant,
        task: &TaskName,
    ) -> impl Future<Output = Result<Vec<(SeriesId, Labels)>, StoreError>> + Send;

    /// Reads hashes (counters, histograms) of one task by key; a missing key reads as
    /// empty. What is read includes every event of the task acknowledged before the call
    /// (the Redis store first folds the task's journal into them).
    ///
    /// # Errors
    /// When the store is unavailable.
    fn read_hashes(
        &self,
        tenant: &Tenant,
        task: &TaskName,
        keys: Vec<String>,
    ) -> impl Future<Output = Result<Vec<Fields>, StoreError>> + Send;

    /// The tasks a tenant has recorded.
    ///
    /// # Errors
    /// When the store is unavailable.
    fn tasks(&self, tenant: &Tenant) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Whether the store answers now (readiness).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The pieces of `text` between the ASCII bytes `sep`, as `text.split(sep as char)` gives
/// them, found byte by byte: a journal entry or a stored bucket is many short words and
/// lines, and `str::split` with a `char` sets up a searcher for each. An ASCII byte never
/// occurs inside a longer UTF-8 sequence, so every piece starts and ends on a character
/// boundary.
pub(crate) fn split_ascii(text: &str, sep: u8) -> impl Iterator<Item = &str> {
    debug_assert!(sep.is_ascii());
    split_at_each(text, move |s| s.bytes().position(|b| b == sep))
}

/// The lines of `text`, as `split_ascii(text, b'\n')` gives them, found with `memchr`:
/// a journal entry's lines are a kilobyte or more each, and a read skips most of them
/// (for words, a few bytes each, the byte loop of [`split_ascii`] is faster: a fold took
/// 15 % longer with `memchr` there).
pub(crate) fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    split_at_each(text, |s| memchr::memchr(b'\n', s.as_bytes()))
}

/// The pieces of `text` between the one-byte ASCII separators `find` finds (the index
/// of the next one in what is left, or `None`).
fn split_at_each(text: &str, find: impl Fn(&str) -> Option<usize>) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let s = rest?;
        match find(s) {
            Some(i) => {
                rest = Some(&s[i + 1..]);
                Some(&s[..i])
            }
            None => {
                rest = None;
                Some(s)
            }
        }
    })
}

/// Groups a batch by `(tenant, task)`, keeping each event's index and the input order
/// within a group. One group is one Redis slot.
pub(crate) fn group_by_task(events: &[TaskEvent]) -> Vec<(String, Vec<(usize, &TaskEvent)>)> {
    let mut groups: Vec<(String, Vec<(usize, &TaskEvent)>)> = Vec::new();
    // FxHash: this runs for every event, and SipHash of two strings showed in profiles.
    let mut index: rustc_hash::FxHashMap<(&Tenant, &TaskName), usize> = rustc_hash::FxHashMap::default();
    for (i, event) in events.iter().enumerate() {
        let slot = *index.entry((&event.tenant, &event.task)).or_insert_with(|| {
            groups.push((keys::task_prefix(&event.tenant, &event.task), Vec::new()));
            groups.len() - 1
        });
        groups[slot].1.push((i, event));
    }
    groups
}

/// Parses the series index hash (series hex -> labels JSON).
pub(crate) fn parse_series(raw: HashMap<String, String>) -> Result<Vec<(SeriesId, Labels)>, StoreError> {
    let mut out = Vec::with_capacity(raw.len());
    for (id, json) in raw {
        let id = SeriesId::from_hex(&id).ok_or_else(|| StoreError::Internal(format!("series id `{id}`")))?;
        let map = serde_json::from_str(&json)
            .map_err(|e| StoreError::Internal(format!("labels of series {}: {e}", id.to_hex())))?;
        out.push((id, Labels::from_trusted(map)));
    }
    out.sort();
    Ok(out)
}

/// Any store, chosen at start from the configuration.
#[derive(Debug, Clone)]
pub enum AnyStore {
    Memory(MemoryStore),
    Redis(RedisStore),
    /// Benchmarks only: keeps nothing.
    Null(NullStore),
}

impl Store for AnyStore {
    async fn apply(&self, events: &[TaskEvent], now: Micros) -> Result<Vec<Disposition>, StoreError> {
        match self {
            AnyStore::Memory(s) => s.apply(events, now).await,
            AnyStore::Redis(s) => s.apply(events, now).await,
            AnyStore::Null(s) => s.apply(events, now).await,
        }
    }

    async fn series(&self, tenant: &Tenant, task: &TaskName) -> Result<Vec<(SeriesId, Labels)>, StoreError> {
        match self {
            AnyStore::Memory(s) => s.series(tenant, task).await,
            AnyStore::Redis(s) => s.series(tenant, task).await,
            AnyStore::Null(s) => s.series(tenant, task).await,
        }
    }

    async fn read_hashes(
        &self,
        tenant: &Tenant,
        task: &TaskName,
        keys: Vec<String>,
    ) -> Result<Vec<Fields>, StoreError> {
        match self {
            AnyStore::Memory(s) => s.read_hashes(tenant, task, keys).await,
            AnyStore::Redis(s) => s.read_hashes(tenant, task, keys).await,
            AnyStore::Null(s) => s.read_hashes(tenant, task, keys).await,
        }
    }

    async fn tasks(&self, tenant: &Tenant) -> Result<Vec<String>, StoreError> {
        match self {
            AnyStore::Memory(s) => s.tasks(tenant).await,
            AnyStore::Redis(s) => s.tasks(tenant).await,
            AnyStore::Null(s) => s.tasks(tenant).await,
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        match self {
            AnyStore::Memory(s) => s.ping().await,
            AnyStore::Redis(s) => s.ping().await,
            AnyStore::Null(s) => s.ping().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buckets::Retention;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn split_ascii_splits_as_str_split_does(text in "[a-z \n:é0-9]{0,24}") {
            for sep in [b' ', b'\n'] {
                let want: Vec<&str> = text.split(char::from(sep)).collect();
                prop_assert_eq!(split_ascii(&text, sep).collect::<Vec<_>>(), want);
            }
            prop_assert_eq!(split_lines(&text).collect::<Vec<_>>(), text.split('\n').collect::<Vec<_>>());
        }
    }

    fn fold(entries: &[&str], stored: &HashMap<String, String>) -> Result<HashMap<String, String>, String> {
        let entries: Vec<String> = entries.iter().map(|e| (*e).to_owned()).collect();
        fold_entries(&entries, stored, &Retention::default(), 1_000).map(|b| b.into_iter().collect())
    }

    #[test]
    fn folding_entries_in_two_runs_gives_the_buckets_of_one() {
        let entries = [
            "tok-1\nd2r1:b:m:60:0000000000000007 started 2 s:1234 1",
            "tok-2\nd2r1:b:m:60:0000000000000007 s:1234 3 sum:s 5\nd2r1:b:m:120:0000000000000008 started 1",
            "tok-3\nd2r1:b:m:120:0000000000000007 s 1 s:99 1",
        ];
        let once = fold(&entries, &HashMap::new()).unwrap();
        let first = fold(&entries[..1], &HashMap::new()).unwrap();
        let mut twice = first.clone();
        twice.extend(fold(&entries[1..], &first).unwrap());
        assert_eq!(once, twice);
        // Minute, hour and day of series 7 and 8 and of the task's total.
        assert_eq!(once.len(), 3 + 2 + 2 + 2 + 2, "{once:?}");
        assert_eq!(once["d2r1:t:d:0"], "s 1\ns:1234 4\ns:99 1\nstarted 3\nsum:s 5");
        assert_eq!(once["d2r1:b:m:60:0000000000000007"], "s:1234 4\nstarted 2\nsum:s 5");
    }

    #[test]
    fn a_fold_of_an_unreadable_entry_or_bucket_names_it() {
        let err = fold(&["tok-9\nd2r1:b:m:60:0000000000000007 started"], &HashMap::new()).unwrap_err();
        assert!(err.contains("tok-9") && err.contains("started"), "{err}");
        let stored = HashMap::from([("d2r1:t:d:0".to_owned(), "started x".to_owned())]);
        let err = fold(&["tok-1\nd2r1:b:m:60:0000000000000007 started 1"], &stored).unwrap_err();
        assert!(err.contains("d2r1:t:d:0") && err.contains("started x"), "{err}");
    }

    const PREFIX: &str = "tt:v2:{default|checkout}";

    /// What `add_journal` gives each of `keys` (suffixes), as maps.
    fn journal_read(entries: &[String], keys: &[String], whole: bool) -> Result<Vec<FieldMap>, String> {
        journal_read_at(entries, keys, whole, 100_000)
    }

    fn journal_read_at(
        entries: &[String],
        keys: &[String],
        whole: bool,
        now_secs: i64,
    ) -> Result<Vec<FieldMap>, String> {
        let keys: Vec<String> = keys.iter().map(|k| format!("{PREFIX}:{k}")).collect();
        let mut read = vec![Fields::default(); keys.len()];
        add_journal(
            entries,
            PREFIX,
            &keys,
            &mut read,
            &Retention::default(),
            now_secs,
            whole,
        )?;
        Ok(read.iter().map(Fields::to_map).collect())
    }

    /// The key of a bucket (without the task prefix): series 1 to 4 or the total, minute,
    /// hour or day, in the first two hours.
    fn any_bucket_key() -> impl Strategy<Value = String> {
        (0..5u64, 0..3usize, 0..120i64).prop_map(|(series, res, minute)| {
            let res = crate::buckets::Resolution::ALL[res];
            let start = (minute * 60).div_euclid(res.secs()) * res.secs();
            let series = (series > 0).then_some(SeriesId(series));
            let mut key = String::new();
            keys::write_bucket_suffix(&mut key, "d2r1", crate::buckets::BucketRef { res, start }, series);
            key
        })
    }

    proptest! {
        /// A read of a few buckets (a key twice, or one an earlier version's line
        /// names) sees in them what rolling up the whole journal gives them, also once
        /// minute buckets of that age are no longer kept (`now_secs` 200,000).
        #[test]
        fn a_read_of_some_buckets_sees_what_the_whole_journal_gives_them(
            lines in proptest::collection::vec((0..5u64, 0..120i64, 0..4usize, -5..20i64), 1..40),
            keys in proptest::collection::vec(any_bucket_key(), 1..8),
            now_secs in prop_oneof![Just(1_000i64), Just(100_000), Just(200_000)],
        ) {
            // One entry per four lines; series 0 stands for an earlier version's line
            // (its own bucket and expiry: the task's hour), and a negative delta on
            // series 1 for an earlier version's line of that series' minute.
            let entries: Vec<String> = lines
                .chunks(4)
                .enumerate()
                .map(|(i, chunk)| {
                    let mut entry = format!("tok-{i}");
                    for (series, minute, field, delta) in chunk {
                        let field = ["started", "s", "sum:s", "s:1234"][*field];
                        if *series == 0 {
                            entry.push_str(&format!("\nd2r1:t:h:{} 999999999 {field} {delta}", minute / 60 * 3600));
                        } else if *series == 1 && *delta < 0 {
                            entry.push_str(&format!("\nd2r1:b:m:{}:{:016x} 999999999 {field} {delta}", minute * 60, series));
                        } else {
                            entry.push_str(&format!("\nd2r1:b:m:{}:{:016x} {field} {delta}", minute * 60, series));
                        }
                    }
                    entry
                })
                .collect();
            let some = journal_read_at(&entries, &keys, false, now_secs).unwrap();
            let whole = journal_read_at(&entries, &keys, true, now_secs).unwrap();
            prop_assert_eq!(some, whole);
        }
    }

    #[test]
    fn a_read_of_one_series_skips_the_other_series_lines() {
        let entries =
            vec!["tok-1\nd2r1:b:m:60:0000000000000007 started 2\nd2r1:b:m:60:0000000000000008 started oops".to_owned()];
        let keys = [
            "d2r1:b:m:60:0000000000000007".to_owned(),
            "d2r1:b:h:0:0000000000000007".to_owned(),
        ];
        let read = journal_read(&entries, &keys, false).unwrap();
        assert_eq!(read[0].get("started"), Some(&2));
        assert_eq!(read[1].get("started"), Some(&2));
        // Series 8's damaged line was not read; a read of the total (or a fold) reads it.
        let err = journal_read(&entries, &["d2r1:t:m:60".to_owned()], false).unwrap_err();
        assert!(err.contains("tok-1") && err.contains("started"), "{err}");
        let err = journal_read(&entries, &keys, true).unwrap_err();
        assert!(err.contains("tok-1"), "{err}");
    }

    /// An earlier version's line names its own bucket, a series' minute too: a read of
    /// that bucket gets it, whatever the retention of minute buckets says now (as a
    /// fold would add it).
    #[test]
    fn an_earlier_versions_line_of_a_series_minute_is_read_into_that_bucket() {
        let entries = vec!["tok-1\nd2r1:b:m:60:0000000000000007 999999999 started 2".to_owned()];
        let keys = ["d2r1:b:m:60:0000000000000007".to_owned()];
        for now_secs in [1_000, 1_000_000] {
            let read = journal_read_at(&entries, &keys, false, now_secs).unwrap();
            assert_eq!(read, journal_read_at(&entries, &keys, true, now_secs).unwrap());
            assert_eq!(read[0].get("started"), Some(&2), "at {now_secs}");
        }
    }

    #[test]
    fn a_key_that_is_not_a_buckets_reads_nothing_from_the_journal() {
        let entries = vec!["tok-1\nd2r1:b:m:60:0000000000000007 started 2".to_owned()];
        let keys = ["d2r1:t:m:60".to_owned(), "not-a-bucket".to_owned()];
        let read = journal_read(&entries, &keys, false).unwrap();
        assert_eq!(read[0].get("started"), Some(&2));
        assert!(read[1].is_empty());
    }
}
