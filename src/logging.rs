//! Where log lines go: stderr while a command runs in the foreground; for a
//! daemon in the background the systemd journal (native protocol) when it
//! is there, else syslog (`/dev/log`); and `--log-file PATH` always, when
//! given. Every line carries a UTC timestamp, the level and the target
//! (the module that logged it).
//!
//! The level is `-v`'s (warnings only by default) unless `RUST_LOG` says
//! otherwise. Warnings logged while a mount starts in the background are
//! also kept for its parent, which prints them on stderr before it exits
//! ([`take_startup_warnings`]): what the user must know before the mount
//! disappears into the background is not only in a log.

use std::fs::File;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use log::{Level, LevelFilter, Log, Metadata, Record};
use parking_lot::{Mutex, RwLock};

/// The journal's native socket: present where systemd-journald runs.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
/// The syslog socket.
pub const SYSLOG_SOCKET: &str = "/dev/log";
/// Environment variable naming another syslog socket (tests, chroots);
/// when set, syslog is used even where the journal is present.
pub const SYSLOG_SOCKET_ENV: &str = "TWINFS_SYSLOG_SOCKET";
/// Most startup warnings kept for the parent.
const MAX_STARTUP_WARNINGS: usize = 32;
/// Syslog facility `daemon`.
const SYSLOG_FACILITY_DAEMON: u8 = 3;

/// The system log a background daemon writes to.
enum SystemLog {
    Journal(systemd_journal_logger::JournalLog),
    Syslog(UnixDatagram, PathBuf),
}

struct Sinks {
    stderr: bool,
    file: Option<(Mutex<File>, PathBuf)>,
    system: Option<SystemLog>,
    /// Warnings and errors kept for the parent of a starting daemon.
    startup: Option<Vec<String>>,
}

struct Logger {
    /// Filter (and stderr format) built from `-v` and `RUST_LOG`.
    filter: env_logger::Logger,
    sinks: RwLock<Sinks>,
}

static LOGGER: std::sync::OnceLock<&'static Logger> = std::sync::OnceLock::new();

/// Installs the logger: stderr at the level `default_filter` names
/// (RUST_LOG, when set, wins). A second call (only in tests) keeps the first.
pub fn init(default_filter: &str) {
    let env = env_logger::Env::default().default_filter_or(default_filter);
    let filter = env_logger::Builder::from_env(env)
        .format_timestamp_millis()
        .build();
    let max = filter.filter();
    let logger: &'static Logger = Box::leak(Box::new(Logger {
        filter,
        sinks: RwLock::new(Sinks {
            stderr: true,
            file: None,
            system: None,
            startup: None,
        }),
    }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(max);
        let _ = LOGGER.set(logger);
    }
}

/// Also appends every line to `path` (created with mode 0640 if missing).
pub fn add_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)?;
    if let Some(l) = LOGGER.get() {
        l.sinks.write().file = Some((Mutex::new(f), path.to_path_buf()));
    }
    Ok(())
}

/// For a daemon that has left the terminal: stop writing to stderr (it is
/// /dev/null now), write to the journal or syslog, and keep warnings for
/// the parent until [`take_startup_warnings`].
pub fn to_background() {
    let Some(l) = LOGGER.get() else { return };
    let system = system_log();
    let mut s = l.sinks.write();
    s.stderr = false;
    s.system = system;
    s.startup = Some(Vec::new());
}

/// The warnings logged since [`to_background`]; later ones are only logged.
pub fn take_startup_warnings() -> Vec<String> {
    LOGGER
        .get()
        .and_then(|l| l.sinks.write().startup.take())
        .unwrap_or_default()
}

/// Which system log is there: the journal's socket, else syslog's.
fn system_log() -> Option<SystemLog> {
    let syslog = |path: PathBuf| {
        let sock = UnixDatagram::unbound().ok()?;
        sock.connect(&path).ok()?;
        Some(SystemLog::Syslog(sock, path))
    };
    if let Some(p) = std::env::var_os(SYSLOG_SOCKET_ENV) {
        return syslog(PathBuf::from(p));
    }
    if Path::new(JOURNAL_SOCKET).exists() {
        if let Ok(j) = systemd_journal_logger::JournalLog::new() {
            return Some(SystemLog::Journal(
                j.with_syslog_identifier("twinfs".to_string()),
            ));
        }
    }
    syslog(PathBuf::from(SYSLOG_SOCKET))
}

/// Where lines go now, for `status` and messages: "journal", "syslog
/// (/dev/log)", the log file, or "stderr".
pub fn destinations() -> Vec<String> {
    let Some(l) = LOGGER.get() else {
        return Vec::new();
    };
    let s = l.sinks.read();
    let mut out = Vec::new();
    if s.stderr {
        out.push("stderr".to_string());
    }
    match &s.system {
        Some(SystemLog::Journal(_)) => out.push("journal".into()),
        Some(SystemLog::Syslog(_, p)) => out.push(format!("syslog ({})", p.display())),
        None => {}
    }
    if let Some((_, p)) = &s.file {
        out.push(p.display().to_string());
    }
    out
}

/// fuser logs "Failed to umount filesystem" as a warning when its session
/// ends after we unmounted the file system ourselves (its own unmount then
/// fails with EINVAL): an expected event, not a warning.
fn demoted(record: &Record) -> bool {
    record.level() == Level::Warn
        && record.target().starts_with("fuser")
        && record
            .args()
            .to_string()
            .starts_with("Failed to umount filesystem")
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !self.filter.matches(record) {
            return;
        }
        if demoted(record) {
            if log::max_level() >= LevelFilter::Debug {
                log::debug!(target: "twinfs::logging", "fuser: {} (expected after our own unmount)", record.args());
            }
            return;
        }
        let s = self.sinks.read();
        if s.stderr {
            self.filter.log(record);
        }
        if let Some((f, _)) = &s.file {
            let _ = f.lock().write_all(line(record).as_bytes());
        }
        match &s.system {
            Some(SystemLog::Journal(j)) => j.log(record),
            Some(SystemLog::Syslog(sock, _)) => {
                let _ = sock.send(syslog_line(record).as_bytes());
            }
            None => {}
        }
        let keep = record.level() <= Level::Warn;
        drop(s);
        if keep {
            if let Some(w) = self.sinks.write().startup.as_mut() {
                if w.len() < MAX_STARTUP_WARNINGS {
                    w.push(record.args().to_string());
                }
            }
        }
    }

    fn flush(&self) {
        if let Some((f, _)) = &self.sinks.read().file {
            let _ = f.lock().flush();
        }
    }
}

/// A log file line: `2026-12-07T17:40:40.123Z WARN target: message`.
pub fn line(record: &Record) -> String {
    format!(
        "{} {:<5} {}: {}\n",
        utc_now(),
        record.level(),
        record.target(),
        record.args()
    )
}

/// A syslog datagram (RFC 3164 without a timestamp, which the syslog
/// daemon adds): `<PRI>twinfs[PID]: LEVEL target: message`.
fn syslog_line(record: &Record) -> String {
    let severity = match record.level() {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    };
    format!(
        "<{}>twinfs[{}]: {} {}: {}",
        SYSLOG_FACILITY_DAEMON * 8 + severity,
        std::process::id(),
        record.level(),
        record.target(),
        record.args()
    )
}

/// Now in UTC as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn utc_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    utc(d.as_secs() as i64, d.subsec_millis())
}

/// `secs` since the epoch in UTC (Howard Hinnant's civil-from-days).
pub fn utc(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_timestamps_are_civil_dates() {
        assert_eq!(utc(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(utc(1_796_658_040, 123), "2026-12-07T15:40:40.123Z");
    }

    #[test]
    fn syslog_lines_carry_priority_name_level_and_target() {
        let line = syslog_line(
            &Record::builder()
                .level(Level::Warn)
                .target("twinfs_replicate::source")
                .args(format_args!("peer unreachable"))
                .build(),
        );
        let want = format!(
            "<28>twinfs[{}]: WARN twinfs_replicate::source: peer unreachable",
            std::process::id()
        );
        assert_eq!(line, want);
    }
}
