//! The probe's own public address: remembered on the volunteer's machine (never uploaded), so
//! that records can be scrubbed of it, and records held back while it is unknown.
//!
//! The control service tells the probe the address it sees. A run in which it did not answer
//! (control down, blocked, offline) does not know its public address: its records could carry
//! it unscrubbed in some form the probe did not recognise as its own, so they go to the
//! spool's `held/` folder instead of the upload queue. They are released, scrubbed again
//! against every address remembered, once a later run has learned the address.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use witness_core::model::Measurement;
use witness_core::scrub::{record, Needles, OwnAddresses};

use crate::spool::{Spool, SpoolError};

/// Addresses remembered: a dynamic line changes address, and a held record may date from an
/// earlier one.
const REMEMBERED: usize = 8;
/// The file, in the spool directory (named so the spool never takes it for a record).
const FILE: &str = "own-addresses";

/// The addresses this probe has learned as its own, with when.
#[derive(Clone, Debug)]
pub struct KnownAddresses {
    path: PathBuf,
}

/// What the file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Known {
    /// When the public address was last learned (even a loopback one, in a lab).
    pub learned_at: Option<DateTime<Utc>>,
    /// Addresses learned, newest first (loopback ones are not kept: they identify nobody).
    pub addrs: Vec<IpAddr>,
}

impl KnownAddresses {
    /// The file next to `spool`'s records.
    pub fn of(spool: &Spool) -> Self {
        Self::in_dir(spool.dir())
    }

    /// The file in the spool directory `dir` (which may not exist yet).
    pub fn in_dir(dir: &std::path::Path) -> Self {
        KnownAddresses {
            path: dir.join(FILE),
        }
    }

    /// What was learned so far; nothing when the file is missing or unreadable.
    pub fn load(&self) -> Known {
        let mut k = Known::default();
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return k;
        };
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some("learned"), Some(t)) => {
                    k.learned_at = DateTime::parse_from_rfc3339(t)
                        .ok()
                        .map(|d| d.with_timezone(&Utc));
                }
                (Some("addr"), Some(a)) => {
                    if let Ok(ip) = a.parse() {
                        k.addrs.push(ip);
                    }
                }
                _ => {}
            }
        }
        k
    }

    /// Remember `ip` as learned at `at`. Written privately (0600): it identifies the volunteer.
    pub fn remember(&self, ip: IpAddr, at: DateTime<Utc>) -> std::io::Result<()> {
        let mut k = self.load();
        k.learned_at = Some(at);
        if !ip.is_loopback() && !ip.is_unspecified() {
            k.addrs.retain(|a| *a != ip);
            k.addrs.insert(0, ip);
            k.addrs.truncate(REMEMBERED);
        }
        let mut text = format!("learned {}\n", at.to_rfc3339());
        for a in &k.addrs {
            text.push_str(&format!("addr {a}\n"));
        }
        let tmp = self.path.with_extension("tmp");
        {
            let mut opts = std::fs::OpenOptions::new();
            opts.create(true).write(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)
    }

    /// Make every remembered address one of `own`'s, before a run records anything.
    pub fn seed(&self, own: &OwnAddresses) {
        for a in self.load().addrs {
            own.add(a);
        }
    }
}

/// The spool of records held back until the public address is known.
pub fn held(spool: &Spool) -> Result<Spool, SpoolError> {
    Spool::open(spool.dir().join("held"), spool.max())
}

/// Keep a run's records: for upload when the run learned its public address (which is then
/// remembered), else held back. Returns how many were held.
pub fn keep_run(
    spool: &Spool,
    own: &OwnAddresses,
    measurements: &[Measurement],
) -> Result<usize, SpoolError> {
    let known = KnownAddresses::of(spool);
    let target = match own.public() {
        Some(ip) => {
            if let Err(e) = known.remember(ip, Utc::now()) {
                tracing::warn!(error = %e, "cannot remember the probe's public address");
            }
            None
        }
        None => Some(held(spool)?),
    };
    for m in measurements {
        match &target {
            None => spool.push(m)?,
            Some(h) => h.push(m)?,
        };
    }
    Ok(if target.is_some() {
        measurements.len()
    } else {
        0
    })
}

/// What [`release`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Records scrubbed again and moved to the upload queue.
    pub released: usize,
    /// Records still held: measured after the public address was last learned.
    pub held: usize,
}

/// Move the held records measured before the public address was last learned to the upload
/// queue, scrubbed again against every remembered address and the interfaces' addresses.
pub fn release(spool: &Spool) -> Result<Released, SpoolError> {
    let h = held(spool)?;
    let mut out = Released::default();
    let ids = h.ids()?;
    if ids.is_empty() {
        return Ok(out);
    }
    let known = KnownAddresses::of(spool).load();
    let Some(learned_at) = known.learned_at else {
        out.held = ids.len();
        return Ok(out);
    };
    let own = OwnAddresses::default();
    own.add_local_interfaces();
    let mut all = own.all();
    all.extend(known.addrs.iter().copied());
    let needles = Needles::new(all);
    for p in h.oldest(usize::MAX)? {
        let mut m: Measurement = match serde_json::from_str(&p.json) {
            Ok(m) => m,
            Err(e) => {
                h.reject(&p.id, &format!("unreadable held record: {e}"))?;
                continue;
            }
        };
        if m.started_at > learned_at {
            out.held += 1;
            continue;
        }
        if let Err(e) = record::scrub_with(&mut m, &needles) {
            tracing::error!(error = %e, "a held record could not be scrubbed; its observations are dropped");
            record::strip(&mut m);
        }
        spool.push(&m)?;
        h.remove(&p.id)?;
        out.released += 1;
    }
    Ok(out)
}

/// Records waiting in `spool`, held back or not.
pub fn waiting(spool: &Spool) -> usize {
    spool.len().unwrap_or(0) + held(spool).and_then(|h| h.len()).unwrap_or(0)
}

/// Why records wait, in words for `witness upload` and the run's closing line.
pub fn held_message(held: usize, spool: &Spool) -> String {
    format!(
        "{held} measurements are held back in {}: the probe has not learned its public address \
         since they were made (the control service did not answer), so they cannot be checked \
         for it. They are sent, scrubbed, after a run that reaches the control service.",
        spool.dir().join("held").display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(started_at: DateTime<Utc>, title: &str) -> Measurement {
        let mut m = crate::spool::tests::sample();
        m.started_at = started_at;
        m.verdict.evidence = vec![title.to_string()];
        m
    }

    #[test]
    fn unknown_address_holds_records_until_learned() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 10).unwrap();
        let own = OwnAddresses::default();
        let t0 = Utc::now();
        let m = sample(t0, "you are 198-51-100-77");
        assert_eq!(keep_run(&spool, &own, std::slice::from_ref(&m)).unwrap(), 1);
        assert!(spool.is_empty().unwrap());
        // Nothing learned yet: stays held.
        assert_eq!(
            release(&spool).unwrap(),
            Released {
                released: 0,
                held: 1
            }
        );

        // A later run learns the address.
        let own = OwnAddresses::default();
        own.learn_public("198.51.100.77".parse().unwrap());
        assert_eq!(keep_run(&spool, &own, &[]).unwrap(), 0);
        assert_eq!(
            KnownAddresses::of(&spool).load().addrs,
            vec!["198.51.100.77".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            release(&spool).unwrap(),
            Released {
                released: 1,
                held: 0
            }
        );
        let p = spool.oldest(1).unwrap();
        assert!(!p[0].json.contains("198-51-100-77"), "{}", p[0].json);
        assert!(p[0].json.contains("[scrubbed]"));
    }

    #[test]
    fn records_newer_than_the_address_stay_held() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 10).unwrap();
        KnownAddresses::of(&spool)
            .remember("198.51.100.77".parse().unwrap(), Utc::now())
            .unwrap();
        let later = Utc::now() + chrono::Duration::seconds(60);
        keep_run(&spool, &OwnAddresses::default(), &[sample(later, "x")]).unwrap();
        assert_eq!(
            release(&spool).unwrap(),
            Released {
                released: 0,
                held: 1
            }
        );
    }

    #[test]
    fn remembered_addresses_are_bounded_private_and_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 10).unwrap();
        let k = KnownAddresses::of(&spool);
        for i in 0..12u8 {
            k.remember(IpAddr::from([203, 0, 113, i]), Utc::now())
                .unwrap();
        }
        k.remember("127.0.0.1".parse().unwrap(), Utc::now())
            .unwrap();
        let got = k.load();
        assert_eq!(got.addrs.len(), REMEMBERED);
        assert_eq!(got.addrs[0], IpAddr::from([203, 0, 113, 11]));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
        // The spool does not take the file for a record.
        assert!(spool.is_empty().unwrap());
    }
}
