//! Crash consistency: random operation sequences on a crash-simulating
//! device, with power failures at random points (every unflushed write
//! dropped, kept or torn by sector, from a seed) and in the middle of
//! checkpoints, fsyncs and snapshot creation (after N device I/Os, so that
//! the superblock write itself may be torn).
//!
//! After each crash the volume must open (replaying its log), show exactly
//! the model's state after SOME prefix of the operations that includes
//! everything before the last fsync, checkpoint or CP, keep its space
//! accounting exact, and keep working.
//!
//! `TWINFS_PROPTEST_CASES=N` runs N cases; a failure prints its seed
//! (`TWINFS_SEED=<seed>` replays it).

mod common;

use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use twinfs_fs::device::BlockDevice;
use twinfs_fs::*;

/// A harness on a [`CutDevice`] that remembers every state the volume may
/// come back in after a crash.
struct CrashRun {
    h: Harness,
    cut: Arc<CutDevice>,
    /// Model states since the last durable point, oldest first; the last is
    /// the current one. A crash must bring back one of them.
    history: Vec<Model>,
    crashes: u32,
}

fn is_probe(act: &Act) -> bool {
    matches!(
        act,
        Act::GetAttr { .. }
            | Act::Lookup { .. }
            | Act::Read { .. }
            | Act::ReadLink { .. }
            | Act::ReadDir { .. }
            | Act::GetXattr { .. }
            | Act::ListXattr { .. }
            | Act::Seek { .. }
    )
}

/// Whether a successful `act` makes everything before it durable.
fn is_durable(act: &Act) -> bool {
    matches!(
        act,
        Act::Checkpoint
            | Act::Fsync
            | Act::Reopen
            | Act::SnapCreate { .. }
            | Act::SnapDelete { .. }
    )
}

impl CrashRun {
    fn new(setup: Setup) -> Result<CrashRun, String> {
        let cut = CutDevice::new(VOLUME_BLOCKS);
        let dev: Arc<dyn BlockDevice> = cut.clone();
        let h = Harness::new(dev, setup)?;
        // mkfs flushed; the empty volume is durable.
        let history = vec![h.model.clone()];
        Ok(CrashRun {
            h,
            cut,
            history,
            crashes: 0,
        })
    }

    fn op(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::Crash { fate } => self.crash(fate, "crash between operations"),
            Op::CutDuring { ios, fate, what } => self.cut_during(u64::from(ios), fate, what),
            _ => {
                for act in self.h.model.resolve_all(op) {
                    self.act(&act)?;
                }
                Ok(())
            }
        }
    }

    /// Runs one call and notes which states a crash may now bring back.
    fn act(&mut self, act: &Act) -> Result<(), String> {
        let before = self.h.model.clone();
        let ran = self.h.run(act)?;
        if ran.ok && is_durable(act) {
            self.history = vec![self.h.model.clone()];
        } else if ran.cp_moved {
            // A CP inside the call covers at least what came before it.
            self.history = vec![before, self.h.model.clone()];
        } else if ran.ok && !is_probe(act) {
            self.history.push(self.h.model.clone());
        }
        Ok(())
    }

    /// Cuts the power after `ios` more I/Os while a checkpoint, fsync or
    /// snapshot runs, then crashes.
    fn cut_during(&mut self, ios: u64, fate: u64, what: CutWhat) -> Result<(), String> {
        let act = match what {
            CutWhat::Checkpoint => Act::Checkpoint,
            CutWhat::Fsync => Act::Fsync,
            CutWhat::Snapshot => Act::SnapCreate { name: "cut".into() },
        };
        let now = self.h.tick();
        let mut after = self.h.model.clone();
        let m = after.exec(&act, now);
        self.cut.arm(ios);
        let io0 = self.cut.ios();
        let v = exec_volume(self.h.vol(), &act);
        let did = self.cut.ios() - io0;
        let tripped = self.cut.tripped();
        self.cut.disarm();
        self.h.trace.push(format!(
            "{:>4} {act:?} with the power cut after {ios} I/Os ({did} done{}) -> {}",
            self.h.step,
            if tripped { ", cut" } else { ", not reached" },
            match &v {
                Ok(x) => format!("{x:?}"),
                Err(e) => errno_name(*e),
            }
        ));
        match (&v, &m) {
            (Ok(a), Ok(b)) if a == b => {
                // Acknowledged: durable.
                self.h.model = after;
                self.history = vec![self.h.model.clone()];
            }
            (Err(a), Err(b)) if a == b => {}
            (Err(e), _) if tripped && *e == libc::EIO => {
                if m.is_ok() {
                    self.history.push(after);
                }
            }
            _ => {
                return Err(self.h.fail(format!(
                    "step {}: {act:?} (cut after {ios} I/Os): volume {v:?}, model {m:?}",
                    self.h.step
                )))
            }
        }
        if tripped {
            self.crash(fate, "power cut")
        } else {
            Ok(())
        }
    }

    /// Power fails now: the volume stops, every unflushed write meets its
    /// fate, the volume reopens and must show one of the states in `history`.
    fn crash(&mut self, fate: u64, why: &str) -> Result<(), String> {
        self.crashes += 1;
        let pending = self.cut.inner.pending_writes();
        let vol = self.h.vol.take().expect("open");
        vol.crash();
        drop(vol);
        self.cut.disarm();
        self.cut.inner.crash(fates(fate));
        self.h.trace.push(format!(
            "{:>4} {why}: {pending} unflushed block writes, fate seed {fate} (mode {}); {} candidate states",
            self.h.step,
            fate % 5,
            self.history.len()
        ));
        self.h.open().map_err(|e| {
            self.h
                .fail(format!("reopening after the crash failed: {e}"))
        })?;
        let vol = self.h.vol();
        let next_ino = vol.committed().next_ino.0;
        let mut first_err = None;
        let mut found = None;
        for (i, cand) in self.history.iter().enumerate().rev() {
            let mut c = cand.clone();
            c.forget_open();
            let r = check_live(vol, &c).and_then(|()| {
                if c.fs.next_ino == next_ino {
                    Ok(())
                } else {
                    Err(format!(
                        "next inode {next_ino}, model says {}",
                        c.fs.next_ino
                    ))
                }
            });
            match r {
                Ok(()) => {
                    found = Some((i, c));
                    break;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        let Some((i, model)) = found else {
            let mut oldest = self.history[0].clone();
            oldest.forget_open();
            let vs_oldest = check_live(vol, &oldest).err().unwrap_or_default();
            return Err(self.h.fail(format!(
                "step {}: after the crash the volume matches none of the {} states since the last durable point\n  vs newest: {}\n  vs oldest (durable): {vs_oldest}",
                self.h.step,
                self.history.len(),
                first_err.unwrap_or_default()
            )));
        };
        self.h.trace.push(format!(
            "       recovered state {} of {} (0 = last durable point)",
            i,
            self.history.len() - 1
        ));
        self.h.model = model;
        self.history = vec![self.h.model.clone()];
        self.h.check_snapshots()?;
        check_space(self.h.vol()).map_err(|e| self.h.fail(format!("after the crash: {e}")))?;
        Ok(())
    }
}

fn run_case(ops: &[Op], final_fate: u64, dirty_limit: u64) -> Result<(), String> {
    let mut r = CrashRun::new(Setup {
        dirty_limit,
        ..Setup::default()
    })?;
    for op in ops {
        r.op(op)?;
        r.h.check()?;
    }
    // A last crash, then the volume must keep working.
    r.crash(final_fate, "final crash")?;
    r.h.run(&Act::Create {
        parent: ROOT_INO,
        name: b"after-crash".to_vec(),
        kind: FileKind::Regular,
        perm: 0o600,
        uid: 0,
        gid: 0,
        rdev: 0,
    })?;
    r.h.finish()?;
    if std::env::var("TWINFS_TRACE").is_ok() {
        eprintln!("{}", r.h.trace.join("\n"));
    }
    Ok(())
}

#[test]
fn crashes_recover_a_prefix_of_the_operations() {
    run_seeded(
        "crashes_recover_a_prefix_of_the_operations",
        (
            ops(Flavor::Crash, max_ops(120)),
            any::<u64>(),
            prop_oneof![
                3 => Just(twinfs_fs::volume::DEFAULT_DIRTY_LIMIT),
                1 => Just(1u64 << 20),
            ],
        ),
        cases(20),
        |(ops, fate, dirty_limit)| run_case(ops, *fate, *dirty_limit),
    );
}

/// Builds a state with `ops` (no crashes), then cuts the power at every
/// I/O of the next checkpoint in turn, each time with several fates.
fn cut_every_io_of_a_checkpoint(ops: &[Op], fate: u64) -> Result<(), String> {
    let build = || -> Result<CrashRun, String> {
        let mut r = CrashRun::new(Setup::default())?;
        for op in ops {
            r.op(op)?;
        }
        Ok(r)
    };
    // How many I/Os does the checkpoint take?
    let mut dry = build()?;
    let before = dry.cut.ios();
    dry.h.run(&Act::Checkpoint)?;
    let total = dry.cut.ios() - before;
    for n in 0..=total {
        let mut r = build()?;
        let f = fate.wrapping_add(n);
        r.cut_during(n, f, CutWhat::Checkpoint)
            .map_err(|e| format!("cut after {n} of {total} I/Os of the CP: {e}"))?;
        r.h.check()?;
        // And the volume goes on.
        r.h.run(&Act::Checkpoint)?;
        r.h.run(&Act::Reopen)?;
        r.h.check()?;
    }
    Ok(())
}

#[test]
fn a_checkpoint_cut_at_any_io_leaves_the_previous_cp_and_the_log() {
    run_seeded(
        "a_checkpoint_cut_at_any_io_leaves_the_previous_cp_and_the_log",
        (ops(Flavor::Twins, max_ops(40)), any::<u64>()),
        cases(3),
        |(ops, fate)| cut_every_io_of_a_checkpoint(ops, *fate),
    );
}
