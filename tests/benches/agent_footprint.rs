//! Footprint of the gateway build of the agent against 32 simulated DL/T 645 meters:
//! peak RSS, RSS after the first sweeps and after an hour of simulated time, CPU time
//! per sweep, and the stripped binary size. A benchmark, not a timed test:
//! `cargo bench -p qingnuan-tests --bench agent_footprint` (QN_BENCH_SIM_S sets the
//! simulated seconds, default 3600; QN_BENCH_PROFILE the cargo profile, default gateway).

use std::time::{Duration, Instant};

use qingnuan_tests::agent_proc::{
    build_agent, dlt645_tcp_bus, AgentConfig, AgentProcess, Collector,
};
use qingnuan_tests::broker::Broker;
use qingnuan_tests::dlt645_sim::{Dlt645Sim, SimMeter};

/// Simulated seconds per real second.
const SPEED: i64 = 60;
/// One sweep per simulated minute.
const INTERVAL_S: u64 = 60;

/// (VmRSS, VmHWM) of a process, KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// utime + stime of a process, clock ticks (100 per second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

fn main() -> anyhow::Result<()> {
    let sim_s: i64 = std::env::var("QN_BENCH_SIM_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3600);
    let profile = std::env::var("QN_BENCH_PROFILE").unwrap_or_else(|_| "gateway".into());
    let bin = build_agent(&profile).map_err(anyhow::Error::msg)?;
    let size = std::fs::metadata(&bin)?.len();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let broker = Broker::start()?;
        let addrs: Vec<String> = (0..32).map(|i| format!("1234567820{i:02}")).collect();
        let meters: Vec<(&str, SimMeter)> = addrs
            .iter()
            .map(|a| (a.as_str(), SimMeter { step_wh: 10, ..SimMeter::new(4_000_000, Some(1_500_000), 2500) }))
            .collect();
        let sim = Dlt645Sim::new(&meters)?.with_delay(Duration::ZERO);
        let tcp = sim.serve_tcp().await?;
        let collector = Collector::start(&broker.url(), "qn/v1/gw/gw-bench/readings").await?;
        let dir = tempfile::tempdir()?;
        let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        let mut cfg = AgentConfig::new("gw-bench", &broker.url(), &dir.path().join("spool"), &dlt645_tcp_bus(&tcp.address(), &refs));
        cfg.interval_s = INTERVAL_S;
        let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let clock = format!("start={start},speed={SPEED}");
        let agent = AgentProcess::start_bin(&bin, &cfg.write(dir.path())?, Some(&clock))?;
        let pid = agent.pid().ok_or_else(|| anyhow::anyhow!("agent not running"))?;

        collector.wait_for(Duration::from_secs(30), "3 sweeps", |c| c.batches().len() >= 3).await?;
        let (early_rss, _) = rss_kib(pid);
        let (ticks0, sweeps0) = (cpu_ticks(pid), collector.batches().len());
        let t0 = Instant::now();
        let real = Duration::from_secs(u64::try_from(sim_s / SPEED).unwrap_or(60));
        tokio::time::sleep(real).await;
        let (steady_rss, peak_rss) = rss_kib(pid);
        let (ticks1, sweeps1) = (cpu_ticks(pid), collector.batches().len());
        let sweeps = (sweeps1 - sweeps0).max(1) as u64;
        let cpu_ms_per_sweep = (ticks1 - ticks0) as f64 * 10.0 / sweeps as f64;
        println!("agent footprint ({profile} build, 32 DL/T 645 meters on one TCP bus, {} sweeps over {} s simulated in {:.0?})", sweeps, sim_s, t0.elapsed());
        println!("  stripped binary size   {:>8} KiB ({})", size / 1024, bin.display());
        println!("  RSS after 3 sweeps     {early_rss:>8} KiB");
        println!("  RSS after {sim_s:>5} s sim  {steady_rss:>8} KiB");
        println!("  peak RSS (VmHWM)       {peak_rss:>8} KiB");
        println!("  CPU per sweep          {cpu_ms_per_sweep:>8.2} ms (32 meters, 3-5 registers each)");
        println!("  readings per batch     {:>8}", collector.batches().last().map_or(0, |b| b.readings.len()));
        drop(agent);
        Ok(())
    })
}
