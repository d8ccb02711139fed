//! The broker is unreachable long enough for the spool to fill: the oldest batches
//! are dropped first, the count is reported in `status.spool_dropped`, and what is
//! left arrives, newest intact and in order, once the broker is back.

use std::time::Duration;

use qingnuan_tests::agent_proc::{dlt645_tcp_bus, AgentConfig, AgentProcess, Collector};
use qingnuan_tests::broker::Broker;
use qingnuan_tests::dlt645_sim::{Dlt645Sim, SimMeter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_drops_the_oldest_and_counts_them() -> anyhow::Result<()> {
    let mut broker = Broker::start()?;
    let collector = Collector::start_persistent(&broker.url(), "qn/v1/gw/gw-full/#").await?;
    broker.stop();

    // 20 meters make a batch of about 2 KiB; a 16 KiB spool holds about 7 of them.
    let addrs: Vec<String> = (0..20)
        .map(|i| format!("1234567810{:02}", i + 20))
        .collect();
    let meters: Vec<(&str, SimMeter)> = addrs
        .iter()
        .map(|a| {
            (
                a.as_str(),
                SimMeter {
                    step_wh: 10,
                    ..SimMeter::new(3_000_000, Some(1_000_000), 1200)
                },
            )
        })
        .collect();
    let sim = Dlt645Sim::new(&meters)?.with_delay(Duration::ZERO);
    let tcp = sim.serve_tcp().await?;
    let dir = tempfile::tempdir()?;
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let mut cfg = AgentConfig::new(
        "gw-full",
        &broker.url(),
        &dir.path().join("spool"),
        &dlt645_tcp_bus(&tcp.address(), &refs),
    );
    cfg.max_bytes = 16 * 1024;
    let agent = AgentProcess::start(&cfg.write(dir.path())?, None)?;
    tokio::time::sleep(Duration::from_secs(14)).await;
    broker.restart()?;

    collector
        .wait_for(
            Duration::from_secs(30),
            "status and replayed batches",
            |c| {
                c.statuses()
                    .iter()
                    .any(|(s, _)| s.spool_dropped.is_some_and(|d| d > 0))
                    && c.batches().len() >= 5
            },
        )
        .await
        .map_err(|e| e.context(agent.log()))?;
    let dropped = collector
        .statuses()
        .iter()
        .find_map(|(s, _)| s.spool_dropped)
        .ok_or_else(|| anyhow::anyhow!("no spool_dropped"))?;
    let seqs: Vec<u64> = collector.batches().iter().map(|b| b.seq).collect();
    // The oldest went first: the first batch to arrive follows the dropped ones, the
    // rest follow in order without a hole.
    assert_eq!(seqs[0], dropped + 1, "seqs {seqs:?}, dropped {dropped}");
    let mut dedup = seqs.clone();
    dedup.dedup();
    assert!(dedup.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    Ok(())
}
