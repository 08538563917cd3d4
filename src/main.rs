//! dreamwalk's entry point: logging, arguments, then the library does the work.

fn main() -> std::process::ExitCode {
    dreamwalk::gpu::quiet_vulkan_layers();
    dreamwalk::cli::init_logging();
    match dreamwalk::cli::run(dreamwalk::cli::Cli::parse_in_order()) {
        Ok(code) => code,
        Err(e) => {
            // One clear sentence per cause, no backtrace.
            eprintln!("dreamwalk: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
