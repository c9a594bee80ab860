//! What lands in Redis: the key layout, the expiry of each kind of key, and the memory
//! an open instance costs.

use tasktime::pb::Outcome::Succeeded;

use std::time::Duration;

use crate::helpers::*;

/// Keys matching `pattern`, sorted.
fn keys(redis: &RedisServer, pattern: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis
        .cli(&["--scan", "--pattern", pattern])
        .lines()
        .map(str::to_owned)
        .filter(|k| !k.is_empty())
        .collect();
    keys.sort();
    keys
}

fn pttl_s(redis: &RedisServer, key: &str) -> i64 {
    let ms: i64 = redis.cli(&["pttl", key]).trim().parse().expect("PTTL is a number");
    assert!(ms > 0, "{key} has no expiry (PTTL {ms})");
    ms / 1000
}

#[tokio::test]
async fn records_and_buckets_expire_as_configured_and_nothing_lives_forever() {
    let mut app = spawn_app(Backend::Redis).await;
    let t0 = now() - 120 * SEC;
    let r = record(
        &mut app.ingest,
        vec![
            start("checkout", "open-1", t0, &[("release", "1")]),
            start("checkout", "done-1", t0, &[("release", "1")]),
            finish("checkout", "done-1", t0 + 5 * SEC, Succeeded),
        ],
    )
    .await;
    assert_eq!(r.accepted, 3);
    let redis = app.redis.as_ref().expect("a Redis app");

    // Instance records: fields of record hashes; none is a key of its own.
    assert!(keys(redis, "*:i:*").is_empty(), "no per-instance keys");
    let record_hashes = keys(redis, "tt:v2:{default|checkout}:r:*");
    assert!(!record_hashes.is_empty());
    let mut found = Vec::new();
    for key in &record_hashes {
        for id in ["open-1", "done-1"] {
            let value = redis.cli(&["hget", key, id]);
            if !value.trim().is_empty() {
                found.push((id, value.trim().to_owned()));
            }
        }
        // The default record TTL is abandon_after + dedupe horizon = 2 h; a generation
        // (1 h) may add at most its length.
        let ttl = pttl_s(redis, key);
        assert!((7_200 - 5..=10_800).contains(&ttl), "{key}: TTL {ttl} s");
    }
    found.sort();
    assert_eq!(found.len(), 2, "each instance has exactly one record: {found:?}");
    assert_eq!(found[0].0, "done-1");
    assert_eq!(found[0].1, "D", "a finished instance keeps only its done marker");
    assert!(
        found[1].1.starts_with("S|"),
        "an open instance keeps its start: {:?}",
        found[1]
    );

    // Increments: the round appended them to the task's journal, which expires after
    // the longest retention (400 days and a day) however long it is left unfolded.
    let journal = "tt:v2:{default|checkout}:j";
    if !keys(redis, journal).is_empty() {
        let ttl = pttl_s(redis, journal);
        assert!((400 * 86_400..=401 * 86_400).contains(&ttl), "{journal}: TTL {ttl} s");
    }
    // A query reads the journal beside the buckets, folded or not.
    let s = stats(&mut app.query, stats_request("checkout", t0 - 60 * SEC, now())).await;
    assert_eq!((s.started, s.count), (2, 1));
    // The flusher folds it into the buckets within about a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !keys(redis, journal).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the flusher never folded {journal}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = stats(&mut app.query, stats_request("checkout", t0 - 60 * SEC, now())).await;
    assert_eq!((s.started, s.count), (2, 1), "the same counts, now from the buckets");
    // A bucket is a string of `name value` lines (store/bucket.rs).
    let total = keys(redis, "tt:v2:{default|checkout}:*:t:d:*");
    let text = redis.cli(&["get", &total[0]]);
    assert!(text.lines().any(|l| l == "started 2"), "{text}");

    // Buckets: minute 2 days, hour 35 days, day 400 days after the bucket's end.
    for (res, keep_s) in [("m", 2 * 86_400), ("h", 35 * 86_400), ("d", 400 * 86_400)] {
        let buckets = keys(redis, &format!("tt:v2:{{default|checkout}}:*:b:{res}:*"));
        assert!(!buckets.is_empty(), "resolution {res} has bucket hashes");
        let totals = keys(redis, &format!("tt:v2:{{default|checkout}}:*:t:{res}:*"));
        assert_eq!(totals.len(), buckets.len(), "one series, so one task total per bucket");
        for key in buckets.iter().chain(&totals) {
            let ttl = pttl_s(redis, key);
            assert!(
                ttl <= keep_s + 86_400 && ttl > keep_s - 86_400 - 3_600,
                "{key}: TTL {ttl} s"
            );
        }
    }
    // Indexes: the series index and the task index.
    assert_eq!(keys(redis, "tt:v2:{default|checkout}:series").len(), 1);
    assert_eq!(redis.cli(&["smembers", "tt:v2:tasks:{default}"]).trim(), "checkout");
    app.stop().await;
}

mod generations {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use tasktime::buckets::Retention;
    use tasktime::domain::{EventKind, InstanceId, Labels, MICROS_PER_SEC, Outcome, TaskEvent, TaskName, Tenant};
    use tasktime::histogram::HistogramConfig;
    use tasktime::ingest::{Disposition, Semantics};
    use tasktime::store::redis::RedisTimeouts;
    use tasktime::store::{RedisStore, Store};

    use crate::helpers::*;

    const HOUR: i64 = 3600 * MICROS_PER_SEC;

    fn store(redis: &RedisServer) -> RedisStore {
        let sem = Semantics {
            abandon_after: Semantics::DEFAULT_ABANDON_AFTER,
            dedupe_horizon: Semantics::DEFAULT_DEDUPE_HORIZON,
            retention: Retention::default(),
            histogram: Arc::new(HistogramConfig::new(HistogramConfig::DEFAULT_HIGHEST_US, 2).expect("config")),
        };
        RedisStore::open(&redis.url(), RedisTimeouts::default(), Arc::new(sem)).expect("store")
    }

    fn event(id: &str, at: i64, kind: EventKind) -> TaskEvent {
        TaskEvent {
            tenant: Tenant::default_tenant(),
            task: TaskName::parse("task", "checkout".into()).expect("task"),
            instance_id: InstanceId::parse("id", id.into()).expect("id"),
            at,
            labels: Labels::default(),
            kind,
        }
    }

    fn holders(redis: &RedisServer, id: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for key in redis
            .cli(&["--scan", "--pattern", "tt:v2:{default|checkout}:r:*"])
            .lines()
        {
            let value = redis.cli(&["hget", key, id]).trim().to_owned();
            if !value.is_empty() {
                out.push((key.to_owned(), value));
            }
        }
        out
    }

    const ACCEPTED: Disposition = Disposition::Accepted { over_range: false };

    /// The service's clock moves into the next generation between a start and its
    /// finish: the record moves with it, and a retry is still a duplicate.
    #[tokio::test]
    async fn a_finish_in_a_later_generation_consumes_its_start_once() {
        let redis = RedisServer::start(RedisOptions::default());
        let store = store(&redis);
        let t = now() - 60 * SEC;
        let start = event("a", t, EventKind::Start);
        let finish = event("a", t + 10 * SEC, EventKind::Finish(Outcome::Succeeded));
        assert_eq!(
            store.apply(std::slice::from_ref(&start), t).await.unwrap(),
            vec![ACCEPTED]
        );
        let before = holders(&redis, "a");
        assert_eq!(before.len(), 1, "{before:?}");
        // 90 minutes later: another generation (1 h each by default).
        assert_eq!(
            store
                .apply(std::slice::from_ref(&finish), t + 90 * 60 * SEC)
                .await
                .unwrap(),
            vec![ACCEPTED]
        );
        let after = holders(&redis, "a");
        assert_eq!(after.len(), 1, "the record moved, it was not copied: {after:?}");
        assert_ne!(after[0].0, before[0].0, "it lives in the newer generation");
        assert_eq!(after[0].1, "D");
        for later in [t + 90 * 60 * SEC, t + 150 * 60 * SEC] {
            assert_eq!(
                store.apply(&[finish.clone(), start.clone()], later).await.unwrap(),
                vec![Disposition::Duplicate, Disposition::Duplicate],
                "a retry at {later} is a duplicate"
            );
        }
    }

    /// One large round of every kind of record at once, an hour and a half after the
    /// starts: thousands of retried starts (found in the older generation although the
    /// round assumed them absent), their finishes (read, and moved to the newer
    /// generation) and new completed events (absent, written in chunks). Each is
    /// counted once, and each instance is in exactly one generation afterwards.
    #[tokio::test]
    async fn a_large_mixed_round_across_generations_counts_each_instance_once() {
        const N: usize = 2_500; // more (id, value) pairs than the script hands one HSET
        let redis = RedisServer::start(RedisOptions::default());
        let store = store(&redis);
        let t = now() - 60 * SEC;
        let starts: Vec<TaskEvent> = (0..N).map(|i| event(&format!("s{i}"), t, EventKind::Start)).collect();
        let accepted = store.apply(&starts, t).await.unwrap();
        assert!(accepted.iter().all(|d| *d == ACCEPTED), "{:?}", accepted.first());
        let later = t + 90 * 60 * SEC;
        let mut round = starts.clone();
        round.extend((0..N).map(|i| event(&format!("s{i}"), t + 5 * SEC, EventKind::Finish(Outcome::Succeeded))));
        round.extend((0..N).map(|i| {
            event(
                &format!("c{i}"),
                later - SEC,
                EventKind::Completed {
                    duration: 2 * SEC,
                    outcome: Outcome::Failed,
                },
            )
        }));
        let got = store.apply(&round, later).await.unwrap();
        assert!(got[..N].iter().all(|d| *d == Disposition::Duplicate), "retried starts");
        assert!(got[N..].iter().all(|d| *d == ACCEPTED), "finishes and completed events");
        for id in ["s0", &format!("s{}", N - 1), "c0", &format!("c{}", N - 1)] {
            let held = holders(&redis, id);
            assert_eq!(held.len(), 1, "{id} is in one generation: {held:?}");
            assert_eq!(held[0].1, "D", "{id}");
        }
        let newest = holders(&redis, "c0")[0].0.clone();
        assert_eq!(
            holders(&redis, "s0")[0].0,
            newest,
            "finished records moved to the newer generation"
        );
        // The whole round again is all duplicates.
        let again = store.apply(&round, later).await.unwrap();
        assert!(
            again.iter().all(|d| *d == Disposition::Duplicate),
            "{:?}",
            again.iter().find(|d| **d != Disposition::Duplicate)
        );
    }

    /// HMGET calls Redis has answered so far (those inside scripts included).
    fn hmget_calls(redis: &RedisServer) -> u64 {
        let stats = redis.cli(&["info", "commandstats"]);
        stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_hmget:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().expect("a count"))
    }

    fn completed_now(id: &str) -> TaskEvent {
        event(
            id,
            now() - SEC,
            EventKind::Completed {
                duration: SEC,
                outcome: Outcome::Succeeded,
            },
        )
    }

    /// A generation two hours old is sealed: no replica writes a new record to it. The
    /// store builds a filter of its ids in the background and from then on checks a new
    /// instance only in the open generations, while an instance the old generation holds
    /// is still found there: a retry of it is a duplicate before the filter exists and
    /// after.
    #[tokio::test]
    async fn a_record_in_a_sealed_generation_is_found_before_and_after_its_filter_is_built() {
        let redis = RedisServer::start(RedisOptions::default());
        let store = store(&redis);
        let task = TaskName::parse("task", "checkout".into()).expect("task");
        let prefix = tasktime::store::keys::task_prefix(&Tenant::default_tenant(), &task);
        // Generations are 1 h by default; the one two before the current is always sealed.
        let sealed = now() / HOUR - 2;
        let key = tasktime::store::keys::records(&prefix, sealed);
        let ids: Vec<String> = (0..3_000).map(|i| format!("old-{i}")).collect();
        let mut hset = vec!["hset", key.as_str()];
        for id in &ids {
            hset.extend([id.as_str(), "D"]);
        }
        redis.cli(&hset);
        redis.cli(&["expire", &key, "7200"]);

        let mut old = ids.iter();
        let mut round_of = |round: usize| {
            let mut events: Vec<TaskEvent> = (0..5).map(|i| completed_now(&format!("new-{round}-{i}"))).collect();
            events.push(completed_now(old.next().expect("enough old ids")));
            events
        };
        // The first round finds no filter (every generation is checked) and starts
        // building it; once it is there a round looks the new instances up in fewer
        // generations (not in the sealed one).
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut checked_without = None;
        for round in 0.. {
            let before = hmget_calls(&redis);
            let got = store.apply(&round_of(round), now()).await.unwrap();
            let checked = hmget_calls(&redis) - before;
            assert_eq!(got[..5], [ACCEPTED; 5], "round {round}: new instances");
            assert_eq!(
                got[5],
                Disposition::Duplicate,
                "round {round}: the sealed generation's record was found"
            );
            match checked_without {
                None => checked_without = Some(checked),
                Some(without) if checked < without => break,
                Some(_) => {}
            }
            assert!(
                Instant::now() < deadline,
                "the filter was used within 10 s ({checked} HMGETs per round)"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // With the filter: a large round of old and new instances at once, and its retry.
        let mut big: Vec<TaskEvent> = (0..1_000).map(|i| completed_now(&format!("big-{i}"))).collect();
        big.extend(ids[1_000..2_000].iter().map(|id| completed_now(id)));
        let got = store.apply(&big, now()).await.unwrap();
        assert!(
            got[..1_000].iter().all(|d| *d == ACCEPTED),
            "{:?}",
            got.iter().find(|d| **d != ACCEPTED)
        );
        assert!(
            got[1_000..].iter().all(|d| *d == Disposition::Duplicate),
            "every record of the sealed generation was found: {:?}",
            got[1_000..].iter().position(|d| *d != Disposition::Duplicate)
        );
        let again = store.apply(&big, now()).await.unwrap();
        assert!(
            again.iter().all(|d| *d == Disposition::Duplicate),
            "the retry is all duplicates"
        );
        // The new instances went to the current generation, none to the sealed one.
        assert_eq!(redis.cli(&["hlen", &key]).trim(), "3000");
    }

    /// The service's first ping loads the scripts, so the first rounds, dozens of
    /// `EVALSHA` at once, do not each find the script missing and load it again.
    #[tokio::test]
    async fn the_first_ping_loads_the_scripts_once_for_every_round_after_it() {
        let redis = RedisServer::start(RedisOptions::default());
        let store = store(&redis);
        store.ping().await.expect("ping");
        let t = now() - SEC;
        let events: Vec<TaskEvent> = (0..50)
            .map(|i| {
                let mut e = event(&format!("x{i}"), t, EventKind::Start);
                e.task = TaskName::parse("task", format!("task-{i}")).expect("task");
                e
            })
            .collect();
        let got = store.apply(&events, t).await.unwrap();
        assert!(got.iter().all(|d| *d == ACCEPTED), "{:?}", got.first());
        let stats = redis.cli(&["info", "commandstats"]);
        let loads = stats
            .lines()
            .find(|l| l.starts_with("cmdstat_script|load:"))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse::<u64>().ok());
        assert_eq!(
            loads,
            Some(2),
            "SCRIPT LOAD calls, the commit and the flush script: {stats}"
        );
    }

    /// A replica whose clock is two minutes ahead has crossed into the next generation;
    /// one on time still finds the record there, and leaves it there.
    #[tokio::test]
    async fn replicas_whose_clocks_straddle_a_generation_boundary_agree() {
        let redis = RedisServer::start(RedisOptions::default());
        let ahead = store(&redis);
        let on_time = store(&redis);
        // One minute before a generation (1 h by default) ends.
        let t = (now() / HOUR + 1) * HOUR - 60 * SEC;
        let skew = 2 * 60 * SEC;
        let start = event("b", t, EventKind::Start);
        let finish = event("b", t + 3 * SEC, EventKind::Finish(Outcome::Failed));
        assert_eq!(
            ahead.apply(std::slice::from_ref(&start), t + skew).await.unwrap(),
            vec![ACCEPTED]
        );
        let written = holders(&redis, "b");
        assert_eq!(
            on_time.apply(std::slice::from_ref(&finish), t).await.unwrap(),
            vec![ACCEPTED]
        );
        let after = holders(&redis, "b");
        assert_eq!(after.len(), 1, "{after:?}");
        assert_eq!(after[0].0, written[0].0, "the newer generation keeps the record");
        assert_eq!(after[0].1, "D");
        assert_eq!(
            on_time.apply(std::slice::from_ref(&finish), t).await.unwrap(),
            vec![Disposition::Duplicate]
        );
        assert_eq!(
            ahead.apply(&[finish], t + skew).await.unwrap(),
            vec![Disposition::Duplicate]
        );
    }
}

/// The increment journal: rounds append to it, flushers and queries fold it.
mod journal {
    use std::sync::Arc;

    use tasktime::buckets::{BucketRef, Resolution, Retention};
    use tasktime::domain::{
        EventKind, InstanceId, Labels, MICROS_PER_SEC, Outcome, SeriesId, TaskEvent, TaskName, Tenant,
    };
    use tasktime::histogram::HistogramConfig;
    use tasktime::ingest::Semantics;
    use tasktime::store::redis::RedisTimeouts;
    use tasktime::store::{RedisStore, Store, keys};
    use tokio_util::sync::CancellationToken;

    use crate::helpers::*;

    const JOURNAL: &str = "tt:v2:{default|checkout}:j";

    fn histogram() -> Arc<HistogramConfig> {
        Arc::new(HistogramConfig::new(HistogramConfig::DEFAULT_HIGHEST_US, 2).expect("config"))
    }

    fn store(redis: &RedisServer) -> RedisStore {
        let sem = Semantics {
            abandon_after: Semantics::DEFAULT_ABANDON_AFTER,
            dedupe_horizon: Semantics::DEFAULT_DEDUPE_HORIZON,
            retention: Retention::default(),
            histogram: histogram(),
        };
        RedisStore::open(&redis.url(), RedisTimeouts::default(), Arc::new(sem)).expect("store")
    }

    fn task() -> TaskName {
        TaskName::parse("task", "checkout".into()).expect("task")
    }

    fn completed(id: &str, at: i64) -> TaskEvent {
        TaskEvent {
            tenant: Tenant::default_tenant(),
            task: task(),
            instance_id: InstanceId::parse("id", id.into()).expect("id"),
            at,
            labels: Labels::default(),
            kind: EventKind::Completed {
                duration: 1_500 * MICROS_PER_SEC / 1000,
                outcome: Outcome::Succeeded,
            },
        }
    }

    fn start(id: &str, at: i64) -> TaskEvent {
        TaskEvent {
            kind: EventKind::Start,
            ..completed(id, at)
        }
    }

    fn finish(id: &str, at: i64) -> TaskEvent {
        TaskEvent {
            kind: EventKind::Finish(Outcome::Succeeded),
            ..completed(id, at)
        }
    }

    /// A replica remembers the records of the instances it started, and plans their
    /// finish from that without reading; the commit script still checks the record, so
    /// a record that changed meanwhile is read and the finish planned again.
    #[tokio::test]
    async fn a_remembered_start_that_changed_meanwhile_is_read_again() {
        use tasktime::ingest::Disposition;
        let redis = RedisServer::start(RedisOptions::default());
        let (a, b) = (store(&redis), store(&redis));
        let t = now() - 60 * SEC;
        let ok = Disposition::Accepted { over_range: false };
        a.apply(&[start("x", t), start("y", t), start("z", t)], t)
            .await
            .expect("starts");

        // x: another replica finished it; A's memory still says open.
        assert_eq!(b.apply(&[finish("x", t + SEC)], t).await.expect("b"), vec![ok.clone()]);
        // y: its record is gone (as when it expires); a finish then waits for a start.
        let records = redis.cli(&["--scan", "--pattern", "tt:v2:{default|checkout}:r:*"]);
        for key in records.lines() {
            redis.cli(&["hdel", key, "y"]);
        }
        // z: nothing changed; planned from memory.
        let got = a
            .apply(
                &[finish("x", t + SEC), finish("y", t + SEC), finish("z", t + 2 * SEC)],
                t,
            )
            .await
            .expect("a");
        assert_eq!(got, vec![Disposition::Duplicate, ok.clone(), ok.clone()]);
        // Durations: x once (by B), z once; y is a pending finish, not a duration.
        assert_eq!(day_total(&a, t).await, (3, 2));
        let y = redis
            .cli(&["--scan", "--pattern", "tt:v2:{default|checkout}:r:*"])
            .lines()
            .map(|key| redis.cli(&["hget", key, "y"]).trim().to_owned())
            .find(|v| !v.is_empty())
            .expect("a record for y");
        assert!(y.starts_with("F|"), "y waits for its start: {y}");

        // And the point of it: finishing its own start, A reads no record before the
        // script; B, which did not start it, does.
        a.apply(&[start("v", t), start("w", t)], t).await.expect("starts");
        let hmgets = || -> u64 {
            let stats = redis.cli(&["info", "commandstats"]);
            let line = stats
                .lines()
                .find(|l| l.starts_with("cmdstat_hmget:"))
                .expect("HMGET ran");
            line.split(['=', ','])
                .nth(1)
                .and_then(|n| n.parse().ok())
                .expect("a count")
        };
        let before = hmgets();
        assert_eq!(a.apply(&[finish("v", t + SEC)], t).await.expect("a"), vec![ok.clone()]);
        let by_a = hmgets() - before;
        let before = hmgets();
        assert_eq!(b.apply(&[finish("w", t + SEC)], t).await.expect("b"), vec![ok]);
        let by_b = hmgets() - before;
        assert!(
            by_a < by_b,
            "HMGETs: {by_a} finishing a remembered start, {by_b} otherwise"
        );
    }

    /// A finish before the start A remembers would be rejected; but A's memory may be
    /// stale (Redis lost the record and the id started again, earlier, on B). A rejection
    /// writes nothing for the script to check, so A plans it again from Redis.
    #[tokio::test]
    async fn a_rejection_planned_from_a_stale_remembered_start_is_planned_again() {
        use tasktime::ingest::Disposition;
        let redis = RedisServer::start(RedisOptions::default());
        let (a, b) = (store(&redis), store(&redis));
        let t = now() - 600 * SEC;
        a.apply(&[start("x", t + 60 * SEC)], t).await.expect("a's start");
        redis.cli(&["flushall"]);
        let ok = Disposition::Accepted { over_range: false };
        assert_eq!(b.apply(&[start("x", t)], t).await.expect("b's start"), vec![ok.clone()]);
        assert_eq!(
            a.apply(&[finish("x", t + 30 * SEC)], t).await.expect("a's finish"),
            vec![ok],
            "30 s after the start in Redis, though before the one A remembers"
        );
        assert_eq!(day_total(&a, t).await, (1, 1));
    }

    /// The task's day total: (started, succeeded), read through `store` (buckets and journal).
    async fn day_total(store: &RedisStore, at: i64) -> (i64, i64) {
        let prefix = keys::task_prefix(&Tenant::default_tenant(), &task());
        let bucket = BucketRef {
            res: Resolution::Day,
            start: Resolution::Day.bucket_start(at),
        };
        let key = keys::task_total(&prefix, &histogram().namespace(), bucket);
        let maps = store
            .read_hashes(&Tenant::default_tenant(), &task(), vec![key])
            .await
            .expect("read");
        let get = |f: &str| maps[0].get(f).unwrap_or(0);
        (get("started"), get(keys::outcome_field(Outcome::Succeeded)))
    }

    /// Two replicas commit, retry and fold the same task's journal at the same time: every
    /// event is counted once, and a read sees all that was acknowledged before it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_folding_the_same_journal_count_every_event_once() {
        let redis = RedisServer::start(RedisOptions::default());
        let (a, b) = (store(&redis), store(&redis));
        let t = now() - 60 * SEC;
        let batch = |who: &str, round: usize| -> Vec<TaskEvent> {
            (0..50).map(|i| completed(&format!("{who}-{round}-{i}"), t)).collect()
        };
        let mut acked = 0;
        for round in 0..30 {
            let for_a = batch("a", round);
            // B also retries its previous batch: duplicates, counted once.
            let for_b = [batch("b", round), batch("b", round.saturating_sub(1))].concat();
            let (ra, rb, _, _) = tokio::join!(
                a.apply(&for_a, t),
                b.apply(&for_b, t),
                day_total(&a, t),
                day_total(&b, t)
            );
            acked += ra
                .expect("a commits")
                .iter()
                .filter(|d| **d != tasktime::ingest::Disposition::Duplicate)
                .count();
            acked += rb
                .expect("b commits")
                .iter()
                .filter(|d| **d != tasktime::ingest::Disposition::Duplicate)
                .count();
            let seen = day_total(&b, t).await;
            assert_eq!(seen, (acked as i64, acked as i64), "after round {round}");
        }
        assert_eq!(acked, 2 * 30 * 50);
        // Reads merge a short journal without folding it: it holds every round. Both
        // flushers fold it at once.
        assert_eq!(redis.cli(&["llen", JOURNAL]).trim(), "60");
        let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
        stop_a.cancel();
        stop_b.cancel();
        tokio::join!(a.clone().run_flusher(stop_a), b.clone().run_flusher(stop_b));
        assert_eq!(redis.cli(&["exists", JOURNAL]).trim(), "0", "folded");
        let folded = day_total(&a, t).await;
        assert_eq!(folded, (acked as i64, acked as i64), "folding kept every count once");
        assert_eq!(
            redis.cli(&["keys", "*:staged:*"]).trim(),
            "",
            "every staged bucket value was renamed over its bucket or deleted"
        );
    }

    /// Folds append to a bucket's tail while it is short and write the bucket whole
    /// once it is long: through many folds of the same buckets, every field reads the
    /// same as in the embedded store.
    #[tokio::test]
    async fn buckets_folded_many_times_read_the_same_as_the_embedded_store() {
        use tasktime::store::MemoryStore;
        let redis = RedisServer::start(RedisOptions::default());
        let store = store(&redis);
        let sem = Semantics {
            abandon_after: Semantics::DEFAULT_ABANDON_AFTER,
            dedupe_horizon: Semantics::DEFAULT_DEDUPE_HORIZON,
            retention: Retention::default(),
            histogram: histogram(),
        };
        let memory = MemoryStore::new(Arc::new(sem));
        // A minute ago, but today: a bucket whose period is over is written whole, and
        // this test watches the day bucket's tail.
        let t = (now() - 60 * SEC).max(Resolution::Day.bucket_start(now()) * SEC);
        let prefix = keys::task_prefix(&Tenant::default_tenant(), &task());
        let namespace = histogram().namespace();
        let read_keys: Vec<String> = [Resolution::Minute, Resolution::Hour, Resolution::Day]
            .into_iter()
            .map(|res| {
                let at = BucketRef {
                    res,
                    start: res.bucket_start(t),
                };
                keys::task_total(&prefix, &namespace, at)
            })
            .collect();
        let day_tail = keys::tail(&read_keys[2]);
        let (mut tails_seen, mut rewrites) = (0, 0);
        let mut last_tail = 0;
        for round in 0..60 {
            // Durations spread over many bins, so each fold adds new lines.
            let events: Vec<TaskEvent> = (0..40)
                .map(|i| {
                    let mut e = completed(&format!("r{round}-{i}"), t);
                    if let EventKind::Completed { duration, .. } = &mut e.kind {
                        *duration = (1 + (round * 40 + i) as i64 * 7_919 % 3_000_000) * 1_000 / 997;
                    }
                    e
                })
                .collect();
            store.apply(&events, t).await.expect("redis commits");
            memory.apply(&events, t).await.expect("memory commits");
            let stop = CancellationToken::new();
            stop.cancel(); // one pass: fold what is there
            store.clone().run_flusher(stop).await;
            assert_eq!(redis.cli(&["exists", JOURNAL]), "0", "round {round} folded");
            let tail: usize = redis.cli(&["strlen", &day_tail]).parse().expect("a number");
            if tail > 0 {
                tails_seen += 1;
            }
            if tail < last_tail {
                rewrites += 1;
            }
            last_tail = tail;
            let from_redis = store
                .read_hashes(&Tenant::default_tenant(), &task(), read_keys.clone())
                .await
                .expect("read redis");
            let from_memory = memory
                .read_hashes(&Tenant::default_tenant(), &task(), read_keys.clone())
                .await
                .expect("read memory");
            for ((key, a), b) in read_keys.iter().zip(&from_redis).zip(&from_memory) {
                assert_eq!(a.to_map(), b.to_map(), "{key} after round {round}");
            }
        }
        assert!(
            tails_seen > 10,
            "folds appended to the day bucket's tail ({tails_seen} rounds)"
        );
        assert!(rewrites > 0, "and wrote it whole again once its tail was long");
        let base: usize = redis.cli(&["strlen", &read_keys[2]]).parse().expect("a number");
        assert!(
            last_tail < (base / 2).max(4096) + 4096,
            "a tail stays short next to its base: {last_tail} against {base} bytes"
        );
    }

    /// A replica that stopped before folding leaves its journal behind; the next replica
    /// to start finds it and folds it, without waiting for a write or a query.
    #[tokio::test]
    async fn a_journal_left_behind_is_folded_by_the_next_replica_to_start() {
        let redis = RedisServer::start(RedisOptions::default());
        let t = now() - 60 * SEC;
        let gone = store(&redis);
        let events: Vec<_> = (0..10).map(|i| completed(&format!("left-{i}"), t)).collect();
        gone.apply(&events, t).await.expect("commit");
        assert_eq!(redis.cli(&["llen", JOURNAL]).trim(), "1", "one round, one entry");
        drop(gone);

        let next = store(&redis);
        let stop = CancellationToken::new();
        stop.cancel(); // one pass: find the journals, fold them, return
        next.clone().run_flusher(stop).await;
        assert_eq!(redis.cli(&["exists", JOURNAL]).trim(), "0");
        assert_eq!(day_total(&next, t).await, (10, 10), "read from the buckets alone");
    }

    /// The fold script itself: it puts a fold's staged values in place only while the
    /// journal still starts with the entries the flusher read (so nothing changed the
    /// buckets since it read them), so a stale or concurrent flusher changes nothing; a
    /// refused fold deletes what it staged; a fold whose staged value is gone changes
    /// nothing.
    #[test]
    fn a_fold_applies_only_to_the_entries_it_read() {
        let redis = RedisServer::start(RedisOptions::default());
        let script = include_str!("../../src/store/lua/flush.lua");
        let bucket = "tt:v2:{default|checkout}:b";
        let tail = "tt:v2:{default|checkout}:b:tail";
        let staged = "tt:v2:{default|checkout}:b:staged:f1";
        // Folds `n` entries starting with `token` into the one bucket: `w` renames the
        // staged value over it, `a` and `b` append `lines`.
        let run = |n: &str, token: &str, mode: &str, lines: &str| {
            let mut args = vec!["eval", script, "3", JOURNAL, bucket, tail];
            if mode == "w" {
                args[2] = "4";
                args.push(staged);
            }
            args.extend([n, token, "60000", "1", "99999999999999", mode, lines]);
            redis.cli(&args)
        };
        // Stages the bucket `x <x>`, then folds `n` entries starting with `token`, the
        // bucket written whole; the script's reply's first line.
        let fold = |n: &str, token: &str, x: &str| {
            redis.cli(&["set", staged, &format!("x {x}"), "PX", "60000"]);
            run(n, token, "w", "").lines().next().unwrap_or_default().to_owned()
        };
        let x = || redis.cli(&["get", bucket]);
        let staged_exists = || redis.cli(&["exists", staged]) == "1";
        redis.cli(&["rpush", JOURNAL, "t1\nb 1 x 2", "t2\nb 1 x 3"]);
        assert_eq!(fold("2", "t1", "5"), "1");
        assert_eq!(x(), "x 5");
        assert!(!staged_exists(), "the staged value was renamed over the bucket");
        assert_eq!(redis.cli(&["exists", JOURNAL]), "0", "both entries removed");
        assert_eq!(
            fold("2", "t1", "10"),
            "0",
            "a stale flusher's second try changes nothing"
        );
        assert_eq!(x(), "x 5");
        assert!(!staged_exists(), "a refused fold deletes what it staged");

        redis.cli(&["rpush", JOURNAL, "t3\nb 1 x 1", "t4\nb 1 x 1", "t5\nb 1 x 1"]);
        assert_eq!(fold("1", "t3", "6"), "1");
        assert_eq!(fold("2", "t3", "7"), "0", "t3 was folded by another flusher");
        assert_eq!(fold("3", "t4", "8"), "0", "only two entries are left, not three");
        assert_eq!(x(), "x 6");
        assert_eq!(redis.cli(&["llen", JOURNAL]), "2", "a refused fold removes nothing");
        assert_eq!(run("2", "t4", "w", ""), "-1", "nothing staged (it expired): refused");
        assert_eq!(x(), "x 6");
        assert_eq!(redis.cli(&["llen", JOURNAL]), "2", "and nothing removed");
        assert_eq!(fold("2", "t4", "8"), "1");
        assert_eq!(x(), "x 8");
        assert_eq!(redis.cli(&["exists", JOURNAL]), "0");
        // A key that lives on for the bucket's retention, not the minute a staged value has.
        let expires_with_the_bucket = |key: &str, why: &str| {
            let ttl: i64 = redis.cli(&["pttl", key]).parse().expect("PTTL is a number");
            assert!(ttl > 60_000, "{why} (PTTL {ttl})");
        };
        expires_with_the_bucket(
            bucket,
            "a folded bucket expires when the bucket does, not when its staged value would",
        );

        // Appending: a fold's sums go after the base as more lines, and the reply gives
        // the lengths of base (`b`; -1 for `a`: not looked at) and tail.
        let append = |token: &str, mode: &str, lines: &str| {
            redis.cli(&["rpush", JOURNAL, &format!("{token}\nb 1 x 1")]);
            run("1", token, mode, lines)
        };
        assert_eq!(
            append("t6", "b", "\nx 2\ny 1"),
            "1\n3\n8",
            "base `x 8`, tail `\\nx 2\\ny 1`"
        );
        assert_eq!(x(), "x 8", "the base is left as it was");
        assert_eq!(redis.cli(&["get", tail]), "x 2\ny 1");
        expires_with_the_bucket(tail, "a tail expires with its bucket");
        assert_eq!(append("t7", "a", "\ny 4"), "1\n-1\n12");
        assert_eq!(redis.cli(&["get", tail]), "x 2\ny 1\ny 4");
        assert_eq!(redis.cli(&["exists", JOURNAL]), "0");
        // Written whole again: the tail goes.
        assert_eq!(fold("1", "t8", "15"), "0", "no entry t8: refused");
        assert_eq!(redis.cli(&["get", tail]), "x 2\ny 1\ny 4", "and the tail kept");
        redis.cli(&["rpush", JOURNAL, "t8\nb 1 x 1"]);
        redis.cli(&["set", staged, "x 10\ny 5", "PX", "60000"]);
        assert_eq!(run("1", "t8", "w", ""), "1\n-1\n0");
        assert_eq!(x(), "x 10\ny 5");
        assert_eq!(redis.cli(&["exists", tail]), "0");
        // A bucket that does not exist yet gets its first sums as its base.
        redis.cli(&["del", bucket]);
        assert_eq!(append("t9", "a", "\nz 1"), "1\n3\n0");
        assert_eq!(x(), "z 1");
        assert_eq!(redis.cli(&["exists", tail]), "0");
        expires_with_the_bucket(bucket, "a bucket created by an append expires with the bucket");
        // A refused append changes nothing.
        assert_eq!(append("t10", "a", "\nz 2").lines().next(), Some("1"));
        assert_eq!(run("1", "t10", "a", "\nz 3"), "0", "t10 was folded already");
        assert_eq!(redis.cli(&["get", tail]), "z 2");
    }

    /// A read merges a short journal itself, but folds a long one first, so reads do not
    /// each parse a long journal again.
    #[tokio::test]
    async fn a_read_folds_a_long_journal_first() {
        let redis = RedisServer::start(RedisOptions::default());
        let store = store(&redis);
        let t = now() - 60 * SEC;
        for round in 0..64 {
            store
                .apply(&[completed(&format!("s-{round}"), t)], t)
                .await
                .expect("commit");
        }
        assert_eq!(day_total(&store, t).await, (64, 64));
        assert_eq!(
            redis.cli(&["llen", JOURNAL]).trim(),
            "64",
            "64 entries: merged, not folded"
        );
        store.apply(&[completed("s-64", t)], t).await.expect("commit");
        assert_eq!(day_total(&store, t).await, (65, 65));
        assert_eq!(redis.cli(&["exists", JOURNAL]).trim(), "0", "65 entries: folded first");
    }

    /// A read of some series' buckets adds to them what the unfolded journal holds for
    /// them, and nothing of the other series; a read of the task's total adds every
    /// series'.
    #[tokio::test]
    async fn a_read_of_one_series_sees_its_unfolded_events_only() {
        let redis = RedisServer::start(RedisOptions::default());
        let store = store(&redis);
        let t = now() - 60 * SEC;
        let labelled = |id: &str, release: &str| TaskEvent {
            labels: Labels::parse("labels", [("release".to_owned(), release.to_owned())], 16, 128).expect("labels"),
            ..completed(id, t)
        };
        let events = [
            labelled("a-1", "1"),
            labelled("a-2", "1"),
            labelled("b-1", "2"),
            labelled("a-3", "1"),
            labelled("b-2", "2"),
        ];
        for pair in events.chunks(2) {
            store.apply(pair, t).await.expect("commit");
        }
        assert_eq!(redis.cli(&["llen", JOURNAL]).trim(), "3", "three entries, not folded");
        let prefix = keys::task_prefix(&Tenant::default_tenant(), &task());
        let namespace = histogram().namespace();
        let (one, two) = (events[0].labels.series_id(), events[2].labels.series_id());
        let at = |res: Resolution| BucketRef {
            res,
            start: res.bucket_start(t),
        };
        let read = |keys: Vec<String>| {
            let store = store.clone();
            async move {
                let maps = store
                    .read_hashes(&Tenant::default_tenant(), &task(), keys)
                    .await
                    .expect("read");
                maps.iter()
                    .map(|m| m.get(keys::outcome_field(Outcome::Succeeded)).unwrap_or(0))
                    .collect::<Vec<i64>>()
            }
        };
        let series_keys = vec![
            keys::bucket(&prefix, &namespace, at(Resolution::Minute), one),
            keys::bucket(&prefix, &namespace, at(Resolution::Day), one),
            keys::bucket(&prefix, &namespace, at(Resolution::Hour), one),
        ];
        assert_eq!(read(series_keys).await, [3, 3, 3]);
        let mixed = vec![
            keys::bucket(&prefix, &namespace, at(Resolution::Day), two),
            keys::task_total(&prefix, &namespace, at(Resolution::Day)),
            keys::bucket(&prefix, &namespace, at(Resolution::Minute), one),
        ];
        assert_eq!(read(mixed).await, [2, 5, 3]);
        let other = vec![keys::bucket(&prefix, &namespace, at(Resolution::Minute), SeriesId(1))];
        assert_eq!(read(other).await, [0]);
    }

    /// With no flusher running (or one that is behind), commit rounds fold the journal
    /// themselves once it is long (16,384 entries: src/store/redis.rs, `FOLD_BACKLOG`):
    /// it stays bounded, and nothing is lost.
    #[tokio::test]
    async fn rounds_fold_a_long_journal_themselves() {
        const BACKLOG: usize = 16_384;
        let redis = RedisServer::start(RedisOptions::default());
        let store = store(&redis);
        let t = now() - 60 * SEC;
        let rounds = BACKLOG + 300;
        let mut longest = 0;
        for round in 0..rounds {
            let event = completed(&format!("r-{round}"), t);
            store.apply(std::slice::from_ref(&event), t).await.expect("commit");
            // The length after every round near and past the threshold, where the rounds
            // fold (a `redis-cli` per round all along would take minutes).
            if round % 1_000 == 0 || round + 200 >= BACKLOG {
                let len: usize = redis.cli(&["llen", JOURNAL]).trim().parse().expect("a number");
                longest = longest.max(len);
            }
        }
        assert!(longest <= BACKLOG + 1, "the journal grew to {longest} entries");
        assert!(
            longest > BACKLOG - 100,
            "one round per entry until the rounds fold: {longest}"
        );
        assert_eq!(day_total(&store, t).await, (rounds as i64, rounds as i64));
    }
}
