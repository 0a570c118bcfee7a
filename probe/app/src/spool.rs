//! The local spool: every measurement is written here before any upload, and removed only once
//! a collector has acknowledged it.
//!
//! One file per measurement, named by its UUIDv7 id so that names sort by time. Writes are
//! atomic (temporary file, fsync, rename, fsync of the directory): a power cut leaves either the
//! whole record or nothing. The spool is bounded; beyond the bound the oldest records are
//! evicted, each time with a warning and a persistent counter, never silently.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use witness_core::model::Measurement;

/// Default bound: at ~5 KB a record, about 1 GB.
pub const DEFAULT_MAX: usize = 200_000;

/// A spool problem.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A filesystem operation failed.
    #[error("spool {path}: cannot {op}: {source}")]
    Io {
        /// What we tried.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A record could not be serialised (should not happen).
    #[error("cannot serialise measurement: {0}")]
    Serialize(#[from] serde_json::Error),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A spooled record waiting for upload.
#[derive(Debug)]
pub struct Pending {
    /// Its file.
    pub path: PathBuf,
    /// Its id (the file stem).
    pub id: String,
    /// Its JSON text.
    pub json: String,
}

/// The spool directory.
#[derive(Clone, Debug)]
pub struct Spool {
    dir: PathBuf,
    max: usize,
}

impl Spool {
    /// Open (creating) a spool at `dir` holding at most `max` records.
    pub fn open(dir: impl Into<PathBuf>, max: usize) -> Result<Self, SpoolError> {
        let dir = dir.into();
        fs::create_dir_all(dir.join("tmp")).map_err(io("create", &dir))?;
        fs::create_dir_all(dir.join("rejected")).map_err(io("create", &dir))?;
        // Leftovers of a crash mid-write are incomplete by construction: remove them.
        if let Ok(rd) = fs::read_dir(dir.join("tmp")) {
            for e in rd.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(Spool {
            dir,
            max: max.max(1),
        })
    }

    /// The default directory: `~/.local/share/witness/spool` (Windows:
    /// `%APPDATA%\witness\spool`).
    pub fn default_dir() -> Option<PathBuf> {
        dirs::data_dir().map(|d| d.join("witness").join("spool"))
    }

    /// Where the spool lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its bound.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Write one measurement durably. Returns how many old records were evicted to make room.
    pub fn push(&self, m: &Measurement) -> Result<usize, SpoolError> {
        let json = serde_json::to_string(m)?;
        let name = format!("{}.json", m.id);
        let tmp = self.dir.join("tmp").join(&name);
        let dest = self.dir.join(&name);
        {
            let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
            f.write_all(json.as_bytes()).map_err(io("write", &tmp))?;
            f.sync_all().map_err(io("fsync", &tmp))?;
        }
        fs::rename(&tmp, &dest).map_err(io("rename", &dest))?;
        sync_dir(&self.dir)?;
        self.enforce_bound()
    }

    /// Ids of waiting records, oldest first.
    pub fn ids(&self) -> Result<Vec<String>, SpoolError> {
        let mut ids: Vec<String> = fs::read_dir(&self.dir)
            .map_err(io("list", &self.dir))?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".json").map(str::to_string)
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// How many records wait.
    pub fn len(&self) -> Result<usize, SpoolError> {
        Ok(self.ids()?.len())
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> Result<bool, SpoolError> {
        Ok(self.len()? == 0)
    }

    /// Up to `n` waiting records, oldest first. Unreadable files are moved aside, not lost.
    pub fn oldest(&self, n: usize) -> Result<Vec<Pending>, SpoolError> {
        let mut out = Vec::new();
        for id in self.ids()?.into_iter() {
            if out.len() >= n {
                break;
            }
            let path = self.dir.join(format!("{id}.json"));
            match fs::read_to_string(&path) {
                Ok(json) => out.push(Pending { path, id, json }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    self.reject(&id, &format!("unreadable: {e}"))?;
                }
            }
        }
        Ok(out)
    }

    /// Remove an acknowledged record.
    pub fn remove(&self, id: &str) -> Result<(), SpoolError> {
        let path = self.dir.join(format!("{id}.json"));
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &path)(e)),
        }
    }

    /// Move a record the collector refused (and will always refuse) aside with the reason, so
    /// it is kept for inspection but no longer retried.
    pub fn reject(&self, id: &str, reason: &str) -> Result<(), SpoolError> {
        let from = self.dir.join(format!("{id}.json"));
        let to = self.dir.join("rejected").join(format!("{id}.json"));
        if from.exists() {
            fs::rename(&from, &to).map_err(io("move aside", &from))?;
        }
        let _ = fs::write(
            self.dir.join("rejected").join(format!("{id}.reason")),
            reason,
        );
        Ok(())
    }

    /// How many records were ever evicted for lack of room.
    pub fn evicted_total(&self) -> u64 {
        fs::read_to_string(self.dir.join("evicted.count"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn enforce_bound(&self) -> Result<usize, SpoolError> {
        let ids = self.ids()?;
        if ids.len() <= self.max {
            return Ok(0);
        }
        let excess = ids.len() - self.max;
        for id in &ids[..excess] {
            self.remove(id)?;
        }
        let total = self.evicted_total() + excess as u64;
        let counter = self.dir.join("evicted.count");
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&counter)
            .map_err(io("write", &counter))?;
        let _ = writeln!(f, "{total}");
        tracing::warn!(
            evicted = excess,
            evicted_total = total,
            max = self.max,
            "spool full: evicted the oldest measurements that were never uploaded"
        );
        Ok(excess)
    }
}

/// fsync of the directory makes the rename itself durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

/// Windows cannot flush a directory (a directory handle opened for reading refuses it:
/// "Access denied"); NTFS journals the rename itself, so after a power cut the record is under
/// its old name or its new one, never half of it.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), SpoolError> {
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use witness_core::model::*;

    pub(crate) fn sample() -> Measurement {
        Measurement {
            schema_version: SCHEMA_VERSION,
            id: uuid::Uuid::now_v7(),
            software: Software::default(),
            url: "https://example.com/".into(),
            domain: "example.com".into(),
            category_code: None,
            started_at: chrono::Utc::now(),
            runtime_ms: 1.0,
            probe: ProbeNetwork::default(),
            dns: vec![],
            tcp: vec![],
            tls: vec![],
            http: vec![],
            control: None,
            control_failure: None,
            path: None,
            ab: vec![],
            app: None,
            connectivity: ConnectivitySummary::default(),
            verdict: Verdict::new(Status::Offline, None, "test"),
        }
    }

    #[test]
    fn push_list_remove_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 10).unwrap();
        let a = sample();
        let b = sample();
        spool.push(&a).unwrap();
        spool.push(&b).unwrap();
        let reopened = Spool::open(dir.path(), 10).unwrap();
        let ids = reopened.ids().unwrap();
        assert_eq!(ids, vec![a.id.to_string(), b.id.to_string()]);
        let pending = reopened.oldest(1).unwrap();
        let back: Measurement = serde_json::from_str(&pending[0].json).unwrap();
        assert_eq!(back, a);
        reopened.remove(&a.id.to_string()).unwrap();
        assert_eq!(reopened.len().unwrap(), 1);
    }

    #[test]
    fn bound_evicts_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 2).unwrap();
        let ms: Vec<_> = (0..4).map(|_| sample()).collect();
        let mut evicted = 0;
        for m in &ms {
            evicted += spool.push(m).unwrap();
        }
        assert_eq!(evicted, 2);
        assert_eq!(spool.evicted_total(), 2);
        assert_eq!(
            spool.ids().unwrap(),
            vec![ms[2].id.to_string(), ms[3].id.to_string()]
        );
    }

    #[test]
    fn rejected_records_are_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 10).unwrap();
        let m = sample();
        spool.push(&m).unwrap();
        spool.reject(&m.id.to_string(), "bad schema").unwrap();
        assert!(spool.is_empty().unwrap());
        assert!(dir
            .path()
            .join("rejected")
            .join(format!("{}.json", m.id))
            .exists());
    }

    #[test]
    fn leftover_temporaries_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 10).unwrap();
        std::fs::write(spool.dir().join("tmp").join("x.json"), "{partial").unwrap();
        let spool = Spool::open(dir.path(), 10).unwrap();
        assert!(spool.is_empty().unwrap());
        assert_eq!(
            std::fs::read_dir(spool.dir().join("tmp")).unwrap().count(),
            0
        );
    }
}
