//! dreamwalk's entry point: logging, arguments, then the library does the work.

use clap::Parser;
use dreamwalk::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,wgpu_core=warn,wgpu_hal=warn,naga=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Render(args)) => dreamwalk::cli::render(args, &cli.model),
        Some(Command::Bench(args)) => dreamwalk::bench::run(args),
        None => dreamwalk::cli::run_viewer(&cli.model, &cli.viewer),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One clear sentence per cause, no backtrace.
            eprintln!("dreamwalk: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
