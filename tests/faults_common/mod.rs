//! Shared harness of the fault tests (`tests/relay_*.rs`, `tests/faults_*.rs`,
//! `tests/kill_campaign.rs`): the `twinfs relay` process between a source
//! and its peer, with its control port. Builds on `mirror_common` (declare
//! both modules in the test).

#![allow(dead_code)] // each test uses a different part of this module

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::mirror_common::{bin, wait_for};

/// A `twinfs relay` process. Dropping it stops it (SIGTERM, then SIGKILL).
pub struct Relay {
    child: Option<Child>,
    /// `127.0.0.1:PORT` the relay listens on: give it to `--peer`.
    pub addr: String,
    /// Where it relays to.
    pub to: String,
    control_addr: String,
    control: Option<(BufReader<TcpStream>, TcpStream)>,
    pub log: PathBuf,
}

impl Relay {
    /// Starts `twinfs relay --listen 127.0.0.1:0 --to TO --control
    /// 127.0.0.1:0 EXTRA...` and waits until it listens.
    pub fn start(to: &str, extra: &[&str], log: &Path) -> Relay {
        let before = fs::read_to_string(log).map_or(0, |t| t.len());
        let out = || {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("relay log")
        };
        let child = Command::new(bin())
            .args(["-v", "relay", "--listen", "127.0.0.1:0", "--to", to])
            .args(["--control", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out())
            .stderr(out())
            .spawn()
            .expect("spawn twinfs relay");
        let mut relay = Relay {
            child: Some(child),
            addr: String::new(),
            to: to.to_string(),
            control_addr: String::new(),
            control: None,
            log: log.to_path_buf(),
        };
        // "twinfs relay: listening on A, relaying to T; control on C (seed N)"
        wait_for("the relay to listen", Duration::from_secs(30), || {
            relay.assert_running("starting");
            let text = fs::read_to_string(log).unwrap_or_default();
            let Some(line) = text[before.min(text.len())..]
                .lines()
                .find(|l| l.starts_with("twinfs relay: listening on "))
            else {
                return false;
            };
            let word_after = |key: &str| {
                line.split(key)
                    .nth(1)
                    .and_then(|r| r.split([',', ' ', ';']).next())
                    .map(str::to_string)
            };
            relay.addr = word_after("listening on ").expect("relay address");
            relay.control_addr = word_after("control on ").expect("control address");
            true
        });
        relay
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self, when: &str) {
        if let Some(c) = &mut self.child {
            if let Ok(Some(st)) = c.try_wait() {
                panic!(
                    "the relay exited ({st}) while {when}:\n{}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
        }
    }

    /// Sends one control command; returns the reply after `ok` (panics on
    /// `error:`).
    pub fn cmd(&mut self, line: &str) -> String {
        if self.control.is_none() {
            let s = TcpStream::connect(&self.control_addr).expect("relay control port");
            s.set_read_timeout(Some(Duration::from_secs(30))).ok();
            let r = BufReader::new(s.try_clone().expect("clone"));
            self.control = Some((r, s));
        }
        let (r, w) = self.control.as_mut().expect("connected");
        w.write_all(format!("{line}\n").as_bytes())
            .expect("relay control write");
        let mut reply = String::new();
        r.read_line(&mut reply).expect("relay control reply");
        let reply = reply.trim_end();
        assert!(
            reply == "ok" || reply.starts_with("ok "),
            "relay command {line:?}: {reply:?}"
        );
        reply.trim_start_matches("ok").trim().to_string()
    }

    /// The relay's counters.
    pub fn stats(&mut self) -> Value {
        serde_json::from_str(&self.cmd("stats")).expect("stats JSON")
    }

    /// Waits until a relayed connection is up (the source connected through it).
    pub fn wait_connection(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.stats()["active"].as_u64().unwrap_or(0) == 0 {
            assert!(Instant::now() < deadline, "no connection through the relay");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the id of a child we started and have not reaped.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

pub mod ledger;

/// A directory opened in a mount: every operation goes through its
/// descriptor, so nothing a writer does after the daemon died can land in
/// the directory under the mount point (those fail with ENOTCONN instead).
pub struct DirFd {
    file: fs::File,
}

fn cname(name: &str) -> std::ffi::CString {
    std::ffi::CString::new(name).expect("no NUL in a name")
}

fn check(rc: libc::c_int) -> std::io::Result<libc::c_int> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl DirFd {
    pub fn open(path: &Path) -> std::io::Result<DirFd> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
        // SAFETY: valid C string; the result is checked.
        let fd = check(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: fd was just opened and is owned here.
        Ok(DirFd {
            file: unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) },
        })
    }

    fn raw(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.file)
    }

    /// Creates (or truncates) `name` for writing; `append` opens it O_APPEND
    /// without truncating.
    pub fn create(&self, name: &str, append: bool) -> std::io::Result<fs::File> {
        let flags = libc::O_CREAT
            | libc::O_WRONLY
            | libc::O_CLOEXEC
            | if append {
                libc::O_APPEND
            } else {
                libc::O_TRUNC
            };
        // SAFETY: valid dir fd and C string; the result is checked.
        let fd = check(unsafe { libc::openat(self.raw(), cname(name).as_ptr(), flags, 0o644) })?;
        // SAFETY: fd was just opened and is owned here.
        Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
    }

    pub fn mkdir(&self, name: &str) -> std::io::Result<()> {
        // SAFETY: valid dir fd and C string.
        check(unsafe { libc::mkdirat(self.raw(), cname(name).as_ptr(), 0o755) }).map(|_| ())
    }

    pub fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        // SAFETY: valid dir fd and C strings.
        check(unsafe {
            libc::renameat(
                self.raw(),
                cname(from).as_ptr(),
                self.raw(),
                cname(to).as_ptr(),
            )
        })
        .map(|_| ())
    }

    pub fn unlink(&self, name: &str) -> std::io::Result<()> {
        // SAFETY: valid dir fd and C string.
        check(unsafe { libc::unlinkat(self.raw(), cname(name).as_ptr(), 0) }).map(|_| ())
    }

    pub fn fsync(&self) -> std::io::Result<()> {
        self.file.sync_all()
    }
}

/// A small deterministic random generator (SplitMix64): a campaign's seed
/// reproduces its choices.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`lo` if empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next_u64() % (hi - lo)
        }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }

    /// A generator for a sub-task, independent of how much this one is used later.
    pub fn fork(&mut self) -> Rng {
        Rng(self.next_u64())
    }
}
