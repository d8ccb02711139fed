//! The embedded broker's ACL front (`server/src/broker/front.rs`) beyond the ACL scenarios
//! of `broker_acl.rs`: client ids kept per user, malformed clients cut off alone, a burst
//! relayed intact, CONNACK first and PUBACKs in publish order, shutdown closing it all.

mod deploy_broker;

use std::sync::Arc;
use std::time::Duration;

use deploy_broker::{password, Client, DeployBroker};
use qingnuan_server::broker::{self, Acl, BrokerSettings, EmbeddedBroker, Passwd};
use rumqttc::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(30);

const USERS: &[&str] = &["qingnuan-server", "gw-a", "gw-b"];

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

/// a gateway that reuses the server's client id gets a session of its own
/// (client ids are kept per user), so it neither kicks the server off nor reads its
/// messages. (Mosquitto lets any user take over any client id's session: see the report.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_sessions_are_per_user() {
    let users = DeployBroker::start(USERS, None);
    let broker = embedded(&users);
    let port = broker.addr().port();
    let server = gw(port, "qingnuan-server");
    server.wait("server connected", |s| s.connected).await;
    server
        .client
        .subscribe("qn/v1/gw/+/readings", QoS::AtLeastOnce)
        .await
        .unwrap();
    server.wait("SUBACK", |s| s.suback.len() == 1).await;
    // gw-a logs in with its own password but the server's client id.
    let thief = Client::connect(
        port,
        "qingnuan-server",
        Some(("gw-a", &password("gw-a"))),
        None,
    );
    thief.wait("gw-a connected", |s| s.connected).await;
    let b = gw(port, "gw-b");
    b.wait("gw-b connected", |s| s.connected).await;
    b.client
        .publish("qn/v1/gw/gw-b/readings", QoS::AtLeastOnce, false, "b1")
        .await
        .unwrap();
    server
        .wait("b1 at the server", |s| {
            s.publishes.iter().any(|(_, p)| p == "b1")
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(thief.seen.lock().unwrap().publishes.is_empty());
    assert!(
        server.seen.lock().unwrap().error.is_none(),
        "server kicked off"
    );
}

/// garbage, an oversized packet and a second CONNECT close that one
/// connection; the broker serves the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_front_closes_malformed_clients_only() {
    let users = DeployBroker::start(USERS, None);
    let broker = embedded(&users);
    let port = broker.addr().port();
    let connect = {
        let mut c = rumqttc::mqttbytes::v4::Connect::new("raw");
        c.set_login("gw-a", password("gw-a"));
        let mut b = bytes::BytesMut::new();
        c.write(&mut b).unwrap();
        b.to_vec()
    };
    // A packet type 15 header; a 10 MB remaining length; a second CONNECT.
    let oversized = [0x30, 0x80, 0x80, 0x80, 0x05];
    let cases: [Vec<u8>; 3] = [
        vec![0xF0, 0x00],
        [connect.clone(), oversized.to_vec()].concat(),
        [connect.clone(), connect.clone()].concat(),
    ];
    for bytes in cases {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(&bytes).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "connection left open after {bytes:02x?}");
    }
    let a = gw(port, "gw-a");
    a.wait("gw-a connected", |s| s.connected).await;
}

/// the front relays a burst intact (packets split across reads, acks both
/// ways): 3,000 QoS 1 batches of ~2.3 KB from gw-a, every tenth under gw-b's prefix; the
/// server's user receives exactly the other 2,700, in order, byte for byte, and gw-a gets
/// a PUBACK for all 3,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_front_relays_a_burst_intact() {
    let users = DeployBroker::start(USERS, None);
    let broker = embedded(&users);
    let port = broker.addr().port();
    let server = gw(port, "qingnuan-server");
    server.wait("server connected", |s| s.connected).await;
    server
        .client
        .subscribe("qn/v1/gw/+/readings", QoS::AtLeastOnce)
        .await
        .unwrap();
    server.wait("SUBACK", |s| s.suback.len() == 1).await;
    let a = gw(port, "gw-a");
    a.wait("gw-a connected", |s| s.connected).await;
    let body = |i: usize| format!("{i:06}:{}", "x".repeat(2_300));
    for i in 0..3_000 {
        let topic = if i % 10 == 9 {
            "qn/v1/gw/gw-b/readings"
        } else {
            "qn/v1/gw/gw-a/readings"
        };
        a.client
            .publish(topic, QoS::AtLeastOnce, false, body(i))
            .await
            .unwrap();
    }
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < end {
        if a.seen.lock().unwrap().acked == 3_000
            && server.seen.lock().unwrap().publishes.len() >= 2_700
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.seen.lock().unwrap().acked, 3_000);
    let got = server.seen.lock().unwrap().publishes.clone();
    let want: Vec<(String, String)> = (0..3_000)
        .filter(|i| i % 10 != 9)
        .map(|i| ("qn/v1/gw/gw-a/readings".to_string(), body(i)))
        .collect();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the relayed messages differ from those sent");
}

/// the CONNACK comes first, and PUBACKs come back in the order the PUBLISH
/// packets went (MQTT 3.1.1 §3.2, §4.6), ours for denied publishes in their place among
/// rumqttd's, even when everything is sent before the CONNACK arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_connack_first_and_pubacks_in_publish_order() {
    use rumqttc::mqttbytes::v4::{Connect, Publish, Subscribe};
    let users = DeployBroker::start(USERS, None);
    let broker = embedded(&users);
    for first in ["gw-b", "gw-a"] {
        let mut out = bytes::BytesMut::new();
        let mut c = Connect::new(format!("raw-order-{first}"));
        c.set_login("gw-a", password("gw-a"));
        c.write(&mut out).unwrap();
        let order = [first, "gw-b", "gw-a", "gw-b", "gw-b"];
        for (i, gw) in order.iter().enumerate() {
            let mut p = Publish::new(
                format!("qn/v1/gw/{gw}/readings"),
                QoS::AtLeastOnce,
                "x".repeat(3_000),
            );
            p.pkid = u16::try_from(i).unwrap() + 1;
            p.write(&mut out).unwrap();
        }
        // A refused subscription: answered by us alone, still after the CONNACK.
        let mut sub = Subscribe::new("qn/#", QoS::AtLeastOnce);
        sub.pkid = 9;
        sub.write(&mut out).unwrap();
        let mut s = tokio::net::TcpStream::connect(broker.addr()).await.unwrap();
        s.write_all(&out).await.unwrap();
        // CONNACK 4 bytes, five PUBACKs 4 bytes each, SUBACK 5 bytes.
        let mut got = vec![0u8; 4 + 5 * 4 + 5];
        tokio::time::timeout(T, s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got[..4], [0x20, 0x02, 0x00, 0x00], "{got:02x?}");
        let mut acks = Vec::new();
        let mut rest = &got[4..];
        while let [kind, len, tail @ ..] = rest {
            let (body, next) = tail.split_at(usize::from(*len));
            match kind {
                0x40 => acks.push(u16::from_be_bytes([body[0], body[1]])),
                0x90 => assert_eq!(body, [0x00, 0x09, 0x80], "{got:02x?}"),
                _ => panic!("unexpected packet in {got:02x?}"),
            }
            rest = next;
        }
        assert_eq!(acks, vec![1, 2, 3, 4, 5], "{got:02x?}");
    }
}

/// Shutting the broker down closes the front's port and its clients' connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_the_front() {
    let users = DeployBroker::start(USERS, None);
    let broker = embedded(&users);
    let addr = broker.addr();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::task::spawn_blocking(move || broker.shutdown())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(T, s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a client connection outlived the broker");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
