//! Concurrency through a real mount of the binary: writer threads each
//! rewrite, extend and truncate their own file and create, rename and
//! delete small files, reader threads read one shared file, another thread
//! fsyncs everyone's files, and `twinfs checkpoint` runs in a loop. Every
//! read during the run, and every file at the end (also after unmount,
//! fsck and remount), holds exactly what an in-memory model says.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::*;

const WRITERS: u64 = 4;
const READERS: u64 = 3;
const OPS_PER_WRITER: u64 = 2500;
const SHARED_BYTES: usize = 8 << 20;
/// Largest a writer's own file grows.
const MAX_FILE: u64 = 6 << 20;

/// A small xorshift generator, so each thread's run is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What one writer's directory must hold.
#[derive(Default)]
struct Model {
    data: Vec<u8>,
    small: BTreeMap<String, Vec<u8>>,
}

fn writer(dir: PathBuf, w: u64) -> Result<Model, String> {
    let mut rng = Rng(0x9e37_79b9 ^ ((w + 1) * 0x1000_0001));
    let mut m = Model::default();
    let data_path = dir.join("data");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&data_path)
        .map_err(|e| format!("w{w}: create data: {e}"))?;
    let err = |op: u64, what: &str, e: std::io::Error| format!("w{w} op {op}: {what}: {e}");
    for op in 0..OPS_PER_WRITER {
        match rng.below(10) {
            0..=4 => {
                // Write somewhere in or just past the file.
                let len = 1 + rng.below(256 << 10);
                let off = rng.below((m.data.len() as u64 + 8192).min(MAX_FILE - len));
                let bytes = pattern(rng.next(), len as usize);
                f.write_all_at(&bytes, off)
                    .map_err(|e| err(op, "pwrite", e))?;
                let end = (off + len) as usize;
                if m.data.len() < end {
                    m.data.resize(end, 0);
                }
                m.data[off as usize..end].copy_from_slice(&bytes);
            }
            5 => {
                let len = rng.below(m.data.len() as u64 + 100_000).min(MAX_FILE);
                f.set_len(len).map_err(|e| err(op, "truncate", e))?;
                m.data.resize(len as usize, 0);
            }
            6 => {
                // Read back a range and compare with the model.
                let off = rng.below(m.data.len() as u64 + 1);
                let len = rng.below(512 << 10) as usize;
                let mut buf = vec![0u8; len];
                let n = read_at_most(&f, &mut buf, off).map_err(|e| err(op, "pread", e))?;
                let want_end = (off as usize + len).min(m.data.len());
                let want = &m.data[(off as usize).min(want_end)..want_end];
                if let Some(at) = first_difference(&buf[..n], want) {
                    return Err(format!(
                        "w{w} op {op}: read of data at {off}+{len} differs from what was written at {} (got {n} bytes, want {})",
                        off + at as u64,
                        want.len()
                    ));
                }
            }
            7 => {
                let name = format!("s{op:04}");
                let bytes = pattern(rng.next(), rng.below(40_000) as usize);
                std::fs::write(dir.join(&name), &bytes).map_err(|e| err(op, "create small", e))?;
                m.small.insert(name, bytes);
            }
            8 => {
                if let Some(name) = m
                    .small
                    .keys()
                    .nth(rng.below(m.small.len() as u64) as usize)
                    .cloned()
                {
                    let to = format!("r{op:04}");
                    std::fs::rename(dir.join(&name), dir.join(&to))
                        .map_err(|e| err(op, "rename", e))?;
                    let v = m.small.remove(&name).expect("in model");
                    m.small.insert(to, v);
                }
            }
            _ => {
                if m.small.len() > 5 {
                    let name = m.small.keys().next().cloned().expect("non-empty");
                    std::fs::remove_file(dir.join(&name)).map_err(|e| err(op, "unlink", e))?;
                    m.small.remove(&name);
                }
            }
        }
    }
    Ok(m)
}

fn read_at_most(f: &std::fs::File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], off + got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

fn reader(path: PathBuf, r: u64, stop: Arc<AtomicBool>) -> Result<u64, String> {
    let want = pattern(42, SHARED_BYTES);
    let f = std::fs::File::open(&path).map_err(|e| format!("reader {r}: open: {e}"))?;
    let mut rng = Rng(0xabcdef ^ ((r + 1) * 0x51));
    let mut reads = 0;
    while !stop.load(Ordering::SeqCst) {
        let off = rng.below(SHARED_BYTES as u64);
        let len = 1 + rng.below(1 << 20) as usize;
        let mut buf = vec![0u8; len];
        let n = read_at_most(&f, &mut buf, off).map_err(|e| format!("reader {r}: pread: {e}"))?;
        let end = (off as usize + len).min(SHARED_BYTES);
        if let Some(at) = first_difference(&buf[..n], &want[off as usize..end]) {
            return Err(format!(
                "reader {r}: shared file at {} differs (read {off}+{len})",
                off as usize + at
            ));
        }
        reads += 1;
    }
    Ok(reads)
}

fn fsyncer(paths: Vec<PathBuf>, stop: Arc<AtomicBool>) -> Result<u64, String> {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        for p in &paths {
            let f = std::fs::File::open(p)
                .map_err(|e| format!("fsyncer: open {}: {e}", p.display()))?;
            f.sync_all()
                .map_err(|e| format!("fsyncer: fsync {}: {e}", p.display()))?;
            n += 1;
        }
    }
    Ok(n)
}

fn checkpointer(mp: PathBuf, stop: Arc<AtomicBool>) -> Result<Vec<u64>, String> {
    let mut cps = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let out = output(Command::new(twinfs()).arg("checkpoint").arg(&mp));
        if !out.status.success() {
            return Err(describe("twinfs checkpoint", &out));
        }
        cps.push(status_json(&mp)["cp"].as_u64().expect("cp"));
    }
    Ok(cps)
}

fn verify(mp: &Path, models: &[Model], when: &str) {
    assert_bytes(
        &format!("shared file, {when}"),
        &std::fs::read(mp.join("shared")).expect("read shared"),
        &pattern(42, SHARED_BYTES),
    );
    for (w, m) in models.iter().enumerate() {
        let dir = mp.join(format!("w{w}"));
        assert_bytes(
            &format!("w{w}/data, {when}"),
            &std::fs::read(dir.join("data")).expect("read data"),
            &m.data,
        );
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .filter(|n| n != "data")
            .collect();
        names.sort();
        let want: Vec<&String> = m.small.keys().collect();
        assert_eq!(
            names.iter().collect::<Vec<_>>(),
            want,
            "w{w}: small files, {when}"
        );
        for (name, bytes) in &m.small {
            assert_bytes(
                &format!("w{w}/{name}, {when}"),
                &std::fs::read(dir.join(name)).expect("read small"),
                bytes,
            );
        }
    }
}

#[test]
fn writers_readers_fsync_and_checkpoints_at_once_keep_every_byte() {
    let dir = scratch("concurrency");
    let image = dir.path().join("vol.img");
    mkfs(&image, "4G");
    let mp = dir.path().join("mnt");
    let mount = Mount::new(&image, &mp, &[]);
    std::fs::write(mount.path("shared"), pattern(42, SHARED_BYTES)).expect("write shared");
    let cp_start = mount.checkpoint();
    for w in 0..WRITERS {
        std::fs::create_dir(mount.path(format!("w{w}"))).expect("mkdir");
        std::fs::write(mount.path(format!("w{w}/data")), b"").expect("create");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let d = mount.path(format!("w{w}"));
            std::thread::spawn(move || writer(d, w))
        })
        .collect();
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (p, s) = (mount.path("shared"), stop.clone());
            std::thread::spawn(move || reader(p, r, s))
        })
        .collect();
    let mut paths: Vec<PathBuf> = (0..WRITERS)
        .map(|w| mount.path(format!("w{w}/data")))
        .collect();
    paths.push(mount.path("shared"));
    let fs_stop = stop.clone();
    let fsync_thread = std::thread::spawn(move || fsyncer(paths, fs_stop));
    let (cp_mp, cp_stop) = (mount.mp.clone(), stop.clone());
    let cp_thread = std::thread::spawn(move || checkpointer(cp_mp, cp_stop));

    let models: Vec<Model> = writers
        .into_iter()
        .map(|t| {
            t.join()
                .expect("writer panicked")
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    stop.store(true, Ordering::SeqCst);
    let reads: u64 = readers
        .into_iter()
        .map(|t| {
            t.join()
                .expect("reader panicked")
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .sum();
    let fsyncs = fsync_thread
        .join()
        .expect("fsyncer panicked")
        .unwrap_or_else(|e| panic!("{e}"));
    let cps = cp_thread
        .join()
        .expect("checkpointer panicked")
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "{:?}: {} writer ops, {reads} shared reads, {fsyncs} fsyncs, {} checkpoints (CP {cp_start} to {:?})",
        started.elapsed(),
        WRITERS * OPS_PER_WRITER,
        cps.len(),
        cps.last()
    );
    assert!(
        cps.len() >= 2 && fsyncs >= 2 && reads >= 2,
        "the concurrent threads hardly ran"
    );
    assert!(
        cps.windows(2).all(|w| w[0] <= w[1]) && cps[0] > cp_start,
        "CP numbers must only grow: {cp_start} then {cps:?}"
    );
    verify(&mount.mp, &models, "at the end of the run");
    mount.unmount();
    assert_fsck_clean(&image, "after the concurrent run");
    let mount = Mount::new(&image, &mp, &[]);
    verify(&mount.mp, &models, "after unmount and remount");
    mount.unmount();
}
