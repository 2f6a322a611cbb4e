//! Block reads for fsck: straight from the device (never through the block
//! cache, whose entries were verified once and are trusted afterwards), in
//! runs of adjacent addresses, every block hashed and compared with the
//! pointer that names it.
//!
//! Metadata is read synchronously (its contents tell where to go next),
//! scattered blocks from several threads at once. Data blocks only need
//! their hash checked, so they are queued, sorted into long runs, and read
//! and hashed by worker threads while the walk goes on.

use std::thread::{Scope, ScopedJoinHandle};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use super::Role;
use crate::device::BlockDevice;
use crate::types::*;

/// Longest single device read, in blocks (4 MiB).
const MAX_RUN_BLOCKS: usize = 1024;
/// Unwanted blocks a read may span to join two runs (file trees interleave
/// an indirect block with every 128 data blocks).
const MAX_GAP_BLOCKS: u64 = 8;
/// Data blocks queued before they are sorted into runs and read (16 MiB).
const QUEUE_BLOCKS: usize = 4096;
/// Runs waiting for a worker.
const JOBS_IN_FLIGHT: usize = 16;
/// Threads reading and hashing data blocks: at least a few, so that reads
/// overlap even on one core (they wait for the disk more than they compute).
const MIN_WORKERS: usize = 3;
const MAX_WORKERS: usize = 8;
/// A metadata fetch of this many separate runs is spread over threads.
const PARALLEL_RUNS: usize = 8;
const READ_THREADS: usize = 4;

/// Why a block could not be verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Fault {
    /// The device returned an error.
    Io(String),
    /// The block's hash is not the pointer's.
    Checksum { found: Hash128 },
}

impl Fault {
    pub(super) fn describe(&self, ptr: &BlockPtr) -> String {
        match self {
            Fault::Io(e) => format!("cannot be read: {e}"),
            Fault::Checksum { found } => format!(
                "checksum mismatch: its pointer (born in CP {}) says {:?}, the block hashes to {found:?}",
                ptr.birth, ptr.hash
            ),
        }
    }
}

/// Synchronous verified reads.
pub(super) struct Disk<'a> {
    dev: &'a dyn BlockDevice,
    /// Blocks read to be verified so far (data blocks count when read, before their hash is checked).
    pub(super) verified: u64,
}

/// One device read: `blocks` blocks from `start`, covering the members
/// `members` of an address-sorted list (a few blocks between members may be
/// read and skipped: one long read beats several short ones).
struct Run {
    start: u64,
    blocks: usize,
    members: std::ops::Range<usize>,
}

/// Groups address-sorted `addrs` into runs of at most `MAX_RUN_BLOCKS`,
/// bridging gaps of up to `MAX_GAP_BLOCKS`.
fn runs(addrs: &[u64]) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for (k, &a) in addrs.iter().enumerate() {
        if let Some(r) = out.last_mut() {
            let end = r.start + r.blocks as u64;
            if a < end {
                r.members.end = k + 1;
                continue;
            }
            if a - end <= MAX_GAP_BLOCKS && a + 1 - r.start <= MAX_RUN_BLOCKS as u64 {
                r.blocks = (a + 1 - r.start) as usize;
                r.members.end = k + 1;
                continue;
            }
        }
        out.push(Run {
            start: a,
            blocks: 1,
            members: k..k + 1,
        });
    }
    out
}

/// Reads `buf.len() / BLOCK_SIZE` blocks from `start` into `buf`. A failed
/// long read is retried block by block so that one bad sector does not
/// condemn its neighbours; returns the blocks (offsets in the run) that failed.
fn read_run(dev: &dyn BlockDevice, start: u64, buf: &mut [u8]) -> Vec<(usize, Fault)> {
    let n = buf.len() / BLOCK_SIZE;
    match dev.read(BlockAddr(start), buf) {
        Ok(()) => Vec::new(),
        Err(e) if n == 1 => vec![(0, Fault::Io(e.to_string()))],
        Err(_) => buf
            .chunks_mut(BLOCK_SIZE)
            .enumerate()
            .filter_map(|(i, one)| {
                dev.read(BlockAddr(start + i as u64), one)
                    .err()
                    .map(|e| (i, Fault::Io(e.to_string())))
            })
            .collect(),
    }
}

/// Reads the runs `runs` of the address-sorted `addrs` and verifies each
/// member against `ptrs[order[k]]`; returns (pointer index, result) pairs.
fn read_runs(
    dev: &dyn BlockDevice,
    runs: &[Run],
    addrs: &[u64],
    order: &[usize],
    ptrs: &[BlockPtr],
) -> Vec<(usize, Result<Box<Block>, Fault>)> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for run in runs {
        buf.resize(run.blocks * BLOCK_SIZE, 0);
        let failed = read_run(dev, run.start, &mut buf);
        for k in run.members.clone() {
            let i = order[k];
            let at = (addrs[k] - run.start) as usize;
            if let Some((_, f)) = failed.iter().find(|(j, _)| *j == at) {
                out.push((i, Err(f.clone())));
                continue;
            }
            let bytes = &buf[at * BLOCK_SIZE..(at + 1) * BLOCK_SIZE];
            let found = Hash128::of(bytes);
            out.push((
                i,
                if found != ptrs[i].hash {
                    Err(Fault::Checksum { found })
                } else {
                    let mut block = new_block();
                    block.copy_from_slice(bytes);
                    Ok(block)
                },
            ));
        }
    }
    out
}

impl<'a> Disk<'a> {
    pub(super) fn new(dev: &'a dyn BlockDevice) -> Disk<'a> {
        Disk { dev, verified: 0 }
    }

    /// Reads and verifies the blocks `ptrs` point at, coalescing adjacent
    /// addresses into single reads, and issuing scattered ones from several
    /// threads (their latencies overlap). The caller has checked that every
    /// address lies inside the device.
    pub(super) fn read_many(&mut self, ptrs: &[BlockPtr]) -> Vec<Result<Box<Block>, Fault>> {
        let mut order: Vec<usize> = (0..ptrs.len()).collect();
        order.sort_by_key(|&i| ptrs[i].addr.0);
        let addrs: Vec<u64> = order.iter().map(|&i| ptrs[i].addr.0).collect();
        let runs = runs(&addrs);
        self.verified += ptrs.len() as u64;
        let dev = self.dev;
        let results = if runs.len() < PARALLEL_RUNS {
            read_runs(dev, &runs, &addrs, &order, ptrs)
        } else {
            let per = runs.len().div_ceil(READ_THREADS);
            std::thread::scope(|s| {
                let handles: Vec<_> = runs
                    .chunks(per)
                    .map(|part| {
                        let (addrs, order) = (&addrs, &order);
                        std::thread::Builder::new()
                            .name("fsck-read".into())
                            .spawn_scoped(s, move || read_runs(dev, part, addrs, order, ptrs))
                    })
                    .collect();
                let mut out = Vec::with_capacity(ptrs.len());
                for (h, part) in handles.into_iter().zip(runs.chunks(per)) {
                    match h.map_err(|_| ()).and_then(|h| h.join().map_err(|_| ())) {
                        Ok(got) => out.extend(got),
                        // No thread: read this part here.
                        Err(()) => out.extend(read_runs(dev, part, &addrs, &order, ptrs)),
                    }
                }
                out
            })
        };
        let mut out: Vec<Result<Box<Block>, Fault>> =
            vec![Err(Fault::Io("not read".into())); ptrs.len()];
        for (i, r) in results {
            out[i] = r;
        }
        out
    }
}

/// A data block waiting to be verified.
pub(super) struct Queued {
    pub(super) ptr: BlockPtr,
    pub(super) role: Role,
    /// Index of the image it belongs to (see `Checker::images`).
    pub(super) image: usize,
}

/// One read for a worker: `blocks` blocks from `start`, and each wanted
/// block with its offset (in blocks) in the run.
struct Job {
    start: u64,
    blocks: usize,
    members: Vec<(Queued, usize)>,
}

/// Reads and verifies one run.
fn do_job(dev: &dyn BlockDevice, job: Job, buf: &mut Vec<u8>) -> Vec<(Queued, Fault)> {
    buf.resize(job.blocks * BLOCK_SIZE, 0);
    let failed = read_run(dev, job.start, &mut buf[..]);
    let mut bad = Vec::new();
    for (q, at) in job.members {
        if let Some((_, f)) = failed.iter().find(|(j, _)| *j == at) {
            bad.push((q, f.clone()));
            continue;
        }
        let found = Hash128::of(&buf[at * BLOCK_SIZE..(at + 1) * BLOCK_SIZE]);
        if found != q.ptr.hash {
            bad.push((q, Fault::Checksum { found }));
        }
    }
    bad
}

fn worker(dev: &dyn BlockDevice, jobs: Receiver<Job>, results: Sender<Vec<(Queued, Fault)>>) {
    let mut buf = Vec::with_capacity(MAX_RUN_BLOCKS * BLOCK_SIZE);
    for job in jobs {
        if results.send(do_job(dev, job, &mut buf)).is_err() {
            return;
        }
    }
}

/// Data blocks verified in the background: the walking thread queues them,
/// sorts them into runs, and worker threads read and hash the runs.
pub(super) struct DataQueue<'scope, 'env> {
    dev: &'env dyn BlockDevice,
    pending: Vec<Queued>,
    jobs: Option<Sender<Job>>,
    results: Receiver<Vec<(Queued, Fault)>>,
    workers: Vec<ScopedJoinHandle<'scope, ()>>,
    sent: usize,
    received: usize,
    faults: Vec<(Queued, Fault)>,
    /// For jobs done on the walking thread when no worker could start.
    buf: Vec<u8>,
}

impl<'scope, 'env> DataQueue<'scope, 'env> {
    /// Starts the workers in `scope`; they end when the queue is dropped.
    pub(super) fn new(scope: &'scope Scope<'scope, 'env>, dev: &'env dyn BlockDevice) -> Self {
        let n = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(MIN_WORKERS, MAX_WORKERS);
        let (jobs_tx, jobs_rx) = bounded::<Job>(JOBS_IN_FLIGHT);
        let (res_tx, res_rx) = unbounded();
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let (jobs, results) = (jobs_rx.clone(), res_tx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("fsck-verify-{i}"))
                .spawn_scoped(scope, move || worker(dev, jobs, results));
            // Without workers, `send` below does the job on the walking thread.
            if let Ok(h) = spawned {
                workers.push(h);
            }
        }
        DataQueue {
            dev,
            pending: Vec::with_capacity(QUEUE_BLOCKS),
            jobs: (!workers.is_empty()).then_some(jobs_tx),
            results: res_rx,
            workers,
            sent: 0,
            received: 0,
            faults: Vec::new(),
            buf: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, disk: &mut Disk<'_>, q: Queued) {
        self.pending.push(q);
        if self.pending.len() >= QUEUE_BLOCKS {
            self.flush(disk);
        }
    }

    /// Sorts everything queued into runs and hands them to the workers.
    pub(super) fn flush(&mut self, disk: &mut Disk<'_>) {
        let mut pending = std::mem::take(&mut self.pending);
        pending.sort_by_key(|q| q.ptr.addr.0);
        disk.verified += pending.len() as u64;
        let addrs: Vec<u64> = pending.iter().map(|q| q.ptr.addr.0).collect();
        let mut queued = pending.into_iter();
        for run in runs(&addrs) {
            let members = run
                .members
                .clone()
                .zip(queued.by_ref())
                .map(|(k, q)| (q, (addrs[k] - run.start) as usize))
                .collect();
            self.send(Job {
                start: run.start,
                blocks: run.blocks,
                members,
            });
            self.collect(false);
        }
    }

    fn send(&mut self, job: Job) {
        let job = match &self.jobs {
            Some(tx) => match tx.send(job) {
                Ok(()) => {
                    self.sent += 1;
                    return;
                }
                Err(e) => e.into_inner(),
            },
            None => job,
        };
        let bad = do_job(self.dev, job, &mut self.buf);
        self.faults.extend(bad);
    }

    fn collect(&mut self, wait: bool) {
        while self.received < self.sent {
            let got = if wait {
                self.results.recv().ok()
            } else {
                self.results.try_recv().ok()
            };
            match got {
                Some(bad) => {
                    self.received += 1;
                    self.faults.extend(bad);
                }
                None => break,
            }
        }
    }

    /// Faults found so far (taken: each is returned once).
    pub(super) fn take_faults(&mut self) -> Vec<(Queued, Fault)> {
        std::mem::take(&mut self.faults)
    }

    /// Verifies everything still queued and waits for the workers.
    pub(super) fn finish(&mut self, disk: &mut Disk<'_>) -> Vec<(Queued, Fault)> {
        self.flush(disk);
        self.collect(true);
        self.take_faults()
    }
}

impl Drop for DataQueue<'_, '_> {
    fn drop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_bridge_small_gaps_and_stop_at_the_length_limit() {
        let mut addrs: Vec<u64> = (0..MAX_RUN_BLOCKS as u64 + 5).collect();
        addrs.extend([5000, 5000, 5003, 5004 + MAX_GAP_BLOCKS + 1, 9000]);
        let got: Vec<(u64, usize, usize)> = runs(&addrs)
            .iter()
            .map(|r| (r.start, r.blocks, r.members.len()))
            .collect();
        let n = MAX_RUN_BLOCKS;
        assert_eq!(
            got,
            vec![
                (0, n, n),
                (n as u64, 5, 5),
                (5000, 4, 3),
                (5004 + MAX_GAP_BLOCKS + 1, 1, 1),
                (9000, 1, 1)
            ]
        );
        assert!(runs(&[]).is_empty());
    }

    /// Fails every read that touches block `bad`.
    struct BadSector(crate::device::MemDevice, u64);

    impl BlockDevice for BadSector {
        fn num_blocks(&self) -> u64 {
            self.0.num_blocks()
        }
        fn read(&self, addr: BlockAddr, buf: &mut [u8]) -> std::io::Result<()> {
            let n = (buf.len() / BLOCK_SIZE) as u64;
            if (addr.0..addr.0 + n).contains(&self.1) {
                return Err(std::io::Error::other("bad sector"));
            }
            self.0.read(addr, buf)
        }
        fn write(&self, addr: BlockAddr, data: &[u8]) -> std::io::Result<()> {
            self.0.write(addr, data)
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_bad_sector_fails_only_its_block_and_a_bad_hash_is_named() {
        let dev = BadSector(crate::device::MemDevice::new(64), 12);
        let ptrs: Vec<BlockPtr> = (10..16u64)
            .map(|a| {
                let block = [a as u8; BLOCK_SIZE];
                dev.write(BlockAddr(a), &block).unwrap();
                BlockPtr {
                    addr: BlockAddr(a),
                    birth: CpNumber(1),
                    hash: Hash128::of(&block),
                }
            })
            .collect();
        let mut wrong = ptrs.clone();
        wrong[4].hash = Hash128([0; 16]);
        let got = Disk::new(&dev).read_many(&wrong);
        for (i, r) in got.iter().enumerate() {
            match i {
                2 => assert!(matches!(r, Err(Fault::Io(_)))),
                4 => assert!(matches!(r, Err(Fault::Checksum { .. }))),
                _ => assert_eq!(r.as_ref().unwrap()[0], 10 + i as u8),
            }
        }
        std::thread::scope(|s| {
            let mut q = DataQueue::new(s, &dev);
            let mut disk = Disk::new(&dev);
            for (i, p) in wrong.iter().enumerate() {
                let role = Role::Data {
                    ino: 5,
                    index: i as u64,
                };
                q.push(
                    &mut disk,
                    Queued {
                        ptr: *p,
                        role,
                        image: 1,
                    },
                );
            }
            let mut faults: Vec<(u64, bool)> = q
                .finish(&mut disk)
                .into_iter()
                .map(|(q, f)| (q.ptr.addr.0, matches!(f, Fault::Io(_))))
                .collect();
            faults.sort();
            assert_eq!(faults, vec![(12, true), (14, false)]);
        });
    }
}
