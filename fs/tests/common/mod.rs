//! Shared by the model, crash and determinism tests: the in-memory model,
//! the operations, the comparison, a settable clock, a device that loses
//! power after N I/Os, and a seeded proptest runner whose failures print a
//! seed that replays them (`TWINFS_SEED=<seed>`).

#![allow(dead_code)]

pub mod check;
pub mod fsmodel;
pub mod ops;

use std::io::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use rand::{Rng, SeedableRng};

use twinfs_fs::device::{BlockDevice, CrashDevice, LostWrite};
use twinfs_fs::volume::{self, Clock, Volume, MIN_LOG_BLOCKS};
use twinfs_fs::*;

pub use check::*;
pub use fsmodel::*;
pub use ops::*;

/// Blocks of the test volumes (256 MiB, sparse in memory).
pub const VOLUME_BLOCKS: u64 = 65_536;
pub const UUID: [u8; 16] = *b"twinfs-modeltest";
/// Time of mkfs; operation `n` runs at `T0 + n` seconds (plus some nanoseconds).
pub const T0: i64 = 1_600_000_000;

/// A clock the test sets before every operation.
pub struct TestClock(Mutex<Timestamp>);

impl TestClock {
    pub fn new() -> Arc<TestClock> {
        Arc::new(TestClock(Mutex::new(Timestamp::new(T0, 0))))
    }

    pub fn set(&self, t: Timestamp) {
        *self.0.lock() = t;
    }
}

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        *self.0.lock()
    }
}

/// The time of step `n`.
pub fn step_time(n: u64) -> Timestamp {
    Timestamp::new(
        T0 + n as i64,
        (n.wrapping_mul(7_919_113) % 1_000_000_000) as u32,
    )
}

pub fn mkfs_options() -> MkfsOptions {
    MkfsOptions {
        uuid: Some(UUID),
        // The smallest log, so that it wraps around often.
        log_blocks: Some(MIN_LOG_BLOCKS),
        root_uid: 0,
        root_gid: 0,
        time: Some(Timestamp::new(T0, 0)),
        generation: Some(twinfs_fs::lineage::GenerationId(1)),
    }
}

/// How a test runs its volume.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    /// Dirty bytes that trigger a CP inside an operation.
    pub dirty_limit: u64,
    /// Log writer and CP threads (CPs then run concurrently with operations).
    pub background: bool,
    /// A small volume may fill up: ENOSPC is then an accepted answer, and
    /// the call that got it must have changed nothing.
    pub may_fill: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            dirty_limit: volume::DEFAULT_DIRTY_LIMIT,
            background: false,
            may_fill: false,
        }
    }
}

/// Blocks of a volume that fills up after a few MiB of data.
pub const SMALL_VOLUME_BLOCKS: u64 = 3_900;

/// Longest generated sequence: `TWINFS_PROPTEST_OPS`, or `default`.
pub fn max_ops(default: usize) -> usize {
    std::env::var("TWINFS_PROPTEST_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn config(clock: &Arc<TestClock>, setup: Setup) -> VolumeConfig {
    VolumeConfig {
        background: setup.background,
        cp_interval: if setup.background {
            Some(std::time::Duration::from_millis(2))
        } else {
            None
        },
        dirty_limit_bytes: setup.dirty_limit,
        cache_meta_blocks: 512,
        cache_data_blocks: 512,
        clock: clock.clone(),
        ..Default::default()
    }
}

/// What running one call found.
#[derive(Clone, Debug)]
pub struct Ran {
    /// The call succeeded (on both sides).
    pub ok: bool,
    /// A CP committed while the call ran.
    pub cp_moved: bool,
    /// What the volume answered.
    pub result: Result<Val, i32>,
}

/// A volume and the model, driven in step.
pub struct Harness {
    pub dev: Arc<dyn BlockDevice>,
    pub vol: Option<Volume>,
    pub model: Model,
    pub clock: Arc<TestClock>,
    pub setup: Setup,
    pub step: u64,
    /// Every call so far with its result, for failure reports.
    pub trace: Vec<String>,
}

impl Harness {
    /// Makes a new volume on `dev` and opens it.
    pub fn new(dev: Arc<dyn BlockDevice>, setup: Setup) -> Result<Harness, String> {
        volume::mkfs(dev.clone(), &mkfs_options()).map_err(|e| format!("mkfs: {e}"))?;
        let mut h = Harness {
            dev,
            vol: None,
            model: Model::new(0, 0, Timestamp::new(T0, 0)),
            clock: TestClock::new(),
            setup,
            step: 0,
            trace: Vec::new(),
        };
        h.open()?;
        Ok(h)
    }

    pub fn vol(&self) -> &Volume {
        self.vol.as_ref().expect("the volume is open")
    }

    pub fn open(&mut self) -> Result<(), String> {
        let vol = Volume::open(self.dev.clone(), config(&self.clock, self.setup))
            .map_err(|e| format!("opening the volume: {e}"))?;
        self.vol = Some(vol);
        Ok(())
    }

    /// Advances the clock to the next step.
    pub fn tick(&mut self) -> Timestamp {
        self.step += 1;
        let t = step_time(self.step);
        self.clock.set(t);
        t
    }

    /// The failure report: what failed, after which calls.
    pub fn fail(&self, what: impl std::fmt::Display) -> String {
        let start = self.trace.len().saturating_sub(60);
        format!(
            "{what}\n--- calls (last {} of {}) ---\n{}",
            self.trace.len() - start,
            self.trace.len(),
            self.trace[start..].join("\n")
        )
    }

    /// Runs `act` on the volume and the model and compares the results.
    pub fn run(&mut self, act: &Act) -> Result<Ran, String> {
        let now = self.tick();
        let cp_before = self.vol().committed().cp;
        if let Act::Reopen = act {
            self.trace.push(format!("{:>4} reopen", self.step));
            let vol = self.vol.take().expect("open");
            vol.close()
                .map_err(|e| self.fail(format!("close failed: {e}")))?;
            drop(vol);
            self.model.exec(act, now).expect("reopen cannot fail");
            self.open().map_err(|e| self.fail(e))?;
            if !self.setup.background {
                check_space(self.vol()).map_err(|e| self.fail(e))?;
            }
            return Ok(Ran {
                ok: true,
                cp_moved: true,
                result: Ok(Val::Unit),
            });
        }
        let backup = self.setup.may_fill.then(|| self.model.clone());
        let v = exec_volume(self.vol(), act);
        let mut m = self.model.exec(act, now);
        match (&v, backup, act) {
            (Err(libc::ENOSPC), Some(backup), _) => {
                // The volume is full: the call must have changed nothing (the
                // next check compares the tree with the model as it was).
                self.model = backup;
                m = Err(libc::ENOSPC);
            }
            (
                Ok(Val::Count(n)),
                Some(backup),
                Act::Write {
                    ino,
                    off,
                    data,
                    kill_suid,
                },
            ) if (*n as usize) < data.len() => {
                // A short write: the space ran out after the first chunks,
                // which (and only which) must be in the file.
                self.model = backup;
                m = self
                    .model
                    .write(*ino, *off, &data[..*n as usize], *kill_suid, now)
                    .map(Val::Count);
            }
            _ => {}
        }
        let cp_moved = self.vol().committed().cp != cp_before;
        let res = match &v {
            Ok(x) => format!("{x:?}"),
            Err(e) => errno_name(*e),
        };
        self.trace
            .push(format!("{:>4} {act:?} -> {res}", self.step));
        let same = match (&v, &m) {
            (Ok(a), Ok(b)) => a == b,
            (Err(a), Err(b)) => a == b,
            _ => false,
        };
        if !same {
            let mres = match &m {
                Ok(x) => format!("{x:?}"),
                Err(e) => errno_name(*e),
            };
            return Err(self.fail(format!(
                "step {}: {act:?}\n  volume: {res}\n  model:  {mres}",
                self.step
            )));
        }
        if matches!(act, Act::Checkpoint) && !self.setup.background {
            check_space(self.vol()).map_err(|e| self.fail(e))?;
        }
        Ok(Ran {
            ok: m.is_ok(),
            cp_moved,
            result: v,
        })
    }

    /// The live view equals the model.
    pub fn check(&self) -> Result<(), String> {
        check_live(self.vol(), &self.model)
            .map_err(|e| self.fail(format!("step {}: {e}", self.step)))
    }

    pub fn check_snapshots(&self) -> Result<(), String> {
        check_snapshots(self.vol(), &self.model)
            .map_err(|e| self.fail(format!("step {}: {e}", self.step)))
    }

    /// The end of a case: a CP, a remount, everything compared, then every
    /// snapshot and file deleted and the space accounting checked again.
    pub fn finish(&mut self) -> Result<(), String> {
        self.run(&Act::Checkpoint)?;
        self.run(&Act::Reopen)?;
        self.check()?;
        self.check_snapshots()?;
        let names: Vec<String> = self.model.snapshots.keys().cloned().collect();
        for name in names {
            self.run(&Act::SnapDelete { name })?;
        }
        self.run(&Act::Reopen)?;
        self.check()?;
        check_space(self.vol()).map_err(|e| self.fail(e))?;
        Ok(())
    }
}

pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::ENOENT => "ENOENT",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EINVAL => "EINVAL",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENODATA => "ENODATA",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EMLINK => "EMLINK",
        libc::E2BIG => "E2BIG",
        libc::EPERM => "EPERM",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EIO => "EIO",
        libc::EROFS => "EROFS",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}

// ---- devices ------------------------------------------------------------------

/// A crash-simulating device whose power can be cut after a number of
/// writes and flushes: from then on every write and flush fails (the volume
/// sees EIO), and what the disk kept is decided by `CrashDevice::crash`.
pub struct CutDevice {
    pub inner: Arc<CrashDevice>,
    /// I/Os left before the cut; `u64::MAX` = not armed.
    left: AtomicU64,
    ios: AtomicU64,
}

impl CutDevice {
    pub fn new(blocks: u64) -> Arc<CutDevice> {
        Arc::new(CutDevice {
            inner: Arc::new(CrashDevice::new(blocks)),
            left: AtomicU64::new(u64::MAX),
            ios: AtomicU64::new(0),
        })
    }

    /// Cuts the power after `n` more writes/flushes succeed.
    pub fn arm(&self, n: u64) {
        self.left.store(n, Ordering::SeqCst);
    }

    pub fn disarm(&self) {
        self.left.store(u64::MAX, Ordering::SeqCst);
    }

    /// Whether the power was cut.
    pub fn tripped(&self) -> bool {
        self.left.load(Ordering::SeqCst) == 0
    }

    /// Writes and flushes so far.
    pub fn ios(&self) -> u64 {
        self.ios.load(Ordering::SeqCst)
    }

    fn pass(&self) -> io::Result<()> {
        let r = self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| match l {
                u64::MAX => Some(l),
                0 => None,
                _ => Some(l - 1),
            });
        match r {
            Ok(_) => {
                self.ios.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            Err(_) => Err(io::Error::other("simulated power cut")),
        }
    }
}

impl BlockDevice for CutDevice {
    fn num_blocks(&self) -> u64 {
        self.inner.num_blocks()
    }

    fn read(&self, addr: BlockAddr, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read(addr, buf)
    }

    fn write(&self, addr: BlockAddr, data: &[u8]) -> io::Result<()> {
        self.pass()?;
        self.inner.write(addr, data)
    }

    fn flush(&self) -> io::Result<()> {
        self.pass()?;
        self.inner.flush()
    }

    fn write_durable(&self, addr: BlockAddr, parts: &[&[u8]]) -> io::Result<()> {
        self.pass()?;
        self.inner.write_durable(addr, parts)
    }
}

/// The fate of every unflushed write at a power failure, from a seed:
/// all dropped, all kept, a random mix, mostly torn, or an in-order prefix.
pub fn fates(seed: u64) -> impl FnMut(u64) -> (LostWrite, u8) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mode = seed % 5;
    let mut stopped = false;
    move |_addr| match mode {
        0 => (LostWrite::Dropped, 0),
        1 => (LostWrite::Kept, 0),
        2 => match rng.gen_range(0..3) {
            0 => (LostWrite::Dropped, 0),
            1 => (LostWrite::Kept, 0),
            _ => (LostWrite::Torn, rng.gen()),
        },
        3 => {
            if rng.gen_bool(0.6) {
                (LostWrite::Torn, rng.gen())
            } else {
                (LostWrite::Kept, 0)
            }
        }
        _ => {
            if !stopped && rng.gen_bool(0.05) {
                stopped = true;
                return (LostWrite::Torn, rng.gen());
            }
            if stopped {
                (LostWrite::Dropped, 0)
            } else {
                (LostWrite::Kept, 0)
            }
        }
    }
}

// ---- the seeded runner ----------------------------------------------------------

/// Cases to run: `TWINFS_PROPTEST_CASES`, or `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("TWINFS_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Runs `cases` cases of `test`, each generated from its own seed; a
/// failing case is shrunk, then the test panics with the seed (set
/// `TWINFS_SEED` to run just that case again) and the smallest failing input.
/// `TWINFS_BASE_SEED` fixes the seeds of a whole run.
pub fn run_seeded<S>(
    name: &str,
    strategy: S,
    default_cases: u32,
    test: impl Fn(&S::Value) -> Result<(), String>,
) where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let seeds: Vec<u64> = match std::env::var("TWINFS_SEED") {
        Ok(s) => vec![s.parse().expect("TWINFS_SEED is a number")],
        Err(_) => {
            let base: u64 = std::env::var("TWINFS_BASE_SEED")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| rand::thread_rng().gen());
            (0..u64::from(cases(default_cases)))
                .map(|i| splitmix(base.wrapping_add(i)))
                .collect()
        }
    };
    let shrink_iters = std::env::var("TWINFS_SHRINK_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let timeout_s: u64 = std::env::var("TWINFS_CASE_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    for seed in seeds {
        // A hang (a deadlock in the volume) must name its seed, not stall
        // the run. Each run of the test is timed (shrinking runs it often).
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let started = Arc::new(AtomicU64::new(u64::MAX));
        let epoch = std::time::Instant::now();
        let watchdog = {
            let done = done.clone();
            let started = started.clone();
            let name = name.to_string();
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    let s = started.load(Ordering::SeqCst);
                    let now = epoch.elapsed().as_secs();
                    if s != u64::MAX && now.saturating_sub(s) > timeout_s {
                        // Straight to stderr: the test harness's capture
                        // of eprintln! dies with the process.
                        let _ = writeln!(
                            std::io::stderr(),
                            "{name}: a run of the case with seed {seed} takes over {timeout_s} s: a deadlock? \
                             (replay: TWINFS_SEED={seed})"
                        );
                        std::process::abort();
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            })
        };
        let mut bytes = [0u8; 32];
        for (i, c) in bytes.chunks_mut(8).enumerate() {
            c.copy_from_slice(&splitmix(seed ^ i as u64).to_le_bytes());
        }
        let cfg = Config {
            cases: 1,
            failure_persistence: None,
            max_shrink_iters: shrink_iters,
            ..Config::default()
        };
        let mut runner =
            TestRunner::new_with_rng(cfg, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
        let result = runner.run(&strategy, |v| {
            started.store(epoch.elapsed().as_secs(), Ordering::SeqCst);
            let r = test(&v).map_err(TestCaseError::fail);
            started.store(u64::MAX, Ordering::SeqCst);
            r
        });
        done.store(true, Ordering::SeqCst);
        let _ = watchdog.join();
        match result {
            Ok(()) => {}
            Err(TestError::Fail(why, value)) => panic!(
                "{name} failed with seed {seed}\n  replay: TWINFS_SEED={seed} cargo test -p twinfs-fs --test <this file> {name}\n  smallest failing input: {value:#?}\n{why}"
            ),
            Err(e) => panic!("{name} (seed {seed}): {e}"),
        }
    }
}
