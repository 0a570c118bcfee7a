//! A DNS response as the probe decodes it (from a resolver, or from a censor's injector).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = witness_core::checks::dns::fuzz_parse_response(data);
});
