//! Command-line flags, parsed without I/O (clap derive); `main.rs` turns them into actions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Qingnuan gateway agent: reads the heat-pump meters at the off-peak boundaries
/// (20:00, 08:00, season edges) and publishes over MQTT, spooling to disk so that
/// nothing is lost when the uplink drops.
///
/// Typical installation: write /etc/qingnuan/agent.toml (see deploy/agent.example.toml),
/// find the meters with `probe`, check with `check-config`, then enable the service.
#[derive(Debug, Parser)]
#[command(name = "qingnuan-agent", version, propagate_version = true)]
pub struct Cli {
    /// Config file (for the plain `qingnuan-agent --config FILE` form of `run`).
    #[arg(long, short, global = false)]
    pub config: Option<PathBuf>,
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (read, spool, publish) until stopped.
    Run {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file: prints OK and a summary, or the error with its key and line.
    CheckConfig {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Find DL/T 645 meters on a line and print their registers.
    Probe(ProbeArgs),
}

/// `probe` flags.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("link").required(true).args(["tcp", "device"])))]
pub struct ProbeArgs {
    /// Serial server, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub tcp: Option<String>,
    /// Serial device, e.g. /dev/ttyUSB0.
    #[arg(long, value_name = "PATH")]
    pub device: Option<PathBuf>,
    /// Baud rate (serial).
    #[arg(long, default_value_t = 2400)]
    pub baud: u32,
    /// Parity (serial): even, odd or none.
    #[arg(long, default_value = "even")]
    pub parity: String,
    /// Meter addresses (12 digits) to read; without any, the line must hold exactly one
    /// meter and its address is asked with read-address (13H).
    #[arg(long = "meter", value_name = "ADDR")]
    pub meters: Vec<String>,
    /// Response timeout, ms.
    #[arg(long, default_value_t = 1500)]
    pub timeout_ms: u64,
}
