//! `tasktime serve` configured the way a container is: only `TASKTIME_*` variables, no
//! flags. Each variable must take effect, a bad one must stop the service with a message
//! naming it, and both log formats must be what they claim.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tasktime::pb::Outcome::Succeeded;
use tasktime::pb::ingest_service_client::IngestServiceClient;
use tasktime::pb::query_service_client::QueryServiceClient;

use crate::helpers::*;

/// `tasktime <args>` with an environment holding only `PATH`, `RUST_LOG=info` and `vars`,
/// so a `TASKTIME_*` variable of the developer's shell cannot leak in.
fn tasktime(args: &[&str], vars: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tasktime"));
    cmd.args(args).env_clear().env("RUST_LOG", "info");
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    for (name, value) in vars {
        cmd.env(name, value);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

/// A running `tasktime serve` whose stderr lines arrive on a channel; killed on drop.
struct Served {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Served {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.spawn().expect("start tasktime serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!("{line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Served {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads stderr until a line satisfies `found` (within 20 s); returns that line.
    fn wait_for_line(&mut self, what: &str, found: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if found(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line {what} within 20 s (exit status {:?}); lines so far: {:#?}",
                    self.child.try_wait(),
                    self.seen
                ),
            }
        }
    }

    /// SIGTERM; expects exit 0 within 15 s, then collects the rest of stderr.
    fn terminate(&mut self) {
        send_signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for tasktime") {
                break status;
            }
            assert!(Instant::now() < deadline, "tasktime serve did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "exit 0 after SIGTERM: {status:?}");
        // The pipe is closed now: the reader thread ends and the channel drains.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses a JSON log line as an object, or fails naming the line.
fn json_object(line: &str) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(map)) => map,
        other => panic!("a log line is not a JSON object ({other:?}): {line}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_configured_only_by_environment_variables_applies_each_one() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut served = Served::spawn(tasktime(
        &["serve"],
        &[
            ("TASKTIME_LISTEN", listen.clone()),
            ("TASKTIME_LOG_FORMAT", "json".into()),
            ("TASKTIME_MAX_LABELS", "2".into()),
            ("TASKTIME_DRAIN_PERIOD", "0s".into()),
        ],
    ));

    // TASKTIME_LOG_FORMAT=json: every line up to and including the address line is a
    // JSON object with a level and a message; the address line names the bound port.
    let listening = served.wait_for_line("saying `listening`", |line| line.contains("listening"));
    for line in &served.seen {
        let object = json_object(line);
        assert!(
            object.get("level").is_some_and(serde_json::Value::is_string),
            "a level in {line}"
        );
        assert!(
            object.get("message").is_some_and(serde_json::Value::is_string),
            "a message in {line}"
        );
    }
    let listening = json_object(&listening);
    assert_eq!(listening["message"], "listening");
    // TASKTIME_LISTEN: it bound exactly that address, and answers there.
    assert_eq!(listening["addr"], listen.as_str(), "{listening:?}");
    let addr: SocketAddr = listen.parse().expect("address");
    let mut ingest = IngestServiceClient::new(connect(addr).await);

    // TASKTIME_MAX_LABELS=2: two labels pass, three (fine under the default 16) do not.
    let t0 = now() - 60 * SEC;
    let two = [("release", "1"), ("platform", "ios")];
    let three = [("release", "1"), ("platform", "ios"), ("region", "eu")];
    let r = record(
        &mut ingest,
        vec![
            completed("checkout", "two", t0, SEC, Succeeded, &two),
            completed("checkout", "three", t0, SEC, Succeeded, &three),
        ],
    )
    .await;
    assert_eq!(r.accepted, 1, "{r:?}");
    assert_eq!(r.rejected.len(), 1, "{r:?}");
    assert_eq!(r.rejected[0].index, 1, "{r:?}");
    let reason = &r.rejected[0].reason;
    assert!(
        reason.contains("labels") && reason.contains("the limit is 2"),
        "the reason names the labels and the limit 2: {reason}"
    );

    // Still JSON through shutdown (TASKTIME_DRAIN_PERIOD=0s keeps it quick).
    served.terminate();
    for line in &served.seen {
        json_object(line);
    }
    assert!(
        served.seen.iter().any(|l| json_object(l)["message"] == "stopped"),
        "{:#?}",
        served.seen
    );
}

/// Runs `tasktime serve` expecting it to refuse to start; returns its stderr.
fn refused(vars: &[(&str, String)]) -> String {
    let mut child = tasktime(&["serve"], vars).spawn().expect("start tasktime serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tasktime serve started with {vars:?}; it should have refused");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("read stderr");
    assert_eq!(status.code(), Some(2), "a configuration error exits 2: {stderr}");
    stderr
}

#[test]
fn a_bad_environment_value_stops_serve_with_a_message_naming_the_variable_and_the_value() {
    let listen = || ("TASKTIME_LISTEN", format!("127.0.0.1:{}", free_port()));
    // Not a duration at all (clap's parsing), not a number, and a duration that parses
    // but is refused by validation: each message names the variable, the flag and the value.
    for (var, value, problem) in [
        ("TASKTIME_ABANDON_AFTER", "banana", "not a duration"),
        ("TASKTIME_MAX_LABELS", "lots", "not a whole number"),
        ("TASKTIME_ABANDON_AFTER", "10ms", "at least 1s"),
    ] {
        let stderr = refused(&[listen(), (var, value.into())]);
        let flag = format!(
            "--{}",
            var.trim_start_matches("TASKTIME_").to_lowercase().replace('_', "-")
        );
        for word in [var, flag.as_str(), value, problem] {
            assert!(stderr.contains(word), "{var}={value}: `{word}` missing from: {stderr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_text_writes_human_readable_lines() {
    // The flag wins over the variable: TASKTIME_LOG_FORMAT=json is overridden.
    let mut served = Served::spawn(tasktime(
        &["serve", "--listen", "127.0.0.1:0", "--log-format", "text"],
        &[
            ("TASKTIME_LOG_FORMAT", "json".into()),
            ("TASKTIME_DRAIN_PERIOD", "0s".into()),
        ],
    ));
    let listening = served.wait_for_line("saying `listening`", |line| line.contains("listening"));
    for line in &served.seen {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_err(),
            "a text log line is not JSON: {line}"
        );
        assert!(
            !line.contains('\u{1b}'),
            "no colour codes when stderr is a pipe: {line:?}"
        );
    }
    // `<timestamp>  INFO tasktime::app: listening addr=127.0.0.1:<port>`
    assert!(listening.contains(" INFO "), "{listening}");
    let addr: SocketAddr = listening
        .split_whitespace()
        .find_map(|word| word.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("an addr=<address> field in {listening}"))
        .parse()
        .expect("the logged address parses");
    assert_ne!(addr.port(), 0, "the bound port, not the requested 0");
    // The logged address is the real one: the service answers there.
    let mut query = QueryServiceClient::new(connect(addr).await);
    let s = stats(&mut query, stats_request("nothing", now() - 60 * SEC, now())).await;
    assert_eq!(s.count, 0);
    served.terminate();
    assert!(
        served
            .seen
            .iter()
            .any(|l| l.contains(" INFO ") && l.contains("stopped")),
        "{:#?}",
        served.seen
    );
}
