//! The agent as a real process against a real Mosquitto and a DL/T 645 simulator on
//! TCP: published values equal the meters' registers, a dead meter yields `err`
//! readings without stalling the others, and the retained status turns offline when
//! the agent is killed (last will) or stopped.

use std::time::Duration;

use qingnuan_shared::wire::GatewayState;
use qingnuan_tests::agent_proc::{dlt645_tcp_bus, AgentConfig, AgentProcess, Collector};
use qingnuan_tests::broker::Broker;
use qingnuan_tests::dlt645_sim::{Dlt645Sim, SimMeter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_values_equal_the_registers_and_status_goes_offline_on_kill() -> anyhow::Result<()>
{
    let broker = Broker::start()?;
    let dead = SimMeter {
        silent: true,
        ..SimMeter::new(0, None, 0)
    };
    let sim = Dlt645Sim::new(&[
        (
            "123456781012",
            SimMeter::new(1_234_560, Some(456_780), 2150),
        ),
        ("123456781013", SimMeter::new(98_760, None, -300)),
        ("123456781014", dead),
    ])?;
    let tcp = sim.serve_tcp().await?;
    let collector = Collector::start(&broker.url(), "qn/v1/gw/+/#").await?;
    let dir = tempfile::tempdir()?;
    let bus = dlt645_tcp_bus(
        &tcp.address(),
        &["123456781012", "123456781014", "123456781013"],
    );
    let cfg = AgentConfig::new("gw-pub-1", &broker.url(), &dir.path().join("spool"), &bus);
    let mut agent = AgentProcess::start(&cfg.write(dir.path())?, None)?;

    collector
        .wait_for(Duration::from_secs(30), "two batches", |c| {
            c.batches().len() >= 2
        })
        .await
        .map_err(|e| e.context(agent.log()))?;
    let batches = collector.batches();
    let first = &batches[0];
    assert_eq!(first.gw.as_str(), "gw-pub-1");
    assert!(first.sent.is_some_and(|s| s >= first.readings[0].ts));
    assert_eq!(batches[1].seq, first.seq + 1);
    assert_eq!(batches[1].boot, first.boot);
    let r: Vec<_> = first
        .readings
        .iter()
        .map(|r| {
            (
                r.meter.as_str(),
                r.e_wh,
                r.e_valley_wh,
                r.p_w,
                r.err.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        r,
        vec![
            (
                "123456781012",
                Some(1_234_560),
                Some(456_780),
                Some(2150),
                None
            ),
            // The dead meter between two live ones: an `err` reading, and the next meter is still read.
            ("123456781014", None, None, None, Some("timeout")),
            ("123456781013", Some(98_760), None, Some(-300), None),
        ]
    );
    // The first sweep reads the meter clock too; the simulator's is the wall clock.
    let m = &first.readings[0];
    assert!(m.meter_ts.is_some_and(|t| (t - m.ts).abs() <= 5), "{m:?}");

    // The status: online, retained (a late subscriber gets it with the retain flag).
    let late = Collector::start(&broker.url(), "qn/v1/gw/gw-pub-1/status").await?;
    late.wait_for(Duration::from_secs(10), "retained status", |c| {
        !c.statuses().is_empty()
    })
    .await?;
    let (st, retained) = late.statuses()[0].clone();
    assert!(retained);
    assert_eq!(st.state, GatewayState::Online);
    assert_eq!(st.meters, Some(3));

    // kill -9: the broker publishes the last will, retained.
    agent.kill9();
    collector
        .wait_for(Duration::from_secs(20), "offline will", |c| {
            c.statuses()
                .iter()
                .any(|(s, _)| s.state == GatewayState::Offline)
        })
        .await?;
    let after = Collector::start(&broker.url(), "qn/v1/gw/gw-pub-1/status").await?;
    after
        .wait_for(Duration::from_secs(10), "retained offline", |c| {
            !c.statuses().is_empty()
        })
        .await?;
    let (st, retained) = after.statuses()[0].clone();
    assert!(retained);
    assert_eq!(st, qingnuan_shared::wire::Status::offline(st.gw.clone()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_publishes_offline_and_exits_zero() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let sim = Dlt645Sim::new(&[("123456781012", SimMeter::new(10, None, 0))])?;
    let tcp = sim.serve_tcp().await?;
    let collector = Collector::start(&broker.url(), "qn/v1/gw/gw-stop/#").await?;
    let dir = tempfile::tempdir()?;
    let cfg = AgentConfig::new(
        "gw-stop",
        &broker.url(),
        &dir.path().join("spool"),
        &dlt645_tcp_bus(&tcp.address(), &["123456781012"]),
    );
    let mut agent = AgentProcess::start(&cfg.write(dir.path())?, None)?;
    collector
        .wait_for(Duration::from_secs(30), "a batch", |c| {
            !c.batches().is_empty()
        })
        .await?;
    assert!(
        agent.terminate(),
        "exit status 0 on SIGTERM:\n{}",
        agent.log()
    );
    collector
        .wait_for(Duration::from_secs(10), "offline", |c| {
            c.statuses()
                .last()
                .is_some_and(|(s, _)| s.state == GatewayState::Offline)
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_server_that_drops_is_reconnected() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let sim = Dlt645Sim::new(&[("123456781012", SimMeter::new(555_550, None, 100))])?;
    let tcp = sim.serve_tcp().await?;
    let port = tcp.port();
    let collector = Collector::start(&broker.url(), "qn/v1/gw/gw-drop/readings").await?;
    let dir = tempfile::tempdir()?;
    let cfg = AgentConfig::new(
        "gw-drop",
        &broker.url(),
        &dir.path().join("spool"),
        &dlt645_tcp_bus(&tcp.address(), &["123456781012"]),
    );
    let agent = AgentProcess::start(&cfg.write(dir.path())?, None)?;
    let values = |c: &Collector| {
        c.batches()
            .iter()
            .flat_map(|b| b.readings.clone())
            .collect::<Vec<_>>()
    };
    collector
        .wait_for(Duration::from_secs(30), "a value", |c| {
            values(c).iter().any(|r| r.e_wh.is_some())
        })
        .await?;

    // The serial server goes away (connections closed, port refused): failed reads.
    drop(tcp);
    collector
        .wait_for(Duration::from_secs(20), "err readings", |c| {
            values(c).iter().any(|r| r.err.is_some())
        })
        .await?;
    // It comes back on the same port with a new register value: the agent reconnects.
    sim.update("123456781012", |m| m.e_wh = 666_660);
    let _tcp = sim.serve_tcp_on(port).await?;
    collector
        .wait_for(Duration::from_secs(30), "values after the reconnect", |c| {
            values(c).iter().any(|r| r.e_wh == Some(666_660))
        })
        .await
        .map_err(|e| e.context(agent.log()))?;
    let errs: Vec<_> = values(&collector)
        .into_iter()
        .filter_map(|r| r.err)
        .collect();
    assert!(
        errs.iter()
            .all(|e| e.as_str() == "link_down" || e.as_str() == "timeout"),
        "{errs:?}"
    );
    Ok(())
}
