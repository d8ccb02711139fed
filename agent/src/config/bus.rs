//! `[[bus]]` tables: protocol and link, line settings with per-protocol defaults, and
//! the meters in their short (`"123456781012"`, `"1:sdm120"`) or table form.

use std::path::PathBuf;

use qingnuan_shared::units::MeterId;
use serde::Deserialize;

/// Which protocol over which link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum BusKind {
    /// DL/T 645-2007 over RS-485.
    #[serde(rename = "dlt645-serial")]
    Dlt645Serial,
    /// DL/T 645-2007 through a serial server (raw frames over TCP).
    #[serde(rename = "dlt645-tcp")]
    Dlt645Tcp,
    /// Modbus RTU over RS-485.
    #[serde(rename = "modbus-rtu")]
    ModbusRtu,
    /// Modbus TCP.
    #[serde(rename = "modbus-tcp")]
    ModbusTcp,
}

impl BusKind {
    /// The name used in the config file.
    pub const fn name(self) -> &'static str {
        match self {
            BusKind::Dlt645Serial => "dlt645-serial",
            BusKind::Dlt645Tcp => "dlt645-tcp",
            BusKind::ModbusRtu => "modbus-rtu",
            BusKind::ModbusTcp => "modbus-tcp",
        }
    }

    /// Whether the bus speaks Modbus.
    pub const fn is_modbus(self) -> bool {
        matches!(self, BusKind::ModbusRtu | BusKind::ModbusTcp)
    }

    /// Whether the bus is a TCP connection (else a serial device).
    pub const fn is_tcp(self) -> bool {
        matches!(self, BusKind::Dlt645Tcp | BusKind::ModbusTcp)
    }
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit.
    None,
    /// Even parity (DL/T 645's 8E1).
    Even,
    /// Odd parity.
    Odd,
}

/// One `[[bus]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawBus")]
pub struct BusConfig {
    /// Protocol and link.
    pub kind: BusKind,
    /// `host:port` of a `*-tcp` bus.
    pub address: Option<String>,
    /// Serial device of a `dlt645-serial` or `modbus-rtu` bus.
    pub device: Option<PathBuf>,
    /// Baud rate; default 2400 for DL/T 645, 9600 for Modbus RTU.
    pub baud: u32,
    /// Parity; default even for DL/T 645, none for Modbus RTU.
    pub parity: Parity,
    /// Data bits, 7 or 8.
    pub data_bits: u8,
    /// Stop bits, 1 or 2.
    pub stop_bits: u8,
    /// Response timeout, ms (a meter may take 500 ms to answer at 2400 baud).
    pub timeout_ms: u64,
    /// Longest silence inside one reply before it is abandoned, ms.
    pub gap_ms: u64,
    /// Pause after each exchange before the next request, ms.
    pub pause_ms: u64,
    /// Extra attempts after a failed read.
    pub retries: u32,
    /// The meters on this bus, read one after another.
    pub meters: Vec<MeterSpec>,
}

/// A meter on a bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterSpec {
    /// The id in readings: the 12-digit address of a DL/T 645 meter.
    pub id: MeterId,
    /// Modbus unit id (slave address); 0 for DL/T 645.
    pub unit: u8,
    /// Modbus register map name (e.g. `sdm120`, `sdm630`, `ddsu666`); empty for DL/T 645.
    pub model: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBus {
    kind: BusKind,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    device: Option<PathBuf>,
    #[serde(default)]
    baud: Option<u32>,
    #[serde(default)]
    parity: Option<Parity>,
    #[serde(default = "default_data_bits")]
    data_bits: u8,
    #[serde(default = "default_stop_bits")]
    stop_bits: u8,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_gap_ms")]
    gap_ms: u64,
    #[serde(default = "default_pause_ms")]
    pause_ms: u64,
    #[serde(default = "default_retries")]
    retries: u32,
    #[serde(default)]
    meters: Vec<RawMeter>,
}

/// `"123456781012"` (DL/T 645), `"1:sdm120"` or `"1:sdm120:kitchen"` (Modbus unit, model,
/// optional id), or a table `{ id = "…", unit = 1, model = "sdm120" }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawMeter {
    Short(String),
    Table {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        unit: Option<u8>,
        #[serde(default)]
        model: Option<String>,
    },
}

impl TryFrom<RawBus> for BusConfig {
    type Error = String;

    fn try_from(r: RawBus) -> Result<Self, String> {
        let name = r.kind.name();
        if r.kind.is_tcp() {
            let addr = r
                .address
                .as_deref()
                .ok_or(format!("a {name} bus needs `address = \"host:port\"`"))?;
            if !addr.contains(':') {
                return Err(format!("address {addr:?}: expected host:port"));
            }
        } else if r.device.is_none() {
            return Err(format!("a {name} bus needs `device = \"/dev/ttyUSB0\"`"));
        }
        if !matches!(r.data_bits, 7 | 8) {
            return Err(format!("data_bits = {}: expected 7 or 8", r.data_bits));
        }
        if !matches!(r.stop_bits, 1 | 2) {
            return Err(format!("stop_bits = {}: expected 1 or 2", r.stop_bits));
        }
        if r.timeout_ms == 0 {
            return Err("timeout_ms must be at least 1".into());
        }
        let meters = r
            .meters
            .into_iter()
            .map(|m| meter(r.kind, m))
            .collect::<Result<Vec<_>, _>>()?;
        let modbus = r.kind.is_modbus();
        Ok(BusConfig {
            kind: r.kind,
            address: r.address,
            device: r.device,
            baud: r.baud.unwrap_or(if modbus { 9600 } else { 2400 }),
            parity: r
                .parity
                .unwrap_or(if modbus { Parity::None } else { Parity::Even }),
            data_bits: r.data_bits,
            stop_bits: r.stop_bits,
            timeout_ms: r.timeout_ms,
            gap_ms: r.gap_ms,
            pause_ms: r.pause_ms,
            retries: r.retries,
            meters,
        })
    }
}

fn meter(kind: BusKind, m: RawMeter) -> Result<MeterSpec, String> {
    let (id, unit, model) = match m {
        RawMeter::Short(s) if !kind.is_modbus() => (Some(s), None, None),
        RawMeter::Short(s) => {
            let mut parts = s.splitn(3, ':');
            let unit = parts.next().and_then(|u| u.parse::<u8>().ok());
            let model = parts.next().map(str::to_owned);
            let id = parts.next().map(str::to_owned);
            if unit.is_none() || model.is_none() {
                return Err(format!("meter {s:?}: a Modbus meter is \"unit:model\" or \"unit:model:id\", e.g. \"1:sdm120\""));
            }
            (id, unit, model)
        }
        RawMeter::Table { id, unit, model } => (id, unit, model),
    };
    if kind.is_modbus() {
        let unit = unit.ok_or("a Modbus meter needs `unit`")?;
        let model = model.ok_or("a Modbus meter needs `model`")?;
        if !crate::bus::modbus_model_known(&model) {
            return Err(format!(
                "meter model {model:?} is unknown; known: {}",
                crate::bus::modbus_model_names().join(", ")
            ));
        }
        let id = id.unwrap_or_else(|| format!("{model}-{unit}"));
        let id = MeterId::new(&id).map_err(|e| format!("meter id {id:?} {e}"))?;
        Ok(MeterSpec { id, unit, model })
    } else {
        let id = id.ok_or("a DL/T 645 meter is its 12-digit address")?;
        if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("meter {id:?}: a DL/T 645 address has 12 digits"));
        }
        let id = MeterId::new(&id).map_err(|e| format!("meter id {id:?} {e}"))?;
        Ok(MeterSpec {
            id,
            unit: 0,
            model: String::new(),
        })
    }
}

fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_timeout_ms() -> u64 {
    1500
}
fn default_gap_ms() -> u64 {
    500
}
fn default_pause_ms() -> u64 {
    50
}
fn default_retries() -> u32 {
    2
}
