//! The `registry` binary: CLI, configuration loading, logging, signals.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use registry::config::{Config, Loaded};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "registry",
    version,
    about = "drydock: an OCI distribution registry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry API. Without CONFIG: ./data on 127.0.0.1:5000, deletes enabled.
    Serve {
        /// A Distribution-style config.yml.
        config: Option<PathBuf>,
    },
}

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    let Loaded {
        config,
        unknown_keys,
    } = Config::load(path, std::env::vars())?;
    init_logging(&config);
    for key in unknown_keys {
        tracing::warn!(key, "unknown configuration key ignored");
    }
    Ok(config)
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| EnvFilter::new(config.log.level.to_ascii_lowercase()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if config.log.formatter == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let root = config.storage.filesystem.rootdirectory.clone();
    std::fs::create_dir_all(&root)
        .with_context(|| format!("cannot create storage root {}", root.display()))?;
    let addr = config.listen_addr();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, root = %root.display(), "drydock registry listening");
    let state = registry::server::state_from_config(&config);
    registry::server::serve(listener, state, config.drain_timeout(), shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Serve { config } => {
            let config = load_config(config.as_deref())?;
            rt.block_on(serve(config))
        }
    }
}
