//! `qingnuan-server`: parse flags, load the config, call [`qingnuan_server::run`] (or
//! the one-shot `registry import` and `export` commands).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use qingnuan_server::config::Config;
use qingnuan_server::demo::{self, DemoOptions};
use qingnuan_server::{export, recompute, registry, store::Store};
use qingnuan_shared::calendar::{Night, Season};

/// Qingnuan server: ingest, store, off-peak computation, HTTP API.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (plain `qingnuan-server --config …` runs the server).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (ingest, recompute, HTTP API).
    Run,
    /// A whole simulated village (embedded broker and store, real agents, simulated
    /// meters, an accelerated clock); no flags needed. Ctrl-C stops, running again resumes.
    Demo {
        /// Simulated seconds per real second (720: a 12-hour night in one minute).
        #[arg(long, default_value_t = demo::DEFAULT_SPEED)]
        speed: u32,
        /// Dashboard and API address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Start over instead of resuming what --dir holds.
        #[arg(long)]
        fresh: bool,
        /// Directory of the demo's store, spools and state.
        #[arg(long, default_value = "qingnuan-demo")]
        dir: PathBuf,
        /// Embedded MQTT broker address (loopback; port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:0")]
        mqtt_listen: SocketAddr,
        /// First simulated day of a new village, YYYY-MM-DD (default: today in a heating
        /// season, else December 1).
        #[arg(long)]
        start: Option<Night>,
    },
    /// Registry commands.
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// API token commands.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Settle the nights before a date: keep of their readings only those the figures
    /// rest on (docs/bounded-state.md). Figures do not change. Afterwards readings,
    /// registry changes and a policy that reach before the cut are refused. Safe to run
    /// again and while the server runs.
    Settle {
        /// Nights labelled before this local date (YYYY-MM-DD) are settled: the cut is
        /// its 08:00 (the window's close), UTC.
        #[arg(long)]
        before: qingnuan_shared::calendar::Night,
    },
    /// Write every household's statement of a season (figures recomputed first).
    Export {
        /// Season, e.g. 2025-2026.
        #[arg(long)]
        season: Season,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Csv)]
        format: Format,
        /// Only this district.
        #[arg(long)]
        district: Option<String>,
        /// Only this village.
        #[arg(long)]
        village: Option<String>,
        /// One household's statement with every night and its quality instead (CSV: one
        /// row per night and a closing total row; JSON: the statement with `each_night`).
        #[arg(long, conflicts_with_all = ["district", "village"])]
        household: Option<String>,
        /// Language of the CSV headers: en or zh.
        #[arg(long, default_value = "en")]
        lang: export::Lang,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// Import (insert or update) households and meters from a registry CSV.
    Import {
        /// The CSV file (CONTRACT.md "Registry CSV").
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a new token, print it once, and append its SHA-256 to `[auth] tokens_file`.
    Add {
        /// Who holds it (goes to the audit log).
        #[arg(long)]
        name: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: qingnuan_server::http::auth::Role,
        /// Tokens file (default: `[auth] tokens_file` of --config).
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Csv,
    Json,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo narrates on standard output; its logs only say what went wrong (and the
    // embedded broker's per-connection chatter is off).
    let default_filter = match cli.command {
        Some(Command::Demo { .. }) => "warn,qingnuan_agent=error,rumqttd=off".to_owned(),
        _ => format!("info,{}", qingnuan_server::broker::LOG_DIRECTIVE),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let config = || -> anyhow::Result<Config> {
            let path = cli
                .config
                .as_deref()
                .context("--config <FILE> is required")?;
            Ok(Config::load(path)?)
        };
        match cli.command {
            None | Some(Command::Run) => {
                Ok(qingnuan_server::run(config()?, shutdown_signal()).await?)
            }
            Some(Command::Demo {
                speed,
                listen,
                fresh,
                dir,
                mqtt_listen,
                start,
            }) => {
                if cli.config.is_some() {
                    bail!("demo takes no --config: it runs its own broker, store and village");
                }
                let opts = DemoOptions {
                    dir,
                    listen,
                    mqtt_listen,
                    speed,
                    fresh,
                    start,
                };
                Ok(demo::run(opts, shutdown_signal()).await?)
            }
            Some(Command::Registry {
                command: RegistryCommand::Import { file },
            }) => {
                let cfg = config()?;
                let policy = cfg.load_policy()?;
                let data =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let store = Store::open(&cfg.store.url).await?;
                let now = qingnuan_shared::clock::from_env()?.now();
                let sum = registry::import(&store, &data, &policy, "cli", now)
                    .await
                    .with_context(|| format!("{} was not imported", file.display()))?;
                println!("{}", serde_json::to_string(&sum)?);
                store.close().await;
                Ok(())
            }
            Some(Command::Token {
                command: TokenCommand::Add { name, role, file },
            }) => {
                use qingnuan_server::http::auth;
                let file = match file {
                    Some(f) => f,
                    None => auth::AuthConfig::of(&config()?)?
                        .tokens_file
                        .context("no --file and no [auth] tokens_file in --config")?,
                };
                let token = auth::add_token(&file, &name, role)?;
                eprintln!(
                    "added {role} token {name:?} to {} (shown once, keep it):",
                    file.display()
                );
                println!("{token}");
                Ok(())
            }
            Some(Command::Settle { before }) => {
                let cfg = config()?;
                let policy = cfg.load_policy()?;
                let store = Store::open(&cfg.store.url).await?;
                let now = qingnuan_shared::clock::from_env()?.now();
                let mut engine = qingnuan_server::engine::Engine::new(policy);
                let cut = qingnuan_server::settle::cut_of(&engine, before);
                if cut > now {
                    bail!("--before {before}: its cut ({cut}) has not passed yet");
                }
                let sum = qingnuan_server::settle::settle(&store, &mut engine, cut, now)
                    .await
                    .context("settling")?;
                println!("{}", serde_json::to_string(&sum)?);
                store.close().await;
                Ok(())
            }
            Some(Command::Export {
                season,
                format,
                district,
                village,
                household,
                lang,
                out,
            }) => {
                let cfg = config()?;
                let policy = cfg.load_policy()?;
                let store = Store::open(&cfg.store.url).await?;
                let now = qingnuan_shared::clock::from_env()?.now();
                recompute::drain(
                    &store,
                    &mut qingnuan_server::engine::Engine::new(policy),
                    now,
                )
                .await?;
                let bytes = if let Some(id) = household {
                    let h = store
                        .household(&id)
                        .await?
                        .with_context(|| format!("household {id} is not in the registry"))?;
                    let name = season.to_string();
                    let (st, nights) = match store.statement(&id, &name).await? {
                        Some(st) => (st, store.nights(&id, &name).await?),
                        None => recompute::compute(
                            &store,
                            &mut qingnuan_server::engine::Engine::new(policy),
                            &id,
                            season,
                            now,
                            false,
                        )
                        .await?
                        .with_context(|| format!("household {id} is not in the registry"))?,
                    };
                    match format {
                        Format::Csv => export::household_csv(
                            &st,
                            &[h.district, h.town, h.village],
                            &nights,
                            lang,
                        )?,
                        Format::Json => {
                            serde_json::to_vec_pretty(&export::household_json(&st, &nights))?
                        }
                    }
                } else {
                    let rows = store
                        .statements(&season.to_string(), district.as_deref(), village.as_deref())
                        .await?;
                    match format {
                        Format::Csv => export::statements_csv_lang(&rows, lang)?,
                        Format::Json => serde_json::to_vec_pretty(&export::statements_json(&rows))?,
                    }
                };
                match out {
                    Some(path) => std::fs::write(&path, bytes)
                        .with_context(|| format!("writing {}", path.display()))?,
                    None => std::io::Write::write_all(&mut std::io::stdout(), &bytes)?,
                }
                store.close().await;
                Ok(())
            }
        }
    })
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
