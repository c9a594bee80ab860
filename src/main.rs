//! The `tasktime` binary: parses the command line, starts logging, runs the subcommand.

use clap::Parser as _;
use tasktime::cli::{self, Cli, Command};

/// mimalloc instead of the system allocator: the ingest path allocates per event
/// (decoded protobuf, keys, plans), and glibc's malloc and free took about 45 % of the
/// service's CPU under load (perf, stream of paired events).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Transparent huge pages off for this process, as Redis does for itself (`disable-thp`).
/// mimalloc asks the kernel for huge pages for its arenas (`madvise`), and a thread that
/// touches a fresh one waits while the kernel zeroes 2 MB at once (first compacting memory
/// when none is free). Folds allocate megabytes in bursts, so those waits came in bursts:
/// unary calls at 10,000/s against Redis had p99 2.81-4.89 ms with huge pages and
/// 2.04-3.05 ms without (six runs each, alternating), and streams did not slow. The same
/// holds for `tasktime bench`, whose latencies are the measurement.
#[cfg(target_os = "linux")]
fn disable_transparent_huge_pages() -> std::io::Result<()> {
    Ok(rustix::thread::disable_transparent_huge_pages(true)?)
}

#[cfg(not(target_os = "linux"))]
fn disable_transparent_huge_pages() -> std::io::Result<()> {
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let thp = disable_transparent_huge_pages();
    let cli = Cli::parse();
    tasktime::telemetry::init(cli.log_format);
    if let Err(e) = thp {
        tracing::warn!(error = %e, "cannot turn transparent huge pages off for this process; latency may have millisecond spikes");
    }
    let result = match cli.command {
        Command::Serve(args) => cli::serve::run(args).await,
        // Rejected lines exit 1 (the rest were applied); errors exit 2.
        Command::Record(args) => match cli::record::run(args).await {
            Ok(true) => Ok(()),
            Ok(false) => return std::process::ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::Stats(args) => cli::stats::run(args).await,
        Command::Bench(args) => cli::bench::run(args).await,
        // The gate's verdict is its exit code; its errors exit 2 like every other.
        Command::Gate(args) => match cli::gate::run(args).await {
            Ok(code) => return std::process::ExitCode::from(code),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
