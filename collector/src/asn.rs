//! IP address → autonomous system, from a table the operator downloads: the collector tells a
//! probe its own network (`your_asn` in the control reply) and the networks of the routers its
//! localisation met (`POST /api/v1/asn`), and names the censor's network for a record whose
//! probe could not ask (see `docs/operations.md`, "The ASN table").
//!
//! The format is the public-domain `ip2asn-combined.tsv` of iptoasn.com (also its `-v4`/`-v6`
//! files), plain or gzipped: one range per line, tab-separated `first last asn country
//! description`; `asn` 0 marks an unrouted range. Parsing is strict: a malformed line is an
//! error naming the line, not a silently smaller table. Addresses looked up are never stored
//! or logged.

use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use witness_core::model::PathObservation;

/// One range's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsnInfo {
    /// The autonomous system number.
    pub asn: u32,
    /// ISO 3166 alpha-2 country of the registration, when the table gives one.
    pub country: Option<[u8; 2]>,
}

impl AsnInfo {
    /// The country as a string (`"KZ"`).
    pub fn country_str(&self) -> Option<String> {
        self.country
            .map(|c| String::from_utf8_lossy(&c).into_owned())
    }
}

/// Sorted, non-overlapping ranges of one address family.
#[derive(Debug, Default)]
struct Ranges<T> {
    /// `(first, last, info)`, sorted by `first`.
    rows: Vec<(T, T, AsnInfo)>,
}

impl<T: Ord + Copy> Ranges<T> {
    fn lookup(&self, ip: T) -> Option<AsnInfo> {
        // The last range starting at or before `ip`; it holds `ip` if it ends at or after it.
        let i = self.rows.partition_point(|(first, _, _)| *first <= ip);
        let (_, last, info) = self.rows.get(i.checked_sub(1)?)?;
        (ip <= *last).then_some(*info)
    }

    /// Sort, then refuse overlaps (two answers for one address would make lookups arbitrary).
    fn seal(&mut self, describe: impl Fn(T) -> String) -> Result<()> {
        self.rows.sort_unstable_by_key(|(first, _, _)| *first);
        for w in self.rows.windows(2) {
            if w[1].0 <= w[0].1 {
                bail!(
                    "ranges overlap: {}-{} and {}-{}",
                    describe(w[0].0),
                    describe(w[0].1),
                    describe(w[1].0),
                    describe(w[1].1)
                );
            }
        }
        Ok(())
    }
}

/// The ASN table.
#[derive(Debug, Default)]
pub struct AsnDb {
    v4: Ranges<u32>,
    v6: Ranges<u128>,
}

/// Longest line accepted: real lines are under 200 bytes; this bounds a corrupt file's line.
const MAX_LINE: u64 = 4096;

impl AsnDb {
    /// Load the table at `path` (gzip is recognised by its magic bytes).
    pub fn load(path: &Path) -> Result<AsnDb> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot open the ASN table {}", path.display()))?;
        let mut reader = BufReader::new(file);
        let gzip = reader.fill_buf()?.starts_with(&[0x1f, 0x8b]);
        let reader: Box<dyn BufRead> = if gzip {
            Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(reader)))
        } else {
            Box::new(reader)
        };
        AsnDb::parse(reader).with_context(|| {
            format!(
                "the ASN table {} is not an ip2asn TSV (first<TAB>last<TAB>asn<TAB>country<TAB>description)",
                path.display()
            )
        })
    }

    /// Parse a table from `input`.
    pub fn parse(mut input: impl BufRead) -> Result<AsnDb> {
        let mut db = AsnDb::default();
        let mut line = Vec::new();
        let mut n = 0usize;
        loop {
            line.clear();
            n += 1;
            let read = (&mut input)
                .take(MAX_LINE + 1)
                .read_until(b'\n', &mut line)
                .with_context(|| format!("line {n}: read error"))?;
            if read == 0 {
                break;
            }
            if line.len() as u64 > MAX_LINE {
                bail!("line {n}: longer than {MAX_LINE} bytes");
            }
            let text = std::str::from_utf8(&line)
                .map_err(|_| anyhow::anyhow!("line {n}: not UTF-8"))?
                .trim_end_matches(['\n', '\r']);
            if text.trim().is_empty() || text.starts_with('#') {
                continue;
            }
            db.add_line(text).with_context(|| format!("line {n}"))?;
        }
        db.v4.seal(|a| std::net::Ipv4Addr::from(a).to_string())?;
        db.v6.seal(|a| std::net::Ipv6Addr::from(a).to_string())?;
        Ok(db)
    }

    fn add_line(&mut self, text: &str) -> Result<()> {
        let mut cols = text.split('\t');
        let mut col = |name: &str| {
            cols.next()
                .ok_or_else(|| anyhow::anyhow!("no {name} column (tab-separated)"))
        };
        let first: IpAddr = col("first")?.trim().parse().context("bad first address")?;
        let last: IpAddr = col("last")?.trim().parse().context("bad last address")?;
        let asn: u32 = col("asn")?.trim().parse().context("bad AS number")?;
        let country = match col("country")?.trim() {
            c if c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()) && c != "ZZ" => {
                Some([c.as_bytes()[0], c.as_bytes()[1]])
            }
            "" | "None" | "ZZ" => None,
            other => bail!("bad country {other:?}: two capital letters, None or ZZ"),
        };
        // asn 0: not routed. Kept out of the table, so such addresses answer "unknown".
        if asn == 0 {
            return Ok(());
        }
        let info = AsnInfo { asn, country };
        match (first, last) {
            (IpAddr::V4(a), IpAddr::V4(b)) if a <= b => {
                self.v4.rows.push((u32::from(a), u32::from(b), info));
            }
            (IpAddr::V6(a), IpAddr::V6(b)) if a <= b => {
                self.v6.rows.push((u128::from(a), u128::from(b), info));
            }
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                bail!("the range ends before it starts: {first} > {last}")
            }
            _ => bail!("the range mixes IPv4 and IPv6: {first} to {last}"),
        }
        Ok(())
    }

    /// The network of `ip`, when the table has it. IPv4-mapped IPv6 addresses are looked up
    /// as IPv4.
    pub fn lookup(&self, ip: IpAddr) -> Option<AsnInfo> {
        match ip {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => self.v4.lookup(u32::from(v4)),
                None => self.v6.lookup(u128::from(a)),
            },
        }
    }

    /// Ranges held (IPv4, IPv6).
    pub fn len(&self) -> (usize, usize) {
        (self.v4.rows.len(), self.v6.rows.len())
    }

    /// True when the table holds no range.
    pub fn is_empty(&self) -> bool {
        self.v4.rows.is_empty() && self.v6.rows.is_empty()
    }
}

/// The censor's network for the store: that of the router of hop N−1, as in
/// [`PathObservation::censor_asn`], except that a router whose address the table knows is
/// looked up rather than taken from the record: the probe's claim stands only for hops whose
/// address it kept to itself.
pub fn censor_asn(path: &PathObservation, table: Option<&AsnDb>) -> Option<u32> {
    let n = path.censor_hop?;
    let h = path.hops.iter().find(|h| h.ttl.checked_add(1) == Some(n))?;
    h.addr
        .and_then(|a| table?.lookup(a))
        .map(|i| i.asn)
        .or(h.asn)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "# a comment\n\
        1.0.0.0\t1.0.0.255\t13335\tUS\tCLOUDFLARENET\n\
        2.72.0.0\t2.79.255.255\t9198\tKZ\tKAZTELECOM-AS\n\
        2.80.0.0\t2.80.0.255\t0\tNone\tNot routed\n\
        95.56.0.0\t95.59.255.255\t9198\tKZ\tKAZTELECOM-AS\n\
        \n\
        2a03:32c0::\t2a03:32c0:ffff:ffff:ffff:ffff:ffff:ffff\t21299\tKZ\tKAR-TEL\n\
        5.250.128.0\t5.250.255.255\t21299\tZZ\tKAR-TEL\r\n";

    #[test]
    fn censor_asn_prefers_the_table_for_kept_addresses() {
        use witness_core::model::{HopReply, PathAction, PathHop, PathTrigger};
        let db = AsnDb::parse(TABLE.as_bytes()).unwrap();
        let hop = |ttl, reply, addr: Option<&str>, asn| PathHop {
            ttl,
            reply,
            addr: addr.map(|a| a.parse().unwrap()),
            asn,
        };
        let path = |censor_hop, hops| PathObservation {
            trigger: PathTrigger::Syn,
            addr: "1.0.0.1:443".parse().unwrap(),
            action: PathAction::Reset,
            censor_hop,
            unlocated: None,
            hops,
            max_ttl: 8,
            probes: 8,
            t_ms: 0.0,
            duration_ms: 1.0,
            shared_with: None,
            censor_range: None,
        };
        use HopReply::*;
        let cases = [
            // (what, path, without table, with table)
            (
                "scrubbed hops: the probe's claim",
                path(
                    Some(2),
                    vec![
                        hop(1, TimeExceeded, None, Some(9198)),
                        hop(2, Reset, None, None),
                    ],
                ),
                Some(9198),
                Some(9198),
            ),
            (
                "a kept router: the table over a false claim",
                path(
                    Some(3),
                    vec![
                        hop(1, TimeExceeded, None, Some(9198)),
                        hop(2, TimeExceeded, Some("5.250.128.9"), Some(1)),
                        hop(3, Reset, None, None),
                    ],
                ),
                Some(1),
                Some(21299),
            ),
            (
                "a router the table does not know: the claim",
                path(
                    Some(3),
                    vec![
                        hop(1, TimeExceeded, None, None),
                        hop(2, TimeExceeded, Some("9.9.9.9"), Some(3)),
                        hop(3, Reset, None, None),
                    ],
                ),
                Some(3),
                Some(3),
            ),
            (
                "the censor's own hop is past it: not counted",
                path(
                    Some(3),
                    vec![
                        hop(1, TimeExceeded, None, Some(9198)),
                        hop(2, TimeExceeded, Some("95.56.0.1"), Some(9198)),
                        hop(3, Reset, Some("5.250.128.9"), Some(21299)),
                    ],
                ),
                Some(9198),
                Some(9198),
            ),
            (
                "a censor at hop 1 has no router before it",
                path(Some(1), vec![hop(1, Reset, None, Some(9198))]),
                None,
                None,
            ),
            (
                "no hop named",
                path(None, vec![hop(1, Silence, None, Some(9198))]),
                None,
                None,
            ),
        ];
        for (what, p, without, with) in cases {
            assert_eq!(censor_asn(&p, None), without, "{what}, no table");
            assert_eq!(censor_asn(&p, Some(&db)), with, "{what}, with the table");
        }
    }

    #[test]
    fn lookups() {
        let db = AsnDb::parse(TABLE.as_bytes()).unwrap();
        assert_eq!(db.len(), (4, 1));
        let asn = |s: &str| db.lookup(s.parse().unwrap()).map(|i| i.asn);
        let cases = [
            ("1.0.0.0", Some(13335)),
            ("1.0.0.255", Some(13335)),
            ("1.0.1.0", None),
            ("0.255.255.255", None),
            ("2.75.1.2", Some(9198)),
            ("2.80.0.7", None), // not routed
            ("95.59.255.255", Some(9198)),
            ("95.60.0.0", None),
            ("5.250.130.1", Some(21299)),
            ("2a03:32c0::1", Some(21299)),
            ("2a03:32c1::1", None),
            ("::ffff:95.56.1.1", Some(9198)),
            ("255.255.255.255", None),
        ];
        for (ip, want) in cases {
            assert_eq!(asn(ip), want, "{ip}");
        }
        let kz = db.lookup("2.72.0.1".parse().unwrap()).unwrap();
        assert_eq!(kz.country_str().as_deref(), Some("KZ"));
        assert_eq!(
            db.lookup("5.250.130.1".parse().unwrap()).unwrap().country,
            None
        );
    }

    #[test]
    fn bad_tables_name_the_line() {
        let cases = [
            ("1.0.0.0\t1.0.0.255\n", "line 1", "no asn column"),
            (
                "\n1.0.0.x\t1.0.0.255\t1\tUS\tX\n",
                "line 2",
                "bad first address",
            ),
            (
                "1.0.0.9\t1.0.0.1\t1\tUS\tX\n",
                "line 1",
                "ends before it starts",
            ),
            ("1.0.0.0\t::1\t1\tUS\tX\n", "line 1", "mixes IPv4 and IPv6"),
            ("1.0.0.0\t1.0.0.9\tAS1\tUS\tX\n", "line 1", "bad AS number"),
            ("1.0.0.0\t1.0.0.9\t1\tkz\tX\n", "line 1", "bad country"),
            (
                "1.0.0.0\t1.0.0.9\t1\tUS\tX\n1.0.0.5\t1.0.1.0\t2\tUS\tY\n",
                "overlap",
                "1.0.0.0-1.0.0.9",
            ),
        ];
        for (table, a, b) in cases {
            let e = format!("{:#}", AsnDb::parse(table.as_bytes()).unwrap_err());
            assert!(e.contains(a) && e.contains(b), "{table:?}: {e}");
        }
        let long = format!("1.0.0.0\t1.0.0.9\t1\tUS\t{}\n", "x".repeat(5000));
        let e = format!("{:#}", AsnDb::parse(long.as_bytes()).unwrap_err());
        assert!(e.contains("longer than"), "{e}");
    }

    #[test]
    fn loads_plain_and_gzip_files() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("ip2asn.tsv");
        std::fs::write(&plain, TABLE).unwrap();
        let gz = dir.path().join("ip2asn.tsv.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(TABLE.as_bytes()).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        for p in [&plain, &gz] {
            let db = AsnDb::load(p).unwrap();
            assert_eq!(db.len(), (4, 1), "{}", p.display());
        }
        let e = format!(
            "{:#}",
            AsnDb::load(&dir.path().join("missing")).unwrap_err()
        );
        assert!(e.contains("cannot open the ASN table"), "{e}");
    }
}
