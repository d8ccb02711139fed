//! The deploy ACL (`deploy/mosquitto/acl`, password file, no anonymous login) on both
//! brokers, one test body each: a real Mosquitto configured from `deploy/mosquitto/`, and
//! the embedded broker with `[mqtt] embedded_passwd_file` (which enforces the same ACL).
//! Gateway A publishing under gateway B's prefix is dropped by the broker and never reaches
//! the server (subscribed through `$share/qingnuan/…` as `qingnuan-server`), while A's own
//! readings do; a gateway reads only its own config topic; the server reads everything; a
//! wrong password and an anonymous client are refused. The front's own behaviour (sessions,
//! malformed clients, ordering) is in `broker_front.rs`.

mod common;
mod deploy_broker;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use deploy_broker::{password, Client, DeployBroker};
use qingnuan_server::broker::{self, Acl, BrokerSettings, EmbeddedBroker, Passwd};
use qingnuan_server::config::Config;
use qingnuan_server::registry;
use qingnuan_server::store::Store;
use qingnuan_shared::clock::ScaledClock;
use qingnuan_shared::policy::Policy;
use rumqttc::{QoS, SubscribeFilter, SubscribeReasonCode};

const T: Duration = Duration::from_secs(30);

const USERS: &[&str] = &["qingnuan-server", "gw-a", "gw-b"];

const REGISTRY: &str = "household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n\
    hh-a,怀柔区,雁栖镇,下辛庄村,100,air_source_heat_pump,ma,2025-10-01,,gw-a,\n\
    hh-b,怀柔区,雁栖镇,下辛庄村,100,air_source_heat_pump,mb,2025-10-01,,gw-b,\n";

/// Which broker a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Mosquitto from `deploy/mosquitto/`.
    Mosquitto,
    /// The embedded broker with the same password file and the built-in deploy ACL.
    Embedded,
}

fn gw(port: u16, name: &str) -> Client {
    Client::connect(port, name, Some((name, &password(name))), None)
}

/// The embedded broker as `run` starts it: `users`' password file, the deploy ACL.
fn embedded(users: &DeployBroker) -> EmbeddedBroker {
    let settings = BrokerSettings {
        users: Some(Arc::new(Passwd::load(&users.dir().join("passwd")).unwrap())),
        acl: Some(Arc::new(Acl::parse(broker::DEPLOY_ACL).unwrap())),
        ..BrokerSettings::ephemeral()
    };
    EmbeddedBroker::start(settings).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_refuses_a_gateway_publishing_under_another_gateways_prefix() {
    spoofing(Kind::Mosquitto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_refuses_a_gateway_publishing_under_another_gateways_prefix() {
    spoofing(Kind::Embedded).await;
}

/// gw-a publishes a batch valid from gw-b under gw-b's prefix, then its own: only its own
/// arrives; gw-b's own arrives; gw-b's meter under gw-a's prefix is quarantined (`spoofed`).
async fn spoofing(kind: Kind) {
    // For the embedded broker Mosquitto runs only to make the users (mosquitto_passwd).
    let users = DeployBroker::start(USERS, None);
    let dir = tempfile::tempdir().unwrap();
    let port = match kind {
        Kind::Mosquitto => users.port,
        Kind::Embedded => qingnuan_tests::broker::free_port().unwrap(),
    };
    let broker_keys = match kind {
        Kind::Mosquitto => format!("url = \"mqtt://127.0.0.1:{port}\""),
        // The server starts the embedded broker itself, from these keys.
        Kind::Embedded => format!(
            "embedded_listen = \"127.0.0.1:{port}\"\nembedded_passwd_file = \"{}\"",
            users.dir().join("passwd").display()
        ),
    };
    let cfg = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n\n[mqtt]\n{broker_keys}\nclient_id = \"qingnuan-server\"\n\
         username = \"qingnuan-server\"\npassword_file = \"{}\"\nshare_group = \"qingnuan\"\n\n\
         [store]\nurl = \"sqlite://{}/acl.db\"\n",
        users.password_file("qingnuan-server").display(),
        dir.path().display()
    );
    let config = Config::from_toml_str(&cfg).unwrap();
    let store = Store::open(&config.store.url).await.unwrap();
    registry::import(
        &store,
        REGISTRY.as_bytes(),
        &Policy::beijing_2018(),
        "test",
        NOW,
    )
    .await
    .unwrap();
    let clock = std::sync::Arc::new(ScaledClock::new(NOW * 1000, 1));
    let running = qingnuan_server::start_with_clock(config, clock)
        .await
        .unwrap();
    wait_subscribed(running.addr.port()).await;
    let denied_before = broker::DENIED_PUBLISHES.load(Relaxed);

    let a = gw(port, "gw-a");
    a.wait("gw-a connected", |s| s.connected).await;
    // gw-a pretends to be gw-b: a batch that would be valid from gw-b (mb is gw-b's).
    let spoof = batch(
        "gw-b",
        1,
        &[
            ("mb".into(), NOV1_20, 500_000),
            ("mb".into(), NOV1_20 + 60, 500_020),
        ],
    );
    a.client
        .publish("qn/v1/gw/gw-b/readings", QoS::AtLeastOnce, false, spoof)
        .await
        .unwrap();
    let own = batch(
        "gw-a",
        1,
        &[
            ("ma".into(), NOV1_20, 100_000),
            ("ma".into(), NOV1_20 + 60, 100_020),
        ],
    );
    a.client
        .publish("qn/v1/gw/gw-a/readings", QoS::AtLeastOnce, false, own)
        .await
        .unwrap();
    // Both brokers acknowledge both (MQTT 3.1.1 has no way to say no) but forward one.
    a.wait("two PUBACKs", |s| s.acked == 2).await;
    let st = store.clone();
    wait_until(T, "gw-a's own readings stored", move || {
        let st = st.clone();
        async move { st.reading_counts().await.unwrap().0 == 2 }
    })
    .await;
    // The spoofed message was published first on the same connection: had the broker
    // forwarded it, it would have arrived before gw-a's own.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.reading_counts().await.unwrap(), (2, 0));
    assert_eq!(
        store.quarantine_counts().await.unwrap(),
        vec![],
        "nothing of gw-b's prefix arrived, not even for quarantine"
    );
    match kind {
        Kind::Mosquitto => assert!(
            users.log().contains("Denied PUBLISH from gw-a"),
            "{}",
            users.log()
        ),
        Kind::Embedded => {
            assert!(broker::DENIED_PUBLISHES.load(Relaxed) > denied_before);
            let (status, text) = http_get(running.addr.port(), "/metrics").await.unwrap();
            assert_eq!(status, 200);
            let denied: u64 = text
                .lines()
                .find_map(|l| l.strip_prefix("qingnuan_broker_acl_denied_total{what=\"publish\"} "))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no denied-publish counter in\n{text}"));
            assert!(denied > denied_before, "{denied} <= {denied_before}");
        }
    }
    // gw-b itself may publish there.
    let b = gw(port, "gw-b");
    b.wait("gw-b connected", |s| s.connected).await;
    let real = batch(
        "gw-b",
        1,
        &[
            ("mb".into(), NOV1_20, 200_000),
            ("mb".into(), NOV1_20 + 60, 200_020),
        ],
    );
    b.client
        .publish("qn/v1/gw/gw-b/readings", QoS::AtLeastOnce, false, real)
        .await
        .unwrap();
    let st = store.clone();
    wait_until(T, "gw-b's readings stored", move || {
        let st = st.clone();
        async move { st.reading_counts().await.unwrap().0 == 4 }
    })
    .await;
    // Under its own prefix gw-a reaches the server, and the binding check quarantines
    // gw-b's meter: what stops a gateway speaking for meters that are not its own.
    let foreign = batch("gw-a", 2, &[("mb".into(), NOV1_20 + 120, 900_000)]);
    a.client
        .publish("qn/v1/gw/gw-a/readings", QoS::AtLeastOnce, false, foreign)
        .await
        .unwrap();
    let st = store.clone();
    wait_until(T, "gw-b's meter from gw-a quarantined", move || {
        let st = st.clone();
        async move { st.quarantine_counts().await.unwrap() == vec![("spoofed".to_string(), 1)] }
    })
    .await;
    assert_eq!(store.reading_counts().await.unwrap().0, 4);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_config_topics_subscriptions_and_logins() {
    let broker = DeployBroker::start(USERS, None);
    topics_and_logins(Kind::Mosquitto, broker.port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_config_topics_subscriptions_and_logins() {
    let users = DeployBroker::start(USERS, None);
    let broker = embedded(&users);
    topics_and_logins(Kind::Embedded, broker.addr().port()).await;
}

/// gw-a subscribes to its own config topic, gw-b's, every gateway's readings and `qn/#`,
/// and receives only its own config; the server reads every gateway's readings.
async fn topics_and_logins(kind: Kind, port: u16) {
    let server = gw(port, "qingnuan-server");
    server.wait("server connected", |s| s.connected).await;
    server
        .client
        .subscribe("qn/v1/gw/+/readings", QoS::AtLeastOnce)
        .await
        .unwrap();
    server
        .wait("server's SUBACK", |s| s.suback.len() == 1)
        .await;
    let a = gw(port, "gw-a");
    a.wait("gw-a connected", |s| s.connected).await;
    // One SUBSCRIBE with a denied filter before a granted one.
    a.client
        .subscribe_many([
            SubscribeFilter::new("qn/v1/gw/gw-b/#".into(), QoS::AtLeastOnce),
            SubscribeFilter::new("qn/v1/gw/gw-a/config".into(), QoS::AtMostOnce),
        ])
        .await
        .unwrap();
    a.wait("two SUBACK codes", |s| s.suback.len() == 2).await;
    for f in [
        "qn/v1/gw/gw-a/config",
        "qn/v1/gw/gw-b/config",
        "qn/v1/gw/+/readings",
        "qn/#",
    ] {
        a.client.subscribe(f, QoS::AtLeastOnce).await.unwrap();
    }
    a.wait("six SUBACK codes", |s| s.suback.len() == 6).await;
    {
        let codes = a.seen.lock().unwrap().suback.clone();
        use SubscribeReasonCode::{Failure as F, Success as S};
        assert_eq!(codes[1], S(QoS::AtMostOnce), "{codes:?}");
        match kind {
            // Mosquitto 2.0 grants a filter the ACL denies and then delivers nothing on it:
            // what matters is below, that nothing arrives.
            Kind::Mosquitto => {}
            // The embedded broker refuses it outright (0x80), also inside a SUBSCRIBE that
            // is partly granted. SUBACKs for separate SUBSCRIBEs may come in another order
            // (ours are immediate): compare the four single ones as a set.
            Kind::Embedded => {
                assert_eq!(codes[..2], [F, S(QoS::AtMostOnce)]);
                let granted = codes[2..]
                    .iter()
                    .filter(|c| **c == S(QoS::AtLeastOnce))
                    .count();
                let refused = codes[2..].iter().filter(|c| **c == F).count();
                assert_eq!((granted, refused), (1, 3), "{codes:?}");
            }
        }
    }
    for (topic, body) in [
        ("qn/v1/gw/gw-b/config", "for b"),
        ("qn/v1/gw/gw-a/config", "for a"),
    ] {
        server
            .client
            .publish(topic, QoS::AtLeastOnce, false, body)
            .await
            .unwrap();
    }
    let b = gw(port, "gw-b");
    b.wait("gw-b connected", |s| s.connected).await;
    b.client
        .publish(
            "qn/v1/gw/gw-b/readings",
            QoS::AtLeastOnce,
            false,
            "b's readings",
        )
        .await
        .unwrap();
    b.wait("gw-b's PUBACK", |s| s.acked == 1).await;
    a.wait("gw-a's own config", |s| {
        s.publishes.iter().any(|(_, p)| p == "for a")
    })
    .await;
    server
        .wait("gw-b's readings at the server", |s| {
            s.publishes
                .iter()
                .any(|(t, p)| t == "qn/v1/gw/gw-b/readings" && p == "b's readings")
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got: Vec<(String, String)> = a.seen.lock().unwrap().publishes.clone();
    assert!(
        got.iter()
            .all(|(t, p)| t == "qn/v1/gw/gw-a/config" && p == "for a"),
        "{got:?}"
    );

    // A wrong password and no credentials at all are refused.
    let wrong = Client::connect(port, "gw-a-2", Some(("gw-a", "guess")), None);
    wrong
        .wait("refusal", |s| s.error.is_some() && !s.connected)
        .await;
    let anon = Client::connect(port, "anon", None, None);
    anon.wait("refusal", |s| s.error.is_some() && !s.connected)
        .await;
    let e = anon.seen.lock().unwrap().error.clone().unwrap();
    // Mosquitto answers with a refusing CONNACK; rumqttd closes the connection.
    assert!(
        e.contains("NotAuthorized")
            || e.contains("BadUserNamePassword")
            || e.contains("refused")
            || (kind == Kind::Embedded && e.contains("connection closed")),
        "{e}"
    );
    for c in [&wrong, &anon] {
        assert!(!c.seen.lock().unwrap().connected);
    }

    // Last wills: gw-a's own status goes out, one under gw-b's prefix (a retained
    // "offline" for gw-b) is dropped by the broker.
    server
        .client
        .subscribe("qn/v1/gw/+/status", QoS::AtLeastOnce)
        .await
        .unwrap();
    server
        .wait("server's second SUBACK", |s| s.suback.len() == 2)
        .await;
    for (id, topic, body) in [
        ("gw-a-w1", "qn/v1/gw/gw-b/status", "spoofed offline"),
        ("gw-a-w2", "qn/v1/gw/gw-a/status", "own offline"),
    ] {
        let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        o.set_credentials("gw-a", password("gw-a"));
        o.set_last_will(rumqttc::LastWill::new(topic, body, QoS::AtLeastOnce, false));
        let (_c, mut ev) = rumqttc::AsyncClient::new(o, 10);
        let first = tokio::time::timeout(T, ev.poll()).await.unwrap();
        assert!(
            matches!(
                &first,
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))
            ),
            "{first:?}"
        );
        // Dropping the event loop closes the socket without DISCONNECT: the will fires.
        drop(ev);
    }
    server
        .wait("gw-a's own will", |s| {
            s.publishes.iter().any(|(_, p)| p == "own offline")
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !server
            .seen
            .lock()
            .unwrap()
            .publishes
            .iter()
            .any(|(_, p)| p == "spoofed offline"),
        "the will under gw-b's prefix was delivered"
    );
}

/// The server checks at start that the embedded broker's ACL lets its own user read what
/// ingest subscribes to: a user the deploy ACL does not name is refused with the key named;
/// `[mqtt] embedded_acl_file` (any Mosquitto ACL file) can name it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_user_must_be_one_the_acl_lets_read_everything() {
    let users = DeployBroker::start(&["ingest-1", "gw-a"], None);
    let dir = tempfile::tempdir().unwrap();
    let cfg = |acl_key: &str| {
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n\n[mqtt]\nembedded_listen = \"127.0.0.1:{}\"\n\
             embedded_passwd_file = \"{}\"\n{acl_key}username = \"ingest-1\"\npassword_file = \"{}\"\n\n\
             [store]\nurl = \"sqlite://{}/acl.db\"\n",
            qingnuan_tests::broker::free_port().unwrap(),
            users.dir().join("passwd").display(),
            users.password_file("ingest-1").display(),
            dir.path().display()
        )
    };
    let clock = || std::sync::Arc::new(ScaledClock::new(NOW * 1000, 1));
    let refused =
        qingnuan_server::start_with_clock(Config::from_toml_str(&cfg("")).unwrap(), clock())
            .await
            .err()
            .expect("ingest-1 cannot read qn/v1/gw/+/readings under the deploy ACL")
            .to_string();
    assert!(
        refused.contains("mqtt.username") && refused.contains("qn/v1/gw/+/readings"),
        "{refused}"
    );
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        broker::DEPLOY_ACL.replace("user qingnuan-server", "user ingest-1"),
    )
    .unwrap();
    let key = format!("embedded_acl_file = \"{}\"\n", acl.display());
    let running =
        qingnuan_server::start_with_clock(Config::from_toml_str(&cfg(&key)).unwrap(), clock())
            .await
            .unwrap();
    wait_subscribed(running.addr.port()).await;
    running.stop().await;
}
