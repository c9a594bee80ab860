//! Filters of sealed record generations: which instance ids a generation may hold.
//!
//! A record assumed absent (every start and completed event, on a first attempt) must be
//! in no live record generation, and the commit script checks each of them. After two
//! hours of traffic that is three hashes of up to millions of fields, and the two older
//! lookups, misses in large hashes, cost Redis more than the rest of the round (see
//! BENCHMARKS.md, "Stop 16").
//!
//! A generation is *sealed* once no replica can write a new record to it: records are
//! written to the current generation, or to a newer one that holds them (`lua/commit.lua`),
//! and replicas' clocks agree within [`super::redis::MAX_CLOCK_SKEW_S`], so from that long
//! after its end a generation only loses fields (records moved to a newer one) until it
//! expires. One `HSCAN` of it then sees every id it will ever hold, and a Bloom filter of
//! them has no false negatives: an id the filter rules out is in no sealed generation,
//! and the script checks it only in the generations that are not sealed. An id the filter
//! may hold (about 0.5 % of the others, and every record that is there) is checked
//! everywhere, as before.
//!
//! Each replica builds its own filters in the background, the first time a round needs
//! one; until every sealed generation of a round's task has one, the round checks every
//! generation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bits per id in a filter: about 0.5 % false positives for a split block Bloom filter.
const BITS_PER_ID: usize = 12;
/// A generation hash with more records than this gets no filter (about 24 MB of filter
/// per replica at this size): its lookups stay in the script.
pub(super) const MAX_FILTERED_RECORDS: usize = 16_000_000;
/// Filters one replica builds at once; the others wait (their rounds check every
/// generation meanwhile).
pub(super) const BUILDS_AT_ONCE: usize = 4;
/// Fields asked for per `HSCAN` call.
pub(super) const SCAN_COUNT: usize = 2_000;
/// How long after a failed build (Redis unavailable, say) the next round may try again.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// The ids one sealed generation hash held when it was scanned, by their [`id_hash`]: a
/// split block Bloom filter (Parquet's), which reads one 32-byte block per lookup. A
/// classic Bloom filter (fastbloom) reads up to seven bits, each likely a cache miss in a
/// filter of a million ids: two lookups of an absent id took 36 ns against 7.4 ns here,
/// and let twice as many through (BENCHMARKS.md, "Stop 16").
pub(super) struct Filter(sbbf_rs_safe::Filter);

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("bytes", &self.0.as_bytes().len())
            .finish_non_exhaustive()
    }
}

/// An instance id's hash, as filters take it: hashed once per id for all the filters of
/// a round (with XXH3).
pub(super) fn id_hash(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

impl Filter {
    /// A filter for `expected` ids (at least one).
    pub(super) fn with_capacity(expected: usize) -> Self {
        Filter(sbbf_rs_safe::Filter::new(BITS_PER_ID, expected.max(1)))
    }

    /// Adds the id whose [`id_hash`] is `hash`.
    pub(super) fn insert(&mut self, hash: u64) {
        self.0.insert_hash(hash);
    }

    /// Whether the generation may hold the id whose [`id_hash`] is `hash` (false: it
    /// certainly does not).
    pub(super) fn may_hold(&self, hash: u64) -> bool {
        self.0.contains_hash(hash)
    }
}

#[derive(Debug)]
enum Entry {
    Building,
    Ready(Arc<Filter>),
    /// Too large to filter: never retried.
    Unfiltered,
    Failed(Instant),
}

/// What a round gets for one sealed generation.
#[derive(Debug)]
pub(super) enum Lookup {
    Ready(Arc<Filter>),
    /// No filter (yet): the caller should start building it.
    Build,
    /// No filter, and none to build now.
    None,
}

/// The filters of one replica, by (record hash key, generation).
#[derive(Debug, Default)]
pub(super) struct Filters {
    entries: Mutex<HashMap<String, (i64, Entry)>>,
    /// The `oldest` of the last [`Filters::forget_before`] that looked: every round calls
    /// it, and only a new oldest generation (once an hour) has anything to forget.
    forgotten_before: AtomicI64,
}

impl Filters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (i64, Entry)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The filter of the record hash `key` (of generation `generation`); when it has
    /// none, whether the caller should build it (marked as being built from then on).
    pub(super) fn lookup(&self, key: &str, generation: i64) -> Lookup {
        let mut entries = self.lock();
        match entries.get(key) {
            Some((_, Entry::Ready(filter))) => Lookup::Ready(filter.clone()),
            Some((_, Entry::Building | Entry::Unfiltered)) => Lookup::None,
            Some((_, Entry::Failed(at))) if at.elapsed() < RETRY_AFTER => Lookup::None,
            _ => {
                entries.insert(key.to_owned(), (generation, Entry::Building));
                Lookup::Build
            }
        }
    }

    /// Records how building `key`'s filter ended: `Ok(None)` = too many records.
    pub(super) fn built(&self, key: &str, generation: i64, result: Result<Option<Filter>, ()>) {
        let entry = match result {
            Ok(Some(filter)) => Entry::Ready(Arc::new(filter)),
            Ok(None) => Entry::Unfiltered,
            Err(()) => Entry::Failed(Instant::now()),
        };
        self.lock().insert(key.to_owned(), (generation, entry));
    }

    /// Forgets the filters of generations older than `oldest` (their hashes expired).
    pub(super) fn forget_before(&self, oldest: i64) {
        if self.forgotten_before.fetch_max(oldest, Ordering::Relaxed) >= oldest {
            return;
        }
        let mut entries = self.lock();
        if entries.values().any(|(g, _)| *g < oldest) {
            entries.retain(|_, (g, _)| *g >= oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_holds_every_id_inserted_and_rules_out_most_others() {
        let mut filter = Filter::with_capacity(100_000);
        for i in 0..100_000 {
            filter.insert(id_hash(&format!("held-{i}")));
        }
        assert!(
            (0..100_000).all(|i| filter.may_hold(id_hash(&format!("held-{i}")))),
            "no false negatives"
        );
        let false_positives = (0..100_000)
            .filter(|i| filter.may_hold(id_hash(&format!("other-{i}"))))
            .count();
        assert!(
            false_positives < 1_000,
            "about 0.5 % false positives, got {false_positives} in 100,000"
        );
    }

    #[test]
    fn a_filter_is_built_once_retried_after_a_failure_and_forgotten_with_its_generation() {
        let filters = Filters::default();
        assert!(matches!(filters.lookup("r:10", 10), Lookup::Build));
        assert!(matches!(filters.lookup("r:10", 10), Lookup::None), "being built");
        filters.built("r:10", 10, Ok(Some(Filter::with_capacity(1))));
        assert!(matches!(filters.lookup("r:10", 10), Lookup::Ready(_)));
        assert!(matches!(filters.lookup("r:11", 11), Lookup::Build));
        filters.built("r:11", 11, Err(()));
        assert!(
            matches!(filters.lookup("r:11", 11), Lookup::None),
            "not retried at once"
        );
        assert!(matches!(filters.lookup("r:12", 12), Lookup::Build));
        filters.built("r:12", 12, Ok(None));
        assert!(
            matches!(filters.lookup("r:12", 12), Lookup::None),
            "too large: never built"
        );
        filters.forget_before(11);
        assert!(matches!(filters.lookup("r:10", 10), Lookup::Build), "forgotten");
    }
}
