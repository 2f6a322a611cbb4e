//! The source sends each log batch while its own disk writes it, so a crash
//! of the source can leave the peer holding a transfer the source lost. This
//! test makes that happen (the peer acknowledges the batch while the
//! source's log write hangs, then the power goes) and checks what must hold
//! once the source restarts and reconnects:
//! - the peer drops the lost transfer (`LogEnd`) and the source does not
//!   count it as acknowledged, so the next fsync waits for the new batch
//!   that reuses its ID;
//! - the two sides converge on the same root hash, and a promote of the
//!   peer shows the source's files, never the lost one.

mod peer_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use peer_support::{init_log, peer_credentials, read_file, source_credentials};
use twinfs_fs::device::{BlockDevice, CrashDevice, FileDevice, LostWrite};
use twinfs_fs::volume::{self, Volume, VolumeConfig};
use twinfs_fs::{BlockAddr, FileKind, FsError, TransferId, View, ROOT_INO};
use twinfs_replicate::encode::CpSync;
use twinfs_replicate::peer::{peer_status, promote, PeerConfig, PeerDaemon};
use twinfs_replicate::source::{Mirror, MirrorConfig, Mode, Phase, DEFAULT_QUEUE_BYTES};

/// Blocks of the source volume (64 MiB, in memory).
const VOLUME_BLOCKS: u64 = 16_384;

/// A crash device whose durable writes (the log writer's) can be made to
/// hang and then fail as if the power went before they reached the disk.
struct PowerCut {
    dev: Arc<CrashDevice>,
    state: Mutex<Cut>,
    cv: Condvar,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cut {
    Off,
    /// Durable writes wait (counted) until the cut.
    Hanging(u32),
    /// The power is gone: every durable write fails, none lands.
    Gone,
}

impl PowerCut {
    fn new(dev: Arc<CrashDevice>) -> PowerCut {
        PowerCut {
            dev,
            state: Mutex::new(Cut::Off),
            cv: Condvar::new(),
        }
    }

    fn hang(&self) {
        *self.state.lock() = Cut::Hanging(0);
    }

    fn hanging_writes(&self) -> u32 {
        match *self.state.lock() {
            Cut::Hanging(n) => n,
            _ => 0,
        }
    }

    fn cut(&self) {
        *self.state.lock() = Cut::Gone;
        self.cv.notify_all();
    }
}

impl BlockDevice for PowerCut {
    fn num_blocks(&self) -> u64 {
        self.dev.num_blocks()
    }

    fn read(&self, addr: BlockAddr, buf: &mut [u8]) -> std::io::Result<()> {
        self.dev.read(addr, buf)
    }

    fn write(&self, addr: BlockAddr, data: &[u8]) -> std::io::Result<()> {
        self.dev.write(addr, data)
    }

    fn flush(&self) -> std::io::Result<()> {
        self.dev.flush()
    }

    fn write_durable(&self, addr: BlockAddr, parts: &[&[u8]]) -> std::io::Result<()> {
        let mut st = self.state.lock();
        if let Cut::Hanging(n) = *st {
            *st = Cut::Hanging(n + 1);
            while matches!(*st, Cut::Hanging(_)) {
                self.cv.wait(&mut st);
            }
        }
        if *st == Cut::Gone {
            return Err(std::io::Error::other("the power is gone"));
        }
        drop(st);
        self.dev.write_durable(addr, parts)
    }
}

fn open_source(dev: Arc<PowerCut>, peer: std::net::SocketAddr) -> (Arc<Volume>, Arc<Mirror>) {
    let vol = Arc::new(
        Volume::open(
            dev,
            VolumeConfig {
                cp_interval: None,
                ..Default::default()
            },
        )
        .expect("open the source volume"),
    );
    let mirror = Mirror::start(
        vol.clone(),
        MirrorConfig {
            peer: peer.to_string(),
            credentials: source_credentials(),
            compress: Default::default(),
            mode: Mode::Sync,
            cp_sync: CpSync::Best,
            sync_timeout: Duration::from_secs(10),
            queue_bytes: DEFAULT_QUEUE_BYTES,
        },
    )
    .expect("start the mirror");
    wait_until("the mirror to stream", || {
        mirror.status().phase == Phase::Streaming
    });
    (vol, mirror)
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn put(vol: &Volume, name: &str, data: &[u8]) -> twinfs_fs::Result<()> {
    let attr = vol.create(ROOT_INO, name.as_bytes(), FileKind::Regular, 0o644, 0, 0, 0)?;
    vol.write(attr.ino, 0, data, false)?;
    vol.fsync()
}

fn durable(vol: &Volume) -> TransferId {
    vol.status().last_durable_transfer
}

#[test]
fn a_transfer_the_source_lost_in_a_crash_is_dropped_at_the_peer() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let daemon = PeerDaemon::start(PeerConfig {
        dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".into(),
        credentials: peer_credentials(),
        limits: Default::default(),
        view: None,
        takeover: None,
        listener: None,
    })
    .expect("the peer starts");
    let disk = Arc::new(CrashDevice::new(VOLUME_BLOCKS));
    volume::mkfs(disk.clone(), &Default::default()).expect("mkfs");

    // A file durable on both sides, in a CP the peer applied.
    let power = Arc::new(PowerCut::new(disk.clone()));
    let (vol, mirror) = open_source(power.clone(), daemon.local_addr());
    let a = b"on both sides".repeat(500);
    put(&vol, "a", &a).expect("write a");
    let cp = vol.checkpoint().expect("checkpoint");
    assert!(
        mirror.wait_applied(cp, Duration::from_secs(20)),
        "CP applied"
    );
    let log_end = durable(&vol);

    // "b": its batch reaches the peer while the source's log write hangs.
    power.hang();
    let writer = {
        let vol = vol.clone();
        std::thread::spawn(move || put(&vol, "b", b"lost at the source"))
    };
    wait_until("the peer to acknowledge the batch of b", || {
        mirror.status().acked_transfer > log_end
    });
    assert!(power.hanging_writes() > 0, "the source's log write hangs");
    assert_eq!(durable(&vol), log_end, "b is not durable at the source");

    // The power goes: b never reaches the source's disk.
    power.cut();
    let failed = writer.join().unwrap();
    assert!(
        matches!(failed, Err(FsError::Failed(_))),
        "the fsync of b fails: {failed:?}"
    );
    mirror.shutdown();
    drop(mirror);
    drop(vol);
    disk.crash(|_| (LostWrite::Dropped, 0));

    // The source restarts without b and reconnects.
    let (vol, mirror) = open_source(Arc::new(PowerCut::new(disk.clone())), daemon.local_addr());
    assert_eq!(durable(&vol), log_end, "the source's log ends before b");
    assert!(
        vol.lookup(View::Live, ROOT_INO, b"b").is_err(),
        "b is gone at the source"
    );
    assert_eq!(
        mirror.status().acked_transfer,
        log_end,
        "only what both sides hold counts as acknowledged"
    );
    wait_until("the peer to drop the lost transfer", || {
        peer_status(dir.path()).is_ok_and(|s| s.durable_transfer == log_end.0)
    });

    // The next batch reuses b's transfer ID: fsync waits for the peer to
    // store it, and the CP that follows lands with the source's root hash.
    let c = b"written after the restart".repeat(300);
    put(&vol, "c", &c).expect("write c");
    assert!(mirror.status().acked_transfer > log_end);
    let cp = vol.checkpoint().expect("checkpoint");
    assert!(
        mirror.wait_applied(cp, Duration::from_secs(20)),
        "CP applied"
    );
    let source_root = vol.committed().root_hash();
    assert_eq!(mirror.status().acked_root_hash, Some(source_root));
    mirror.shutdown();
    drop(mirror);
    vol.close().expect("close the source");
    drop(vol);
    daemon.shutdown().expect("the peer stops");

    let promoted = promote(dir.path()).expect("promote");
    let dev = FileDevice::open(&promoted.image, true).expect("open the promoted image");
    let replica = Volume::open(
        Arc::new(dev),
        VolumeConfig {
            background: false,
            cp_interval: None,
            ..Default::default()
        },
    )
    .expect("open the promoted volume");
    assert_eq!(read_file(&replica, "a"), a);
    assert_eq!(read_file(&replica, "c"), c);
    assert!(
        replica.lookup(View::Live, ROOT_INO, b"b").is_err(),
        "the promoted replica does not have the file the source lost"
    );
    replica.close().unwrap();
}
