//! `kill -9` of the agent mid-run, then a restart: every batch that was in the spool
//! (unacknowledged) is published after the restart, acknowledged ones are not lost,
//! and a spool left with a torn or corrupted tail is repaired, never fatal.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use qingnuan_agent::spool::Spool;
use qingnuan_tests::agent_proc::{dlt645_tcp_bus, AgentConfig, AgentProcess, Collector};
use qingnuan_tests::broker::Broker;
use qingnuan_tests::dlt645_sim::{Dlt645Sim, SimMeter};

/// (boot, seq) of every batch in the spool, read from a copy so the agent's files stay as they are.
fn spooled(dir: &std::path::Path) -> anyhow::Result<BTreeSet<(String, u64)>> {
    let copy = tempfile::tempdir()?;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        std::fs::copy(e.path(), copy.path().join(e.file_name()))?;
    }
    let (mut spool, _) = Spool::open(copy.path(), 1 << 20)?;
    let mut out = BTreeSet::new();
    while let Some(r) = spool.next_unsent()? {
        let b: qingnuan_shared::wire::ReadingsBatch = serde_json::from_slice(&r.data)?;
        out.insert((b.boot.to_string(), b.seq));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_then_restart_loses_nothing_and_repairs_the_spool() -> anyhow::Result<()> {
    let mut broker = Broker::start()?;
    let sim = Dlt645Sim::new(&[(
        "123456781012",
        SimMeter {
            step_wh: 10,
            ..SimMeter::new(5_000_000, None, 800)
        },
    )])?;
    let tcp = sim.serve_tcp().await?;
    let collector = Collector::start_persistent(&broker.url(), "qn/v1/gw/gw-kill/readings").await?;
    let dir = tempfile::tempdir()?;
    let spool_dir = dir.path().join("spool");
    let cfg = AgentConfig::new(
        "gw-kill",
        &broker.url(),
        &spool_dir,
        &dlt645_tcp_bus(&tcp.address(), &["123456781012"]),
    );
    let config = cfg.write(dir.path())?;
    let mut agent = AgentProcess::start(&config, None)?;
    collector
        .wait_for(Duration::from_secs(30), "2 batches", |c| {
            c.batches().len() >= 2
        })
        .await?;

    // Let unacknowledged batches pile up in the spool, then cut the power.
    broker.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    agent.kill9();
    let pending = spooled(&spool_dir)?;
    assert!(
        pending.len() >= 2,
        "batches waiting in the spool: {pending:?}"
    );

    // A torn write at the tail, as a power cut in the middle of an append leaves it.
    let mut segs: Vec<_> = std::fs::read_dir(&spool_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    let last = segs
        .last()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no segment"))?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&last)?
        .write_all(&[0x90, 0x01, 0, 0, 0xde, 0xad])?;

    broker.restart()?;
    let mut agent = AgentProcess::start(&config, None)?;
    collector
        .wait_for(Duration::from_secs(40), "every spooled batch", |c| {
            let seen: BTreeSet<_> = c
                .batches()
                .iter()
                .map(|b| (b.boot.to_string(), b.seq))
                .collect();
            pending.is_subset(&seen)
        })
        .await
        .map_err(|e| e.context(agent.log()))?;
    assert!(agent.log().contains("spool repaired"), "{}", agent.log());

    // And new reads keep flowing after the old ones, with a new boot id.
    let old_boot = pending
        .iter()
        .next()
        .map(|p| p.0.clone())
        .unwrap_or_default();
    collector
        .wait_for(Duration::from_secs(30), "a batch of the new boot", |c| {
            c.batches().iter().any(|b| b.boot.as_str() != old_boot)
        })
        .await?;
    // Nothing read before the kill is missing: register values are contiguous except for
    // the reads of the sweep that the kill interrupted (never spooled, so never acknowledged).
    let mut values: Vec<i64> = collector
        .batches()
        .iter()
        .flat_map(|b| b.readings.iter().filter_map(|r| r.e_wh))
        .collect();
    values.sort_unstable();
    values.dedup();
    let gaps = values.windows(2).filter(|w| w[1] - w[0] != 10).count();
    assert!(gaps <= 1, "reads lost: {values:?}");
    assert!(agent.terminate());
    Ok(())
}
