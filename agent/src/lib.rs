/*!
The Qingnuan gateway agent: reads DL/T 645 and Modbus meters at the tariff
boundaries, spools every batch to disk, and publishes it over MQTT at QoS 1,
deleting it from the spool only when the broker acknowledges it.

# Layout
A reading flows through one module per stage:
- [`config`]: `agent.toml`, checked, with errors that name the key and the line.
- [`bus`]: the only code that touches serial ports and meter sockets: DL/T 645 over
  RS-485 ([`bus::link`]) or a serial server, Modbus RTU/TCP; one task per bus.
- [`schedule`]: when to sweep (boundaries, interval ticks, heartbeats) from the
  shared tariff calendar and an injected `Clock`.
- [`batch`]: one sweep's readings as `readings` envelopes (`seq`, `boot`).
- [`spool`]: the append-only on-disk spool (format and crash invariants at its top).
- [`publish`]: the rumqttc uplink: persistent session, retained status with a last
  will, replay from the spool in order, ack on PUBACK.
- [`status`]: the retained status payloads.
- [`probe`]: the installer's `probe` command.
- [`cli`]: command-line flags (parsed without I/O); `main.rs` only wires them up.

**Invariant:** a batch is in the spool (fsynced) before anything can publish it, and
leaves it only on its PUBACK. **Invariant:** polling never waits on the uplink.
*/

pub mod batch;
pub mod bus;
pub mod cli;
pub mod config;
pub mod probe;
pub mod publish;
pub mod schedule;
pub mod spool;
pub mod status;

use std::sync::{Arc, Mutex};

use qingnuan_shared::calendar::Calendar;
use qingnuan_shared::clock::SharedClock;
use qingnuan_shared::policy::Policy;
use tokio::sync::{mpsc, watch};

use crate::bus::{Bus, BusHandle};
use crate::config::Config;
use crate::publish::UplinkSettings;
use crate::spool::Spool;

/// Why the agent could not start (runtime faults are logged and survived).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The policy file cannot be read or is invalid.
    #[error("policy file {path}: {message}")]
    Policy {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The spool directory is unusable.
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    /// Bad uplink settings (URL, password or CA file).
    #[error(transparent)]
    Publish(#[from] publish::PublishError),
}

/// The policy of the config: the file, or the built-in Beijing 2018 policy.
pub fn load_policy(config: &Config) -> Result<Policy, AgentError> {
    let Some(path) = &config.policy_file else {
        return Ok(Policy::beijing_2018());
    };
    let err = |message: String| AgentError::Policy {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    Policy::from_toml_str(&text).map_err(|e| err(format!("{}: {}", e.key, e.message)))
}

/// Runs the agent until `shutdown` turns true: opens the spool, starts one task per
/// bus and the uplink, and runs the schedule. On shutdown the uplink publishes the
/// offline status and disconnects.
pub async fn run(
    config: Config,
    clock: SharedClock,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let policy = load_policy(&config)?;
    let utc_offset_s = policy.utc_offset_s;
    let (spool, report) = Spool::open(&config.spool.dir, config.spool.max_bytes)?;
    if report.torn_tail_bytes > 0 || !report.corrupt_files.is_empty() || report.cursor_lost {
        tracing::warn!(
            torn_tail_bytes = report.torn_tail_bytes,
            corrupt_files = ?report.corrupt_files,
            skipped_bytes = report.skipped_bytes,
            cursor_lost = report.cursor_lost,
            "spool repaired"
        );
    }
    tracing::info!(dir = %config.spool.dir.display(), unacked = report.unacked, "spool open");
    let spool = Arc::new(Mutex::new(spool));
    let buses: Vec<BusHandle> = config
        .buses
        .iter()
        .map(|b| BusHandle::spawn(Bus::new(b, utc_offset_s, clock.clone())))
        .collect();
    let settings = UplinkSettings {
        gw: config.gateway_id.clone(),
        url: config.mqtt.url.clone(),
        client_id: config.client_id(),
        username: config.mqtt.username.clone(),
        password_file: config.mqtt.password_file.clone(),
        ca_file: config.mqtt.ca_file.clone(),
        keep_alive_s: config.mqtt.keep_alive_s,
        reconnect_max_s: config.mqtt.reconnect_max_s,
        meters: u32::try_from(config.meter_count()).unwrap_or(u32::MAX),
    };
    // Resolve the uplink settings (password, CA) before starting anything.
    publish::mqtt_options(&settings)?;
    let (tx, rx) = mpsc::channel(16);
    let uplink = tokio::spawn(publish::run(
        settings,
        spool.clone(),
        clock.clone(),
        rx,
        shutdown.clone(),
    ));
    // Replay what the last run left.
    let _ = tx.try_send(publish::Uplink::NewBatches {
        hold: std::time::Duration::ZERO,
    });
    let schedule = schedule::Schedule {
        cal: Calendar::new(policy),
        interval_s: i64::try_from(config.schedule.interval_s).unwrap_or(i64::MAX),
        always: config.schedule.always,
    };
    let poll = schedule::PollSettings {
        heartbeat_s: i64::try_from(config.schedule.heartbeat_s).unwrap_or(i64::MAX),
        clock_every: config.schedule.clock_every,
        publish_delay_max_s: config.mqtt.publish_delay_max_s,
    };
    let batcher = batch::Batcher::new(config.gateway_id.clone());
    tracing::info!(gateway = %config.gateway_id, boot = batcher.boot(), buses = buses.len(), "agent running");
    schedule::run(schedule, poll, clock, buses, batcher, spool, tx, shutdown).await;
    match uplink.await {
        Ok(r) => r?,
        Err(e) => tracing::error!(error = %e, "uplink task failed"),
    }
    Ok(())
}
