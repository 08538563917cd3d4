//! dreamwalk's entry point: logging, arguments, then the library does the work.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let default_filter = format!("info,{}", dreamwalk::gpu::QUIET_WGPU_LOG_DIRECTIVES);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match dreamwalk::cli::run(dreamwalk::cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One clear sentence per cause, no backtrace.
            eprintln!("dreamwalk: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
