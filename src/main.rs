//! The `tasktime` binary: parses the command line, starts logging, runs the subcommand.

use clap::Parser as _;
use tasktime::cli::{self, Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tasktime::telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => cli::serve::run(args).await,
        Command::Record(args) => cli::record::run(args).await,
        Command::Stats(args) => cli::stats::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
