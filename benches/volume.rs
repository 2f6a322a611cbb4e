//! Benchmark of the volume alone (no FUSE, no peer), side by side with the
//! same work done with plain files in a directory on the same disk.
//!
//! Run: `cargo bench --bench volume` (env BENCH_DIR picks the disk, default
//! /var/tmp; BENCH_GIB sets the size of the sequential write, default 1).
//!
//! Reports MB/s, files/s, CP duration, the longest writer stall while CPs
//! run, and peak RSS, each as a ratio to the native figure where one exists.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use twinfs_fs::device::{BlockDevice, FileDevice};
use twinfs_fs::volume::{self, VolumeConfig};
use twinfs_fs::{FileKind, MkfsOptions, Volume, ROOT_INO};

const MIB: u64 = 1 << 20;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn drop_caches() {
    // Needs root; without it the read figures include the page cache.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

struct Row {
    name: String,
    native: f64,
    twinfs: f64,
    unit: &'static str,
}

fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn native_seq_write(dir: &Path, bytes: u64) -> f64 {
    let path = dir.join("native-seq");
    let chunk = payload(MIB as usize, 1);
    let start = Instant::now();
    let mut f = std::fs::File::create(&path).expect("create native file");
    for _ in 0..bytes / MIB {
        f.write_all(&chunk).expect("write");
    }
    f.sync_all().expect("fsync");
    let secs = start.elapsed().as_secs_f64();
    std::fs::remove_file(&path).ok();
    bytes as f64 / MIB as f64 / secs
}

fn native_small_files(dir: &Path, n: usize) -> f64 {
    let root = dir.join("native-small");
    std::fs::create_dir_all(&root).expect("mkdir");
    let start = Instant::now();
    for i in 0..n {
        let sub = root.join(format!("d{}", i / 500));
        if i % 500 == 0 {
            std::fs::create_dir(&sub).expect("mkdir");
        }
        let len = 1024 + (i * 7919) % 7168;
        std::fs::write(sub.join(format!("f{i}")), payload(len, i as u64)).expect("write");
    }
    // The volume's work is durable only at a CP; make native durable too.
    std::process::Command::new("sync").status().ok();
    let secs = start.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&root).ok();
    n as f64 / secs
}

fn open_volume(path: &Path, size: u64) -> Arc<Volume> {
    std::fs::remove_file(path).ok();
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::create(path, size).expect("create image"));
    volume::mkfs(dev.clone(), &MkfsOptions::default()).expect("mkfs");
    drop(dev);
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(path, true).expect("open image"));
    Arc::new(Volume::open(dev, VolumeConfig::default()).expect("open volume"))
}

/// Writes `bytes` in 1 MiB writes while recording the longest single write.
fn volume_seq_write(vol: &Volume, bytes: u64) -> (f64, Duration, Vec<Duration>) {
    let ino = vol
        .create(ROOT_INO, b"seq", FileKind::Regular, 0o644, 0, 0, 0)
        .expect("create")
        .ino;
    let chunk = payload(MIB as usize, 1);
    let mut lat = Vec::with_capacity((bytes / MIB) as usize);
    let start = Instant::now();
    for i in 0..bytes / MIB {
        let t = Instant::now();
        vol.write(ino, i * MIB, &chunk, false).expect("write");
        lat.push(t.elapsed());
    }
    vol.checkpoint().expect("checkpoint");
    let secs = start.elapsed().as_secs_f64();
    let longest = lat.iter().copied().max().unwrap_or_default();
    (bytes as f64 / MIB as f64 / secs, longest, lat)
}

fn volume_small_files(vol: &Volume, n: usize) -> f64 {
    let start = Instant::now();
    let top = vol
        .create(ROOT_INO, b"small", FileKind::Directory, 0o755, 0, 0, 0)
        .expect("mkdir")
        .ino;
    let mut dir = top;
    for i in 0..n {
        if i % 500 == 0 {
            dir = vol
                .create(
                    top,
                    format!("d{}", i / 500).as_bytes(),
                    FileKind::Directory,
                    0o755,
                    0,
                    0,
                    0,
                )
                .expect("mkdir")
                .ino;
        }
        let len = 1024 + (i * 7919) % 7168;
        let f = vol
            .create(
                dir,
                format!("f{i}").as_bytes(),
                FileKind::Regular,
                0o644,
                0,
                0,
                0,
            )
            .expect("create")
            .ino;
        vol.write(f, 0, &payload(len, i as u64), false)
            .expect("write");
    }
    vol.checkpoint().expect("checkpoint");
    n as f64 / start.elapsed().as_secs_f64()
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p) as usize]
}

fn main() {
    let dir = PathBuf::from(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
        .join("twinfs-bench");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let gib: u64 = std::env::var("BENCH_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let bytes = gib << 30;
    let files = 10_000;
    println!(
        "twinfs volume benchmark in {} ({} GiB sequential, {files} small files)",
        dir.display(),
        gib
    );

    drop_caches();
    let native_mbs = native_seq_write(&dir, bytes);
    let native_fps = native_small_files(&dir, files);

    let img = dir.join("bench.img");
    let vol = open_volume(&img, bytes * 3 + (2 << 30));
    let (twin_mbs, longest_write, mut lat) = volume_seq_write(&vol, bytes);
    let cps = vol.stats().cps.load(Ordering::Relaxed);
    let longest_cp = vol.stats().longest_cp_ms.load(Ordering::Relaxed);
    let waits = vol.stats().writer_waits.load(Ordering::Relaxed);
    let paced = Duration::from_nanos(vol.stats().paced_ns.load(Ordering::Relaxed));
    let twin_fps = volume_small_files(&vol, files);
    vol.close().expect("close");
    let rss = peak_rss_kib();
    std::fs::remove_file(&img).ok();

    let rows = [
        Row {
            name: "sequential write, 1 MiB writes + durable".into(),
            native: native_mbs,
            twinfs: twin_mbs,
            unit: "MB/s",
        },
        Row {
            name: format!("{files} small files (1-8 KiB) + durable"),
            native: native_fps,
            twinfs: twin_fps,
            unit: "files/s",
        },
    ];
    println!();
    println!("| workload | native | twinfs volume | ratio |");
    println!("|---|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.0} {} | {:.0} {} | {:.2}x |",
            r.name,
            r.native,
            r.unit,
            r.twinfs,
            r.unit,
            r.twinfs / r.native
        );
    }
    println!();
    println!(
        "CPs during the sequential write: {cps}, longest CP {longest_cp} ms, writer waits for a CP: {waits}, time writers slept for pacing: {paced:?}"
    );
    println!(
        "write() latency during the sequential write: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99),
        longest_write
    );
    println!("peak RSS of the benchmark process: {} MiB", rss / 1024);
}
