/*!
Monitoring: gateway and meter state, heat pumps running, alarms with a lifecycle, and
progress against the 2018 plan (DESIGN.md "Monitoring", issue 7).

The state machines and rules are pure (data in, decisions out, `now` passed in as UTC
Unix seconds); [`Monitor`] (in `service`) is the one part that reads and writes, and
only through [`Store`](crate::store::Store).

# Layout
- [`config`]: thresholds ([`MonitorConfig`], `[monitor]` in `server.toml`).
- [`gateway`]: [`GatewayState`] from `status`, the last will and readings batches.
- [`meter`]: [`MeterState`] from good and failed reads; running; tonight so far.
- [`alarm`]: kinds, subjects, open/clear [`Decision`]s, [`reconcile`] (the lifecycle).
- [`rules`]: one pure function per alarm rule.
- [`progress`]: the plan and the per-district / per-village counts.
- `service`: [`Monitor`], the hooks ingest and recompute call, and `tick`.
*/

pub mod alarm;
pub mod config;
pub mod gateway;
pub mod meter;
pub mod progress;
pub mod rules;
mod service;

pub use alarm::{reconcile, AlarmKind, Changes, Decision, Finding, Subject};
pub use config::MonitorConfig;
pub use gateway::GatewayState;
pub use meter::{MeterEvent, MeterState};
pub use service::{current_season, run, BatchSeen, Monitor, MonitorFold, Snapshot};
