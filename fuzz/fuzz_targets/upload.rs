//! An upload body as the collector reads it: the batch (plain and gzip), then each record
//! parsed and validated.
#![no_main]

use libfuzzer_sys::fuzz_target;
use witness_collector::api::ingest::{parse_batch, parse_gzip_batch};
use witness_collector::validate::{self, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_record_bytes: 256 * 1024,
        max_age: chrono::TimeDelta::days(30),
        max_clock_skew: chrono::TimeDelta::minutes(10),
    };
    let now = chrono::Utc::now();
    let records = match parse_batch(data, 100) {
        Ok(r) => r,
        Err(_) => parse_gzip_batch(data, 1 << 20, 100).unwrap_or_default(),
    };
    for raw in &records {
        let _ = validate::parse_record(raw.get(), &limits, now);
        let _ = validate::salvage_id(raw.get());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = validate::check_bounds(text);
        let _ = validate::parse_record(text, &limits, now);
        let _ = validate::valid_host(text);
    }
});
