//! Benchmark: the control service for a fleet. One real collector with the shipped config
//! (lab switches only, see [`shipped_collector`]), N simulated probes, each with its own token
//! and its own client address (127.1.x.y), each asking the control for the whole list
//! (default 600 URLs, one loopback server standing in for the sites) in batches of 100, up to
//! eight in flight, as the probe does. The probes start at random moments of a compressed hour, and
//! `control.cache_ttl` is compressed with it (an hour holds six TTLs, as with the shipped
//! 10 minutes).
//!
//! `cargo run --release -p witness-tests --example bench_fleet -- [PROBES] [HOUR_SECS] [URLS]`
//! (defaults 50, 120, 600). Prints one `RESULT {json}` line: control measurements per URL per
//! TTL (goal: one), p50/p99 batch latency, lines without a reply by status (goal: none),
//! the collector's peak RSS and CPU seconds. scripts/bench-fleet.sh runs it at several N; the
//! numbers are in docs/scaling.md.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use witness_core::model::ControlBatchLine;
use witness_tests::fleet::{shipped_collector, Sites};

/// The probe's own batch size and window (probe/core/src/control/client.rs).
const BATCH: usize = 100;
const WINDOW: usize = 8;

fn proc_stat_cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[derive(Default)]
struct Tally {
    batch_ms: Vec<f64>,
    replies: usize,
    refused: BTreeMap<u16, usize>,
    http_errors: BTreeMap<String, usize>,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let probes: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(50);
    let hour_secs: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(120);
    let n_urls: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(600);
    let ttl_secs = (hour_secs / 6).max(1);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let sites = rt.block_on(Sites::start(IpAddr::V4(Ipv4Addr::LOCALHOST)))?;
    let dir = tempfile::tempdir()?;
    // Registration is not what is measured: the fleet registers at once.
    let collector = shipped_collector(
        dir.path(),
        &[
            (
                "register_per_hour = 60",
                "register_per_hour = 100000".into(),
            ),
            ("register_burst = 10", "register_burst = 1000".into()),
            (
                "cache_ttl = \"10m\"",
                format!("cache_ttl = \"{ttl_secs}s\""),
            ),
        ],
    );
    let pid = collector.pid();
    let base = collector.url.clone();
    // 5% of the sites never answer the probes (they do answer the control), 5% are down.
    let urls: Vec<String> = (0..n_urls)
        .map(|i| match i % 20 {
            3 => sites.url(&format!("/bh/{i}")),
            11 => sites.url(&format!("/down/{i}")),
            _ => sites.url(&format!("/ok/{i}")),
        })
        .collect();
    let urls = Arc::new(urls);

    let cpu_before = proc_stat_cpu_secs(pid);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    rt.block_on(async {
        let register = reqwest::Client::new();
        let mut tokens = Vec::new();
        for _ in 0..probes {
            let r = register
                .post(format!("{base}api/v1/register"))
                .json(&serde_json::json!({}))
                .send()
                .await?;
            anyhow::ensure!(r.status() == 200, "register: {}", r.status());
            let v: serde_json::Value = r.json().await?;
            tokens.push(v["token"].as_str().unwrap_or_default().to_string());
        }
        let mut tasks = Vec::new();
        for (k, token) in tokens.into_iter().enumerate() {
            let source = IpAddr::V4(Ipv4Addr::new(127, 1, (k / 250) as u8, (k % 250 + 1) as u8));
            let client = reqwest::Client::builder()
                .local_address(source)
                .timeout(Duration::from_secs(600))
                .build()?;
            let (urls, tally, base) = (urls.clone(), tally.clone(), base.clone());
            // Each probe's run starts at its own moment of the hour.
            let offset = Duration::from_millis(rand::random::<u64>() % (hour_secs * 1000));
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(offset).await;
                let chunks: Vec<Vec<String>> = urls.chunks(BATCH).map(<[String]>::to_vec).collect();
                futures::stream::iter(chunks)
                    .for_each_concurrent(WINDOW, |chunk| {
                        let (client, token, tally, base) = (&client, &token, &tally, &base);
                        async move {
                            let t0 = Instant::now();
                            let r = client
                                .post(format!("{base}api/v1/control/batch"))
                                .bearer_auth(token)
                                .json(&serde_json::json!({ "urls": chunk }))
                                .send()
                                .await;
                            let text = match r {
                                Ok(r) if r.status().is_success() => r.text().await.ok(),
                                Ok(r) => {
                                    let mut t = tally.lock().unwrap();
                                    *t.http_errors.entry(r.status().to_string()).or_default() += 1;
                                    None
                                }
                                Err(e) => {
                                    let mut t = tally.lock().unwrap();
                                    *t.http_errors.entry(format!("{e}")).or_default() += 1;
                                    None
                                }
                            };
                            let ms = t0.elapsed().as_secs_f64() * 1000.0;
                            let mut t = tally.lock().unwrap();
                            if let Some(text) = text {
                                t.batch_ms.push(ms);
                                for line in text.lines() {
                                    match serde_json::from_str::<ControlBatchLine>(line) {
                                        Ok(l) if l.reply.is_some() => t.replies += 1,
                                        Ok(l) => {
                                            *t.refused.entry(l.status.unwrap_or(0)).or_default() +=
                                                1
                                        }
                                        Err(_) => *t.refused.entry(0).or_default() += 1,
                                    }
                                }
                            }
                        }
                    })
                    .await;
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        anyhow::Ok(())
    })?;
    let wall = started.elapsed().as_secs_f64();
    let cpu = proc_stat_cpu_secs(pid) - cpu_before;
    let peak_rss_mib = collector.peak_rss_kib().unwrap_or(0) as f64 / 1024.0;
    let (_, metrics) = witness_tests::collector::get(&format!("{base}metrics"))?;
    let misses = metric(&metrics, "witness_control_cache_misses_total");
    let hits = metric(&metrics, "witness_control_cache_hits_total");
    let evictions = metric(&metrics, "witness_control_cache_evictions_total");
    let site_fetches = sites.requests_under(IpAddr::V4(Ipv4Addr::LOCALHOST), "/").0;
    // The TTLs of the compressed hour (the runs that start late spill a little past it).
    let ttls = (hour_secs / ttl_secs).max(1) as f64;
    let t = tally.lock().unwrap();
    let mut ms = t.batch_ms.clone();
    ms.sort_by(f64::total_cmp);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let result = serde_json::json!({
        "probes": probes,
        "urls": n_urls,
        "hour_secs": hour_secs,
        "ttl_secs": ttl_secs,
        "wall_secs": (wall * 10.0).round() / 10.0,
        "batches": ms.len(),
        "replies": t.replies,
        "refused_lines_by_status": t.refused,
        "failed_batches": t.http_errors,
        "measurements": misses,
        "hits": hits,
        "evictions": evictions,
        "site_fetches_by_control": site_fetches,
        "measurements_per_url_per_ttl": misses / n_urls as f64 / ttls,
        "batch_p50_ms": percentile(&ms, 0.5).round(),
        "batch_p99_ms": percentile(&ms, 0.99).round(),
        "collector_cpu_secs": (cpu * 10.0).round() / 10.0,
        "collector_peak_rss_mib": peak_rss_mib.round(),
        "loadavg": load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    });
    println!("RESULT {result}");
    Ok(())
}
