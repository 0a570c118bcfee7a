//! Benchmark: what localisation costs a run (issue #22). The control fleet's world: one real
//! collector with the shipped config (lab switches only, see [`shipped_collector`]), one
//! loopback server standing in for N sites, a tenth of them blackholed for the probe (its
//! request is never answered, so each costs a step timeout), and the real `witness run`,
//! once with `--no-path` and once with localisation on (the default), alternately, R rounds.
//!
//! `cargo run -p witness-tests --example bench_path -- [SITES] [ROUNDS]` (defaults 300, 2).
//! Prints one `RESULT {json}` line per run: wall time, targets blocked, targets with a `path`,
//! how many of those share another target's localisation (`shared_with`), and the
//! localisations' own durations. The numbers are in docs/benchmarks.md.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::Instant;

use witness_core::model::{Measurement, Status};
use witness_tests::fleet::{shipped_collector, Sites};
use witness_tests::{witness_bin, CENSORED_SOURCE};

const CONTROL_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(300);
    let rounds: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let sites = rt.block_on(Sites::start(CONTROL_SOURCE))?;
    let dir = tempfile::tempdir()?;
    let collector = shipped_collector(dir.path(), &[]);
    let mut csv = String::from("url,category_code,category_description,date_added,source,notes\n");
    for i in 0..n {
        let p = if i % 10 == 3 {
            format!("/bh/{i}")
        } else {
            format!("/ok/{i}")
        };
        csv.push_str(&format!("{},NEWS,News,2024-01-01,test,\n", sites.url(&p)));
    }
    let list = dir.path().join("list.csv");
    std::fs::write(&list, csv)?;
    for round in 0..rounds {
        for no_path in [true, false] {
            let token: String = rt.block_on(async {
                let r = reqwest::Client::new()
                    .post(format!("{}api/v1/register", collector.url))
                    .json(&serde_json::json!({}))
                    .send()
                    .await?;
                let v: serde_json::Value = r.json().await?;
                anyhow::Ok(v["token"].as_str().unwrap_or_default().to_string())
            })?;
            let mut cmd = Command::new(witness_bin());
            cmd.args(["run", "--yes", "--no-progress", "--json"]);
            if no_path {
                cmd.arg("--no-path");
            }
            let started = Instant::now();
            let out = cmd
                .arg("--list")
                .arg(&list)
                .args(["--lab-public-range", "127.0.0.0/8"])
                .args(["--source-address", &CENSORED_SOURCE.to_string()])
                .args(["--anchor", &sites.addr().to_string()])
                .args(["--control", &collector.url, "--control-token", &token])
                .args(["--control-resolver", "none", "--timeout", "2"])
                .env("HOME", dir.path())
                .output()?;
            let wall = started.elapsed().as_secs_f64();
            anyhow::ensure!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let ms: Vec<Measurement> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(serde_json::from_str)
                .collect::<Result<_, _>>()?;
            let blocked = ms
                .iter()
                .filter(|m| m.verdict.status == Status::Blocked)
                .count();
            let paths: Vec<_> = ms.iter().filter_map(|m| m.path.as_ref()).collect();
            let shared = paths.iter().filter(|p| p.shared_with.is_some()).count();
            let own: Vec<f64> = paths
                .iter()
                .filter(|p| p.shared_with.is_none())
                .map(|p| p.duration_ms)
                .collect();
            println!(
                "RESULT {}",
                serde_json::json!({
                    "round": round,
                    "path": !no_path,
                    "sites": n,
                    "wall_s": (wall * 100.0).round() / 100.0,
                    "blocked": blocked,
                    "with_path": paths.len(),
                    "shared": shared,
                    "localisation_ms": own,
                })
            );
        }
    }
    Ok(())
}
