//! `qingnuan-agent`: parse flags, load the config, run until SIGTERM / Ctrl-C.

use anyhow::Context as _;
use clap::Parser;
use qingnuan_agent::cli::{Cli, Command};
use qingnuan_agent::config::Config;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // A current-thread runtime: the agent is I/O bound and small.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Some(Command::CheckConfig { config }) => match Config::load(&config) {
            Ok(c) => {
                print!("OK {}\n{}", config.display(), c.summary());
                Ok(())
            }
            Err(e) => {
                eprintln!("{}: {e}", config.display());
                std::process::exit(2);
            }
        },
        Some(Command::Probe(args)) => {
            let report = rt.block_on(qingnuan_agent::probe::probe(&args))?;
            print!("{report}");
            Ok(())
        }
        Some(Command::Run { config }) => run(&rt, &config),
        None => match cli.config {
            Some(config) => run(&rt, &config),
            None => anyhow::bail!("give --config FILE (or a subcommand; see --help)"),
        },
    }
}

fn run(rt: &tokio::runtime::Runtime, path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let clock = qingnuan_shared::clock::from_env().context("QINGNUAN_CLOCK")?;
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("stopping");
            let _ = tx.send(true);
        });
        qingnuan_agent::run(config, clock, rx).await
    })?;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
