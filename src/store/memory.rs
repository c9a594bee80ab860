//! The embedded in-memory store: the same semantics as Redis (pairing, dedupe, buckets,
//! retention) in one process. Not durable: everything is lost when the process exits.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{FieldMap, Fields, Store, StoreError, group_by_task, keys, parse_series};
use crate::domain::{Labels, Micros, SeriesId, TaskEvent, TaskName, Tenant};
use crate::ingest::plan::{self, Disposition, Semantics};

/// How often (in store time) expired entries are swept out.
const PURGE_EVERY_MS: i64 = 60_000;

/// A cheap-to-clone handle on the embedded store.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    db: Arc<Mutex<Db>>,
    sem: Arc<Semantics>,
}

#[derive(Debug, Default)]
struct Db {
    /// Instance records: key -> (value, expires at ms).
    records: HashMap<String, (String, i64)>,
    /// Counter and histogram hashes: key -> (fields, expires at ms).
    hashes: HashMap<String, (FieldMap, i64)>,
    /// Series indexes: key -> series hex -> labels JSON.
    series: HashMap<String, HashMap<String, String>>,
    /// Task indexes: key -> task names.
    tasks: HashMap<String, BTreeSet<String>>,
    last_purge_ms: i64,
}

impl Db {
    fn purge(&mut self, now_ms: i64) {
        if now_ms - self.last_purge_ms < PURGE_EVERY_MS {
            return;
        }
        self.last_purge_ms = now_ms;
        self.records.retain(|_, (_, exp)| *exp > now_ms);
        self.hashes.retain(|_, (_, exp)| *exp > now_ms);
    }
}

impl MemoryStore {
    /// A new, empty store.
    pub fn new(sem: Arc<Semantics>) -> Self {
        MemoryStore {
            db: Arc::new(Mutex::new(Db::default())),
            sem,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Db> {
        // A panic while holding the lock cannot leave a half-applied plan behind (plans are
        // computed before the lock writes), so a poisoned lock is still consistent.
        self.db.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies a batch synchronously. The lock is held for the whole batch and never
    /// across an `.await`.
    fn apply_now(&self, events: &[TaskEvent], now: Micros) -> Vec<Disposition> {
        let now_ms = now / 1000;
        let mut out = vec![Disposition::Duplicate; events.len()];
        let mut db = self.lock();
        db.purge(now_ms);
        for (prefix, group) in group_by_task(events) {
            let read: plan::RecordsRead<'_> = plan::instance_ids(&group, |_| true)
                .into_iter()
                .map(|id| {
                    let value = db
                        .records
                        .get(&keys::instance(&prefix, id))
                        .filter(|(_, exp)| *exp > now_ms)
                        .map(|(v, _)| plan::StoredRecord::from_text(v.clone()));
                    (id, value)
                })
                .collect();
            let plan = plan::plan_task(&prefix, &group, read, &self.sem, now);
            for w in plan.instance_writes {
                db.records
                    .insert(keys::instance(&prefix, w.id), (w.state.encode(), now_ms + w.ttl_ms));
            }
            for h in plan.increments.hash_writes(&prefix) {
                let entry = db
                    .hashes
                    .entry(h.key)
                    .or_insert_with(|| (FieldMap::default(), h.expire_at_ms));
                // An expired hash starts over, as a Redis key that expired would.
                if entry.1 <= now_ms {
                    entry.0.clear();
                }
                entry.1 = h.expire_at_ms;
                for (field, delta) in h.fields {
                    *entry.0.entry(field).or_default() += delta;
                }
            }
            for s in plan.series_writes {
                db.series
                    .entry(s.key)
                    .or_default()
                    .entry(s.series)
                    .or_insert(s.labels_json);
            }
            if let Some((_, first)) = group.first() {
                let index = keys::task_index(&first.tenant);
                db.tasks
                    .entry(index)
                    .or_default()
                    .insert(first.task.as_str().to_owned());
            }
            for (i, d) in plan.dispositions {
                out[i] = d;
            }
        }
        out
    }
}

impl Store for MemoryStore {
    async fn apply(&self, events: &[TaskEvent], now: Micros) -> Result<Vec<Disposition>, StoreError> {
        Ok(self.apply_now(events, now))
    }

    async fn series(&self, tenant: &Tenant, task: &TaskName) -> Result<Vec<(SeriesId, Labels)>, StoreError> {
        let key = keys::series_index(&keys::task_prefix(tenant, task));
        let raw = self.lock().series.get(&key).cloned().unwrap_or_default();
        parse_series(raw)
    }

    async fn read_hashes(
        &self,
        _tenant: &Tenant,
        _task: &TaskName,
        keys: Vec<String>,
    ) -> Result<Vec<Fields>, StoreError> {
        let now_ms = crate::domain::now_micros() / 1000;
        let db = self.lock();
        Ok(keys
            .iter()
            .map(|k| match db.hashes.get(k) {
                Some((fields, exp)) if *exp > now_ms => Fields::from_map(fields.clone()),
                _ => Fields::default(),
            })
            .collect())
    }

    async fn tasks(&self, tenant: &Tenant) -> Result<Vec<String>, StoreError> {
        let key = keys::task_index(tenant);
        Ok(self
            .lock()
            .tasks
            .get(&key)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
