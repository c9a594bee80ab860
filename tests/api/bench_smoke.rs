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

/// `tasktime bench` with `args`, unchecked: its exit status, stdout and stderr.
fn bench_raw(server: &str, args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tasktime"))
        .args(["bench", "--server", server])
        .args(args)
        .output()
        .expect("run tasktime bench");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_server_it_cannot_reach_is_named_in_the_error() {
    let server = format!("http://127.0.0.1:{}", free_port());
    let (status, stdout, stderr) = bench_raw(&server, &["--duration", "1s"]);
    assert!(!status.success(), "{stdout}");
    assert!(
        stderr.contains(&format!("cannot connect to {server}")),
        "the error names the server: {stderr}"
    );
    let (status, _, stderr) = bench_raw("127.0.0.1 port 50051", &["--duration", "1s"]);
    assert!(!status.success());
    assert!(
        stderr.contains("--server `127.0.0.1 port 50051` is not a URL"),
        "the error names the bad value: {stderr}"
    );
}

/// Requests the server refuses are counted by status, each with the first message, in the
/// summary and in the human lines; a refused stream is replaced, not the end of its
/// worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_requests_are_counted_by_status_with_the_first_message() {
    let app = spawn_app(Backend::Memory).await;
    let server = format!("http://{}", app.addr);
    // One event more than a request may hold.
    for mode in ["batch", "stream"] {
        let (status, stdout, stderr) = bench_raw(
            &server,
            &[
                "--mode",
                mode,
                "--batch-size",
                "10001",
                "--connections",
                "1",
                "--concurrency",
                "1",
                "--duration",
                "1s",
                "--json",
            ],
        );
        assert!(status.success(), "{mode}: {stderr}");
        let s: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON summary object");
        assert_eq!(s["events_acked"], 0, "{mode}: {s}");
        assert_eq!(s["errors"], s["requests"], "{mode}: every request failed: {s}");
        let first = &s["errors_by_status"][0];
        assert_eq!(first["status"], "INVALID_ARGUMENT", "{mode}: {s}");
        assert!(
            first["example"].as_str().unwrap_or("").contains("10001 events"),
            "{mode}: the example is the server's message: {s}"
        );
        assert!(
            first["count"].as_u64().unwrap_or(0) >= 2,
            "{mode}: the worker went on after the first refusal (a new stream each time): {s}"
        );
    }
    let (_, stdout, _) = bench_raw(
        &server,
        &["--mode", "batch", "--batch-size", "10001", "--duration", "1s"],
    );
    assert!(
        stdout.contains("× INVALID_ARGUMENT, the first: the request has 10001 events"),
        "{stdout}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_lines_go_to_stderr_and_the_summary_to_stdout() {
    let app = spawn_app(Backend::Memory).await;
    let (status, stdout, stderr) = bench_raw(
        &format!("http://{}", app.addr),
        &[
            "--duration",
            "2s",
            "--progress",
            "500ms",
            "--batch-size",
            "100",
            "--json",
        ],
    );
    assert!(status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("bench: ")).collect();
    assert!(lines.len() >= 2, "a line about every 0.5 s: {stderr}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains(" events acked, ") && l.contains(" failed")),
        "{stderr}"
    );
    serde_json::from_str::<serde_json::Value>(&stdout).expect("stdout holds only the summary");
    let (_, _, stderr) = bench_raw(
        &format!("http://{}", app.addr),
        &["--duration", "1s", "--progress", "0s", "--batch-size", "100"],
    );
    assert!(!stderr.contains("bench: "), "`--progress 0s` prints none: {stderr}");
    app.stop().await;
}

/// A replica that restarts mid-run: the workers pause while it is unreachable (a few
/// failed requests, not thousands a second) and go on once it is back.
#[test]
fn a_restarting_server_is_waited_for_not_hammered() {
    let listen = format!("127.0.0.1:{}", free_port());
    let server = format!("http://{listen}");
    for mode in ["unary", "stream"] {
        let mut first = ServiceProcess::start_raw(&["--listen", &listen]);
        let run = {
            let server = server.clone();
            std::thread::spawn(move || {
                bench_raw(
                    &server,
                    &[
                        "--mode",
                        mode,
                        "--duration",
                        "6s",
                        "--progress",
                        "500ms",
                        "--batch-size",
                        "100",
                        "--connections",
                        "2",
                        "--json",
                    ],
                )
            })
        };
        std::thread::sleep(std::time::Duration::from_secs(1));
        first.kill();
        std::thread::sleep(std::time::Duration::from_secs(1));
        let second = ServiceProcess::start_raw(&["--listen", &listen]);
        let (status, stdout, stderr) = run.join().expect("the bench thread");
        drop(second);
        assert!(status.success(), "{mode}: {stderr}");
        let s: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON summary object");
        let unavailable = s["errors_by_status"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["status"] == "UNAVAILABLE")
            .and_then(|e| e["count"].as_u64())
            .unwrap_or(0);
        assert!(unavailable >= 1, "{mode}: the outage shows as UNAVAILABLE: {s}");
        assert!(
            unavailable <= 100,
            "{mode}: the workers pause while the server is away, yet {unavailable} requests failed: {s}"
        );
        // The last progress line's rate: events were acknowledged again after the restart.
        let last = stderr
            .lines()
            .rfind(|l| l.starts_with("bench: "))
            .unwrap_or_else(|| panic!("{mode}: no progress line: {stderr}"));
        let rate: u64 = last
            .split(" events acked, ")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{mode}: cannot read the rate of `{last}`"));
        assert!(rate > 0, "{mode}: acknowledged again after the restart: {stderr}");
    }
}
