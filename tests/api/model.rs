//! Model-based property test: random instances whose events arrive duplicated, retried,
//! reordered and split across random batches (and, on Redis, across two replicas at
//! once). Whatever the arrival, the store's answers must equal a simple model's: each
//! finished instance counted once with its duration, each start counted once.

use std::sync::Arc;

use proptest::prelude::*;
use tasktime::buckets::Retention;
use tasktime::domain::{
    EventKind, InstanceId, LabelFilter, Labels, Outcome, Selector, TaskEvent, TaskName, Tenant, TimeRange,
};
use tasktime::histogram::HistogramConfig;
use tasktime::ingest::Semantics;
use tasktime::query::{self, QuerySettings};
use tasktime::store::{MemoryStore, RedisStore, Store};

use crate::helpers::*;

/// One generated instance.
#[derive(Debug, Clone)]
enum Planned {
    /// Start and finish events; `finish` is `None` for a start never finished.
    Pair {
        start: i64,
        duration: Option<i64>,
        outcome: Outcome,
    },
    /// A client-timed completed event.
    Completed { at: i64, duration: i64, outcome: Outcome },
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Succeeded),
        Just(Outcome::Failed),
        Just(Outcome::Cancelled)
    ]
}

fn planned() -> impl Strategy<Value = Planned> {
    // Times within 50 minutes: recent enough that nothing is abandoned yet.
    prop_oneof![
        (
            0i64..3000,
            proptest::option::weighted(0.85, 0i64..600_000_000),
            outcome()
        )
            .prop_map(|(s, d, o)| Planned::Pair {
                start: s * SEC,
                duration: d,
                outcome: o,
            }),
        (600i64..3000, 0i64..600_000_000, outcome()).prop_map(|(a, d, o)| Planned::Completed {
            at: a * SEC,
            duration: d,
            outcome: o,
        }),
    ]
}

/// Instances, how often each event is repeated, an arrival order and batch cuts.
fn scenario() -> impl Strategy<Value = (Vec<Planned>, Vec<u8>, Vec<u32>, Vec<usize>)> {
    prop::collection::vec(planned(), 1..40).prop_flat_map(|instances| {
        let events = instances.len() * 2;
        (
            Just(instances),
            prop::collection::vec(1u8..4, events),
            prop::collection::vec(any::<u32>(), events * 3),
            prop::collection::vec(1usize..12, 1..20),
        )
    })
}

fn event(id: usize, at: i64, kind: EventKind, labels: &Labels) -> TaskEvent {
    TaskEvent {
        tenant: Tenant::default_tenant(),
        task: TaskName::parse("task", "model".into()).expect("valid"),
        instance_id: InstanceId::parse("id", format!("i{id}")).expect("valid"),
        at,
        labels: labels.clone(),
        kind,
    }
}

/// The arrival sequence: every event of every instance, repeated, shuffled.
fn arrivals(base: i64, instances: &[Planned], repeats: &[u8], order: &[u32]) -> Vec<TaskEvent> {
    let labels = Labels::parse("l", [("release".to_owned(), "1".to_owned())], 16, 128).expect("valid");
    let mut events = Vec::new();
    for (id, p) in instances.iter().enumerate() {
        let own: Vec<TaskEvent> = match p {
            Planned::Pair {
                start,
                duration,
                outcome,
            } => {
                let mut v = vec![event(id, base + start, EventKind::Start, &labels)];
                if let Some(d) = duration {
                    v.push(event(
                        id,
                        base + start + d,
                        EventKind::Finish(*outcome),
                        &Labels::default(),
                    ));
                }
                v
            }
            Planned::Completed { at, duration, outcome } => vec![event(
                id,
                base + at,
                EventKind::Completed {
                    duration: *duration,
                    outcome: *outcome,
                },
                &labels,
            )],
        };
        for (k, e) in own.into_iter().enumerate() {
            for _ in 0..repeats[(2 * id + k) % repeats.len()] {
                events.push(e.clone());
            }
        }
    }
    // A random permutation from the generated keys.
    let mut keyed: Vec<(u32, TaskEvent)> = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| (order[i % order.len()].wrapping_add(i as u32), e))
        .collect();
    keyed.sort_by_key(|(k, _)| *k);
    keyed.into_iter().map(|(_, e)| e).collect()
}

/// What the model says a query over everything returns.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    started: u64,
    counts: [u64; 3],
    n: u64,
    sum: i128,
    percentiles: Vec<u64>,
}

fn semantics() -> Arc<Semantics> {
    Arc::new(Semantics {
        abandon_after: Semantics::DEFAULT_ABANDON_AFTER,
        dedupe_horizon: Semantics::DEFAULT_DEDUPE_HORIZON,
        retention: Retention::default(),
        histogram: Arc::new(
            HistogramConfig::new(HistogramConfig::DEFAULT_HIGHEST_US, HistogramConfig::DEFAULT_SIGFIG).expect("valid"),
        ),
    })
}

const PERCENTILES: [f64; 5] = [1.0, 50.0, 90.0, 99.0, 100.0];

fn model(instances: &[Planned], sem: &Semantics) -> Answer {
    let mut hist = sem.histogram.empty();
    let mut answer = Answer {
        started: 0,
        counts: [0; 3],
        n: 0,
        sum: 0,
        percentiles: Vec::new(),
    };
    let index = |o: Outcome| match o {
        Outcome::Succeeded => 0,
        Outcome::Failed => 1,
        Outcome::Cancelled => 2,
    };
    for p in instances {
        answer.started += 1;
        let finished = match p {
            Planned::Pair {
                duration: Some(d),
                outcome,
                ..
            } => Some((*d, *outcome)),
            Planned::Pair { duration: None, .. } => None,
            Planned::Completed { duration, outcome, .. } => Some((*duration, *outcome)),
        };
        if let Some((d, o)) = finished {
            answer.counts[index(o)] += 1;
            if o == Outcome::Succeeded {
                answer.n += 1;
                answer.sum += i128::from(d);
                hist.record(sem.histogram.bin(d as u64).0).expect("in range");
            }
        }
    }
    answer.percentiles = PERCENTILES
        .iter()
        .map(|p| {
            if hist.is_empty() {
                0
            } else {
                hist.value_at_quantile(p / 100.0)
            }
        })
        .collect();
    answer
}

async fn observe<S: Store>(store: &S, sem: &Semantics, base: i64) -> Answer {
    let settings = QuerySettings {
        retention: sem.retention,
        abandon_after: sem.abandon_after,
        histogram: sem.histogram.clone(),
    };
    let selector = Selector {
        tenant: Tenant::default_tenant(),
        task: TaskName::parse("task", "model".into()).expect("valid"),
        filter: LabelFilter::default(),
        range: TimeRange {
            from: base - 3600 * SEC,
            to: now() + 60 * SEC,
        },
        outcome: Outcome::Succeeded,
        percentiles: PERCENTILES.to_vec(),
    };
    let m = query::read_merged(store, &settings, &selector, &[selector.range], now())
        .await
        .expect("read")
        .remove(0);
    let percentiles = PERCENTILES
        .iter()
        .map(|p| {
            if m.durations.is_empty() {
                0
            } else {
                m.durations.value_at_quantile(p / 100.0)
            }
        })
        .collect();
    Answer {
        started: m.started,
        counts: [m.succeeded, m.failed, m.cancelled],
        n: m.n,
        sum: m.sum_us,
        percentiles,
    }
}

/// Splits the arrivals into batches with the generated cut sizes, cycling.
fn batches(events: Vec<TaskEvent>, cuts: &[usize]) -> Vec<Vec<TaskEvent>> {
    let mut out = Vec::new();
    let mut rest = events.as_slice();
    let mut k = 0;
    while !rest.is_empty() {
        let n = cuts[k % cuts.len()].min(rest.len());
        out.push(rest[..n].to_vec());
        rest = &rest[n..];
        k += 1;
    }
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_memory_store_answers_like_the_model((instances, repeats, order, cuts) in scenario()) {
        let sem = semantics();
        let base = now() - 3600 * SEC;
        let events = arrivals(base, &instances, &repeats, &order);
        let store = MemoryStore::new(sem.clone());
        let observed = runtime().block_on(async {
            for batch in batches(events, &cuts) {
                let d = store.apply(&batch, now()).await.expect("apply");
                assert!(d.iter().all(|d| !matches!(d, tasktime::ingest::Disposition::Rejected(_))), "{d:?}");
            }
            observe(&store, &sem, base).await
        });
        prop_assert_eq!(observed, model(&instances, &sem));
    }
}

/// The same property on Redis, with every batch applied by two replicas at once (two
/// independent store handles racing on the same instances). The handles outlive each
/// case's `FLUSHALL`, so what they remember of earlier cases (the starts they wrote, under
/// the same instance ids) is stale, as after Redis lost its data.
#[test]
fn redis_with_two_racing_replicas_answers_like_the_model() {
    let redis = RedisServer::start(RedisOptions::default());
    let sem = semantics();
    let rt = runtime();
    let (a, b) = rt.block_on(async {
        let open = || RedisStore::open(&redis.url(), Default::default(), sem.clone()).expect("open");
        (open(), open())
    });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    });
    runner
        .run(&scenario(), |(instances, repeats, order, cuts)| {
            redis.cli(&["FLUSHALL"]);
            let base = now() - 3600 * SEC;
            let events = arrivals(base, &instances, &repeats, &order);
            let observed = rt.block_on(async {
                for batch in batches(events, &cuts) {
                    let (ra, rb) = tokio::join!(a.apply(&batch, now()), b.apply(&batch, now()));
                    for (x, y) in ra.expect("a").into_iter().zip(rb.expect("b")) {
                        assert!(
                            !matches!(x, tasktime::ingest::Disposition::Rejected(_))
                                && !matches!(y, tasktime::ingest::Disposition::Rejected(_)),
                            "no event of the model is invalid: {x:?} {y:?}"
                        );
                        let both = u32::from(matches!(x, tasktime::ingest::Disposition::Accepted { .. }))
                            + u32::from(matches!(y, tasktime::ingest::Disposition::Accepted { .. }));
                        assert!(both <= 1, "one event accepted by both replicas: {x:?} {y:?}");
                    }
                }
                observe(&a, &sem, base).await
            });
            prop_assert_eq!(observed, model(&instances, &sem));
            Ok(())
        })
        .expect("the Redis store answers like the model");
}
