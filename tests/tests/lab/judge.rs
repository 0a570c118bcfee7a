//! The lab's comparison: one expected verdict per scenario against what the real probe said,
//! and the table `scenario | expected | got | ok`. Pure, so a test without root can prove that a
//! wrong expectation is reported as a mismatch by this very code.

use std::fmt;

use witness_core::model::{Measurement, Method, Status};

/// Checks a measurement beyond its verdict; `Some(problem)` when it fails.
pub type Check = fn(&Measurement) -> Option<String>;

/// The verdict a scenario must produce, and the evidence that shows it was reached for the
/// right reason (the technique the scenario simulates, not some other failure).
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    /// Verdict status.
    pub status: Status,
    /// Blocking method (only with `blocked`).
    pub method: Option<Method>,
    /// The measurement must also record that the control was unavailable.
    pub without_control: bool,
    /// Each must be a substring of one of the verdict's evidence lines.
    pub evidence: &'static [&'static str],
    /// A further check of the measurement.
    pub check: Option<Check>,
}

impl Expect {
    pub const fn blocked(method: Method) -> Self {
        Self::new(Status::Blocked, Some(method))
    }
    pub const fn accessible() -> Self {
        Self::new(Status::Accessible, None)
    }
    pub const fn down() -> Self {
        Self::new(Status::Down, None)
    }
    pub const fn inconclusive() -> Self {
        Self::new(Status::Inconclusive, None)
    }
    pub const fn offline() -> Self {
        Self::new(Status::Offline, None)
    }
    const fn new(status: Status, method: Option<Method>) -> Self {
        Self {
            status,
            method,
            without_control: false,
            evidence: &[],
            check: None,
        }
    }
    /// The same verdict, reached without a control answer.
    pub const fn without_control(mut self) -> Self {
        self.without_control = true;
        self
    }

    /// The same verdict, with these evidence lines (substrings).
    pub const fn evidence(mut self, evidence: &'static [&'static str]) -> Self {
        self.evidence = evidence;
        self
    }
    /// The same verdict, and `check` must pass.
    pub const fn check(mut self, check: Check) -> Self {
        self.check = Some(check);
        self
    }

    /// Whether the verdict is the expected one.
    pub fn verdict_matches(&self, m: &Measurement) -> bool {
        m.verdict.status == self.status
            && m.verdict.method == self.method
            && (!self.without_control || m.control_failure.is_some() || m.control.is_none())
    }

    /// What is wrong beyond the verdict: missing evidence, a failed check.
    pub fn problems(&self, m: &Measurement) -> Vec<String> {
        let mut problems: Vec<String> = self
            .evidence
            .iter()
            .filter(|want| !m.verdict.evidence.iter().any(|line| line.contains(*want)))
            .map(|want| format!("no evidence {want}"))
            .collect();
        problems.extend(self.check.and_then(|check| check(m)));
        problems
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        verdict_text(self.status, self.method, f)?;
        if self.without_control {
            f.write_str(" (no control)")?;
        }
        Ok(())
    }
}

fn verdict_text(status: Status, method: Option<Method>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match method {
        Some(method) => write!(f, "{status}/{method}"),
        None => write!(f, "{status}"),
    }
}

/// What the probe said, as the table shows it.
pub fn got_text(m: &Measurement) -> String {
    struct Got<'a>(&'a Measurement);
    impl fmt::Display for Got<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            verdict_text(self.0.verdict.status, self.0.verdict.method, f)?;
            if self.0.control_failure.is_some() || self.0.control.is_none() {
                f.write_str(" (no control)")?;
            }
            Ok(())
        }
    }
    Got(m).to_string()
}

/// How one row came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// As expected.
    Pass,
    /// Not as expected: the lab fails.
    Fail,
    /// Not as expected, but a known probe bug (reported, does not fail the run).
    KnownBug,
    /// Marked as a known bug but now as expected: remove the mark.
    KnownBugFixed,
}

impl Outcome {
    fn from(matched: bool, known_bug: Option<&str>) -> Self {
        match (matched, known_bug) {
            (true, None) => Outcome::Pass,
            (false, None) => Outcome::Fail,
            (false, Some(_)) => Outcome::KnownBug,
            (true, Some(_)) => Outcome::KnownBugFixed,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Outcome::Pass => "ok",
            Outcome::Fail => "MISMATCH",
            Outcome::KnownBug => "KNOWN-BUG",
            Outcome::KnownBugFixed => "ok (KNOWN-BUG mark is stale)",
        }
    }
}

/// One line of the table.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: String,
    pub expected: String,
    pub got: String,
    pub outcome: Outcome,
    /// The probe's reason and evidence, or what a collector check saw: printed for mismatches.
    pub detail: String,
}

/// Judges one probe scenario. `m` is `None` when the probe produced no measurement for it.
pub fn judge(
    scenario: &str,
    expect: Expect,
    known_bug: Option<&str>,
    m: Option<&Measurement>,
) -> Row {
    let (got, matched, detail) = match m {
        None => ("no measurement".to_owned(), false, String::new()),
        Some(m) => {
            let problems = expect.problems(m);
            let mut got = got_text(m);
            if expect.verdict_matches(m) && !problems.is_empty() {
                got = format!("{got}; {}", problems.join("; "));
            }
            (
                got,
                expect.verdict_matches(m) && problems.is_empty(),
                format!(
                    "reason: {}\n      evidence: {}",
                    m.verdict.reason,
                    m.verdict.evidence.join(", ")
                ),
            )
        }
    };
    let detail = match known_bug {
        Some(bug) => format!("{detail}\n      KNOWN-BUG: {bug}"),
        None => detail,
    };
    Row {
        scenario: scenario.to_owned(),
        expected: expect.to_string(),
        got,
        outcome: Outcome::from(matched, known_bug),
        detail,
    }
}

/// [`check`] of a row a known probe bug can fail: reported as `KNOWN-BUG`, not failing the run.
pub fn check_known_bug(scenario: &str, expected: &str, got: &str, matched: bool, bug: &str) -> Row {
    Row {
        scenario: scenario.to_owned(),
        expected: expected.to_owned(),
        got: got.to_owned(),
        outcome: Outcome::from(matched, Some(bug)),
        detail: format!("KNOWN-BUG: {bug}"),
    }
}

/// Judges a check that is not a single verdict (the collector's events, the spool).
pub fn check(scenario: &str, expected: &str, got: &str, matched: bool, detail: &str) -> Row {
    Row {
        scenario: scenario.to_owned(),
        expected: expected.to_owned(),
        got: got.to_owned(),
        outcome: Outcome::from(matched, None),
        detail: detail.to_owned(),
    }
}

/// The table, with the details of every row that is not a plain pass (of every row with
/// `verbose`).
pub fn table(rows: &[Row], verbose: bool) -> String {
    let width = |f: fn(&Row) -> &str, title: &str| {
        rows.iter()
            .map(|r| f(r).chars().count())
            .chain([title.len()])
            .max()
            .unwrap_or(0)
    };
    let ws = width(|r| &r.scenario, "scenario");
    let we = width(|r| &r.expected, "expected");
    let wg = width(|r| &r.got, "got");
    let mut out = format!(
        "| {:ws$} | {:we$} | {:wg$} | ok |\n|{}|{}|{}|----|\n",
        "scenario",
        "expected",
        "got",
        "-".repeat(ws + 2),
        "-".repeat(we + 2),
        "-".repeat(wg + 2),
    );
    for r in rows {
        out.push_str(&format!(
            "| {:ws$} | {:we$} | {:wg$} | {} |\n",
            r.scenario,
            r.expected,
            r.got,
            r.outcome.text()
        ));
    }
    let noteworthy: Vec<&Row> = rows
        .iter()
        .filter(|r| verbose || r.outcome != Outcome::Pass)
        .collect();
    if !noteworthy.is_empty() {
        out.push('\n');
        for r in noteworthy {
            out.push_str(&format!(
                "{} {}: expected {}, got {}\n      {}\n",
                r.outcome.text(),
                r.scenario,
                r.expected,
                r.got,
                r.detail
            ));
        }
    }
    out
}

/// True when no row failed (known bugs do not fail the run).
pub fn passed(rows: &[Row]) -> bool {
    rows.iter().all(|r| r.outcome != Outcome::Fail)
}
