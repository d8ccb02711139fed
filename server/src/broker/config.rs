//! Settings of the embedded MQTT broker and their translation into rumqttd's router and
//! listener configuration; every default is a named constant so the capacity is in one place.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

/// Default listen address: loopback, the standard MQTT port.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 1883);

/// Largest accepted MQTT packet, bytes. CONTRACT.md caps a readings payload at 64 KiB; the
/// rest is headroom for the topic, the fixed header and a client that rounds up.
pub const DEFAULT_MAX_PACKET_BYTES: usize = 128 * 1024;

/// Size of one segment of a subscription filter's in-memory log, bytes (payload + topic + 4).
pub const DEFAULT_SEGMENT_BYTES: usize = 4 * 1024 * 1024;

/// Segments a filter's log keeps, counting the one being written. When the written one is
/// full and the log has this many, the oldest is dropped before a new one starts: so
/// `(count - 1) × segment_bytes` (76 MiB by default) are always kept, the lag budget of a slow
/// subscriber (module doc, "Capacity"), and at most `count × segment_bytes` (80 MiB) held.
pub const DEFAULT_SEGMENT_COUNT: usize = 20;

/// Most clients connected at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Time a new TCP connection has to send its CONNECT, milliseconds.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u16 = 10_000;

/// Packets a connection reads from its socket in one batch before handing them to the router.
const CONNECTION_BATCH_PACKETS: usize = 200;

/// QoS 0 messages the router hands a connection in one read (QoS 1 is capped by rumqttd's
/// fixed window of 100 unacknowledged messages per connection).
const QOS0_BATCH_PACKETS: u64 = 200;

/// What the embedded broker listens on and how much it buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSettings {
    /// TCP address to listen on; a loopback address unless `users` is set (without users
    /// there is no authentication). Port 0 picks a free port (see
    /// [`super::EmbeddedBroker::start`]). With `acl` the ACL front listens here.
    pub listen: SocketAddr,
    /// Largest accepted MQTT packet, bytes; a bigger packet closes the connection.
    pub max_packet_bytes: usize,
    /// Size of one log segment per subscription filter, bytes (>= 1024).
    pub segment_bytes: usize,
    /// Segments kept per subscription filter, counting the one being written (>= 2).
    pub segment_count: usize,
    /// Most clients connected at once.
    pub max_connections: usize,
    /// Forward rumqttd's per-connection logs (accept, disconnect — the latter at `error`
    /// level even for a clean disconnect) to the global `tracing` subscriber. Off by default.
    pub log_connections: bool,
    /// Users (a Mosquitto password file): with them every client must log in as one of
    /// them, and the broker may listen beyond loopback. Without: anonymous, loopback only.
    pub users: Option<std::sync::Arc<super::passwd::Passwd>>,
    /// Topic rules (a Mosquitto ACL file), enforced by the ACL front (`front.rs`) that then
    /// listens on `listen` while rumqttd moves to a loopback port. Needs `users`.
    pub acl: Option<std::sync::Arc<super::acl::Acl>>,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            listen: DEFAULT_LISTEN,
            max_packet_bytes: DEFAULT_MAX_PACKET_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            segment_count: DEFAULT_SEGMENT_COUNT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            log_connections: false,
            users: None,
            acl: None,
        }
    }
}

impl BrokerSettings {
    /// The defaults, listening on `listen`.
    pub fn with_listen(listen: SocketAddr) -> Self {
        BrokerSettings {
            listen,
            ..BrokerSettings::default()
        }
    }

    /// The defaults on `127.0.0.1:0` (a free port): for tests and the demo.
    pub fn ephemeral() -> Self {
        Self::with_listen(SocketAddr::new(
            std::net::IpAddr::V4(Ipv4Addr::LOCALHOST),
            0,
        ))
    }

    /// Bytes of messages (payload + topic + 4 each) one subscription filter's log always
    /// keeps: a subscriber that falls no further behind loses nothing.
    pub fn lag_budget_bytes(&self) -> usize {
        self.segment_bytes
            .saturating_mul(self.segment_count.saturating_sub(1))
    }

    /// Checks what rumqttd would otherwise panic or misbehave on.
    pub(super) fn validate(&self) -> Result<(), String> {
        if !self.listen.ip().is_loopback() && self.users.is_none() {
            return Err(format!(
                "listen {}: the embedded broker has no authentication, use a loopback address",
                self.listen
            ));
        }
        if self.acl.is_some() && self.users.is_none() {
            return Err("an ACL needs users: set the password file too".into());
        }
        if self.segment_bytes < 1024 {
            return Err(format!("segment_bytes {} < 1024", self.segment_bytes));
        }
        if self.segment_count < 2 {
            return Err(
                "segment_count must be at least 2 (one is the segment being written)".into(),
            );
        }
        if self.max_connections < 1 {
            return Err("max_connections must be at least 1".into());
        }
        if self.max_packet_bytes < 1024 {
            return Err(format!("max_packet_bytes {} < 1024", self.max_packet_bytes));
        }
        Ok(())
    }

    /// rumqttd's router configuration.
    pub(super) fn router(&self) -> rumqttd::RouterConfig {
        rumqttd::RouterConfig {
            max_connections: self.max_connections,
            max_outgoing_packet_count: QOS0_BATCH_PACKETS,
            max_segment_size: self.segment_bytes,
            max_segment_count: self.segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: rumqttd::Strategy::default(),
        }
    }

    /// rumqttd's MQTT 3.1.1 listener configuration, listening on `listen`.
    pub(super) fn server(&self, listen: SocketAddr) -> rumqttd::ServerSettings {
        rumqttd::ServerSettings {
            name: "qingnuan-embedded-v4".into(),
            listen,
            tls: None,
            next_connection_delay_ms: 0,
            connections: rumqttd::ConnectionSettings {
                connection_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
                max_payload_size: self.max_packet_bytes,
                max_inflight_count: CONNECTION_BATCH_PACKETS,
                auth: None::<HashMap<String, String>>,
                external_auth: self.users.clone().map(|users| -> rumqttd::AuthHandler {
                    std::sync::Arc::new(move |_client_id, user, password| {
                        let ok = users.verify(&user, &password);
                        Box::pin(async move { ok })
                    })
                }),
                // Irrelevant in 0.20 (a publish to a topic nobody subscribes to is dropped
                // either way); off so no per-topic log is ever created.
                dynamic_filters: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_loopback_with_a_76_mib_lag_budget() {
        let s = BrokerSettings::default();
        assert_eq!(s.listen.to_string(), "127.0.0.1:1883");
        assert_eq!(s.lag_budget_bytes(), 76 * 1024 * 1024);
        // The declared capacity (module doc): 30,000 batches of 40 readings (2,304 B payload,
        // 25 B topic, 4 B of rumqttd's own accounting).
        assert!(30_000 * (2_304 + 25 + 4) <= s.lag_budget_bytes());
        assert!(s.max_packet_bytes > 64 * 1024);
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(BrokerSettings::ephemeral().listen.port(), 0);
    }

    #[test]
    fn refuses_what_rumqttd_would_panic_on_or_expose() {
        let open = BrokerSettings::with_listen("0.0.0.0:1883".parse().unwrap());
        assert!(open.validate().unwrap_err().contains("loopback"));
        let tiny = BrokerSettings {
            segment_bytes: 1023,
            ..BrokerSettings::default()
        };
        assert!(tiny.validate().unwrap_err().contains("segment_bytes"));
        let none = BrokerSettings {
            segment_count: 0,
            ..BrokerSettings::default()
        };
        assert!(none.validate().is_err());
        let v6 = BrokerSettings::with_listen("[::1]:0".parse().unwrap());
        assert_eq!(v6.validate(), Ok(()));
    }

    #[test]
    fn router_and_server_carry_the_settings() {
        let s = BrokerSettings {
            segment_bytes: 2048,
            segment_count: 3,
            max_packet_bytes: 70_000,
            ..BrokerSettings::default()
        };
        let r = s.router();
        assert_eq!((r.max_segment_size, r.max_segment_count), (2048, 3));
        let addr: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        let v4 = s.server(addr);
        assert_eq!(v4.listen, addr);
        assert_eq!(v4.connections.max_payload_size, 70_000);
        assert!(v4.tls.is_none() && v4.connections.auth.is_none());
    }
}
