//! A lab probe's files and command line, one copy for every lab: its home (config, list,
//! credentials), the real `witness` run inside a namespace under the guard, and the records it
//! printed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};
use witness_core::model::Measurement;
use witness_tests::witness_bin;
use witness_tests::world::{citizenlab_csv, ListEntry};

use crate::netlab::{self, Lab};

/// A probe's home in the lab directory: `witness.toml` and `list.csv` in it, and its HOME (the
/// token and the spool live there).
pub struct ProbeFiles {
    pub home: PathBuf,
    pub config: PathBuf,
    pub list: PathBuf,
}

impl ProbeFiles {
    /// `<lab>/<name>/` with `config` as its config file and `urls` as its list (category NEWS).
    pub fn new(lab: &Lab, name: &str, config: &str, urls: &[&str]) -> Result<Self> {
        let home = lab.path(name);
        std::fs::create_dir_all(&home)?;
        let config_path = home.join("witness.toml");
        std::fs::write(&config_path, config)?;
        let entries: Vec<ListEntry> = urls
            .iter()
            .map(|url| ListEntry {
                url: (*url).to_owned(),
                category_code: "NEWS".to_owned(),
                notes: String::new(),
            })
            .collect();
        let list = home.join("list.csv");
        std::fs::write(&list, citizenlab_csv(&entries))?;
        Ok(Self {
            home,
            config: config_path,
            list,
        })
    }

    /// `witness --config CFG <args>`.
    pub fn argv<S: AsRef<str>>(&self, args: &[S]) -> Vec<String> {
        let mut argv = vec![
            witness_bin().display().to_string(),
            "--config".to_owned(),
            self.config.display().to_string(),
        ];
        argv.extend(args.iter().map(|a| a.as_ref().to_owned()));
        argv
    }

    /// The probe's environment: its own HOME (credentials), logs without colours.
    pub fn envs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("HOME", self.home.display().to_string()),
            ("WITNESS_LOG", "info".to_owned()),
            ("NO_COLOR", "1".to_owned()),
        ]
    }

    /// `ip netns exec NS lab-origin guard -- witness --config CFG <args>`, without the test's
    /// own witness settings: short-lived, and killed by the guard if the test dies (see
    /// [`netlab::run_with_limit`]). More arguments may be added to it.
    pub fn command<S: AsRef<str>>(&self, ns: &str, args: &[S]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns])
            .args([netlab::lab_origin_bin(), "guard", "--"])
            .args(self.argv(args))
            .envs(self.envs());
        for var in netlab::NOT_INHERITED {
            command.env_remove(var);
        }
        command
    }
}

/// The records a `witness run --json` printed, one per line, by URL.
pub fn by_url(label: &str, out: &str) -> Result<HashMap<String, Measurement>> {
    let mut by_url = HashMap::new();
    for line in out.lines() {
        let m: Measurement = serde_json::from_str(line)
            .with_context(|| format!("{label}: stdout line is not a measurement: {line}"))?;
        by_url.insert(m.url.clone(), m);
    }
    Ok(by_url)
}
