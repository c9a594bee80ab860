//! `tasktime.v1.QueryService`: stats, series and the task list.

use std::collections::{BTreeMap, BTreeSet};

use tonic::{Request, Response, Status};

use crate::domain::{MICROS_PER_SEC, Micros, Tenant, TimeRange, now_micros};
use crate::grpc::convert::{self, SelectorParts};
use crate::grpc::status::{self, Violation};
use crate::histogram::to_base64_v2_deflate;
use crate::pb;
use crate::pb::query_service_server::QueryService;
use crate::query::{self, QuerySettings};
use crate::store::{AnyStore, Store};

/// Steps in one GetTaskSeries answer, at most.
pub const MAX_SERIES_STEPS: i64 = 1_000;
/// Default step of GetTaskSeries: 1 h.
pub const DEFAULT_STEP: Micros = 3600 * MICROS_PER_SEC;

/// The query service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct QueryApi {
    store: AnyStore,
    settings: QuerySettings,
}

impl QueryApi {
    /// A service reading `store`.
    pub fn new(store: AnyStore, settings: QuerySettings) -> Self {
        QueryApi { store, settings }
    }
}

#[tonic::async_trait]
impl QueryService for QueryApi {
    #[tracing::instrument(skip_all, fields(task = %request.get_ref().task))]
    async fn get_task_stats(
        &self,
        request: Request<pb::GetTaskStatsRequest>,
    ) -> Result<Response<pb::TaskStats>, Status> {
        let r = request.into_inner();
        let now = now_micros();
        let include_histogram = r.include_histogram;
        let selector = convert::selector(
            SelectorParts {
                task: r.task,
                filter: r.filter,
                from: r.from,
                to: r.to,
                percentiles: r.percentiles,
                outcome: r.outcome,
            },
            now,
        )
        .map_err(status::invalid_argument)?;
        let merged = query::read_merged(&self.store, &self.settings, &selector, &[selector.range], now)
            .await
            .map_err(|e| status::from_store(&e))?;
        let merged = merged
            .into_iter()
            .next()
            .ok_or_else(|| Status::internal("no stats read"))?;
        let histogram = if include_histogram {
            Some(to_base64_v2_deflate(&merged.durations).map_err(Status::internal)?)
        } else {
            None
        };
        let stats = query::summarize(merged, &selector.percentiles, &self.settings.histogram);
        Ok(Response::new(convert::task_stats(&selector.task, &stats, histogram)))
    }

    #[tracing::instrument(skip_all, fields(task = %request.get_ref().task))]
    async fn get_task_series(
        &self,
        request: Request<pb::GetTaskSeriesRequest>,
    ) -> Result<Response<pb::GetTaskSeriesResponse>, Status> {
        let r = request.into_inner();
        let now = now_micros();
        let step = match &r.step {
            None => DEFAULT_STEP,
            Some(d) => d.seconds.saturating_mul(MICROS_PER_SEC) + i64::from(d.nanos / 1000),
        };
        let mut violations = Vec::new();
        if step < 60 * MICROS_PER_SEC || step % (60 * MICROS_PER_SEC) != 0 {
            violations.push(Violation {
                field: "step".into(),
                description: format!("step must be a whole number of minutes, at least 1m; got {step} µs"),
            });
        }
        let selector = convert::selector(
            SelectorParts {
                task: r.task,
                filter: r.filter,
                from: r.from,
                to: r.to,
                percentiles: r.percentiles,
                outcome: r.outcome,
            },
            now,
        );
        let selector = match selector {
            Ok(s) if violations.is_empty() => s,
            Ok(_) => return Err(status::invalid_argument(violations)),
            Err(mut v) => {
                v.extend(violations);
                return Err(status::invalid_argument(v));
            }
        };
        let from = selector.range.from.div_euclid(60 * MICROS_PER_SEC) * 60 * MICROS_PER_SEC;
        let steps = (selector.range.to - from + step - 1) / step;
        if steps > MAX_SERIES_STEPS {
            return Err(status::invalid_argument(vec![Violation {
                field: "step".into(),
                description: format!(
                    "the range needs {steps} steps; the limit is {MAX_SERIES_STEPS}: use a larger step"
                ),
            }]));
        }
        let ranges: Vec<TimeRange> = (0..steps)
            .map(|k| TimeRange {
                from: from + k * step,
                to: from + (k + 1) * step,
            })
            .collect();
        let merged = query::read_merged(&self.store, &self.settings, &selector, &ranges, now)
            .await
            .map_err(|e| status::from_store(&e))?;
        let points = merged
            .into_iter()
            .map(|m| {
                let stats = query::summarize(m, &selector.percentiles, &self.settings.histogram);
                convert::task_stats(&selector.task, &stats, None)
            })
            .collect();
        Ok(Response::new(pb::GetTaskSeriesResponse { points }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_tasks(
        &self,
        _request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let tenant = Tenant::default_tenant();
        let names = self.store.tasks(&tenant).await.map_err(|e| status::from_store(&e))?;
        let mut tasks = Vec::with_capacity(names.len());
        for name in names {
            let Ok(task) = crate::domain::TaskName::parse("task", name) else {
                continue; // written by a different version; not ours to show
            };
            let series = self
                .store
                .series(&tenant, &task)
                .await
                .map_err(|e| status::from_store(&e))?;
            let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (_, l) in &series {
                for (k, v) in l.iter() {
                    labels.entry(k.to_owned()).or_default().insert(v.to_owned());
                }
            }
            tasks.push(pb::TaskInfo {
                task: task.as_str().to_owned(),
                labels: labels
                    .into_iter()
                    .map(|(key, values)| pb::LabelValues {
                        key,
                        values: values.into_iter().collect(),
                    })
                    .collect(),
                series: u32::try_from(series.len()).unwrap_or(u32::MAX),
            });
        }
        Ok(Response::new(pb::ListTasksResponse { tasks }))
    }
}
