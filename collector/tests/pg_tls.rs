//! PostgreSQL over TLS, against a real server started with `ssl = on` and a test CA:
//! `sslmode=verify-full` with the right CA connects (and the server sees an encrypted
//! connection), a wrong CA is refused, and a collector whose `sslmode=prefer` ended up in
//! plaintext says so at start. Skips loudly without PostgreSQL (fails under
//! WITNESS_REQUIRE_TOOLS=1).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use witness_collector::config::StoreConfig;
use witness_collector::{admin, store};
use witness_tests::postgres::{self, PgOptions, PgServer};

fn store_config(url: &str) -> StoreConfig {
    StoreConfig {
        url: url.to_string(),
        max_connections: 2,
        ..StoreConfig::default()
    }
}

#[tokio::test]
async fn verify_full_connects_with_the_right_ca_and_refuses_a_wrong_one() {
    if !PgServer::available("pg_tls") {
        return;
    }
    let (server, tls) = PgServer::start_tls(PgOptions::default()).expect("TLS PostgreSQL");
    let db = server.database().expect("database");
    let base = format!("postgres://postgres@127.0.0.1:{}/{}", server.port, db.name);

    let good = format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        tls.ca_pem.display()
    );
    let st = store::open(&store_config(&good))
        .await
        .unwrap_or_else(|e| panic!("verify-full with the right CA: {e}\n{}", server.log()));
    // A real round trip through the store, over TLS.
    assert!(st.list_tokens().await.expect("query over TLS").is_empty());
    assert!(
        admin::pg_connection_encrypted(&good)
            .await
            .expect("pg_stat_ssl"),
        "the server does not see an encrypted connection"
    );

    let started = Instant::now();
    let bad = format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        tls.other_ca_pem.display()
    );
    let err = match store::open(&store_config(&bad)).await {
        Ok(_) => panic!("a server certificate from another CA was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "the refusal does not say why: {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "refusal took {:?}",
        started.elapsed()
    );

    // What each sslmode ends up with, as the server sees it.
    let prefer = format!("{base}?sslmode=prefer");
    assert!(admin::pg_connection_encrypted(&prefer)
        .await
        .expect("prefer"));
    let disable = format!("{base}?sslmode=disable");
    assert!(!admin::pg_connection_encrypted(&disable)
        .await
        .expect("disable"));
}

/// `sslmode=prefer` (the default) against a server without TLS falls back to plaintext: the
/// collector must say so when it starts, not carry on silently.
#[test]
fn a_plaintext_fallback_is_reported_at_start() {
    let Some(db) = postgres::fresh_database("pg_tls plaintext fallback") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"{}?sslmode=prefer\"\n",
            db.url
        ),
    )
    .expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_witness-collector"))
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("collector starts");
    let (tx, rx) = mpsc::channel::<String>();
    for stream in [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let mut found = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                found = line.contains("NOT encrypted");
                seen.push(line);
                if found {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        found,
        "no word about the plaintext connection:\n{}",
        seen.join("\n")
    );
}
