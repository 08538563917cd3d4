//! The command line, and nothing else: clap's argument structs, their conversion into the
//! library's types, and the terminal's progress display. `dreamwalk` opens the viewer,
//! `dreamwalk render` runs the same engine headless; the work itself is in [`crate::usecase`]
//! and [`crate::app`].

mod args;
mod progress;
mod values;

pub use args::{Cli, Command, ModelArgs, RenderArgs, Size, ViewerArgs};
pub use progress::RenderBar;

use anyhow::Context;

/// Logs to stderr at INFO (or as `RUST_LOG` says), with wgpu and naga kept below WARN.
pub fn init_logging() {
    let default_filter = format!("info,{}", crate::gpu::QUIET_WGPU_LOG_DIRECTIVES);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Runs what the command line asks for.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Some(Command::Render(args)) => render(args, &cli.model),
        None => run_viewer(&cli.model, &cli.viewer),
    }
}

/// `dreamwalk render`: loads the model, renders the walk, prints what was written.
fn render(args: &RenderArgs, model: &ModelArgs) -> anyhow::Result<()> {
    let (engine, note) = crate::usecase::headless_engine(&model.source(), args.gpu_decode.into())?;
    if let Some(note) = note {
        eprintln!("dreamwalk: {note}");
    }
    let job = args.job(&*engine)?;
    let mut progress = progress::RenderBar::new();
    let summary = crate::usecase::render(engine, &job, &mut progress)?;
    progress.finish();
    eprintln!("{summary}");
    Ok(())
}

/// `dreamwalk` with no subcommand: the desktop viewer.
fn run_viewer(model: &ModelArgs, viewer: &ViewerArgs) -> anyhow::Result<()> {
    let options = viewer.options(model).context("viewer options")?;
    crate::app::run(options)
}
