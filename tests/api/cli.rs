//! The README's worked example, run as a newcomer would: `tasktime record` a JSON-lines
//! file with a duplicate and a bad line, then `tasktime stats`, table and JSON.

use std::process::Command;

use crate::helpers::*;

fn rfc3339(at: i64) -> String {
    tasktime::cli::client::fmt_time(at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_worked_example_records_and_reads_back() {
    let app = spawn_app(Backend::Memory).await;
    let server = format!("http://{}", app.addr);
    let now = now();
    let lines = [
        format!(
            r#"{{"task":"checkout","instanceId":"a1","at":"{}","labels":{{"release":"2.4.0","platform":"ios"}},"start":{{}}}}"#,
            rfc3339(now - 95 * SEC)
        ),
        format!(
            r#"{{"task":"checkout","instanceId":"a1","at":"{}","finish":{{"outcome":"OUTCOME_SUCCEEDED"}}}}"#,
            rfc3339(now - 52 * SEC)
        ),
        r#"{"task":"checkout","instanceId":"a2","labels":{"release":"2.4.0","platform":"web"},"completed":{"duration":"31.5s","outcome":"OUTCOME_SUCCEEDED"}}"#.to_owned(),
        r#"{"task":"checkout","instanceId":"a3","labels":{"release":"2.3.1","platform":"web"},"completed":{"duration":"58s","outcome":"OUTCOME_FAILED"}}"#.to_owned(),
        r#"{"task":"checkout","instanceId":"a3","labels":{"release":"2.3.1","platform":"web"},"completed":{"duration":"58s","outcome":"OUTCOME_FAILED"}}"#.to_owned(),
        r#"{"task":"Checkout","instanceId":"a4","start":{}}"#.to_owned(),
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").expect("write events");
    let out = Command::new(env!("CARGO_BIN_EXE_tasktime"))
        .args(["record", "--server", &server])
        .arg(&file)
        .output()
        .expect("run tasktime record");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a rejected line exits 1: {stdout}");
    assert!(
        stdout.starts_with("sent 6 events: 4 accepted, 1 duplicates, 1 rejected"),
        "{stdout}"
    );
    assert!(
        stdout.contains("line 6: events[5].task `Checkout` is not valid"),
        "{stdout}"
    );

    let stats = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tasktime"))
            .args(["stats", "--server", &server, "--task", "checkout"])
            .args(args)
            .output()
            .expect("run tasktime stats");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let table = stats(&["--last", "1h"]);
    assert!(table.contains("started      3"), "{table}");
    assert!(
        table.contains("finished     2 succeeded, 1 failed, 0 cancelled; 0 abandoned"),
        "{table}"
    );
    assert!(table.contains("success rate 66.7%"), "{table}");
    assert!(table.contains("customer time 1m 14s"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&stats(&["--filter", "release=2.4.0", "--json"])).expect("JSON");
    assert_eq!(json["count"], "2");
    assert_eq!(json["totalTime"], "74.500s");

    // A clean file exits 0; a missing server exits 2 with the address in the message.
    std::fs::write(&file, &lines[2]).expect("write");
    let ok = Command::new(env!("CARGO_BIN_EXE_tasktime"))
        .args(["record", "--server", &server])
        .arg(&file)
        .output()
        .expect("record");
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stdout));
    let down = Command::new(env!("CARGO_BIN_EXE_tasktime"))
        .args([
            "stats",
            "--task",
            "x",
            "--server",
            &format!("http://127.0.0.1:{}", free_port()),
        ])
        .output()
        .expect("stats");
    assert_eq!(down.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("cannot connect"),
        "{down:?}"
    );
    app.stop().await;
}
