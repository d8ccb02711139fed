//! A gateway's state from its `status` messages (and last will) and from the readings
//! batches it sends: online/offline since when, last seen, version, spool backlog and
//! drops, and its clock offset (`sent` against the server's receive time). Pure.

use qingnuan_shared::wire::{GatewayState as WireState, Status};
use serde::{Deserialize, Serialize};

use super::MonitorConfig;

/// What the server knows of one gateway. All instants are UTC Unix seconds, server
/// clock unless said otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayState {
    /// `true` online, `false` offline (last will or clean stop), `None` never heard.
    pub online: Option<bool>,
    /// When `online` last changed.
    pub since: Option<i64>,
    /// When anything (status or batch) last arrived.
    pub last_seen: Option<i64>,
    /// `ts` of the latest status, gateway clock.
    pub status_ts: Option<i64>,
    /// Agent version from the latest online status.
    pub version: Option<String>,
    /// Meters the agent is configured with.
    pub meters: Option<u32>,
    /// Records waiting in the gateway's spool.
    pub spool_records: Option<u64>,
    /// Records the full spool dropped, since the spool was created.
    pub spool_dropped: Option<u64>,
    /// `sent - received` of the latest batch that carried `sent`, seconds (positive:
    /// the gateway clock is ahead).
    pub clock_offset_s: Option<i64>,
    /// Batches received.
    pub batches: u64,
    /// Readings quarantined as `spoofed` (a meter registered on another gateway).
    #[serde(default)]
    pub spoofed: u64,
    /// When the latest `spoofed` reading arrived, server clock.
    #[serde(default)]
    pub spoofed_last: Option<i64>,
    /// The meter the latest `spoofed` reading named.
    #[serde(default)]
    pub spoofed_meter: Option<String>,
}

impl GatewayState {
    /// Folds in a status message received at `received`.
    pub fn on_status(&mut self, s: &Status, received: i64) {
        let online = matches!(s.state, WireState::Online);
        self.set_online(online, received);
        self.last_seen = Some(self.last_seen.map_or(received, |t| t.max(received)));
        if online {
            self.status_ts = s.ts.or(self.status_ts);
            if let Some(v) = &s.version {
                self.version = Some(v.as_str().to_string());
            }
            self.meters = s.meters.or(self.meters);
            self.spool_records = s.spool_records.or(self.spool_records);
            self.spool_dropped = s.spool_dropped.or(self.spool_dropped);
        }
    }

    /// Folds in a readings batch received at `received`, with its `sent` if it had one.
    /// A batch proves the gateway is connected, so a never-heard gateway becomes online;
    /// an `offline` state stays until the next status (the last will is authoritative).
    pub fn on_batch(&mut self, sent: Option<i64>, received: i64) {
        self.batches += 1;
        self.last_seen = Some(self.last_seen.map_or(received, |t| t.max(received)));
        if self.online.is_none() {
            self.set_online(true, received);
        }
        if let Some(sent) = sent {
            self.clock_offset_s = Some(sent.saturating_sub(received));
        }
    }

    /// Folds in a reading quarantined as `spoofed` (for `meter`) received at `received`.
    pub fn on_spoofed(&mut self, meter: Option<&str>, received: i64) {
        self.spoofed += 1;
        self.spoofed_last = Some(self.spoofed_last.map_or(received, |t| t.max(received)));
        if let Some(m) = meter {
            self.spoofed_meter = Some(m.to_string());
        }
    }

    fn set_online(&mut self, online: bool, at: i64) {
        if self.online != Some(online) {
            self.online = Some(online);
            self.since = Some(at);
        }
    }

    /// Since when the gateway counts as offline at `now`, or `None` when it is online:
    /// the last will's time, or for a gateway that says online but has been silent for
    /// `gateway_stale_s`, the moment it was last heard. A never-heard gateway has been
    /// offline forever: `Some(i64::MIN)`.
    pub fn offline_since(&self, now: i64, cfg: &MonitorConfig) -> Option<i64> {
        match self.online {
            None => Some(i64::MIN),
            Some(false) => Some(self.since.unwrap_or(i64::MIN)),
            Some(true) => {
                let seen = self.last_seen.or(self.since).unwrap_or(i64::MIN);
                (now.saturating_sub(seen) > cfg.gateway_stale_s).then_some(seen)
            }
        }
    }

    /// Whether the gateway counts as online at `now`.
    pub fn is_online(&self, now: i64, cfg: &MonitorConfig) -> bool {
        self.offline_since(now, cfg).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qingnuan_shared::units::GatewayId;

    fn status(json: &str) -> Status {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn status_and_last_will_set_state_since_and_the_spool_figures() {
        let cfg = MonitorConfig::default();
        let mut g = GatewayState::default();
        assert_eq!(g.offline_since(100, &cfg), Some(i64::MIN));
        g.on_status(
            &status(r#"{"v":1,"gw":"gw-1","state":"online","ts":95,"version":"0.1.0","meters":12,"spool_records":40,"spool_dropped":2}"#),
            100,
        );
        assert_eq!(
            (g.online, g.since, g.last_seen),
            (Some(true), Some(100), Some(100))
        );
        assert_eq!(
            (
                g.version.as_deref(),
                g.meters,
                g.spool_records,
                g.spool_dropped
            ),
            (Some("0.1.0"), Some(12), Some(40), Some(2))
        );
        // A repeated online status does not move `since`.
        g.on_status(
            &status(r#"{"v":1,"gw":"gw-1","state":"online","ts":195,"spool_records":0}"#),
            200,
        );
        assert_eq!(
            (g.since, g.last_seen, g.spool_records),
            (Some(100), Some(200), Some(0))
        );
        assert!(g.is_online(250, &cfg));
        g.on_status(&Status::offline(GatewayId::new("gw-1").unwrap()), 300);
        assert_eq!((g.online, g.since), (Some(false), Some(300)));
        assert_eq!(g.offline_since(400, &cfg), Some(300));
        // The last will keeps what the agent said before it.
        assert_eq!(g.version.as_deref(), Some("0.1.0"));
    }

    #[test]
    fn a_silent_online_gateway_turns_offline_since_last_heard() {
        let cfg = MonitorConfig::default();
        let mut g = GatewayState::default();
        g.on_batch(Some(1_000 + 400), 1_000);
        assert_eq!(
            (g.online, g.clock_offset_s, g.batches),
            (Some(true), Some(400), 1)
        );
        assert!(g.is_online(1_000 + cfg.gateway_stale_s, &cfg));
        assert_eq!(
            g.offline_since(1_001 + cfg.gateway_stale_s, &cfg),
            Some(1_000)
        );
        g.on_batch(None, 2_000);
        // No `sent`: the last known offset stays.
        assert_eq!((g.last_seen, g.clock_offset_s), (Some(2_000), Some(400)));
    }
}
