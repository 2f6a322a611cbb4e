//! The kill campaign: a mixed workload on a real mount mirrored to a real
//! peer through `twinfs relay`, in each mode, while kill -9 hits the source,
//! the peer or both at random moments (mid-transfer, mid-CP, mid-resync,
//! mid-promote) and partitions and resets come and go on the link.
//!
//! After every trial:
//! - the source's image left by a kill is fsck-clean, and after the remount
//!   every fsynced byte is there (every mode);
//! - a copy of the peer's directory taken at the kill (the peer frozen, or
//!   killed too) promotes to an fsck-clean image holding every byte fsynced
//!   before the kill in sync and strict mode (sync: unless the mount had
//!   carried on without the peer in that trial, which the trial reports);
//! - a reader of the peer's read-only replica view never met an I/O error,
//!   garbage, or a directory that no whole CP could hold;
//! - with the link healed, the peer converges: equal root hashes
//!   (`twinfs verify`), and the replica view's tree equals the source's.
//!
//! Each block of trials ends with clean stops and fsck of both images.
//!
//! Environment (all optional):
//! - `TWINFS_CAMPAIGN_SECS`: time budget in seconds (default 240)
//! - `TWINFS_CAMPAIGN_TRIALS`: most trials (default 30)
//! - `TWINFS_CAMPAIGN_MIN_TRIALS`: fewest trials that must run (default 12)
//! - `TWINFS_CAMPAIGN_SEED`: seed of every random choice (default: the clock)
//! - `TWINFS_CAMPAIGN_MODES`: comma-separated modes (default sync,strict,async)
//! - `TWINFS_CAMPAIGN_BLOCK`: trials per mode before the next (default 10)
//! - `TWINFS_CAMPAIGN_REPORT`: file to write the tally to, as JSON
//! - `TWINFS_CAMPAIGN_STOP`: once this file exists no trial starts; the
//!   block ends cleanly and the tally is written
//!
//! `tests/campaign.sh` runs the long form. The seed reproduces the choices
//! (fault kinds, moments, sizes), not the machine's timing.

mod faults_common;
mod mirror_common;

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use faults_common::ledger::{content, recognise, Ledger, Seen};
use faults_common::{DirFd, Relay, Rng};
use mirror_common::*;

// ---- configuration -----------------------------------------------------------

struct Config {
    secs: u64,
    trials: u64,
    min_trials: u64,
    seed: u64,
    modes: Vec<&'static str>,
    block: u64,
    report: Option<PathBuf>,
    stop: Option<PathBuf>,
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

impl Config {
    fn from_env() -> Config {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let modes = std::env::var("TWINFS_CAMPAIGN_MODES")
            .unwrap_or_else(|_| "sync,strict,async".into())
            .split(',')
            .map(|m| match m.trim() {
                "sync" => "sync",
                "strict" => "strict",
                "async" => "async",
                other => panic!("TWINFS_CAMPAIGN_MODES: unknown mode {other:?}"),
            })
            .collect();
        let trials = env_u64("TWINFS_CAMPAIGN_TRIALS", 30);
        Config {
            secs: env_u64("TWINFS_CAMPAIGN_SECS", 240),
            trials,
            min_trials: env_u64("TWINFS_CAMPAIGN_MIN_TRIALS", 12.min(trials)),
            seed: env_u64("TWINFS_CAMPAIGN_SEED", clock % 1_000_000_007),
            modes,
            block: env_u64("TWINFS_CAMPAIGN_BLOCK", 10).max(1),
            report: std::env::var_os("TWINFS_CAMPAIGN_REPORT").map(PathBuf::from),
            stop: std::env::var_os("TWINFS_CAMPAIGN_STOP").map(PathBuf::from),
        }
    }
}

// ---- what happened -----------------------------------------------------------

/// Counts of everything the campaign did and checked.
#[derive(Default)]
struct Tally {
    trials: BTreeMap<&'static str, u64>,
    faults: BTreeMap<&'static str, u64>,
    /// Files whose fsynced bytes were checked, at the source after its
    /// crash and in promoted copies of the peer.
    durable_files_source: u64,
    durable_bytes_source: u64,
    durable_files_peer: u64,
    durable_bytes_peer: u64,
    bytes_lost: u64,
    fsyncs: u64,
    strict_refusals: u64,
    degraded_trials: u64,
    promotes: u64,
    promotes_killed_running: u64,
    resync_kills_caught: u64,
    resync_kills_missed: u64,
    partitions: u64,
    resets: u64,
    view_walks: u64,
    view_files: u64,
    fscks: u64,
    verifies: u64,
    trees_compared: u64,
}

impl Tally {
    fn fault(&mut self, kind: &'static str) {
        *self.faults.entry(kind).or_default() += 1;
    }

    fn json(&self, cfg: &Config, elapsed: Duration) -> serde_json::Value {
        serde_json::json!({
            "seed": cfg.seed,
            "elapsed_secs": elapsed.as_secs(),
            "trials": self.trials,
            "trials_total": self.trials.values().sum::<u64>(),
            "faults": self.faults,
            "fsyncs_returned": self.fsyncs,
            "durable_files_checked_source": self.durable_files_source,
            "durable_bytes_checked_source": self.durable_bytes_source,
            "durable_files_checked_peer": self.durable_files_peer,
            "durable_bytes_checked_peer": self.durable_bytes_peer,
            "bytes_lost": self.bytes_lost,
            "strict_fsync_refusals": self.strict_refusals,
            "sync_trials_degraded": self.degraded_trials,
            "promotes": self.promotes,
            "promotes_killed_while_running": self.promotes_killed_running,
            "resync_kills_caught": self.resync_kills_caught,
            "resync_kills_missed": self.resync_kills_missed,
            "partitions": self.partitions,
            "resets": self.resets,
            "view_walks": self.view_walks,
            "view_files_checked": self.view_files,
            "fscks": self.fscks,
            "verifies": self.verifies,
            "trees_compared": self.trees_compared,
        })
    }
}

// ---- the rig: a source, its peer and the relay between them --------------------

/// Trials whose directories stay on the volume (older ones are removed).
const LIVE_TRIALS: usize = 2;
const VOLUME_SIZE: &str = "1G";

struct Rig {
    src: Option<Source>,
    peer: Peer,
    relay: Relay,
    mode: &'static str,
    root: PathBuf,
    secret: PathBuf,
    image: PathBuf,
    mnt: PathBuf,
    dir: PathBuf,
    view: PathBuf,
    outside: PathBuf,
    ledger: Arc<Mutex<Ledger>>,
    live: VecDeque<u64>,
    checker: ViewChecker,
    _scratch: tempfile::TempDir,
}

impl Rig {
    fn start(mode: &'static str, seed: u64) -> Rig {
        let scratch = scratch();
        let root = scratch.path().to_path_buf();
        let secret = secret_file(&root.join("secret"), b"twinfs kill campaign secret\n");
        let image = root.join("source.img");
        mkfs(&image, VOLUME_SIZE);
        let (dir, view, mnt) = (root.join("peer"), root.join("view"), root.join("mnt"));
        fs::create_dir(&view).expect("view mount point");
        let outside = root.join("outside");
        make_tree(
            &outside,
            seed,
            TreeShape {
                dirs: 3,
                files_per_dir: 10,
                large: 1,
                large_bytes: 3 << 20,
            },
        );
        let peer = Peer::start(&dir, 0, &secret, Some(&view), &root.join("peer.log"));
        let relay = Relay::start(&peer.addr(), &[], &root.join("relay.log"));
        let mut rig = Rig {
            src: None,
            peer,
            relay,
            mode,
            root: root.clone(),
            secret,
            image,
            mnt,
            dir,
            view: view.clone(),
            outside,
            ledger: Arc::new(Mutex::new(Ledger::default())),
            live: VecDeque::new(),
            checker: ViewChecker::start(view),
            _scratch: scratch,
        };
        rig.start_source();
        rig.src().wait_streaming(Duration::from_secs(60));
        rig.peer.wait_view();
        rig
    }

    fn source_args(&self) -> Vec<String> {
        [
            "--peer",
            &self.relay.addr,
            "--secret",
            s(&self.secret),
            "--mode",
            self.mode,
            "--cp-interval",
            "1",
            "--dirty-limit",
            "16M",
            "--memory",
            "128M",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    }

    fn start_source(&mut self) {
        // The old guard first: dropping it unmounts whatever is on the
        // mount point, which must not be the new mount.
        drop(self.src.take());
        let args = self.source_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.src = Some(Source::start(
            &self.image,
            &self.mnt,
            &args,
            &self.root.join("source.log"),
        ));
    }

    fn src(&mut self) -> &mut Source {
        self.src.as_mut().expect("the source is mounted")
    }

    fn source_log_len(&self) -> usize {
        fs::metadata(self.root.join("source.log")).map_or(0, |m| m.len() as usize)
    }

    /// The source's log since byte `from`.
    fn source_log_since(&self, from: usize) -> String {
        let text = fs::read(self.root.join("source.log")).unwrap_or_default();
        String::from_utf8_lossy(&text[from.min(text.len())..]).into_owned()
    }

    /// Clean stops of both sides, then fsck of both images.
    fn finish(mut self, tally: &mut Tally) {
        self.checker.stop();
        let code = self.src.take().and_then(|mut s| s.unmount());
        assert_eq!(code, Some(0), "clean unmount of the source");
        assert_eq!(self.peer.stop(), Some(0), "clean stop of the peer");
        for img in [self.image.clone(), self.dir.join("mirror.img")] {
            let r = twinfs(&["fsck", s(&img)]);
            tally.fscks += 1;
            assert_eq!(
                r.code,
                0,
                "fsck {} at the end of the block:\n{}{}",
                img.display(),
                r.stdout,
                r.stderr
            );
        }
    }
}

// ---- the replica view checker ------------------------------------------------

#[derive(Default)]
struct ViewStats {
    walks: u64,
    files: u64,
    problems: Vec<String>,
}

/// Walks the peer's replica view over and over while it is not paused:
/// every file must read without an I/O error and hold a prefix of what the
/// workload wrote; each `chain` directory must hold one contiguous run of
/// names (created one after another, the oldest removed), as any whole CP
/// does.
struct ViewChecker {
    paused: Arc<AtomicBool>,
    busy: Arc<Mutex<()>>,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<ViewStats>>,
    thread: Option<JoinHandle<()>>,
}

impl ViewChecker {
    fn start(view: PathBuf) -> ViewChecker {
        let paused = Arc::new(AtomicBool::new(true));
        let busy = Arc::new(Mutex::new(()));
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(ViewStats::default()));
        let (p, b, st, sx) = (paused.clone(), busy.clone(), stop.clone(), stats.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                if p.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                let _g = b.lock().expect("busy");
                if p.load(Ordering::SeqCst) {
                    continue;
                }
                let mut found = Vec::new();
                let files = walk_view(&view, Path::new(""), &p, &mut found);
                let mut s = sx.lock().expect("stats");
                s.walks += 1;
                s.files += files;
                s.problems.extend(found);
                drop(s);
                // A pause between walks: the checker should not take the
                // machine from the daemons it checks.
                std::thread::sleep(Duration::from_millis(150));
            }
        });
        ViewChecker {
            paused,
            busy,
            stop,
            stats,
            thread: Some(thread),
        }
    }

    /// Stops walking and returns once no walk is under way.
    fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        drop(self.busy.lock().expect("busy"));
    }

    fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Problems seen since the last call, and the counts.
    fn take(&self) -> (Vec<String>, u64, u64) {
        let mut s = self.stats.lock().expect("stats");
        let r = (std::mem::take(&mut s.problems), s.walks, s.files);
        s.walks = 0;
        s.files = 0;
        r
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.pause();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ViewChecker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Errors a walk of a view that switches CPs under it may meet: the entry
/// went away with the CP it belonged to.
fn vanished(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESTALE))
}

/// Walks `root/rel`, checking what [`ViewChecker`] says; returns the files read.
fn walk_view(root: &Path, rel: &Path, paused: &AtomicBool, found: &mut Vec<String>) -> u64 {
    let dir = root.join(rel);
    let entries = match fs::read_dir(&dir) {
        Ok(rd) => rd.collect::<Result<Vec<_>, _>>(),
        Err(e) => Err(e),
    };
    let entries = match entries {
        Ok(e) => e,
        Err(e) if vanished(&e) => return 0,
        Err(e) => {
            found.push(format!("view: readdir {}: {e}", rel.display()));
            return 0;
        }
    };
    let name_of = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string()
    };
    // Only a trial's own chain (`tN/chain`): one being removed has gaps.
    let trial_chain = rel
        .parent()
        .is_some_and(|p| p.to_string_lossy().starts_with('t'));
    if name_of(&dir) == "chain" && trial_chain {
        let mut numbers: Vec<u64> = entries
            .iter()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("c-")?.parse().ok())
            .collect();
        numbers.sort_unstable();
        if let (Some(first), Some(last)) = (numbers.first(), numbers.last()) {
            if last - first + 1 != numbers.len() as u64 {
                found.push(format!(
                    "view: {} holds c-{first}..c-{last} with gaps ({} names): no whole CP has that",
                    rel.display(),
                    numbers.len()
                ));
            }
        }
    }
    let mut files = 0;
    for e in entries {
        if paused.load(Ordering::SeqCst) {
            return files;
        }
        let name = e.file_name();
        let child = rel.join(&name);
        let ft = match e.file_type() {
            Ok(ft) => ft,
            Err(e) if vanished(&e) => continue,
            Err(e) => {
                found.push(format!("view: type of {}: {e}", child.display()));
                continue;
            }
        };
        if ft.is_dir() {
            files += walk_view(root, &child, paused, found);
        } else if ft.is_file() {
            let got = match fs::read(root.join(&child)) {
                Ok(b) => b,
                Err(e) if vanished(&e) => continue,
                Err(e) => {
                    found.push(format!("view: read {}: {e}", child.display()));
                    continue;
                }
            };
            files += 1;
            // Workload files describe themselves; rsync's tree does not.
            let workload = child
                .components()
                .nth(1)
                .is_some_and(|c| c.as_os_str() != "tree");
            if workload {
                if let Err(why) = recognise(&got) {
                    found.push(format!("view: {}: {why}", child.display()));
                }
            }
        }
    }
    files
}

// ---- the workload --------------------------------------------------------------

/// Shared switches of one trial's workload threads.
#[derive(Clone)]
struct Flags {
    /// Set just before a kill of the source: errors from now on are its
    /// consequence, and the threads end quietly.
    errors_expected: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    strict: bool,
    fsyncs: Arc<AtomicU64>,
    refusals: Arc<AtomicU64>,
}

impl Flags {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// What an error means: `Ok(())` to end quietly (expected after a kill),
    /// otherwise the failure.
    fn fail(&self, what: String) -> Result<(), String> {
        if self.errors_expected.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(what)
        }
    }

    /// The result of an fsync: `Ok(true)` durable, `Ok(false)` refused in
    /// strict mode (the peer could not confirm: EIO, allowed), `Err` for
    /// anything else.
    fn fsync(&self, r: std::io::Result<()>) -> Result<bool, std::io::Error> {
        match r {
            Ok(()) => {
                self.fsyncs.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(e)
                if self.strict
                    && e.raw_os_error() == Some(libc::EIO)
                    && !self.errors_expected.load(Ordering::SeqCst) =>
            {
                self.refusals.fetch_add(1, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

type Outcome = Result<(), String>;

/// Many small files, most fsynced; an appended journal fdatasync'ed after
/// each append; a config file replaced atomically (write, fsync, rename,
/// fsync the directory); renames and unlinks of earlier files.
fn small_writer(
    dir: DirFd,
    rel: PathBuf,
    ledger: Arc<Mutex<Ledger>>,
    f: Flags,
    mut rng: Rng,
) -> Outcome {
    let path = |name: &str| rel.join(name);
    let mut existing: Vec<String> = Vec::new();
    let journal_seed = rng.next_u64();
    let journal_full = 4 << 20;
    let journal_data = content(journal_seed, journal_full);
    ledger
        .lock()
        .expect("ledger")
        .writing(&path("journal"), journal_seed, journal_full as u64, 0);
    let journal = match dir.create("journal", true) {
        Ok(j) => j,
        Err(e) => return f.fail(format!("create journal: {e}")),
    };
    let mut journal_len = 0usize;
    for n in 0..2000u64 {
        if f.stopping() {
            return Ok(());
        }
        let r: std::io::Result<()> = (|| {
            let seed = rng.next_u64();
            let len = if rng.chance(0.2) {
                4096 * rng.range(1, 4) as usize
            } else {
                rng.range(24, 12_000) as usize
            };
            let name = format!("f-{n}");
            ledger
                .lock()
                .expect("ledger")
                .writing(&path(&name), seed, len as u64, len as u64);
            let mut file = dir.create(&name, false)?;
            file.write_all(&content(seed, len))?;
            if n % 3 != 2 && f.fsync(file.sync_all())? {
                ledger
                    .lock()
                    .expect("ledger")
                    .fsynced(&path(&name), len as u64);
            }
            drop(file);
            existing.push(name);
            if n % 4 == 3 {
                // Atomic replace of `cfg`.
                let seed = rng.next_u64();
                let len = rng.range(24, 3000) as usize;
                let tmp = format!("cfg.tmp-{n}");
                ledger
                    .lock()
                    .expect("ledger")
                    .writing(&path(&tmp), seed, len as u64, len as u64);
                let mut file = dir.create(&tmp, false)?;
                file.write_all(&content(seed, len))?;
                if f.fsync(file.sync_all())? {
                    ledger
                        .lock()
                        .expect("ledger")
                        .fsynced(&path(&tmp), len as u64);
                }
                drop(file);
                dir.rename(&tmp, "cfg")?;
                let moving = ledger
                    .lock()
                    .expect("ledger")
                    .renamed(&path(&tmp), &path("cfg"));
                if f.fsync(dir.fsync())? {
                    ledger.lock().expect("ledger").rename_durable(
                        &path(&tmp),
                        &path("cfg"),
                        moving,
                    );
                }
            }
            if n % 5 == 4 && existing.len() > 3 {
                // A rename of an earlier file, made durable half the time.
                let from = existing.remove(existing.len() - 3);
                let to = format!("g-{}", &from[2..]);
                dir.rename(&from, &to)?;
                let moving = ledger
                    .lock()
                    .expect("ledger")
                    .renamed(&path(&from), &path(&to));
                if rng.chance(0.5) && f.fsync(dir.fsync())? {
                    ledger
                        .lock()
                        .expect("ledger")
                        .rename_durable(&path(&from), &path(&to), moving);
                }
            }
            if n % 7 == 6 && existing.len() > 5 {
                let victim = existing.remove(0);
                dir.unlink(&victim)?;
                ledger.lock().expect("ledger").unlinked(&path(&victim));
                if f.fsync(dir.fsync())? {
                    ledger
                        .lock()
                        .expect("ledger")
                        .unlink_durable(&path(&victim));
                }
            }
            // An append to the journal, made durable.
            let piece = rng.range(1, 6000) as usize;
            let end = (journal_len + piece).min(journal_full);
            ledger
                .lock()
                .expect("ledger")
                .growing(&path("journal"), end as u64);
            std::os::unix::fs::FileExt::write_all_at(
                &journal,
                &journal_data[journal_len..end],
                journal_len as u64,
            )?;
            journal_len = end;
            if f.fsync(journal.sync_data())? {
                ledger
                    .lock()
                    .expect("ledger")
                    .fsynced(&path("journal"), journal_len as u64);
            }
            Ok(())
        })();
        if let Err(e) = r {
            return f.fail(format!("{} (file {n}): {e}", rel.display()));
        }
        std::thread::sleep(rng.millis(1, 8));
    }
    Ok(())
}

/// Large files written in uneven pieces, fsynced at the end (and sometimes
/// in the middle).
fn large_writer(
    dir: DirFd,
    rel: PathBuf,
    ledger: Arc<Mutex<Ledger>>,
    f: Flags,
    mut rng: Rng,
) -> Outcome {
    for n in 0..3u64 {
        if f.stopping() {
            return Ok(());
        }
        let name = format!("large-{n}");
        let p = rel.join(&name);
        let r: std::io::Result<()> = (|| {
            let seed = rng.next_u64();
            let len = (rng.range(1, 5) << 20) as usize + rng.range(0, 4096) as usize;
            let data = content(seed, len);
            ledger
                .lock()
                .expect("ledger")
                .writing(&p, seed, len as u64, 0);
            let file = dir.create(&name, false)?;
            let mut off = 0usize;
            let fsync_at = rng.range(0, len as u64 * 2) as usize;
            while off < len {
                let piece = (rng.range(64 << 10, 1 << 20) as usize).min(len - off);
                ledger
                    .lock()
                    .expect("ledger")
                    .growing(&p, (off + piece) as u64);
                std::os::unix::fs::FileExt::write_all_at(
                    &file,
                    &data[off..off + piece],
                    off as u64,
                )?;
                off += piece;
                if off >= fsync_at && off - piece < fsync_at && f.fsync(file.sync_data())? {
                    ledger.lock().expect("ledger").fsynced(&p, off as u64);
                }
                if f.stopping() {
                    return Ok(());
                }
            }
            if f.fsync(file.sync_all())? {
                ledger.lock().expect("ledger").fsynced(&p, len as u64);
            }
            Ok(())
        })();
        if let Err(e) = r {
            return f.fail(format!("{}: {e}", p.display()));
        }
        std::thread::sleep(rng.millis(100, 400));
    }
    Ok(())
}

/// Names created one after another in `chain/`, the oldest removed: any
/// whole CP holds one contiguous run of them.
fn chain_writer(dir: DirFd, f: Flags, mut rng: Rng) -> Outcome {
    for n in 0..100_000u64 {
        if f.stopping() {
            return Ok(());
        }
        let r: std::io::Result<()> = (|| {
            let mut file = dir.create(&format!("c-{n}"), false)?;
            file.write_all(&content(n, 24 + (n as usize % 64)))?;
            drop(file);
            if n >= 12 {
                dir.unlink(&format!("c-{}", n - 12))?;
            }
            Ok(())
        })();
        if let Err(e) = r {
            return f.fail(format!("chain c-{n}: {e}"));
        }
        std::thread::sleep(rng.millis(2, 10));
    }
    Ok(())
}

/// `rsync -aHAX` of the outside tree into `tN/tree`, then an fsync of every
/// file and directory of the copy; sets `durable` once all returned.
fn rsync_tree(outside: PathBuf, trial_dir: PathBuf, f: Flags, durable: Arc<AtomicBool>) -> Outcome {
    // The child's working directory is the trial's directory in the mount:
    // if the mount goes away, its relative paths fail instead of writing
    // into the directory under the mount point. Its three processes can
    // hang on each other once the file system is gone under them: it is
    // killed 10 s after the source was, and gives up after 60 s of silence.
    let log = trial_dir
        .parent()
        .and_then(Path::parent)
        .expect("the trial directory is in the mount, in the rig's root")
        .join("rsync.log");
    let log_file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("rsync log");
    let child = Command::new("rsync")
        .args([
            "-aHAX",
            "--timeout=60",
            &format!("{}/", outside.display()),
            "tree/",
        ])
        .current_dir(&trial_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return f.fail(format!("rsync: {e}")),
    };
    let mut source_gone_at: Option<Instant> = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => return f.fail(format!("rsync: {e}")),
        }
        if f.errors_expected.load(Ordering::SeqCst) {
            let since = *source_gone_at.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !status.success() {
        return f.fail(format!(
            "rsync into {}: {status} (its messages in {})",
            trial_dir.display(),
            log.display()
        ));
    }
    let dir = match DirFd::open(&trial_dir) {
        Ok(d) => d,
        Err(e) => return f.fail(format!("open {}: {e}", trial_dir.display())),
    };
    match fsync_tree(&trial_dir.join("tree"), &f) {
        Ok(true) => {}
        Ok(false) => return Ok(()),
        Err(e) => return f.fail(format!("fsync of the copied tree: {e}")),
    }
    match f.fsync(dir.fsync()) {
        Ok(true) => durable.store(true, Ordering::SeqCst),
        Ok(false) => {}
        Err(e) => return f.fail(format!("fsync of {}: {e}", trial_dir.display())),
    }
    Ok(())
}

/// fsyncs every regular file and directory under `root`; `Ok(false)` if an
/// fsync was refused (strict mode).
fn fsync_tree(root: &Path, f: &Flags) -> std::io::Result<bool> {
    let mut all = true;
    for e in fs::read_dir(root)? {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            all &= fsync_tree(&e.path(), f)?;
        } else if ft.is_file() {
            all &= f.fsync(fs::File::open(e.path())?.sync_all())?;
        }
    }
    all &= f.fsync(fs::File::open(root)?.sync_all())?;
    Ok(all)
}

/// One trial's workload threads.
struct Workload {
    flags: Flags,
    threads: Vec<(&'static str, JoinHandle<Outcome>)>,
    tree_durable: Arc<AtomicBool>,
}

impl Workload {
    fn start(rig: &Rig, trial: u64, rng: &mut Rng) -> Workload {
        let flags = Flags {
            errors_expected: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
            strict: rig.mode == "strict",
            fsyncs: Arc::new(AtomicU64::new(0)),
            refusals: Arc::new(AtomicU64::new(0)),
        };
        let rel = PathBuf::from(format!("t{trial}"));
        let trial_dir = rig.mnt.join(&rel);
        let top = DirFd::open(&rig.mnt).expect("open the mount");
        top.mkdir(&format!("t{trial}"))
            .expect("mkdir the trial directory");
        let td = DirFd::open(&trial_dir).expect("open the trial directory");
        for d in ["w0", "w1", "big", "chain"] {
            td.mkdir(d).expect("mkdir");
        }
        td.fsync().expect("fsync the trial directory");
        top.fsync().expect("fsync the mount's root");
        let mut threads: Vec<(&'static str, JoinHandle<Outcome>)> = Vec::new();
        for w in ["w0", "w1"] {
            let (d, r, l, f, g) = (
                DirFd::open(&trial_dir.join(w)).expect("open"),
                rel.join(w),
                rig.ledger.clone(),
                flags.clone(),
                rng.fork(),
            );
            threads.push((
                "small files",
                std::thread::spawn(move || small_writer(d, r, l, f, g)),
            ));
        }
        let (d, r, l, f, g) = (
            DirFd::open(&trial_dir.join("big")).expect("open"),
            rel.join("big"),
            rig.ledger.clone(),
            flags.clone(),
            rng.fork(),
        );
        threads.push((
            "large files",
            std::thread::spawn(move || large_writer(d, r, l, f, g)),
        ));
        let (d, f, g) = (
            DirFd::open(&trial_dir.join("chain")).expect("open"),
            flags.clone(),
            rng.fork(),
        );
        threads.push(("chain", std::thread::spawn(move || chain_writer(d, f, g))));
        let tree_durable = Arc::new(AtomicBool::new(false));
        let (o, t, f, dur) = (
            rig.outside.clone(),
            trial_dir.clone(),
            flags.clone(),
            tree_durable.clone(),
        );
        threads.push((
            "rsync",
            std::thread::spawn(move || rsync_tree(o, t, f, dur)),
        ));
        Workload {
            flags,
            threads,
            tree_durable,
        }
    }

    /// Stops the threads and returns the first failure.
    fn finish(self, tally: &mut Tally) -> Outcome {
        self.flags.stop.store(true, Ordering::SeqCst);
        let mut result = Ok(());
        for (name, t) in self.threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    if result.is_ok() {
                        result = Err(format!("workload ({name}): {e}"));
                    }
                }
                Err(_) => result = Err(format!("workload ({name}) panicked")),
            }
        }
        tally.fsyncs += self.flags.fsyncs.load(Ordering::Relaxed);
        tally.strict_refusals += self.flags.refusals.load(Ordering::Relaxed);
        result
    }
}

// ---- faults --------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    KillSource,
    KillSourceMidCp,
    KillPeer,
    KillPeerMidCp,
    KillPeerMidResync,
    KillBoth,
    LinkOnly,
}

impl Fault {
    fn pick(rng: &mut Rng) -> Fault {
        match rng.range(0, 100) {
            0..=24 => Fault::KillSource,
            25..=34 => Fault::KillSourceMidCp,
            35..=49 => Fault::KillPeer,
            50..=59 => Fault::KillPeerMidCp,
            60..=71 => Fault::KillPeerMidResync,
            72..=89 => Fault::KillBoth,
            _ => Fault::LinkOnly,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Fault::KillSource => "kill -9 source",
            Fault::KillSourceMidCp => "kill -9 source mid-CP",
            Fault::KillPeer => "kill -9 peer",
            Fault::KillPeerMidCp => "kill -9 peer mid-CP",
            Fault::KillPeerMidResync => "kill -9 peer mid-resync",
            Fault::KillBoth => "kill -9 source and peer",
            Fault::LinkOnly => "link faults only",
        }
    }
}

/// `twinfs checkpoint MNT` in the background, to kill something while it runs.
fn start_checkpoint(mnt: &Path) -> std::process::Child {
    Command::new(bin())
        .args(["checkpoint", s(mnt)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("twinfs checkpoint")
}

/// A partition (one way or both) or a reset on the link, for a while.
fn link_episode(rig: &mut Rig, rng: &mut Rng, tally: &mut Tally) {
    if rng.chance(0.25) {
        rig.relay.cmd("reset");
        tally.resets += 1;
        tally.fault("link reset");
        return;
    }
    let way = ["both", "forward", "reverse"][rng.range(0, 3) as usize];
    // Mostly shorter than the sync-mode fsync timeout (5 s); sometimes longer.
    let hold = if rng.chance(0.1) {
        rng.millis(5500, 7500)
    } else {
        rng.millis(200, 2500)
    };
    rig.relay.cmd(&format!("partition {way}"));
    tally.partitions += 1;
    tally.fault(match way {
        "both" => "partition both ways",
        "forward" => "partition source->peer",
        _ => "partition peer->source",
    });
    std::thread::sleep(hold);
    rig.relay.cmd("heal");
}

/// Copies the peer's directory as a kill -9 would leave it (the peer frozen
/// with SIGSTOP while the copy runs, or already dead), promotes the copy
/// (killing a first promote at a random moment now and then), and checks it:
/// fsck clean, and every byte of `ledger` that must be durable at the peer
/// is there. Returns problems.
fn check_peer_copy(
    rig: &mut Rig,
    ledger: &Ledger,
    durable: bool,
    tree: Option<u64>,
    peer_alive: bool,
    rng: &mut Rng,
    tally: &mut Tally,
) -> Vec<String> {
    let copy = rig.root.join("peer-copy");
    let _ = fs::remove_dir_all(&copy);
    if peer_alive {
        rig.checker.pause();
        rig.peer.freeze(true);
        wait_stopped(rig.peer.pid());
    }
    let cp = Command::new("cp")
        .args(["-a", "--sparse=always", s(&rig.dir), s(&copy)])
        .status();
    if peer_alive {
        rig.peer.freeze(false);
        rig.checker.resume();
    }
    assert!(
        cp.is_ok_and(|c| c.success()),
        "copying the peer's directory"
    );
    let mut problems = Vec::new();
    // Without a journal the image must be a whole CP as it is.
    let mirror = copy.join("mirror.img");
    if mirror.exists() && !copy.join("journal").exists() {
        let r = twinfs(&["fsck", s(&mirror)]);
        tally.fscks += 1;
        if r.code != 0 {
            problems.push(format!(
                "fsck of the peer's image at the kill (no journal):\n{}{}",
                r.stdout, r.stderr
            ));
        }
    }
    if !mirror.exists() {
        // The peer never applied a CP: nothing to promote.
        let _ = fs::remove_dir_all(&copy);
        return problems;
    }
    if rng.chance(0.3) {
        let mut p = Command::new(bin())
            .args(["promote", s(&copy)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("twinfs promote");
        std::thread::sleep(rng.millis(5, 400));
        let running = p.try_wait().expect("promote").is_none();
        let _ = p.kill();
        let _ = p.wait();
        tally.fault("kill -9 promote");
        if running {
            tally.promotes_killed_running += 1;
        }
    }
    let r = twinfs(&["promote", s(&copy)]);
    tally.promotes += 1;
    if r.code != 0 {
        problems.push(format!("promote of the copy: {}{}", r.stdout, r.stderr));
        return problems;
    }
    let promote_said = r.stdout.lines().next().unwrap_or("").to_string();
    if r.stdout.contains("replay stopped early") {
        problems.push(format!("promote of the copy stopped early: {}", r.stdout));
    }
    let promoted = PathBuf::from(r.stdout.lines().last().expect("promote prints the image"));
    let fsck = |when: &str, problems: &mut Vec<String>, tally: &mut Tally| {
        let f = twinfs(&["fsck", s(&promoted)]);
        tally.fscks += 1;
        if f.code != 0 {
            problems.push(format!(
                "fsck of the promoted copy {when}:\n{}{}",
                f.stdout, f.stderr
            ));
        }
    };
    fsck("after promote", &mut problems, tally);
    let mnt = rig.root.join("promoted");
    let mut m = Source::start(
        &promoted,
        &mnt,
        &["--cp-interval", "86400"],
        &rig.root.join("promoted.log"),
    );
    let c = ledger.check(&mnt, durable);
    if durable {
        tally.durable_files_peer += c.durable_files;
        tally.durable_bytes_peer += c.durable_bytes;
    }
    tally.bytes_lost += c.bytes_lost;
    problems.extend(
        c.problems
            .into_iter()
            .map(|p| format!("promoted peer ({promote_said}): {p}")),
    );
    if let Some(t) = tree.filter(|_| durable) {
        let diff = differences(
            &walk(&rig.outside, Compare::COPY),
            &walk(&mnt.join(format!("t{t}/tree")), Compare::COPY),
        );
        tally.trees_compared += 1;
        if !diff.is_empty() {
            problems.push(format!(
                "promoted peer: the fsynced rsync tree t{t}/tree differs:\n{}",
                diff.join("\n")
            ));
        }
    }
    let code = m.unmount();
    if code != Some(0) {
        problems.push(format!("unmount of the promoted copy exited {code:?}"));
    }
    fsck("after use", &mut problems, tally);
    if problems.is_empty() {
        let _ = fs::remove_dir_all(&copy);
    } else {
        // Kept for a look: the copy as promoted, with its log store.
        let _ = fs::rename(&copy, rig.root.join("peer-copy-failed"));
    }
    problems
}

/// Waits until every thread of process `pid` is stopped (SIGSTOP is
/// delivered asynchronously: a thread in a system call stops after it).
fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all_stopped = fs::read_dir(format!("/proc/{pid}/task"))
            .map(|rd| {
                rd.flatten().all(|t| {
                    fs::read_to_string(t.path().join("stat")).is_ok_and(|st| {
                        st.rsplit_once(')')
                            .and_then(|(_, rest)| rest.split_whitespace().next())
                            .is_some_and(|state| state == "T" || state == "t")
                    })
                })
            })
            .unwrap_or(false);
        if all_stopped {
            return;
        }
        assert!(Instant::now() < deadline, "the peer {pid} did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The source was killed: fsck its image, remount it, and check that every
/// fsynced byte is there; the ledger then holds what was seen.
fn recover_source(rig: &mut Rig, tally: &mut Tally) -> Vec<String> {
    let mut problems = Vec::new();
    let r = twinfs(&["fsck", s(&rig.image)]);
    tally.fscks += 1;
    if r.code != 0 {
        problems.push(format!(
            "fsck of the source's image after kill -9:\n{}{}",
            r.stdout, r.stderr
        ));
    }
    let stray: Vec<_> = fs::read_dir(&rig.mnt)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        stray.is_empty(),
        "something wrote under the mount point while it was not mounted: {stray:?}"
    );
    rig.start_source();
    let mut ledger = rig.ledger.lock().expect("ledger");
    let c = ledger.check(&rig.mnt, true);
    tally.durable_files_source += c.durable_files;
    tally.durable_bytes_source += c.durable_bytes;
    tally.bytes_lost += c.bytes_lost;
    problems.extend(
        c.problems
            .into_iter()
            .map(|p| format!("source after remount: {p}")),
    );
    ledger.settle(&rig.mnt);
    problems
}

// ---- a trial ---------------------------------------------------------------------

/// What the trial reports besides problems.
struct TrialReport {
    fault: Fault,
    degraded: bool,
}

fn trial(rig: &mut Rig, n: u64, rng: &mut Rng, tally: &mut Tally) -> Result<TrialReport, String> {
    let log_mark = rig.source_log_len();
    // Room: the oldest trial's directory goes, durably. It is renamed
    // first, so that no CP shows a `chain` directory half removed (rm -r
    // removes in directory order, which would leave gaps in the run).
    while rig.live.len() >= LIVE_TRIALS {
        let old = rig.live.pop_front().expect("a live trial");
        let (from, to) = (
            rig.mnt.join(format!("t{old}")),
            rig.mnt.join(format!("x-t{old}")),
        );
        fs::rename(&from, &to).map_err(|e| format!("rename {}: {e}", from.display()))?;
        fs::remove_dir_all(&to).map_err(|e| format!("rm -r {}: {e}", to.display()))?;
        DirFd::open(&rig.mnt)
            .and_then(|d| d.fsync())
            .map_err(|e| format!("fsync of the mount after rm -r: {e}"))?;
        rig.ledger
            .lock()
            .expect("ledger")
            .forget_under(Path::new(&format!("t{old}")));
    }
    rig.live.push_back(n);
    let fault = Fault::pick(rng);
    tally.fault(fault.name());
    rig.checker.resume();
    let work = Workload::start(rig, n, rng);
    let mut problems: Vec<String> = Vec::new();
    // Link trouble before the kill, half the time.
    std::thread::sleep(rng.millis(200, 1200));
    if fault == Fault::LinkOnly || rng.chance(0.5) {
        link_episode(rig, rng, tally);
    }
    std::thread::sleep(rng.millis(100, 1500));
    let mode = rig.mode;
    let degraded_so_far = |rig: &Rig| {
        mode == "sync"
            && rig
                .source_log_since(log_mark)
                .contains("carrying on without it")
    };
    match fault {
        Fault::KillSource | Fault::KillSourceMidCp | Fault::KillBoth => {
            let ckpt = (fault == Fault::KillSourceMidCp).then(|| start_checkpoint(&rig.mnt));
            if ckpt.is_some() {
                std::thread::sleep(rng.millis(0, 60));
            }
            let both = fault == Fault::KillBoth;
            if both {
                rig.checker.pause();
            }
            work.flags.errors_expected.store(true, Ordering::SeqCst);
            let peer_first = both && rng.chance(0.5);
            if peer_first {
                rig.peer.kill9();
            }
            rig.src().kill9();
            if both && !peer_first {
                rig.peer.kill9();
            }
            if let Some(mut c) = ckpt {
                let _ = c.wait();
            }
            let tree_durable = work.tree_durable.clone();
            let w = work.finish(tally);
            if let Err(e) = w {
                problems.push(e);
            }
            let ledger = rig.ledger.lock().expect("ledger").clone();
            let degraded = degraded_so_far(rig);
            let durable = mode != "async" && !degraded;
            let tree = tree_durable.load(Ordering::SeqCst).then_some(n);
            let mut p = check_peer_copy(rig, &ledger, durable, tree, !both, rng, tally);
            problems.append(&mut p);
            if both {
                rig.peer.restart();
            }
            problems.extend(recover_source(rig, tally));
            finish_trial(rig, fault, degraded, problems, n, rng, tally)
        }
        Fault::KillPeer | Fault::KillPeerMidCp | Fault::KillPeerMidResync => {
            let ckpt = (fault == Fault::KillPeerMidCp).then(|| start_checkpoint(&rig.mnt));
            if ckpt.is_some() {
                std::thread::sleep(rng.millis(0, 60));
            }
            rig.checker.pause();
            rig.peer.kill9();
            // What was durable when the peer died must be in its directory.
            // The ledger is read once the peer is dead: no fsync returns
            // without it in sync and strict mode (one that returned by
            // degrading is not held to it), and a change made before the
            // kill that reached the peer (an unlink of a file fsynced
            // earlier, an append) is then in the ledger. Read before the
            // kill, it missed such changes (trial 1033 of seed 77120263, on
            // a loaded machine).
            let ledger = rig.ledger.lock().expect("ledger").clone();
            if let Some(mut c) = ckpt {
                let _ = c.wait();
            }
            if rng.chance(0.5) {
                let durable = mode != "async" && !degraded_so_far(rig);
                let mut p = check_peer_copy(rig, &ledger, durable, None, false, rng, tally);
                problems.append(&mut p);
            }
            std::thread::sleep(rng.millis(200, 1500));
            rig.peer.restart();
            if fault == Fault::KillPeerMidResync {
                let deadline = Instant::now() + Duration::from_secs(15);
                let mut caught = false;
                while Instant::now() < deadline {
                    let st = status_of(&rig.mnt);
                    if st["peer"]["state"] == "resyncing" {
                        std::thread::sleep(rng.millis(0, 150));
                        rig.peer.kill9();
                        caught = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                if caught {
                    tally.resync_kills_caught += 1;
                    std::thread::sleep(rng.millis(100, 800));
                    rig.peer.restart();
                } else {
                    tally.resync_kills_missed += 1;
                }
            }
            let w = work.finish(tally);
            if let Err(e) = w {
                problems.push(e);
            }
            let degraded = degraded_so_far(rig);
            finish_trial(rig, fault, degraded, problems, n, rng, tally)
        }
        Fault::LinkOnly => {
            if rng.chance(0.5) {
                link_episode(rig, rng, tally);
            }
            std::thread::sleep(rng.millis(100, 800));
            if let Err(e) = work.finish(tally) {
                problems.push(e);
            }
            let degraded = degraded_so_far(rig);
            finish_trial(rig, fault, degraded, problems, n, rng, tally)
        }
    }
}

/// Heals the link, waits until the peer holds the source's CP, and checks
/// the two agree (root hashes, the replica view's tree).
fn finish_trial(
    rig: &mut Rig,
    fault: Fault,
    degraded: bool,
    mut problems: Vec<String>,
    n: u64,
    rng: &mut Rng,
    tally: &mut Tally,
) -> Result<TrialReport, String> {
    rig.relay.cmd("clear");
    rig.peer.assert_running("the trial's end");
    rig.peer.wait_view();
    rig.checker.resume();
    // Converge: a CP the peer applies, on a link that streams again.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let st = status_of(&rig.mnt);
        let streaming = st["peer"]["state"] == "streaming";
        if streaming
            && twinfs(&["checkpoint", s(&rig.mnt)])
                .stdout
                .contains("applied at the peer")
        {
            let st = status_of(&rig.mnt);
            if st["peer"]["acked_cp"] == st["cp"]
                && st["peer"]["acked_root_hash"] == st["root_hash"]
            {
                break;
            }
        }
        if Instant::now() > deadline {
            problems.push(format!("the peer did not converge within 180 s: {st:#}"));
            return Err(problems.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let deep = rng.chance(0.1);
    let args = if deep {
        vec!["verify", s(&rig.mnt), "--deep"]
    } else {
        vec!["verify", s(&rig.mnt)]
    };
    let v = twinfs(&args);
    tally.verifies += 1;
    if v.code != 0 || !v.stdout.contains("equal") {
        problems.push(format!("twinfs {args:?}: {}{}", v.stdout, v.stderr));
    }
    // The replica view shows the source's tree (it switches just after the
    // source hears the CP was applied): the trial's own directory, and
    // every tenth trial the whole tree (equal root hashes, above, already
    // say the images are equal byte for byte).
    let sub = if n.is_multiple_of(10) {
        PathBuf::new()
    } else {
        PathBuf::from(format!("t{n}"))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // A walk of the view meets files the next CP removed while it
        // switches: that walk is thrown away and the comparison repeated.
        let view = std::panic::catch_unwind(|| walk(&rig.view.join(&sub), Compare::EXACT));
        let diff = match view {
            Ok(view) => differences(&walk(&rig.mnt.join(&sub), Compare::EXACT), &view),
            Err(_) => vec!["the view changed during the walk".to_string()],
        };
        if diff.is_empty() {
            tally.trees_compared += 1;
            break;
        }
        if Instant::now() > deadline {
            problems.push(format!(
                "the replica view differs from the source after convergence:\n{}",
                diff.join("\n")
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let (view_problems, walks, files) = rig.checker.take();
    tally.view_walks += walks;
    tally.view_files += files;
    problems.extend(view_problems);
    if degraded {
        tally.degraded_trials += 1;
    }
    if problems.is_empty() {
        Ok(TrialReport { fault, degraded })
    } else {
        Err(format!(
            "trial {n} ({}, {}):\n  {}",
            rig.mode,
            fault.name(),
            problems.join("\n  ")
        ))
    }
}

// ---- the campaign --------------------------------------------------------------

#[test]
fn kill_campaign_loses_no_fsynced_byte() {
    let _serial = serial();
    let cfg = Config::from_env();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(cfg.secs);
    eprintln!(
        "kill campaign: seed {} (TWINFS_CAMPAIGN_SEED), {} s, at most {} trials, modes {:?}",
        cfg.seed, cfg.secs, cfg.trials, cfg.modes
    );
    let mut rng = Rng::new(cfg.seed);
    let mut tally = Tally::default();
    let mut n = 0u64;
    let mut failure = None;
    'campaign: while n < cfg.trials && Instant::now() < deadline {
        for &mode in &cfg.modes {
            if n >= cfg.trials
                || Instant::now() >= deadline
                || cfg.stop.as_ref().is_some_and(|p| p.exists())
            {
                break 'campaign;
            }
            let mut rig = Rig::start(mode, rng.next_u64());
            for _ in 0..cfg.block {
                // Leave room for the trial's convergence and the block's end.
                if n >= cfg.trials
                    || Instant::now() + Duration::from_secs(30) >= deadline
                    || cfg.stop.as_ref().is_some_and(|p| p.exists())
                {
                    break;
                }
                let t = Instant::now();
                match trial(&mut rig, n, &mut rng, &mut tally) {
                    Ok(r) => {
                        *tally.trials.entry(mode).or_default() += 1;
                        eprintln!(
                            "trial {n}: {mode}, {}{}: ok in {:.1} s",
                            r.fault.name(),
                            if r.degraded {
                                " (carried on without the peer)"
                            } else {
                                ""
                            },
                            t.elapsed().as_secs_f64()
                        );
                    }
                    Err(e) => {
                        let kept = rig._scratch.path().to_path_buf();
                        failure = Some(format!(
                            "{e}\n(seed {}; logs in {})",
                            cfg.seed,
                            kept.display()
                        ));
                        // Keep the scratch directory for the logs.
                        let Rig { _scratch, .. } = rig;
                        let _ = _scratch.keep();
                        break 'campaign;
                    }
                }
                n += 1;
            }
            rig.finish(&mut tally);
        }
    }
    let report = tally.json(&cfg, start.elapsed());
    eprintln!("kill campaign tally: {report:#}");
    if let Some(path) = &cfg.report {
        fs::write(path, format!("{report:#}\n")).expect("writing the report");
    }
    if let Some(f) = failure {
        panic!("kill campaign failed: {f}");
    }
    assert_eq!(tally.bytes_lost, 0, "fsynced bytes lost: {report:#}");
    let total: u64 = tally.trials.values().sum();
    assert!(
        total >= cfg.min_trials,
        "only {total} trials ran in {} s (at least {} wanted)",
        cfg.secs,
        cfg.min_trials
    );
    assert!(
        tally.durable_files_source > 0 && tally.fsyncs > 0,
        "{report:#}"
    );
}

// ---- the checker itself ----------------------------------------------------------

#[test]
fn the_ledger_recognises_a_prefix_and_not_garbage() {
    let c = content(42, 10_000);
    assert_eq!(
        recognise(&c[..5000]),
        Ok(Seen::Prefix {
            seed: 42,
            full_len: 10_000
        })
    );
    assert_eq!(recognise(&c[..10]), Ok(Seen::Stub));
    assert_eq!(recognise(b""), Ok(Seen::Stub));
    let mut bad = c.clone();
    bad[7000] ^= 1;
    assert!(recognise(&bad).is_err());
    let mut zeros = c.clone();
    zeros[4096..8192].fill(0);
    assert!(recognise(&zeros).is_err());
    assert!(recognise(&[0u8; 100]).is_err());
}

/// The checker itself: a lost, shortened, resurrected or foreign file
/// is reported, with the durable bytes it lost; what was never made
/// durable may be missing.
#[test]
fn the_ledger_check_reports_every_kind_of_loss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let mut l = Ledger::default();
    let p = |n: &str| PathBuf::from(n);
    for (name, seed) in [("kept", 1), ("lost", 2), ("short", 3), ("maybe", 4)] {
        l.writing(&p(name), seed, 1000, 1000);
        std::fs::write(root.join(name), content(seed, 1000)).expect("write");
    }
    for name in ["kept", "lost", "short"] {
        l.fsynced(&p(name), 1000);
    }
    l.writing(&p("gone"), 5, 100, 100);
    l.fsynced(&p("gone"), 100);
    l.unlink_durable(&p("gone"));
    std::fs::write(root.join("gone"), content(5, 100)).expect("write");
    std::fs::remove_file(root.join("lost")).expect("rm");
    std::fs::remove_file(root.join("maybe")).expect("rm");
    std::fs::write(root.join("short"), &content(3, 1000)[..600]).expect("write");
    let c = l.check(root, true);
    assert_eq!(c.bytes_lost, 1000 + 400, "{c:?}");
    assert_eq!(c.durable_files, 3, "{c:?}");
    let text = c.problems.join("\n");
    assert!(text.contains("lost: missing"), "{text}");
    assert!(text.contains("short: 600 bytes"), "{text}");
    assert!(text.contains("gone: exists"), "{text}");
    assert!(!text.contains("kept") && !text.contains("maybe"), "{text}");
    // Without the durability promise (an async replica, which may hold
    // any earlier state) only bytes nobody wrote count.
    let c = l.check(root, false);
    assert!(c.problems.is_empty(), "{c:?}");
    std::fs::write(root.join("kept"), content(9, 1000)).expect("write");
    assert!(l.check(root, false).problems.is_empty());
    let mut garbage = content(1, 1000);
    garbage[500] ^= 1;
    std::fs::write(root.join("kept"), garbage).expect("write");
    let c = l.check(root, false);
    assert!(
        c.problems.iter().any(|p| p.contains("kept: byte 500")),
        "{c:?}"
    );
}

/// A durable file renamed without a durable rename: a crash keeps one of
/// the two names, either one, but never neither.
#[test]
fn the_ledger_accepts_either_name_of_an_undurable_rename_but_not_neither() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let mut l = Ledger::default();
    let p = |n: &str| PathBuf::from(n);
    l.writing(&p("f-1"), 7, 500, 500);
    l.fsynced(&p("f-1"), 500);
    let moving = l.renamed(&p("f-1"), &p("g-1"));
    std::fs::write(root.join("f-1"), content(7, 500)).expect("write");
    assert!(l.check(root, true).problems.is_empty(), "the old name kept");
    std::fs::rename(root.join("f-1"), root.join("g-1")).expect("rename");
    assert!(l.check(root, true).problems.is_empty(), "the new name");
    std::fs::remove_file(root.join("g-1")).expect("rm");
    let c = l.check(root, true);
    assert_eq!(c.bytes_lost, 500, "{c:?}");
    assert!(
        c.problems.iter().any(|p| p.contains("both missing")),
        "{c:?}"
    );
    // Once the rename is durable, only the new name will do.
    l.rename_durable(&p("f-1"), &p("g-1"), moving);
    std::fs::write(root.join("f-1"), content(7, 500)).expect("write");
    let c = l.check(root, true);
    assert!(
        c.problems.iter().any(|p| p.contains("g-1: missing")),
        "{c:?}"
    );
}
