//! The `tasktime` binary: parses the command line, starts logging, runs the subcommand.

use clap::Parser as _;
use tasktime::cli::{self, Cli, Command};

/// mimalloc instead of the system allocator: the ingest path allocates per event
/// (decoded protobuf, keys, plans), and glibc's malloc and free took about 45 % of the
/// service's CPU under load (perf, stream of paired events).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tasktime::telemetry::init(cli.log_format);
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
