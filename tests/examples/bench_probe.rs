//! Benchmark: how long `witness run` takes for hundreds of targets against local servers, a
//! share of which time out, and the probe's peak memory.
//!
//! `cargo run --release -p witness-tests --example bench_probe -- [TARGETS] [TIMEOUT_SHARE]
//! [CONCURRENCY]` (defaults 300, 0.2, the probe's default). Prints one line of results; the
//! numbers in docs/benchmarks.md come from it (scripts/bench-probe.sh).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use witness_tests::{witness_bin, Behaviour, Site, World, CENSORED_SOURCE};

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let targets: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(300);
    let share: f64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(0.2);
    let concurrency: Option<usize> = args.get(2).map(|s| s.parse()).transpose()?;
    let timeout_secs = 5.0;

    let stalled = (targets as f64 * share).round() as usize;
    let mut builder = World::builder().site(Site::new("anchor.test"));
    for i in 0..targets {
        let mut site = Site::new(&format!("site{i}.test"));
        if i < stalled {
            // The Kazakh technique: silence after the ClientHello, so the handshake times out.
            site = site.censored(Behaviour::DropAfterClientHello);
        }
        builder = builder.site(site);
    }
    let world = builder.start()?;
    let mut entries = world.list_entries();
    entries.retain(|e| !e.url.contains("anchor.test"));
    let list = world.write_list_of("bench.csv", &entries)?;
    let anchor = world.url("anchor.test");
    let anchor_port = anchor
        .rsplit(':')
        .next()
        .unwrap_or("443")
        .trim_end_matches('/');
    let bin = witness_bin();

    let mut cmd = Command::new(&bin);
    cmd.args(["run", "--yes", "--no-progress", "--json"])
        .arg("--list")
        .arg(&list)
        .args(["--resolver", &world.probe_resolver().to_string()])
        .arg("--extra-ca")
        .arg(world.ca_file())
        .args(["--lab-public-range", "127.0.0.0/8"])
        .args(["--source-address", &CENSORED_SOURCE.to_string()])
        .args([
            "--anchor",
            &format!("{}:{anchor_port}", world.site_ip("anchor.test")),
        ])
        .args(["--no-control", "--control-resolver", "none"])
        .args(["--timeout", &timeout_secs.to_string()])
        .env("HOME", world.dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(c) = concurrency {
        cmd.args(["--concurrency", &c.to_string()]);
    }
    let started = Instant::now();
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let mut peak = 0;
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut out) = stdout {
            use std::io::Read;
            let _ = out.read_to_string(&mut s);
        }
        s
    });
    loop {
        if let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
        }
        if child.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    let out = reader.join().unwrap_or_default();
    let lines = out.lines().count();
    let blocked = out.matches("\"status\":\"blocked\"").count();
    println!(
        "targets={targets} stalled={stalled} concurrency={} step_timeout={timeout_secs}s \
         wall={:.1}s per_target={:.0}ms peak_rss={:.1}MiB measurements={lines} blocked={blocked} \
         (one at a time, the stalled alone would take {:.0}s)",
        concurrency.map_or("default(32)".to_string(), |c| c.to_string()),
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / targets as f64,
        peak as f64 / 1024.0,
        stalled as f64 * timeout_secs,
    );
    Ok(())
}
