//! A seconds-long smoke run of `tasktime bench` in every mode: it runs, acknowledges what
//! it sends, and prints the documented summary. Asserts nothing about speed.

use std::process::Command;

use crate::helpers::*;

fn bench(addr: std::net::SocketAddr, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tasktime"))
        .args([
            "bench",
            "--server",
            &format!("http://{addr}"),
            "--duration",
            "1s",
            "--json",
        ])
        .args(["--connections", "2", "--preload", "2000"])
        .args(args)
        .output()
        .expect("run tasktime bench");
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON summary object")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_runs_and_reports_the_documented_summary() {
    let app = spawn_app(Backend::Memory).await;
    for args in [
        vec!["--mode", "stream", "--batch-size", "200"],
        vec!["--mode", "stream", "--workload", "completed", "--batch-size", "200"],
        vec!["--mode", "batch", "--batch-size", "100"],
        vec!["--mode", "unary", "--rate", "500"],
        vec!["--mode", "query"],
        vec!["--mode", "gate"],
    ] {
        let s = bench(app.addr, &args);
        for field in [
            "mode",
            "events_sent",
            "events_acked",
            "duration_s",
            "events_per_sec",
            "latency_us",
        ] {
            assert!(!s[field].is_null(), "{args:?}: summary lacks {field}: {s}");
        }
        for q in ["p50", "p99", "p999", "max"] {
            assert!(s["latency_us"][q].as_u64().is_some(), "{args:?}: latency_us.{q}: {s}");
        }
        assert_eq!(s["errors"], 0, "{args:?}: {s}");
        // Send lag is an open-loop figure: there only, and null in closed loop.
        assert_eq!(
            s["send_lag_us"].is_null(),
            !args.contains(&"--rate"),
            "{args:?}: send_lag_us: {s}"
        );
        assert!(s["requests"].as_u64().unwrap_or(0) > 0, "{args:?}: {s}");
        if !matches!(args[1], "query" | "gate") {
            assert!(s["events_acked"].as_u64().unwrap_or(0) > 0, "{args:?}: {s}");
            assert_eq!(
                s["events_acked"], s["events_sent"],
                "{args:?}: every event acknowledged: {s}"
            );
        }
    }
    app.stop().await;
}

/// `--warmup` sends first, at the same rate, and counts only what follows: at 500 calls/s
/// for 1 s after a 1 s warm-up, about 500 calls are counted, not 1,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warmup_is_sent_but_not_counted() {
    let app = spawn_app(Backend::Memory).await;
    let s = bench(app.addr, &["--mode", "unary", "--rate", "500", "--warmup", "1s"]);
    assert_eq!(s["warmup_s"], 1.0, "{s}");
    let counted = s["requests"].as_u64().unwrap_or(0);
    assert!(
        (400..=510).contains(&counted),
        "the second after the warm-up holds 500 intended sends, {counted} counted: {s}"
    );
    assert_eq!(s["errors"], 0, "{s}");
    // Open loop: how late the generator issued the counted requests, beside their latency.
    for q in ["p50", "p99", "p999", "max"] {
        assert!(s["send_lag_us"][q].as_u64().is_some(), "send_lag_us.{q}: {s}");
    }
    assert!(
        s["send_lag_us"]["max"].as_u64() <= s["latency_us"]["max"].as_u64(),
        "a request's latency counts its send lag: {s}"
    );
    app.stop().await;
}
