//! The monitor's thresholds (`[monitor]` in `server.toml`), every one with a default
//! from a named function so an empty section is the documented behaviour.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Thresholds of gateway/meter state and of the alarm rules.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// A gateway offline for longer than this inside the off-peak window raises
    /// `gateway_offline`, seconds.
    pub gateway_offline_s: i64,
    /// A gateway that says `online` but has sent nothing (status or readings) for this
    /// long counts as offline since it was last heard, seconds (heartbeat 3600 + 5 min).
    pub gateway_stale_s: i64,
    /// This many failed reads in a row, with no good read after them, raise `meter_silent`.
    pub meter_silent_reads: u32,
    /// This many closed nights in a row at or below `no_consumption_max_wh` raise
    /// `no_consumption` (heat pump off, or the household went back to coal).
    pub no_consumption_nights: usize,
    /// A night at or below this figure counts as "no consumption", Wh (standby draw).
    pub no_consumption_max_wh: i64,
    /// `cap_near` when the season's off-peak energy reaches this share of the cap, per mille.
    pub cap_alarm_permille: i64,
    /// `meter_clock` when `|meter_ts - ts|` exceeds this, seconds.
    pub meter_clock_tolerance_s: i64,
    /// `gateway_clock` when `|sent - received|` exceeds this, seconds.
    pub gateway_clock_tolerance_s: i64,
    /// A heat pump counts as running only on a power reading at most this old, seconds.
    pub running_fresh_s: i64,
    /// Running threshold for a device kind not in `running_w`, W.
    pub running_default_w: i64,
    /// Running threshold per household device kind (`device` column of the registry), W:
    /// the heat pump runs when the meter's active power is above it.
    pub running_w: BTreeMap<String, i64>,
}

fn default_running_w() -> BTreeMap<String, i64> {
    [
        ("air_source_heat_pump", 300),
        ("ground_source_heat_pump", 300),
        ("thermal_storage_heater", 500),
        ("direct_electric_heater", 500),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            gateway_offline_s: 15 * 60,
            gateway_stale_s: 3600 + 5 * 60,
            meter_silent_reads: 3,
            no_consumption_nights: 3,
            no_consumption_max_wh: 100,
            cap_alarm_permille: 900,
            meter_clock_tolerance_s: 5 * 60,
            gateway_clock_tolerance_s: 5 * 60,
            running_fresh_s: 30 * 60,
            running_default_w: 200,
            running_w: default_running_w(),
        }
    }
}

impl MonitorConfig {
    /// The running threshold of a device kind, W.
    pub fn running_threshold_w(&self, device: &str) -> i64 {
        self.running_w
            .get(device)
            .copied()
            .unwrap_or(self.running_default_w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_section_is_the_default_and_unknown_keys_are_refused() {
        let c: MonitorConfig = toml::from_str("").unwrap();
        assert_eq!(c, MonitorConfig::default());
        let c: MonitorConfig =
            toml::from_str("gateway_offline_s = 60\n[running_w]\nx = 7\n").unwrap();
        assert_eq!(c.gateway_offline_s, 60);
        assert_eq!(c.running_threshold_w("x"), 7);
        assert_eq!(c.running_threshold_w("air_source_heat_pump"), 200);
        assert!(toml::from_str::<MonitorConfig>("gateway_ofline_s = 1").is_err());
    }
}
