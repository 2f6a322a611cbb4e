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
