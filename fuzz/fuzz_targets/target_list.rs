//! A target list (Citizen Lab CSV, or one URL per line) as the probe reads a volunteer's file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (targets, errors) = witness_core::targets::parse_list("fuzz.csv", data);
    // Every error names a line of the input.
    for e in &errors {
        let _ = e.to_string();
    }
    let _ = witness_core::targets::dedup(targets);
});
