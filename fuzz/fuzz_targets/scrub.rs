//! The scrubber against every encoding of an IPv4 address, embedded in arbitrary text: after
//! `Needles::scrub`, an independent checker (written apart from the scrubber: exact forms,
//! percent-decoding, base64 decoding at every alignment) must not find the address.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use witness_core::scrub::Needles;

fn b64(data: &[u8], url: bool) -> String {
    let abc: &[u8] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..=c.len() {
            out.push(abc[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// (form, is it four numbers with separators: such a form counts only when not glued to
/// further digits, `1.2.3.45` being another address).
fn forms(ip: Ipv4Addr, pre: &str) -> Vec<(String, bool)> {
    let [a, b, c, d] = ip.octets();
    let n = u32::from(ip);
    let dotted = ip.to_string();
    vec![
        (dotted.clone(), true),
        (format!("{a:03}.{b:03}.{c:03}.{d:03}"), true),
        (format!("{a}-{b}-{c}-{d}"), true),
        (format!("{a}_{b}_{c}_{d}"), true),
        (format!("{d}.{c}.{b}.{a}.in-addr.arpa"), true),
        (format!("0{a:o}.0{b:o}.0{c:o}.0{d:o}"), true),
        (format!("{a:#x}.{b:#x}.{c:#x}.{d:#x}"), true),
        (format!("{n:08x}"), false),
        (format!("0x{n:08X}"), false),
        (n.to_string(), false),
        (format!("0{n:o}"), false),
        (format!("::ffff:{:04x}:{:04x}", n >> 16, n & 0xffff), false),
        (dotted.bytes().map(|x| format!("%{x:02X}")).collect(), false),
        (dotted.bytes().map(|x| format!("&#{x};")).collect(), false),
        (b64(format!("{pre}{dotted}").as_bytes(), false), false),
        (b64(format!("{pre}{dotted}").as_bytes(), true), false),
    ]
}

fn present(hay: &str, form: &str, glued_digits_excluded: bool) -> bool {
    let hay = hay.to_ascii_lowercase();
    let form = form.to_ascii_lowercase();
    let b = hay.as_bytes();
    hay.match_indices(&form).any(|(i, m)| {
        if !glued_digits_excluded {
            return true;
        }
        let before = i.checked_sub(1).map(|j| b[j]);
        let after = b.get(i + m.len()).copied();
        let first = m.as_bytes()[0];
        let last = m.as_bytes()[m.len() - 1];
        !(before.is_some_and(|x| x.is_ascii_digit()) && first.is_ascii_digit())
            && !(after.is_some_and(|x| x.is_ascii_digit()) && last.is_ascii_digit())
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |x: u8| (x as char).to_digit(16);
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn b64_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for &c in s {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => break,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// The independent check: the address in `text` as any of `forms`, after percent-decoding,
/// or inside any base64 run.
fn leaks(text: &str, ip: Ipv4Addr) -> Option<String> {
    let dotted = ip.to_string();
    let mut views = vec![text.to_string(), percent_decode(text)];
    views.push(percent_decode(&views[1]));
    for v in &views {
        for (f, tuple) in forms(ip, "") {
            if present(v, &f, tuple) {
                return Some(f);
            }
        }
    }
    for run in text
        .split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '-' | '_')))
        .filter(|r| r.len() >= 6)
    {
        for skip in 0..4.min(run.len()) {
            let d = String::from_utf8_lossy(&b64_decode(&run.as_bytes()[skip..])).into_owned();
            if present(&d, &dotted, true) {
                return Some(format!("base64 {run}"));
            }
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    // Short texts: more inputs per second; the cost of long ones has its own test.
    let data = &data[..data.len().min(2048)];
    if data.len() < 6 {
        return;
    }
    let ip = Ipv4Addr::new(data[0], data[1], data[2], data[3]);
    // Addresses whose whole-number forms are a digit or two would match any number: not an
    // address a probe has.
    if u32::from(ip) < 1 << 24 {
        return;
    }
    let rest = String::from_utf8_lossy(&data[5..]);
    let cut = rest
        .char_indices()
        .map(|(i, _)| i)
        .nth(rest.chars().count() / 2)
        .unwrap_or(0);
    let pre_len = (data[4] >> 4) as usize % 3;
    let all = forms(ip, &"ab"[..pre_len]);
    let (enc, _) = &all[data[4] as usize % all.len()];
    let text = format!("{} {enc} {}", &rest[..cut], &rest[cut..]);
    let needles = Needles::new([IpAddr::V4(ip)]);
    let out = needles.scrub(&text);
    if let Some(form) = leaks(&out, ip) {
        panic!("{ip} survives as {form:?}: {text:?} -> {out:?}");
    }
});
