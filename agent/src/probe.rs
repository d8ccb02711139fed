//! `qingnuan-agent probe`: find the DL/T 645 meters on a line (read-address on a
//! point-to-point line, or a list of addresses) and print their registers.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use qingnuan_shared::clock::SystemClock;
use qingnuan_shared::dlt645::{self, parse_address_reply, Address, Preamble};
use qingnuan_shared::units::{MeterId, Wh};

use crate::bus::dlt645::Dlt645Bus;
use crate::bus::link::{Link, LinkError, SerialSettings, Target};
use crate::cli::ProbeArgs;
use crate::config::{MeterSpec, Parity};

/// Why probing found nothing to read.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A flag is invalid.
    #[error("{0}")]
    Usage(String),
    /// Read-address got no (valid) answer.
    #[error("no meter answered read-address (13H) on {0}: is exactly one meter on the line, and are baud and parity right?")]
    NoAnswer(String),
}

/// Beijing's offset, used only to print meter clocks.
const UTC_OFFSET_S: i32 = 8 * 3600;

/// Runs the probe and returns the report to print.
pub async fn probe(args: &ProbeArgs) -> Result<String, ProbeError> {
    let target = match (&args.tcp, &args.device) {
        (Some(a), _) => Target::Tcp(a.clone()),
        (None, Some(d)) => Target::Serial(SerialSettings {
            device: d.clone(),
            baud: args.baud,
            parity: match args.parity.as_str() {
                "even" => Parity::Even,
                "odd" => Parity::Odd,
                "none" => Parity::None,
                p => {
                    return Err(ProbeError::Usage(format!(
                        "--parity {p}: expected even, odd or none"
                    )))
                }
            },
            data_bits: 8,
            stop_bits: 1,
        }),
        (None, None) => {
            return Err(ProbeError::Usage(
                "give --tcp HOST:PORT or --device PATH".into(),
            ))
        }
    };
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut link = Link::new(target.clone(), timeout, Duration::from_millis(500));
    let mut addrs = Vec::new();
    for m in &args.meters {
        let a: Address = m
            .parse()
            .map_err(|_| ProbeError::Usage(format!("--meter {m}: expected a 12-digit address")))?;
        addrs.push(a);
    }
    let mut out = String::new();
    if addrs.is_empty() {
        let req = dlt645::read_address(Preamble::FOUR);
        let reply = link.exchange(&req, &Address::WILDCARD).await;
        match reply.map(|f| parse_address_reply(&f)) {
            Ok(Ok(a)) => {
                let _ = writeln!(out, "read-address: meter {a} answered");
                addrs.push(a);
            }
            Ok(Err(_)) | Err(LinkError::BadFrame) => {
                let _ = writeln!(
                    out,
                    "read-address: garbled answer (several meters on the line?)"
                );
                return Err(ProbeError::NoAnswer(target.to_string()));
            }
            Err(_) => return Err(ProbeError::NoAnswer(target.to_string())),
        }
    }
    let specs: Vec<MeterSpec> = addrs
        .iter()
        .filter_map(|a| {
            Some(MeterSpec {
                id: MeterId::new(&a.to_string()).ok()?,
                unit: 0,
                model: String::new(),
            })
        })
        .collect();
    let mut bus = Dlt645Bus::new(
        link,
        &specs,
        1,
        Duration::from_millis(50),
        UTC_OFFSET_S,
        Arc::new(SystemClock),
    );
    for r in bus.sweep(true).await {
        let _ = write!(out, "meter {}:", r.meter);
        match (r.e_wh, &r.err) {
            (Some(e), _) => {
                let _ = write!(out, " total {} kWh", Wh(e));
                match r.e_valley_wh {
                    Some(v) => {
                        let _ = write!(out, ", valley (T4) {} kWh", Wh(v));
                    }
                    None => out.push_str(", no valley register"),
                }
                if let Some(p) = r.p_w {
                    let _ = write!(out, ", power {p} W");
                }
                if let Some(t) = r.meter_ts {
                    let _ = write!(out, ", clock {} s off the gateway", t - r.ts);
                }
            }
            (None, Some(err)) => {
                let _ = write!(out, " no reading ({err})");
            }
            (None, None) => {}
        }
        out.push('\n');
    }
    Ok(out)
}
