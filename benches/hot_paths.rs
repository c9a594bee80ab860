//! Microbenchmarks of the pure code on the ingest and query hot paths: decoding,
//! converting and validating events, bin arithmetic, merging stored bins, percentile extraction,
//! planning one commit round and folding a task's journal into its buckets. They need no Redis and no tokio, so a change to one of these
//! functions can be measured on its own (`cargo bench --bench hot_paths`); the whole
//! service is measured by `bench/run.sh`.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message as _;
use tasktime::buckets::Retention;
use tasktime::domain::{Limits, MICROS_PER_SEC, Micros, TaskEvent, now_micros};
use tasktime::grpc::convert::{self, EventContext, RequestCache, micros_duration, micros_timestamp};
use tasktime::grpc::wire;
use tasktime::histogram::HistogramConfig;
use tasktime::ingest::Semantics;
use tasktime::ingest::plan;
use tasktime::pb;
use tasktime::store::{self, keys};

/// Durations spread like real task times: 1 ms to about 10 minutes, log-uniform, from a
/// fixed sequence so every run measures the same values.
fn durations_us(n: usize) -> Vec<u64> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
            (1_000.0 * 600_000f64.powf(unit)) as u64
        })
        .collect()
}

fn config() -> HistogramConfig {
    HistogramConfig::new(HistogramConfig::DEFAULT_HIGHEST_US, HistogramConfig::DEFAULT_SIGFIG)
        .expect("the default histogram configuration is valid")
}

fn context(now: Micros) -> EventContext {
    EventContext {
        limits: Limits::default(),
        now,
        max_age: Retention::default().day_secs * MICROS_PER_SEC,
    }
}

/// A completed event of `task` in one of 12 series (4 releases × 3 platforms), as the
/// load generator sends it.
fn completed_event(task: &str, i: usize, now: Micros, duration_us: u64) -> pb::TaskEvent {
    let labels = [
        ("release".to_owned(), format!("r{}", i % 4)),
        ("platform".to_owned(), ["ios", "android", "web"][(i / 4) % 3].to_owned()),
    ]
    .into();
    pb::TaskEvent {
        task: task.to_owned(),
        instance_id: format!("bench-instance-{i:08}"),
        at: Some(micros_timestamp(now - MICROS_PER_SEC)),
        labels,
        kind: Some(pb::task_event::Kind::Completed(pb::Completed {
            duration: Some(micros_duration(i128::from(duration_us))),
            outcome: pb::Outcome::Succeeded as i32,
        })),
    }
}

fn convert_event(c: &mut Criterion) {
    let now = now_micros();
    let ctx = context(now);
    let start = pb::TaskEvent {
        task: "checkout".to_owned(),
        instance_id: "0b7e5d1c-2a4f-4c8e-9d3a-6f1e2b3c4d5e".to_owned(),
        at: Some(micros_timestamp(now - 30 * MICROS_PER_SEC)),
        labels: [
            ("release".to_owned(), "2.4.0".to_owned()),
            ("platform".to_owned(), "ios".to_owned()),
        ]
        .into(),
        kind: Some(pb::task_event::Kind::Start(pb::Start {})),
    };
    let finish = pb::TaskEvent {
        labels: Default::default(),
        at: Some(micros_timestamp(now)),
        kind: Some(pb::task_event::Kind::Finish(pb::Finish {
            outcome: pb::Outcome::Succeeded as i32,
        })),
        ..start.clone()
    };
    let completed = completed_event("checkout", 7, now, 31_500_000);
    let mut group = c.benchmark_group("convert::event");
    group.throughput(Throughput::Elements(1));
    for (name, event) in [("start", start), ("finish", finish), ("completed", completed)] {
        // The event as the service gets it: encoded (parsing it is part of converting it).
        let encoded = event.encode_to_vec();
        group.bench_function(name, |b| {
            b.iter(|| convert::event(0, black_box(&encoded), &ctx, &mut RequestCache::for_events(1)))
        });
    }
    // As the events of a request after its first with the same task and labels: both
    // found in the request's cache.
    let completed = completed_event("checkout", 7, now, 31_500_000).encode_to_vec();
    let mut cache = RequestCache::default();
    convert::event(0, &completed, &ctx, &mut cache).expect("valid");
    group.bench_function("completed, task and labels seen in the request", |b| {
        b.iter(|| convert::event(1, black_box(&completed), &ctx, &mut cache))
    });
    group.finish();

    // A whole request as the service gets it: 1,000 completed events of 12 label sets,
    // encoded. Decoding it as the public message (a label map of owned strings per
    // event: what the service did up to stop 13, before converting) against decoding it
    // as the server's wire message and converting every event (what it does now).
    let request = pb::RecordRequest {
        events: (0..1_000)
            .map(|i| completed_event("checkout", i, now, 31_500_000))
            .collect(),
    }
    .encode_to_vec();
    let mut group = c.benchmark_group("decode a request");
    group.throughput(Throughput::Elements(1_000));
    group.bench_function("public RecordRequest, decode only, 1000 completed", |b| {
        b.iter(|| pb::RecordRequest::decode(black_box(request.as_slice())).expect("it decodes"))
    });
    group.bench_function("wire RecordRequest, decode and convert, 1000 completed", |b| {
        b.iter(|| {
            // As tonic hands it over: one buffer the `bytes` fields slice.
            let buf = bytes::Bytes::copy_from_slice(black_box(&request));
            let decoded = wire::WireRecordRequest::decode(buf).expect("it decodes");
            let mut cache = RequestCache::default();
            decoded
                .events()
                .enumerate()
                .map(|(i, e)| convert::event(i, e, &ctx, &mut cache).expect("the events are valid"))
                .collect::<Vec<_>>()
        })
    });
    group.finish();
}

fn histogram_bins(c: &mut Criterion) {
    let config = config();
    let values = durations_us(1_000);
    let mut group = c.benchmark_group("histogram");

    group.throughput(Throughput::Elements(values.len() as u64));
    group.bench_function("bin ×1000", |b| {
        b.iter(|| {
            for v in &values {
                black_box(config.bin(black_box(*v)));
            }
        })
    });

    // One hot bucket's worth of stored bins (as HGETALL returns them), merged into a
    // histogram: what a query does for every bucket it reads.
    let mut stored: HashMap<u64, u64> = HashMap::new();
    for v in durations_us(100_000) {
        *stored.entry(config.bin(v).0).or_default() += 1;
    }
    let bins: Vec<(u64, u64)> = stored.into_iter().collect();
    group.throughput(Throughput::Elements(bins.len() as u64));
    group.bench_function(format!("add_bins ({} bins)", bins.len()), |b| {
        b.iter_batched_ref(
            || config.empty(),
            |h| config.add_bins(h, black_box(bins.iter().copied())),
            BatchSize::SmallInput,
        )
    });

    let mut merged = config.empty();
    config.add_bins(&mut merged, bins.iter().copied());
    group.throughput(Throughput::Elements(4));
    group.bench_function("value_at_quantile p50 p90 p95 p99", |b| {
        b.iter(|| {
            for q in [0.5, 0.9, 0.95, 0.99] {
                black_box(HistogramConfig::value_at_quantile(black_box(&merged), q));
            }
        })
    });
    group.finish();
}

/// The pairing rules' defaults.
fn semantics() -> Semantics {
    Semantics {
        abandon_after: Semantics::DEFAULT_ABANDON_AFTER,
        dedupe_horizon: Semantics::DEFAULT_DEDUPE_HORIZON,
        retention: Retention::default(),
        histogram: Arc::new(config()),
    }
}

fn plan_round(c: &mut Criterion) {
    let now = now_micros();
    let ctx = context(now);
    let sem = semantics();
    // 1,000 completed events of one task across its 12 series: one task group of a
    // busy round. Completed events need no record read first (the round assumes them
    // absent and the commit script checks), so `read` is empty, as on the first attempt.
    let events: Vec<TaskEvent> = durations_us(1_000)
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            convert::event(
                i,
                &completed_event("checkout", i, now, d).encode_to_vec(),
                &ctx,
                &mut RequestCache::default(),
            )
            .expect("the generated events are valid")
        })
        .collect();
    let group_events: Vec<(usize, &TaskEvent)> = events.iter().enumerate().collect();
    let first = &events[0];
    let prefix = keys::task_prefix(&first.tenant, &first.task);

    let mut group = c.benchmark_group("plan");
    group.throughput(Throughput::Elements(group_events.len() as u64));
    group.bench_function("plan_task 1000 completed, 12 series", |b| {
        // The records read (none: every instance is new); an empty map allocates nothing.
        b.iter(|| {
            plan::plan_task(
                black_box(&prefix),
                black_box(&group_events),
                plan::RecordsRead::default(),
                &sem,
                now,
            )
        })
    });
    // A typical task group: a 1,000-event request spread over 50 tasks (Zipf) gives most
    // tasks a few dozen events, and per (minute, series) a handful, where the maps that
    // file them are still growing.
    let small = &group_events[..24];
    group.throughput(Throughput::Elements(small.len() as u64));
    group.bench_function("plan_task 24 completed, 12 series", |b| {
        b.iter(|| {
            plan::plan_task(
                black_box(&prefix),
                black_box(small),
                plan::RecordsRead::default(),
                &sem,
                now,
            )
        })
    });
    group.throughput(Throughput::Elements(group_events.len() as u64));
    group.bench_function("instance_ids 1000", |b| {
        b.iter(|| plan::instance_ids(black_box(&group_events), |_| true))
    });
    group.finish();
}

fn fold_journal(c: &mut Criterion) {
    let now = now_micros();
    let ctx = context(now);
    let sem = semantics();
    // A busy task's journal under the completed stream: 256 rounds' entries of 1,000
    // completed events each over its 12 series, folded into buckets that already hold
    // an earlier fold's bins (a fold adds to stored buckets; a first one adds to empty
    // ones).
    const ROUNDS: usize = 256;
    let durations = durations_us(ROUNDS * 1_000);
    let entries: Vec<String> = durations
        .chunks(1_000)
        .enumerate()
        .map(|(round, chunk)| {
            let events: Vec<TaskEvent> = chunk
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let e = completed_event("checkout", round * 1_000 + i, now, *d).encode_to_vec();
                    convert::event(i, &e, &ctx, &mut RequestCache::default()).expect("the generated events are valid")
                })
                .collect();
            let indexed: Vec<(usize, &TaskEvent)> = events.iter().enumerate().collect();
            let prefix = keys::task_prefix(&events[0].tenant, &events[0].task);
            let plan = plan::plan_task(&prefix, &indexed, plan::RecordsRead::default(), &sem, now);
            store::journal_entry(&format!("token-{round}"), &plan.increments)
        })
        .collect();
    let now_secs = now / 1_000_000;
    let stored: HashMap<String, String> = store::fold_entries(&entries, &HashMap::new(), &sem.retention, now_secs)
        .expect("the entries fold")
        .into_iter()
        .collect();

    let mut group = c.benchmark_group("fold");
    group.throughput(Throughput::Elements((ROUNDS * 1_000) as u64));
    group.bench_function("fold_entries 256 entries × 1000 completed, 12 series", |b| {
        b.iter(|| store::fold_entries(black_box(&entries), black_box(&stored), &sem.retention, now_secs))
    });
    group.finish();

    // What a 30-day query of one series adds to the buckets it read from the first 64
    // entries of that journal (a query folds a longer one first; its day, hour and minute buckets), reading only that series' lines and
    // rolling up only those buckets, against rolling up the whole journal (as before).
    let events = [completed_event("checkout", 0, now, 1_000).encode_to_vec()];
    let first = convert::event(0, &events[0], &ctx, &mut RequestCache::default()).expect("a valid event");
    let prefix = keys::task_prefix(&first.tenant, &first.task);
    let namespace = sem.histogram.namespace();
    let cover = tasktime::buckets::cover(now_secs - 30 * 86_400, now_secs, now_secs, &sem.retention);
    let month: Vec<String> = cover
        .buckets
        .iter()
        .map(|b| keys::bucket(&prefix, &namespace, *b, first.labels.series_id()))
        .collect();
    let totals: Vec<String> = cover
        .buckets
        .iter()
        .map(|b| keys::task_total(&prefix, &namespace, *b))
        .collect();
    let mut group = c.benchmark_group("query journal");
    for (name, keys, whole) in [
        ("one series, 30 days, its buckets only", &month, false),
        ("one series, 30 days, every bucket", &month, true),
        ("task total, 30 days, its buckets only", &totals, false),
        ("task total, 30 days, every bucket", &totals, true),
    ] {
        group.throughput(Throughput::Elements(keys.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut read = vec![store::Fields::default(); keys.len()];
                store::add_journal(
                    black_box(&entries[..64]),
                    &prefix,
                    keys,
                    &mut read,
                    &sem.retention,
                    now_secs,
                    whole,
                )
                .expect("the entries read");
                read
            })
        });
    }
    group.finish();
}

criterion_group!(benches, convert_event, histogram_bins, plan_round, fold_journal);
criterion_main!(benches);
