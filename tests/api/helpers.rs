//! Test harness: the service in-process on a free port (`spawn_app`), the service as a
//! real process (`ServiceProcess`), real `redis-server` processes on free ports
//! (`RedisServer`), and event builders.
//!
//! Nothing here skips: a missing `redis-server` fails the test with how to install it.
//! Set `TEST_LOG=1` to see the service's logs.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use tasktime::App;
use tasktime::config::Config;
use tasktime::pb;
use tasktime::pb::ingest_service_client::IngestServiceClient;
use tasktime::pb::query_service_client::QueryServiceClient;
use tonic::transport::Channel;

pub type Ingest = IngestServiceClient<Channel>;
pub type Query = QueryServiceClient<Channel>;

pub const SEC: i64 = 1_000_000;

static TRACING: Once = Once::new();

fn init_tracing() {
    TRACING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tasktime::telemetry::init(tasktime::telemetry::LogFormat::Text);
        }
    });
}

/// A port nobody listens on right now, for a child process to bind.
///
/// Drawn below the kernel's ephemeral range (32768 and up on Linux), which neither
/// `bind` to port 0 nor outgoing connections use: a port from there could be taken by
/// one of the many connections the tests open between this check and the child's bind.
/// Each test process walks its own stretch of the range, checking each port is free.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000; // up to 31,999
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let port = LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        let port = u16::try_from(port).expect("below 32768");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between {LOW} and {}", LOW + SPAN - 1);
}

/// Which store a conformance test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Redis,
}

/// The service running in this test process.
pub struct TestApp {
    pub addr: SocketAddr,
    pub ingest: Ingest,
    pub query: Query,
    pub channel: Channel,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// Keeps the Redis server alive as long as the app.
    pub redis: Option<RedisServer>,
}

impl TestApp {
    /// Stops the service (drain period 0) and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server stopped cleanly");
        }
    }
}

/// A config for tests: free port, short drain.
pub fn test_config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("address"),
        drain_period: Duration::ZERO,
        grace_period: Duration::from_secs(10),
        ..Config::default()
    }
}

/// Starts the service on `backend` (a fresh Redis for `Redis`).
pub async fn spawn_app(backend: Backend) -> TestApp {
    match backend {
        Backend::Memory => spawn_app_with(test_config(), None).await,
        Backend::Redis => {
            let redis = RedisServer::start(RedisOptions::default());
            let config = Config {
                redis_url: Some(redis.url()),
                ..test_config()
            };
            spawn_app_with(config, Some(redis)).await
        }
    }
}

/// Starts the service with `config`, keeping `redis` alive with it.
pub async fn spawn_app_with(config: Config, redis: Option<RedisServer>) -> TestApp {
    init_tracing();
    let app = App::build(config).await.expect("build the app");
    let addr = app.local_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    let channel = connect(addr).await;
    TestApp {
        addr,
        ingest: IngestServiceClient::new(channel.clone()),
        query: QueryServiceClient::new(channel.clone()),
        channel,
        stop: Some(tx),
        task: Some(task),
        redis,
    }
}

/// A channel to a server, retrying until it accepts (up to 10 s).
pub async fn connect(addr: SocketAddr) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
        {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("cannot connect to {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------

/// How a test Redis is started.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// AOF with `appendfsync always`: every acknowledged write is on disk.
    pub aof: bool,
    pub port: Option<u16>,
    pub dir: Option<PathBuf>,
    pub extra: Vec<String>,
}

/// A `redis-server` process owned by a test; killed on drop.
pub struct RedisServer {
    pub port: u16,
    pub child: Child,
    /// Holds the data directory (AOF) for the server's lifetime, and restarts.
    pub dir: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
    options: RedisOptions,
}

const INSTALL_REDIS: &str = "redis-server was not found on PATH. These tests start their own Redis \
     processes; install it with `apt-get install -y redis-server` (Debian/Ubuntu) or `brew install redis`";

impl RedisServer {
    /// Starts `redis-server` on a free port and waits until it answers PING.
    pub fn start(options: RedisOptions) -> Self {
        let (dir, tempdir) = match &options.dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::tempdir().expect("temp dir for redis");
                (t.path().to_path_buf(), Some(t))
            }
        };
        let port = options.port.unwrap_or_else(free_port);
        let child = spawn_redis(port, &dir, &options);
        let server = RedisServer {
            port,
            child,
            dir,
            _tempdir: tempdir,
            options,
        };
        server.wait_ready();
        server
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli (installed with redis-server)");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.cli(&["PING"]) == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING within 10 s", self.port);
    }

    /// SIGKILLs the server (no chance to write anything more).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and directory (AOF replayed).
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn_redis(self.port, &self.dir, &self.options);
        self.wait_ready();
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`) to the server.
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal);
    }
}

fn spawn_redis(port: u16, dir: &Path, options: &RedisOptions) -> Child {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .arg("--dir")
        .arg(dir)
        .args(["--daemonize", "no", "--protected-mode", "no", "--loglevel", "warning"]);
    if options.aof {
        cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
    } else {
        cmd.args(["--appendonly", "no"]);
    }
    cmd.args(&options.extra);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL_REDIS}"),
        Err(e) => panic!("cannot start redis-server: {e}"),
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kill -<signal> <pid>`.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

// ---------------------------------------------------------------------------------------
// The service as a process
// ---------------------------------------------------------------------------------------

/// `tasktime serve` as a child process; killed on drop.
pub struct ServiceProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// Log lines after the address line, collected in the background.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ServiceProcess {
    /// Starts `tasktime serve --listen 127.0.0.1:0 <args>` and waits for its address.
    pub fn start(args: &[&str]) -> Self {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Self::start_raw(&all)
    }

    /// Starts `tasktime serve <args>` (the caller chooses `--listen`).
    pub fn start_raw(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tasktime"))
            .args(["serve", "--log-format", "json"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tasktime serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut startup = Vec::new();
        let addr = loop {
            assert!(Instant::now() < deadline, "tasktime serve did not log its address");
            let Some(Ok(line)) = lines.next() else {
                panic!("tasktime serve exited before listening: {:?}", child.wait());
            };
            if std::env::var_os("TEST_LOG").is_some() {
                eprintln!("{line}");
            }
            startup.push(line.clone());
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if json["message"] == "listening" {
                break json["addr"]
                    .as_str()
                    .expect("addr field")
                    .parse()
                    .expect("socket address");
            }
        };
        let log = std::sync::Arc::new(std::sync::Mutex::new(startup));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!("{line}");
                }
                sink.lock().expect("log lock").push(line);
            }
        });
        ServiceProcess { child, addr, log }
    }

    pub async fn ingest(&self) -> Ingest {
        IngestServiceClient::new(connect(self.addr).await)
    }

    /// Every log line so far, from the first.
    pub fn startup_log(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    pub async fn query(&self) -> Query {
        QueryServiceClient::new(connect(self.addr).await)
    }

    /// SIGKILL: no drain, no last commit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `within` for the exit status.
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        send_signal(self.child.id(), "TERM");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for tasktime") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "tasktime did not exit within {within:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Events and queries
// ---------------------------------------------------------------------------------------

/// Now, µs since the epoch.
pub fn now() -> i64 {
    tasktime::domain::now_micros()
}

pub fn ts(at: i64) -> prost_types::Timestamp {
    tasktime::grpc::convert::micros_timestamp(at)
}

pub fn dur(us: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: us / SEC,
        nanos: i32::try_from((us % SEC) * 1000).expect("nanos"),
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn start(task: &str, id: &str, at: i64, l: &[(&str, &str)]) -> pb::TaskEvent {
    pb::TaskEvent {
        task: task.into(),
        instance_id: id.into(),
        at: Some(ts(at)),
        labels: labels(l),
        kind: Some(pb::task_event::Kind::Start(pb::Start {})),
    }
}

pub fn finish(task: &str, id: &str, at: i64, outcome: pb::Outcome) -> pb::TaskEvent {
    pb::TaskEvent {
        task: task.into(),
        instance_id: id.into(),
        at: Some(ts(at)),
        labels: Default::default(),
        kind: Some(pb::task_event::Kind::Finish(pb::Finish {
            outcome: outcome as i32,
        })),
    }
}

pub fn completed(
    task: &str,
    id: &str,
    at: i64,
    duration_us: i64,
    outcome: pb::Outcome,
    l: &[(&str, &str)],
) -> pb::TaskEvent {
    pb::TaskEvent {
        task: task.into(),
        instance_id: id.into(),
        at: Some(ts(at)),
        labels: labels(l),
        kind: Some(pb::task_event::Kind::Completed(pb::Completed {
            duration: Some(dur(duration_us)),
            outcome: outcome as i32,
        })),
    }
}

/// Sends one Record request and expects OK.
pub async fn record(client: &mut Ingest, events: Vec<pb::TaskEvent>) -> pb::RecordResponse {
    client
        .record(pb::RecordRequest { events })
        .await
        .expect("Record succeeds")
        .into_inner()
}

/// A stats request for `task` over `[from, to)`.
pub fn stats_request(task: &str, from: i64, to: i64) -> pb::GetTaskStatsRequest {
    pb::GetTaskStatsRequest {
        task: task.into(),
        from: Some(ts(from)),
        to: Some(ts(to)),
        ..Default::default()
    }
}

pub async fn stats(client: &mut Query, request: pb::GetTaskStatsRequest) -> pb::TaskStats {
    client
        .get_task_stats(request)
        .await
        .expect("GetTaskStats succeeds")
        .into_inner()
}

/// Duration to µs.
pub fn us(d: &Option<prost_types::Duration>) -> i64 {
    let d = d.as_ref().expect("duration set");
    d.seconds * SEC + i64::from(d.nanos) / 1000
}

/// Runs both stores' variants of conformance tests:
/// `both_stores!(a_test_fn, ...)` makes `memory::a_test_fn` and `redis::a_test_fn`.
#[macro_export]
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Memory).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Redis).await
                }
            )*
        }
    };
}
