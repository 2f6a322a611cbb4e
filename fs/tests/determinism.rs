//! Deterministic CPs (DESIGN invariant 4): the same prior image and the same
//! operations give the same blocks, so the root hash after every CP is the
//! same on twin volumes, whatever the log batching, and a volume that
//! replays its log after a crash reaches the root hash of a twin that never
//! crashed.
//!
//! `TWINFS_PROPTEST_CASES=N` runs N cases; a failure prints its seed
//! (`TWINFS_SEED=<seed>` replays it).

mod common;

use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use proptest::sample::Index;
use twinfs_fs::device::{BlockDevice, MemDevice};
use twinfs_fs::volume::Volume;
use twinfs_fs::*;

/// Volume A runs under the model harness (every result checked); twin B
/// gets the same calls at the same times and must agree with A.
struct Twins {
    a: Harness,
    a_dev: Arc<CutDevice>,
    b: Option<Volume>,
    b_dev: Arc<MemDevice>,
    b_clock: Arc<TestClock>,
    /// B takes an fsync after a call when `fsync_mask >> (step % 64)` is odd:
    /// batching then differs from A's, which the root hash must not see.
    fsync_mask: u64,
    cps_compared: u32,
}

impl Twins {
    fn new(fsync_mask: u64) -> Result<Twins, String> {
        let a_dev = CutDevice::new(VOLUME_BLOCKS);
        let a = Harness::new(a_dev.clone() as Arc<dyn BlockDevice>, Setup::default())?;
        let b_dev = Arc::new(MemDevice::new(VOLUME_BLOCKS));
        volume::mkfs(b_dev.clone(), &mkfs_options()).map_err(|e| format!("mkfs B: {e}"))?;
        let b_clock = TestClock::new();
        let mut t = Twins {
            a,
            a_dev,
            b: None,
            b_dev,
            b_clock,
            fsync_mask,
            cps_compared: 0,
        };
        t.open_b()?;
        t.compare("after mkfs")?;
        Ok(t)
    }

    fn open_b(&mut self) -> Result<(), String> {
        let b = Volume::open(
            self.b_dev.clone() as Arc<dyn BlockDevice>,
            config(&self.b_clock, Setup::default()),
        )
        .map_err(|e| format!("opening B: {e}"))?;
        self.b = Some(b);
        Ok(())
    }

    fn b(&self) -> &Volume {
        self.b.as_ref().expect("B is open")
    }

    /// Both committed images are the same CP with the same root hash.
    fn compare(&mut self, when: &str) -> Result<(), String> {
        let a = self.a.vol().committed();
        let b = self.b().committed();
        if a.cp != b.cp || a.root_hash() != b.root_hash() {
            return Err(self.a.fail(format!(
                "step {} ({when}): A is at CP {} with root hash {}, B at CP {} with {}",
                self.a.step,
                a.cp.0,
                a.root_hash(),
                b.cp.0,
                b.root_hash()
            )));
        }
        self.cps_compared = self.cps_compared.max(a.cp.0 as u32);
        Ok(())
    }

    fn run(&mut self, act: &Act) -> Result<(), String> {
        let a = self.a.run(act)?.result;
        self.b_clock.set(step_time(self.a.step));
        let b = exec_volume(self.b(), act);
        if a != b {
            return Err(self.a.fail(format!(
                "step {}: twin B answered {b:?}, A {a:?}",
                self.a.step
            )));
        }
        if (self.fsync_mask >> (self.a.step % 64)) & 1 == 1 {
            self.b().fsync().map_err(|e| format!("fsync on B: {e}"))?;
        }
        // Different batching fills the log differently, so one twin may take
        // a log-space CP inside a call where the other does not. The same
        // state committed as the same CP must still hash the same: catch up.
        let (ca, cb) = (self.a.vol().committed().cp, self.b().committed().cp);
        if ca < cb {
            self.a.run(&Act::Checkpoint)?;
        } else if cb < ca {
            self.b()
                .checkpoint()
                .map_err(|e| format!("checkpoint on B: {e}"))?;
        }
        self.compare(&format!("{act:?}"))
    }

    /// A syncs its log, loses power and replays; B (which never crashed)
    /// drops its open handles as the crash did and takes a CP.
    fn crash_a(&mut self, fate: u64) -> Result<(), String> {
        self.a.run(&Act::Fsync)?;
        let vol = self.a.vol.take().expect("open");
        vol.crash();
        drop(vol);
        self.a_dev.inner.crash(fates(fate));
        self.a
            .trace
            .push(format!("{:>4} A crashes after an fsync", self.a.step));
        self.a.open()?;
        // Every handle: a file opened twice needs two releases on B.
        let open: Vec<(Ino, u32)> = self.a.model.open.iter().map(|(&i, &n)| (i, n)).collect();
        self.a.model.forget_open();
        self.a.check()?;
        for (ino, handles) in open {
            for _ in 0..handles {
                self.b()
                    .release_file(ino)
                    .map_err(|e| format!("release on B: {e}"))?;
            }
        }
        self.b()
            .checkpoint()
            .map_err(|e| format!("checkpoint on B: {e}"))?;
        self.compare("A replayed its log after a crash; B took a CP")
    }
}

fn run_case(ops: &[Op], crashes: &[Index], fsync_mask: u64, fate: u64) -> Result<(), String> {
    let mut t = Twins::new(fsync_mask)?;
    let crash_at: Vec<usize> = crashes.iter().map(|i| i.index(ops.len())).collect();
    for (i, op) in ops.iter().enumerate() {
        for act in t.a.model.resolve_all(op) {
            t.run(&act)?;
        }
        if crash_at.contains(&i) {
            t.crash_a(fate.wrapping_add(i as u64))?;
        }
    }
    t.run(&Act::Checkpoint)?;
    t.a.check()?;
    if std::env::var("TWINFS_TRACE").is_ok() {
        eprintln!(
            "{}\nroot hashes agreed up to CP {}",
            t.a.trace.join("\n"),
            t.cps_compared
        );
    }
    Ok(())
}

#[test]
fn twins_fed_the_same_operations_have_the_same_root_hash_after_every_cp() {
    run_seeded(
        "twins_fed_the_same_operations_have_the_same_root_hash_after_every_cp",
        (ops(Flavor::Twins, max_ops(100)), any::<u64>()),
        cases(12),
        |(ops, mask)| run_case(ops, &[], *mask, 0),
    );
}

#[test]
fn a_volume_that_replays_its_log_reaches_the_root_hash_of_a_twin_that_did_not_crash() {
    run_seeded(
        "a_volume_that_replays_its_log_reaches_the_root_hash_of_a_twin_that_did_not_crash",
        (
            ops(Flavor::Twins, max_ops(100)),
            prop::collection::vec(any::<Index>(), 1..4),
            any::<u64>(),
            any::<u64>(),
        ),
        cases(12),
        |(ops, crashes, mask, fate)| run_case(ops, crashes, *mask, *fate),
    );
}

/// The smallest statement of invariant 4, without randomness: two volumes,
/// one write each, one CP each, one hash.
#[test]
fn the_same_write_on_two_fresh_volumes_commits_the_same_root_hash() {
    let hash = || {
        let dev = Arc::new(MemDevice::new(VOLUME_BLOCKS));
        volume::mkfs(dev.clone(), &mkfs_options()).unwrap();
        let clock = TestClock::new();
        let vol = Volume::open(dev, config(&clock, Setup::default())).unwrap();
        clock.set(step_time(1));
        let f = vol
            .create(ROOT_INO, b"f", FileKind::Regular, 0o644, 0, 0, 0)
            .unwrap();
        vol.write(f.ino, 100, &pattern(7, 100, 50_000), false)
            .unwrap();
        vol.checkpoint().unwrap();
        vol.committed().root_hash()
    };
    assert_eq!(hash(), hash());
}
