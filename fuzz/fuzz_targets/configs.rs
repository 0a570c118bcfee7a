//! The TOML configs: the collector's and the probe's, as their operators and volunteers write
//! them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = witness_collector::Config::parse(text);
        let _ = witness_app::config::FileConfig::parse(text, std::path::Path::new("fuzz.toml"));
    }
});
