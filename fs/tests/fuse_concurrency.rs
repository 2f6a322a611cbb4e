//! Many clients at once through a real FUSE mount.

mod fuse_common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use fuse_common::*;
use twinfs_fs::nvlog::batch::SealedBatch;
use twinfs_fs::volume::Replicator;
use twinfs_fs::TransferId;

const WRITERS: usize = 4;
const FILE_BYTES: usize = 6 << 20;

#[test]
fn writers_readers_fsync_and_checkpoints_at_once_lose_nothing() {
    let mut m = Mounted::new(&[]);
    let shared = pattern(4 << 20, 99);
    fs::write(m.path("shared"), &shared).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut background = Vec::new();
    // Readers of one file.
    for r in 0..2 {
        let (p, want, stop) = (m.path("shared"), shared.clone(), stop.clone());
        background.push(thread::spawn(move || {
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) || rounds == 0 {
                let f = File::open(&p).unwrap();
                let mut buf = vec![0u8; 300_000];
                let mut off = (r * 77_777) % want.len();
                for _ in 0..10 {
                    let n = f.read_at(&mut buf, off as u64).unwrap();
                    assert_eq!(buf[..n], want[off..off + n], "shared file at {off}");
                    off = (off + n) % want.len();
                }
                rounds += 1;
            }
            rounds
        }));
    }
    // An fsync loop on a file of its own.
    {
        let (p, stop) = (m.path("journal"), stop.clone());
        background.push(thread::spawn(move || {
            let mut f = File::create(&p).unwrap();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) || n == 0 {
                f.write_all(format!("entry {n}\n").as_bytes()).unwrap();
                f.sync_data().unwrap();
                n += 1;
            }
            n
        }));
    }
    // Checkpoints.
    {
        let (vol, stop) = (m.volume.clone(), stop.clone());
        background.push(thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) || n == 0 {
                vol.checkpoint().unwrap();
                n += 1;
                thread::sleep(Duration::from_millis(20));
            }
            n
        }));
    }
    // Writers: sequential chunks of varying sizes, then overwrites in place.
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let p = m.path(&format!("w{w}"));
            thread::spawn(move || {
                let want = pattern(FILE_BYTES, w as u32);
                let mut f = File::create(&p).unwrap();
                let mut off = 0;
                let mut step = 1000 + w * 4093;
                while off < want.len() {
                    let end = (off + step).min(want.len());
                    f.write_all(&want[off..end]).unwrap();
                    off = end;
                    step = step * 7 % 300_001 + 1;
                }
                let mut want = want;
                for k in 0..50usize {
                    let at = k * 123_457 % (FILE_BYTES - 5000);
                    let patch = pattern(4999, (w * 1000 + k) as u32);
                    f.write_all_at(&patch, at as u64).unwrap();
                    want[at..at + patch.len()].copy_from_slice(&patch);
                }
                want
            })
        })
        .collect();
    let wanted: Vec<Vec<u8>> = writers.into_iter().map(|t| t.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    let counts: Vec<usize> = background.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
    let check_all = |m: &Mounted| {
        for (w, want) in wanted.iter().enumerate() {
            assert!(
                fs::read(m.path(&format!("w{w}"))).unwrap() == *want,
                "file w{w}"
            );
        }
        assert_eq!(fs::read(m.path("shared")).unwrap(), shared);
        let journal = fs::read_to_string(m.path("journal")).unwrap();
        assert_eq!(journal.lines().count(), counts[2]);
    };
    check_all(&m);
    m.remount();
    check_all(&m);
}

/// A peer that takes its time to confirm.
struct SlowPeer {
    delay: Duration,
}

impl Replicator for SlowPeer {
    fn batch_logged(&self, _batch: &SealedBatch) {}
    fn wait_for_peer(&self, _id: TransferId) -> twinfs_fs::Result<()> {
        thread::sleep(self.delay);
        Ok(())
    }
}

#[test]
fn slow_fsyncs_do_not_hold_up_other_requests() {
    let m = Mounted::new(&[]);
    let delay = Duration::from_millis(1500);
    m.volume.set_replicator(Some(Arc::new(SlowPeer { delay })));
    fs::write(m.path("other"), b"still served").unwrap();
    // More fsyncs in flight than there are FUSE threads.
    let n = twinfs_fs::fuse::DEFAULT_THREADS + 4;
    let start = Arc::new(Barrier::new(n + 1));
    let done = Arc::new(AtomicUsize::new(0));
    let syncers: Vec<_> = (0..n)
        .map(|i| {
            let (p, start, done) = (m.path(&format!("s{i}")), start.clone(), done.clone());
            thread::spawn(move || {
                let mut f = OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .open(p)
                    .unwrap();
                f.write_all(b"x").unwrap();
                start.wait();
                f.sync_all().unwrap();
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    start.wait();
    thread::sleep(Duration::from_millis(200));
    // While the fsyncs wait for the peer, everything else is answered at once.
    for i in 0..20 {
        let t = Instant::now();
        assert_eq!(fs::read(m.path("other")).unwrap(), b"still served");
        fs::write(m.path(&format!("meanwhile{i}")), b"y").unwrap();
        fs::metadata(m.path(&format!("meanwhile{i}"))).unwrap();
        assert!(
            t.elapsed() < delay / 2,
            "a request waited {:?}",
            t.elapsed()
        );
    }
    assert!(
        done.load(Ordering::SeqCst) < n,
        "the fsyncs were still waiting"
    );
    for s in syncers {
        s.join().unwrap();
    }
    m.volume.set_replicator(None);
}
