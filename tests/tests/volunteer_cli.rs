//! The volunteer's command line, run as a volunteer runs it: the real `witness` binary (in a
//! pseudo-terminal where the terminal matters), real loopback servers and a real collector.
//! Each test is one of the fixes of issue 11: work and results are never thrown away, messages
//! say what was wrong and what to do, and nothing on the screen misleads.

use std::io::Read;
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use witness_core::model::{Measurement, Status};
use witness_tests::volunteer::{anchor_of, ok};
use witness_tests::{witness_bin, CollectorProcess, Site, World, CENSORED_SOURCE};

/// `witness ARGS` with a private HOME (no saved registration or consent), no config file.
fn witness(home: &Path) -> Command {
    let mut cmd = Command::new(witness_bin());
    cmd.env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env_remove("WITNESS_CONFIG")
        .env_remove("WITNESS_CONSENT_FILE")
        .env_remove("WITNESS_TOKEN")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    cmd
}

/// `witness run` with the world's lab settings (loopback only), on `args`.
fn lab_run(world: &World, args: &[&str]) -> Command {
    let mut cmd = witness(world.dir());
    cmd.args(["run", "--yes", "--no-progress"])
        .args(["--resolver", &world.probe_resolver().to_string()])
        .arg("--extra-ca")
        .arg(world.ca_file())
        .args(["--lab-public-range", "127.0.0.0/8"])
        .args(["--source-address", &CENSORED_SOURCE.to_string()])
        .args(["--anchor", &anchor_of(world, "fine.test")])
        .args([
            "--control-resolver",
            "none",
            "--no-control",
            "--timeout",
            "3",
        ])
        .args(args);
    cmd
}

/// Flags of a run on a network where nothing answers: every verdict is `offline`, at once.
const OFFLINE: &[&str] = &[
    "run",
    "--no-progress",
    "--no-control",
    "--url",
    "https://one.test/",
    "--url",
    "https://two.test/",
    "--url",
    "http://three.test/",
    "--resolver",
    "127.0.0.1:9",
    "--anchor",
    "127.0.0.1:9",
    "--control-resolver",
    "none",
    "--timeout",
    "1",
];

/// An offline run with consent given (`--yes`), plus `args`.
fn offline_run(home: &Path, args: &[&str]) -> Command {
    let mut cmd = witness(home);
    cmd.args(OFFLINE).arg("--yes").args(args);
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn fails_with(out: &Output, code: i32) -> String {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

fn fine_world() -> World {
    World::builder()
        .site(Site::new("fine.test").category("NEWS"))
        .site(Site::new("other.test").category("LGBT"))
        .start()
        .unwrap()
}

// ------------------------------------------------------------------------------ --out, table

#[test]
fn a_bad_out_path_stops_before_measuring_and_a_good_one_gets_every_record() {
    let world = fine_world();
    let list = world.write_list("list.csv").unwrap();
    let missing_dir = world.dir().join("no-such-dir").join("results.jsonl");
    let out = lab_run(&world, &["--list", list.to_str().unwrap()])
        .arg("--out")
        .arg(&missing_dir)
        .output()
        .unwrap();
    let stderr = fails_with(&out, 2);
    assert!(
        stderr.contains("--out") && stderr.contains("nothing was measured"),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "measured anyway: {}",
        text(&out.stdout)
    );
    // No connection reached a site: the run never started.
    assert_eq!(world.https_origin("fine.test").unwrap().connections(), 0);

    let good = world.dir().join("results.jsonl");
    let out = lab_run(&world, &["--list", list.to_str().unwrap()])
        .arg("--out")
        .arg(&good)
        .output()
        .unwrap();
    let table = ok(&out);
    assert!(
        table.contains("SITE") && table.contains("fine.test"),
        "{table}"
    );
    let records: Vec<Measurement> = std::fs::read_to_string(&good)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2);
}

// ------------------------------------------------------------------------------ offline runs

#[test]
fn an_offline_run_is_one_paragraph_that_claims_nothing_was_kept_unless_it_was() {
    let home = tempfile::tempdir().unwrap();
    let out = offline_run(home.path(), &[]).output().unwrap();
    let stdout = ok(&out);
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one paragraph:\n{stdout}");
    assert!(stdout.contains("network looks cut off"), "{stdout}");
    assert!(stdout.contains("None of the 3 sites"), "{stdout}");
    assert!(stdout.contains("Nothing was kept"), "{stdout}");
    assert!(!stdout.contains("kept and can be uploaded"), "{stdout}");
    assert!(
        !stdout.contains("blocked (") && !stdout.contains("SITE"),
        "{stdout}"
    );

    // With --upload (and no collector) they are spooled, and it says so.
    let spool = home.path().join("spool");
    let out = offline_run(home.path(), &["--upload", "--spool-dir"])
        .arg(&spool)
        .output()
        .unwrap();
    let stderr = fails_with(&out, 3);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("spooled"), "{stdout}");
    assert!(stderr.contains("3 measurements wait in"), "{stderr}");
    // No control answered, so the probe does not know its public address: the records are
    // held back (spool/held/) until it does (docs/security.md).
    let spooled = std::fs::read_dir(spool.join("held"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .count();
    assert_eq!(spooled, 3);
}

// ------------------------------------------------------------------------------ progress

/// Runs `witness ARGS` in a pseudo-terminal (util-linux `script`) and returns what the
/// terminal showed. The connectivity check waits on a resolver that never answers, so it takes
/// the whole step timeout (2 s) before any site is measured.
fn in_terminal(home: &Path, term: &str, extra: &[&str]) -> String {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap(); // never read: queries vanish
    let resolver = silent.local_addr().unwrap().to_string();
    let mut args: Vec<String> = vec![
        witness_bin().display().to_string(),
        "run".into(),
        "--yes".into(),
        "--no-control".into(),
        "--url".into(),
        "http://127.0.0.1:9/".into(),
        "--resolver".into(),
        resolver,
        "--anchor".into(),
        "anchor.test:443".into(),
        "--control-resolver".into(),
        "none".into(),
        "--timeout".into(),
        "2".into(),
        "--lab-public-range".into(),
        "127.0.0.0/8".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let command_line = args
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let Some(script) = witness_tests::promstack::require_tool(&["script"], "bsdutils") else {
        return String::new();
    };
    let mut child = Command::new(script)
        .args(["-q", "-e", "-c", &command_line, "/dev/null"])
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("TERM", term)
        .env_remove("NO_COLOR")
        .env_remove("WITNESS_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut shown = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut shown)
        .unwrap();
    let status = child.wait().unwrap();
    drop(silent);
    let shown = text(&shown);
    assert!(status.success(), "{status}: {shown}");
    shown
}

#[test]
fn the_progress_bar_ticks_through_the_connectivity_check_and_not_on_a_dumb_terminal() {
    let home = tempfile::tempdir().unwrap();
    let shown = in_terminal(home.path(), "xterm", &[]);
    if shown.is_empty() {
        return; // `script` missing: skipped loudly by require_tool
    }
    // The bar is redrawn several times a second while the 2 s check runs: many frames say what
    // it is doing before the first site is done ("0/1" frames).
    let frames = shown.matches("checking connectivity").count();
    assert!(frames >= 4, "{frames} frames:\n{shown:?}");
    assert!(shown.contains("0/1"), "{shown:?}");
    // Then the result: the anchor never answered, so the run is offline.
    assert!(shown.contains("None of the 1 sites"), "{shown:?}");

    // TERM=dumb: no bar, no escape codes at all.
    let shown = in_terminal(home.path(), "dumb", &[]);
    assert!(!shown.contains("checking connectivity"), "{shown:?}");
    assert!(!shown.contains('\u{1b}'), "{shown:?}");
    assert!(shown.contains("None of the 1 sites"), "{shown:?}");
}

#[test]
fn the_table_is_coloured_only_on_a_terminal_that_takes_colour() {
    let world = fine_world();
    let list = world.write_list("list.csv").unwrap();
    let piped = ok(&lab_run(&world, &["--list", list.to_str().unwrap()])
        .output()
        .unwrap());
    assert!(
        piped.contains("accessible") && !piped.contains('\u{1b}'),
        "{piped:?}"
    );
    let forced = ok(&lab_run(&world, &["--list", list.to_str().unwrap()])
        .args(["--color", "always"])
        .output()
        .unwrap());
    assert!(forced.contains("\u{1b}[32m"), "{forced:?}");
    // NO_COLOR and --color never win over a terminal; TERM=dumb too (tested above).
    let plain = ok(&lab_run(&world, &["--list", list.to_str().unwrap()])
        .args(["--color", "never"])
        .output()
        .unwrap());
    assert!(!plain.contains('\u{1b}'), "{plain:?}");
}

// ------------------------------------------------------------------------------ colour, logs

#[test]
fn logs_are_plain_text_on_stderr_unless_colour_is_forced() {
    let home = tempfile::tempdir().unwrap();
    // An upload to a port where nothing listens logs its retries (INFO).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let collector = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    let spool = home.path().join("spool");
    let spool = spool.to_str().unwrap().to_string();
    let run = |extra: &[&str]| {
        let mut cmd = offline_run(
            home.path(),
            &[
                "--json",
                "--upload",
                "--collector",
                &collector,
                "--spool-dir",
                &spool,
            ],
        );
        cmd.args(extra).env("WITNESS_LOG", "info");
        cmd.output().unwrap()
    };
    let out = run(&[]);
    let stderr = fails_with(&out, 3);
    assert!(
        stderr.contains("INFO") && stderr.contains("retrying"),
        "no logs: {stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "ANSI in logs: {stderr:?}");
    // stdout holds only the results.
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    for line in stdout.lines() {
        serde_json::from_str::<Measurement>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    let forced = text(&run(&["--color", "always"]).stderr);
    assert!(forced.contains('\u{1b}'), "--color always: {forced:?}");
    let out = run(&["--color", "bogus"]);
    assert!(
        fails_with(&out, 2).contains("auto"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_collector_logs_plain_text_to_stderr_and_only_its_addresses_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"sqlite://{}\"\n",
            dir.path().join("c.db").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(witness_tests::collector_bin())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(stdout.contains("listening on"), "{stdout}");
    for line in stdout.lines() {
        assert!(
            line.starts_with("witness-collector "),
            "a log line on stdout: {line}"
        );
    }
    assert!(
        stderr.contains("DEBUG") || stderr.contains("INFO"),
        "{stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "ANSI in logs: {stderr:?}");
}

// ------------------------------------------------------------------------------ consent

#[test]
fn consent_names_every_sensitive_category_of_the_lists_with_counts() {
    let home = tempfile::tempdir().unwrap();
    let all = witness_core::targets::embedded_default();
    let count = |code: &str| {
        all.iter()
            .filter(|t| t.category_code.as_deref() == Some(code))
            .count()
    };
    let notice = ok(&witness(home.path()).arg("consent").output().unwrap());
    for code in ["LGBT", "DATE", "PORN", "ANON", "POLR", "HUMR"] {
        let n = count(code);
        assert!(n > 0, "{code} not in the default lists");
        let line = notice
            .lines()
            .find(|l| l.trim_start().starts_with(code))
            .unwrap_or_else(|| panic!("{code} not named:\n{notice}"));
        assert!(line.contains(&format!("({n} sites)")), "{line}");
    }

    // A list of only harmless sites: nothing sensitive named; a one-URL list: counts by list.
    let list = home.path().join("mine.csv");
    std::fs::write(
        &list,
        "url,category_code,category_description,date_added,source,notes\n\
         https://shop.test/,COMM,E-commerce,,,\nhttps://gay.test/,LGBT,LGBT,,,\n",
    )
    .unwrap();
    let notice = ok(&witness(home.path())
        .args(["consent", "--list"])
        .arg(&list)
        .output()
        .unwrap());
    assert!(notice.contains("test 2 sites"), "{notice}");
    assert!(
        notice.contains("LGBT") && notice.contains("(1 sites)"),
        "{notice}"
    );
    assert!(!notice.contains("ANON"), "{notice}");

    // `witness categories` lists every category with its count and sensitivity.
    let table = ok(&witness(home.path()).arg("categories").output().unwrap());
    let anon = table.lines().find(|l| l.starts_with("ANON")).unwrap();
    assert!(
        anon.contains(&count("ANON").to_string()) && anon.contains("yes"),
        "{anon}"
    );
    let comm = table.lines().find(|l| l.starts_with("COMM")).unwrap();
    assert!(!comm.contains("yes"), "{comm}");
    assert!(
        table.contains(&format!("{} sites in all.", all.len())),
        "{table}"
    );

    // Without a terminal, accepting needs one; a run without consent measures nothing.
    let out = witness(home.path())
        .args(["consent", "--accept"])
        .output()
        .unwrap();
    assert!(fails_with(&out, 2).contains("terminal"));
    let out = witness(home.path())
        .args(["run", "--url", "https://x.test/"])
        .output()
        .unwrap();
    assert!(fails_with(&out, 2).contains("witness consent"));
    // A recorded acceptance (what `consent --accept` writes) is honoured, from the file the
    // packaged service points WITNESS_CONSENT_FILE at; without it the same run is refused.
    let accepted = home.path().join("consent-accepted");
    let out = witness(home.path())
        .args(OFFLINE)
        .env("WITNESS_CONSENT_FILE", &accepted)
        .output()
        .unwrap();
    assert!(fails_with(&out, 2).contains("consent"));
    std::fs::write(&accepted, "accepted\n").unwrap();
    let out = witness(home.path())
        .args(OFFLINE)
        .env("WITNESS_CONSENT_FILE", &accepted)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "consent file ignored: {}",
        text(&out.stderr)
    );
}

// ------------------------------------------------------------------------------ collector URLs

#[test]
fn a_collector_url_without_trailing_slash_registers_runs_and_uploads() {
    let world = fine_world();
    let dir = tempfile::tempdir().unwrap();
    let collector = CollectorProcess::start(dir.path(), "").unwrap();
    let bare = collector.url.trim_end_matches('/').to_string();
    let home = world.dir().join("volunteer");
    std::fs::create_dir_all(&home).unwrap();
    let mut register = witness(&home);
    register.args(["register", "--collector", &bare]);
    assert!(ok(&register.output().unwrap()).contains("Registered as probe"));

    let list = world.write_list("list.csv").unwrap();
    let spool = home.join("spool");
    for url in [bare.as_str(), collector.url.as_str()] {
        let mut cmd = lab_run(&world, &["--list", list.to_str().unwrap(), "--upload"]);
        cmd.env("HOME", &home)
            .env("XDG_DATA_HOME", home.join("data"))
            .args(["--collector", url, "--spool-dir"])
            .arg(&spool);
        let out = cmd.output().unwrap();
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{url}: {stderr}");
        assert!(
            stderr.contains("uploaded 2 measurements"),
            "{url}: {stderr}"
        );
    }
    let out = witness(&home)
        .args(["upload", "--collector", &bare, "--spool-dir"])
        .arg(&spool)
        .output()
        .unwrap();
    assert!(ok(&out).contains("0 of 0 waiting"), "{}", text(&out.stdout));
}

#[test]
fn upload_errors_name_the_collector_as_typed_and_the_cause() {
    let home = tempfile::tempdir().unwrap();
    let spool = home.path().join("spool");
    // A port where nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let typed = format!("http://127.0.0.1:{port}");
    let out = offline_run(
        home.path(),
        &["--upload", "--collector", &typed, "--spool-dir"],
    )
    .arg(&spool)
    .output()
    .unwrap();
    let stderr = fails_with(&out, 3);
    assert!(stderr.contains(&format!("{typed}/")), "{stderr}");
    assert!(stderr.contains("connection refused"), "{stderr}");
    assert!(!stderr.contains("[scrubbed]"), "{stderr}");
    assert!(stderr.contains("kept in"), "{stderr}");

    // A bad URL is a usage error naming the flag.
    let out = witness(home.path())
        .args(["upload", "--collector", "collector.example"])
        .output()
        .unwrap();
    let stderr = fails_with(&out, 2);
    assert!(
        stderr.contains("--collector") && stderr.contains("https://"),
        "{stderr}"
    );
}

// ------------------------------------------------------------------------------ messages

#[test]
fn error_messages_say_what_is_wrong_once_and_what_to_do() {
    let home = tempfile::tempdir().unwrap();
    let missing = home.path().join("nope.csv");
    let out = witness(home.path())
        .args(["run", "--yes", "--list"])
        .arg(&missing)
        .output()
        .unwrap();
    let stderr = fails_with(&out, 2);
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
    assert!(stderr.contains("nope.csv"), "{stderr}");

    let out = witness(home.path())
        .arg("--config")
        .arg(home.path().join("missing.toml"))
        .arg("categories")
        .output()
        .unwrap();
    let stderr = fails_with(&out, 2);
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");

    let run = |args: &[&str]| {
        let out = witness(home.path())
            .args(["run", "--yes", "--url", "https://x.test/"])
            .args(args)
            .output()
            .unwrap();
        fails_with(&out, 2)
    };
    let stderr = run(&["--extra-ca", "/nonexistent/ca.pem"]);
    assert!(stderr.contains("--extra-ca"), "{stderr}");
    assert!(!stderr.contains("config file"), "{stderr}");
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
    for t in ["0.0001", "0", "301", "-1"] {
        let stderr = run(&[&format!("--timeout={t}")]);
        assert!(stderr.contains("0.1 to 300"), "{t}: {stderr}");
    }
    let stderr = run(&["--resolver", "garbage"]);
    assert!(
        stderr.contains("`system`") && stderr.contains("garbage"),
        "{stderr}"
    );
}

#[test]
fn one_url_per_line_lists_run_and_bad_lines_are_reported_with_file_and_line() {
    let world = fine_world();
    let list = world.dir().join("mine.txt");
    std::fs::write(
        &list,
        format!(
            "# sites I want to check\n{}\nnot-a-url\n\n{}\n",
            world.url("fine.test"),
            world.url("other.test")
        ),
    )
    .unwrap();
    let out = lab_run(&world, &["--list", list.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let stdout = ok(&out);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("mine.txt:3:"), "{stderr}");
    let ms: Vec<Measurement> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ms.len(), 2);
    assert!(
        ms.iter().all(|m| m.verdict.status == Status::Accessible),
        "{ms:?}"
    );
}

// ------------------------------------------------------------------------------ man, completions

#[test]
fn completions_and_man_page_come_from_the_command_definitions() {
    let home = tempfile::tempdir().unwrap();
    let bash = ok(&witness(home.path())
        .args(["completions", "bash"])
        .output()
        .unwrap());
    assert!(
        bash.contains("complete") && bash.contains("--exclude-category"),
        "{bash}"
    );
    for shell in ["zsh", "fish"] {
        let s = ok(&witness(home.path())
            .args(["completions", shell])
            .output()
            .unwrap());
        assert!(s.contains("categories"), "{shell}: {s}");
    }
    let man = ok(&witness(home.path()).arg("man").output().unwrap());
    assert!(man.contains(".TH witness"), "{man}");
    assert!(
        man.contains("Exit status") && man.contains("\\-\\-color"),
        "{man}"
    );
    let help = ok(&witness(home.path()).arg("--help").output().unwrap());
    assert!(
        help.contains("Exit status") && help.contains("3  measured"),
        "{help}"
    );
}
