//! Broker stopped for a while and restarted: every read the agent took meanwhile
//! arrives afterwards, in read order, and the spool empties once acknowledged.

use std::time::Duration;

use qingnuan_agent::spool::Spool;
use qingnuan_tests::agent_proc::{dlt645_tcp_bus, AgentConfig, AgentProcess, Collector};
use qingnuan_tests::broker::Broker;
use qingnuan_tests::dlt645_sim::{Dlt645Sim, SimMeter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_taken_while_the_broker_is_down_arrive_in_order() -> anyhow::Result<()> {
    let mut broker = Broker::start()?;
    // Every read of the total advances the register by 10 Wh, so each read is unique
    // and the values say in which order the reads happened.
    let sim = Dlt645Sim::new(&[(
        "123456781012",
        SimMeter {
            step_wh: 10,
            ..SimMeter::new(1_000_000, None, 500)
        },
    )])?;
    let tcp = sim.serve_tcp().await?;
    let collector =
        Collector::start_persistent(&broker.url(), "qn/v1/gw/gw-restart/readings").await?;
    let dir = tempfile::tempdir()?;
    let spool_dir = dir.path().join("spool");
    let cfg = AgentConfig::new(
        "gw-restart",
        &broker.url(),
        &spool_dir,
        &dlt645_tcp_bus(&tcp.address(), &["123456781012"]),
    );
    let agent = AgentProcess::start(&cfg.write(dir.path())?, None)?;
    collector
        .wait_for(Duration::from_secs(30), "3 batches", |c| {
            c.batches().len() >= 3
        })
        .await?;

    broker.stop();
    let down_at = sim.get("123456781012").map(|m| m.e_wh).unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let up_at = sim.get("123456781012").map(|m| m.e_wh).unwrap_or_default();
    assert!(
        up_at - down_at >= 30,
        "the agent kept reading while the broker was down"
    );
    broker.restart()?;

    // Everything read up to now must arrive: every value from the first to `up_at`.
    collector
        .wait_for(
            Duration::from_secs(40),
            "the reads taken during the outage",
            |c| {
                c.batches()
                    .iter()
                    .flat_map(|b| b.readings.iter())
                    .any(|r| r.e_wh >= Some(up_at))
            },
        )
        .await
        .map_err(|e| e.context(agent.log()))?;
    let mut values = Vec::new();
    for b in collector.batches() {
        for r in &b.readings {
            let e = r.e_wh.unwrap_or_default();
            // QoS 1 may repeat a batch whose PUBACK was lost; a repeat is the same value.
            if !values.contains(&e) {
                values.push(e);
            }
        }
    }
    let first = values[0];
    let expected: Vec<i64> = (0..values.len() as i64).map(|i| first + 10 * i).collect();
    assert_eq!(
        values, expected,
        "no read lost, first arrivals in read order"
    );
    assert!(
        values.iter().any(|&v| v > down_at && v < up_at),
        "outage reads were replayed"
    );

    // Once acknowledged, the spool empties.
    drop(agent);
    let (spool, report) = Spool::open(&spool_dir, 1 << 20)?;
    assert!(report.corrupt_files.is_empty());
    assert!(
        spool.unacked() <= 2,
        "at most the batches in flight at the kill remain: {}",
        spool.unacked()
    );
    Ok(())
}
