//! Block reads for fsck: straight from the device (never through the block
//! cache, whose entries were verified once and are trusted afterwards), in
//! runs of adjacent addresses, every block hashed and compared with the
//! pointer that names it.
//!
//! Metadata is read synchronously (its contents tell where to go next).
//! Data blocks only need their hash checked, so they are queued, read in
//! long runs by the walking thread and hashed by worker threads meanwhile.

use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use super::Role;
use crate::device::BlockDevice;
use crate::types::*;

/// Longest single device read, in blocks (4 MiB).
const MAX_RUN_BLOCKS: usize = 1024;
/// Data blocks queued before they are sorted into runs and read (16 MiB).
const QUEUE_BLOCKS: usize = 4096;
/// Hash jobs waiting for a worker; bounds the memory in flight.
const JOBS_IN_FLIGHT: usize = 8;
/// Most hashing threads.
const MAX_WORKERS: usize = 8;

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
    /// Blocks read and hashed so far (including queued data blocks).
    pub(super) verified: u64,
}

/// Groups `order` (indices into `addrs`, sorted by address) into runs of
/// adjacent addresses, each at most `MAX_RUN_BLOCKS` long.
fn runs(addrs: &[u64], order: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for k in 1..=order.len() {
        let ends = k == order.len()
            || addrs[order[k]] != addrs[order[k - 1]] + 1
            || k - start >= MAX_RUN_BLOCKS;
        if ends {
            out.push(start..k);
            start = k;
        }
    }
    out
}

impl<'a> Disk<'a> {
    pub(super) fn new(dev: &'a dyn BlockDevice) -> Disk<'a> {
        Disk { dev, verified: 0 }
    }

    /// Reads `n` blocks from `start`. A failed long read is retried block by
    /// block so that one bad sector does not condemn its neighbours.
    fn read_run(&mut self, start: u64, n: usize) -> Vec<Result<Vec<u8>, Fault>> {
        self.verified += n as u64;
        let mut buf = vec![0u8; n * BLOCK_SIZE];
        match self.dev.read(BlockAddr(start), &mut buf) {
            Ok(()) => buf.chunks(BLOCK_SIZE).map(|c| Ok(c.to_vec())).collect(),
            Err(_) if n > 1 => (0..n as u64)
                .map(|i| {
                    let mut one = vec![0u8; BLOCK_SIZE];
                    self.dev
                        .read(BlockAddr(start + i), &mut one)
                        .map(|()| one)
                        .map_err(|e| Fault::Io(e.to_string()))
                })
                .collect(),
            Err(e) => vec![Err(Fault::Io(e.to_string()))],
        }
    }

    /// Reads and verifies the blocks `ptrs` point at, coalescing adjacent
    /// addresses into single reads. The caller has checked that every
    /// address lies inside the device.
    pub(super) fn read_many(&mut self, ptrs: &[BlockPtr]) -> Vec<Result<Box<Block>, Fault>> {
        let addrs: Vec<u64> = ptrs.iter().map(|p| p.addr.0).collect();
        let mut order: Vec<usize> = (0..ptrs.len()).collect();
        order.sort_by_key(|&i| addrs[i]);
        let mut out: Vec<Option<Result<Box<Block>, Fault>>> = vec![None; ptrs.len()];
        for run in runs(&addrs, &order) {
            let idx = &order[run];
            let blocks = self.read_run(addrs[idx[0]], idx.len());
            for (&i, got) in idx.iter().zip(blocks) {
                out[i] = Some(got.and_then(|bytes| {
                    let found = Hash128::of(&bytes);
                    if found != ptrs[i].hash {
                        return Err(Fault::Checksum { found });
                    }
                    let block: Box<Block> = bytes
                        .into_boxed_slice()
                        .try_into()
                        .map_err(|_| Fault::Io("short read".into()))?;
                    Ok(block)
                }));
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Fault::Io("not read".into()))))
            .collect()
    }
}

/// A data block waiting to be verified.
pub(super) struct Queued {
    pub(super) ptr: BlockPtr,
    pub(super) role: Role,
    /// Index of the image it belongs to (see `Checker::images`).
    pub(super) image: usize,
}

/// Blocks of one run and what they must hash to.
struct Job {
    bytes: Vec<u8>,
    blocks: Vec<Queued>,
}

/// Data blocks verified in the background.
pub(super) struct DataQueue {
    pending: Vec<Queued>,
    jobs: Option<Sender<Job>>,
    results: Receiver<Vec<(Queued, Fault)>>,
    workers: Vec<JoinHandle<()>>,
    sent: usize,
    received: usize,
    faults: Vec<(Queued, Fault)>,
}

fn hash_worker(jobs: Receiver<Job>, results: Sender<Vec<(Queued, Fault)>>) {
    for job in jobs {
        let mut bad = Vec::new();
        for (q, bytes) in job.blocks.into_iter().zip(job.bytes.chunks(BLOCK_SIZE)) {
            let found = Hash128::of(bytes);
            if found != q.ptr.hash {
                bad.push((q, Fault::Checksum { found }));
            }
        }
        if results.send(bad).is_err() {
            return;
        }
    }
}

impl DataQueue {
    pub(super) fn new() -> DataQueue {
        let n = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_WORKERS);
        let (jobs_tx, jobs_rx) = bounded::<Job>(JOBS_IN_FLIGHT);
        let (res_tx, res_rx) = unbounded();
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let (jobs, results) = (jobs_rx.clone(), res_tx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("fsck-hash-{i}"))
                .spawn(move || hash_worker(jobs, results));
            // Without workers, `send` below hashes on the walking thread.
            if let Ok(h) = spawned {
                workers.push(h);
            }
        }
        DataQueue {
            pending: Vec::with_capacity(QUEUE_BLOCKS),
            jobs: (!workers.is_empty()).then_some(jobs_tx),
            results: res_rx,
            workers,
            sent: 0,
            received: 0,
            faults: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, disk: &mut Disk<'_>, q: Queued) {
        self.pending.push(q);
        if self.pending.len() >= QUEUE_BLOCKS {
            self.flush(disk);
        }
    }

    /// Reads everything queued, in runs, and hands the runs to the workers.
    pub(super) fn flush(&mut self, disk: &mut Disk<'_>) {
        let mut pending = std::mem::take(&mut self.pending);
        pending.sort_by_key(|q| q.ptr.addr.0);
        let addrs: Vec<u64> = pending.iter().map(|q| q.ptr.addr.0).collect();
        let order: Vec<usize> = (0..pending.len()).collect();
        let spans = runs(&addrs, &order);
        let mut queued = pending.into_iter();
        for span in spans {
            let blocks: Vec<Queued> = queued.by_ref().take(span.len()).collect();
            let got = disk.read_run(addrs[span.start], span.len());
            let mut bytes = Vec::with_capacity(span.len() * BLOCK_SIZE);
            let mut ok = Vec::with_capacity(span.len());
            for (q, r) in blocks.into_iter().zip(got) {
                match r {
                    Ok(b) => {
                        bytes.extend_from_slice(&b);
                        ok.push(q);
                    }
                    Err(f) => self.faults.push((q, f)),
                }
            }
            self.send(Job { bytes, blocks: ok });
        }
        self.collect(false);
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
        // No worker to take it: hash here.
        let (tx, rx) = unbounded();
        let (jtx, jrx) = unbounded();
        let _ = jtx.send(job);
        drop(jtx);
        hash_worker(jrx, tx);
        for bad in rx.try_iter() {
            self.faults.extend(bad);
        }
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

impl Drop for DataQueue {
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
    fn runs_split_at_gaps_and_at_the_length_limit() {
        let addrs: Vec<u64> = (0..MAX_RUN_BLOCKS as u64 + 5).chain([5000, 5002]).collect();
        let order: Vec<usize> = (0..addrs.len()).collect();
        let lens: Vec<usize> = runs(&addrs, &order).iter().map(|r| r.len()).collect();
        assert_eq!(lens, vec![MAX_RUN_BLOCKS, 5, 1, 1]);
        assert!(runs(&[], &[]).is_empty());
    }
}
