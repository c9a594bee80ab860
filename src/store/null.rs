//! The null store: accepts every event and keeps nothing. It exists to measure the
//! transport's ceiling (decode, validate, group commit, drop) in benchmarks.

use super::{Fields, Store, StoreError};
use crate::domain::{Labels, Micros, SeriesId, TaskEvent, TaskName, Tenant};
use crate::ingest::plan::Disposition;

/// Drops everything; every event is reported accepted.
#[derive(Debug, Clone, Default)]
pub struct NullStore;

impl Store for NullStore {
    async fn apply(&self, events: &[TaskEvent], _now: Micros) -> Result<Vec<Disposition>, StoreError> {
        Ok(vec![Disposition::Accepted { over_range: false }; events.len()])
    }

    async fn series(&self, _tenant: &Tenant, _task: &TaskName) -> Result<Vec<(SeriesId, Labels)>, StoreError> {
        Ok(Vec::new())
    }

    async fn read_hashes(
        &self,
        _tenant: &Tenant,
        _task: &TaskName,
        keys: Vec<String>,
    ) -> Result<Vec<Fields>, StoreError> {
        Ok(vec![Fields::default(); keys.len()])
    }

    async fn tasks(&self, _tenant: &Tenant) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
