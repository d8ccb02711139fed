//! The retained `qn/v1/gw/{gw}/status` payloads: online (with spool figures) and the
//! offline form used as the last will and on a clean stop.

use qingnuan_shared::units::GatewayId;
use qingnuan_shared::wire::{GatewayState, Status, VERSION};
use qingnuan_shared::UnixTime;

/// Figures reported in the online status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusFigures {
    /// Meters configured.
    pub meters: u32,
    /// Records waiting in the spool.
    pub spool_records: u64,
    /// Records the full spool dropped, ever.
    pub spool_dropped: u64,
}

/// `{"v":1,"gw":…,"state":"online","ts":…,"version":…,"meters":…,"spool_records":…,"spool_dropped":…}`
pub fn online(gw: &GatewayId, ts: UnixTime, f: StatusFigures) -> Vec<u8> {
    let mut version = heapless::String::new();
    // The crate version is short ("0.1.0"); a longer one is simply left out.
    let version = version
        .push_str(env!("CARGO_PKG_VERSION"))
        .ok()
        .map(|()| version);
    let s = Status {
        v: VERSION,
        gw: gw.clone(),
        state: GatewayState::Online,
        ts: Some(ts),
        version,
        meters: Some(f.meters),
        spool_records: Some(f.spool_records),
        spool_dropped: Some(f.spool_dropped),
    };
    serde_json::to_vec(&s).unwrap_or_default()
}

/// `{"v":1,"gw":…,"state":"offline"}`
pub fn offline(gw: &GatewayId) -> Vec<u8> {
    serde_json::to_vec(&Status::offline(gw.clone())).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_match_the_contract() {
        let gw = GatewayId::new("gw-0001").unwrap();
        let on = online(
            &gw,
            1_764_331_200,
            StatusFigures {
                meters: 12,
                spool_records: 3,
                spool_dropped: 1,
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&on).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"v": 1, "gw": "gw-0001", "state": "online", "ts": 1_764_331_200_i64,
                "version": env!("CARGO_PKG_VERSION"), "meters": 12, "spool_records": 3, "spool_dropped": 1})
        );
        let off: serde_json::Value = serde_json::from_slice(&offline(&gw)).unwrap();
        assert_eq!(
            off,
            serde_json::json!({"v": 1, "gw": "gw-0001", "state": "offline"})
        );
    }
}
