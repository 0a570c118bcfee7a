//! The exit statuses of `witness`: one table that `--help`, the man page, the README and every
//! command share, so scripts and the systemd units can rely on them.

/// Exit status: every site was measured (and uploaded, when asked).
pub const EXIT_OK: u8 = 0;
/// Exit status: measured, but the results could not be written (`--out`, the spool), or the
/// runtime could not start.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status: a bad flag, config file, list or URL, or no consent: nothing was measured.
pub const EXIT_USAGE: u8 = 2;
/// Exit status: measured and spooled, but the upload failed or no collector is configured; the
/// results wait in the spool for `witness upload`.
pub const EXIT_UPLOAD: u8 = 3;

/// The exit statuses, for `--help` and the man page.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success: every site was measured (and uploaded, with --upload)
  1  measured, but the results could not be written (--out, the spool), or an internal failure
  2  bad flag, config file, list or URL, or consent not given: nothing was measured
  3  measured and spooled, but the upload failed (or no collector is set): the results wait in
     the spool; `witness upload` sends them later

Environment: WITNESS_CONFIG (config file), WITNESS_TOKEN, WITNESS_CONTROL_TOKEN,
WITNESS_LOG (log filter, e.g. info or debug), WITNESS_CONSENT_FILE (where consent is recorded),
NO_COLOR (no colour), TERM=dumb (no colour, no progress bar).";
