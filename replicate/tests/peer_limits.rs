//! What an authenticated source may not do to a peer: announce a volume over
//! the size limit, address blocks past its volume, fill the log store past
//! its quota, stage a block twice in one CP. Each is refused with a reason
//! naming the limit, and nothing is allocated or written for it first. Also
//! the modes of the peer directory's files.

mod peer_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use peer_support::*;
use tokio::net::TcpStream;
use twinfs_fs::BLOCK_SIZE;
use twinfs_replicate::message::{CpBlock, Encoding, Message};
use twinfs_replicate::peer::journal::Journal;
use twinfs_replicate::peer::{PeerConfig, PeerDaemon, PeerError, PeerLimits};
use twinfs_replicate::{handshake_client, HandshakeInfo, ReplicateError, Session};

/// The size of `Source::new(4096)` volumes.
const BLOCKS: u64 = 4096;

fn start(dir: &Path, limits: PeerLimits) -> PeerDaemon {
    PeerDaemon::start(PeerConfig {
        dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".into(),
        credentials: peer_credentials(),
        limits,
        view: None,
        takeover: None,
        listener: None,
    })
    .expect("the daemon starts")
}

async fn connect(
    d: &PeerDaemon,
    blocks: u64,
) -> Result<(Session<TcpStream>, HandshakeInfo), ReplicateError> {
    let stream = TcpStream::connect(d.local_addr()).await.expect("connect");
    handshake_client(stream, &source_credentials(), UUID, blocks).await
}

async fn connect_retrying(d: &PeerDaemon, blocks: u64) -> Session<TcpStream> {
    for _ in 0..250 {
        match connect(d, blocks).await {
            Ok((s, _)) => return s,
            Err(ReplicateError::Refused { reason }) if reason.contains("busy") => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
    panic!("the daemon stayed busy");
}

async fn recv(s: &mut Session<TcpStream>) -> Message {
    tokio::time::timeout(Duration::from_secs(10), s.recv())
        .await
        .expect("an answer in time")
        .expect("an answer")
}

fn refusal(result: Result<(Session<TcpStream>, HandshakeInfo), ReplicateError>) -> String {
    match result {
        Err(ReplicateError::Refused { reason }) => reason,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, the source was admitted"),
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_over_max_volume_is_refused_and_binds_nothing() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    let limits = PeerLimits {
        max_volume_bytes: Some(1 << 20),
        ..PeerLimits::default()
    };
    let d = start(tmp.path(), limits);
    let reason = refusal(connect(&d, BLOCKS).await);
    assert!(reason.contains("--max-volume"), "{reason}");
    assert!(!tmp.path().join("state").exists(), "nothing was bound");
    // Within the limit, the same source is admitted.
    let limits = PeerLimits {
        max_volume_bytes: Some(BLOCKS * BLOCK_SIZE as u64),
        ..PeerLimits::default()
    };
    d.shutdown().unwrap();
    let d = start(tmp.path(), limits);
    connect(&d, BLOCKS).await.expect("admitted");
    d.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_claimed_volume_is_refused_without_allocating_for_it() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path(), PeerLimits::default());
    // 2^40 blocks = 4 PiB: more than the file system holding the directory.
    let reason = refusal(connect(&d, 1 << 40).await);
    assert!(reason.contains("file system"), "{reason}");
    assert!(reason.contains("--max-volume"), "{reason}");
    assert!(file_len(&tmp.path().join("mirror.img")) == 0);
    d.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_past_the_announced_volume_end_the_session_and_grow_nothing() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path(), PeerLimits::default());
    let (mut s, _) = connect(&d, BLOCKS).await.unwrap();
    s.send(&new_source_hello()).await.unwrap();
    assert!(matches!(
        recv(&mut s).await,
        Message::LineageVerdict { refusal: None, .. }
    ));
    s.send(&Message::LogEnd { transfer: 0 }).await.unwrap();
    s.send(&Message::CpBegin {
        cp: 1,
        base_cp: None,
        covers_transfer: 0,
        resync: true,
    })
    .await
    .unwrap();
    s.send(&Message::CpBlocks {
        cp: 1,
        blocks: vec![CpBlock {
            addr: 1 << 30,
            hash: [0; 16],
            enc: Encoding::Full(vec![0; BLOCK_SIZE]),
        }],
    })
    .await
    .unwrap();
    match recv(&mut s).await {
        Message::Error { reason } => {
            assert!(reason.contains(&format!("{}", 1u64 << 30)), "{reason}");
            assert!(reason.contains(&format!("..{BLOCKS}")), "{reason}");
        }
        other => panic!("expected an Error, got {other:?}"),
    }
    assert!(file_len(&tmp.path().join("mirror.img")) <= BLOCKS * BLOCK_SIZE as u64);
    d.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_of_another_size_than_the_mirror_is_refused() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path(), PeerLimits::default());
    let src = Source::new(BLOCKS);
    let mut s = connect_retrying(&d, BLOCKS).await;
    for m in src.resync_from_nothing() {
        s.send(&m).await.unwrap();
    }
    loop {
        if let Message::CpApplied { .. } = recv(&mut s).await {
            break;
        }
    }
    s.close().await.unwrap();
    // The mirror holds a 4096-block volume: the default limit is that size.
    let reason = loop {
        match connect(&d, 2 * BLOCKS).await {
            Err(ReplicateError::Refused { reason }) if reason.contains("busy") => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => break refusal(other),
        }
    };
    assert!(reason.contains(&format!("{BLOCKS} blocks")), "{reason}");
    d.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_past_the_log_quota_end_the_session_naming_the_quota() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    let quota = 40 * BLOCK_SIZE as u64;
    let limits = PeerLimits {
        log_quota_bytes: quota,
        ..PeerLimits::default()
    };
    let d = start(tmp.path(), limits);
    let mut s = connect_retrying(&d, BLOCKS).await;
    s.send(&new_source_hello()).await.unwrap();
    assert!(matches!(
        recv(&mut s).await,
        Message::LineageVerdict { refusal: None, .. }
    ));
    s.send(&Message::LogEnd { transfer: 0 }).await.unwrap();
    let mut prev = [0; 32];
    let mut acked = 0;
    let reason = 'sent: {
        for id in 1..=20 {
            let b = make_batch(UUID, id, prev, 8, id as u8);
            prev = b.hash;
            s.send(&Message::Transfer {
                id,
                batch: b.bytes.to_vec(),
            })
            .await
            .unwrap();
            match recv(&mut s).await {
                Message::TransferAck { id } => acked = id,
                Message::Error { reason } => break 'sent reason,
                other => panic!("unexpected {other:?}"),
            }
        }
        panic!("20 transfers of 9 blocks fit a quota of 40 blocks");
    };
    assert!(reason.contains("--log-quota"), "{reason}");
    assert!(acked >= 1, "transfers within the quota were stored");
    let held: u64 = std::fs::read_dir(tmp.path().join("log"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(held <= quota, "{held} bytes held, quota {quota}");
    d.shutdown().unwrap();
}

#[test]
fn the_journal_refuses_a_block_staged_twice_in_one_cp() {
    let tmp = tempfile::tempdir().unwrap();
    let mut j = Journal::new(&tmp.path().join("journal"));
    let block = vec![7u8; BLOCK_SIZE];
    j.stage(100, &block).unwrap();
    j.stage(101, &block).unwrap();
    match j.stage(100, &block) {
        Err(PeerError::Protocol(why)) => assert!(why.contains("block 100"), "{why}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert_eq!(j.entries(), 2);
    // A new CP starts from nothing.
    j.reset();
    j.stage(100, &block).unwrap();
    assert_eq!(j.entries(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_directory_is_private_and_an_open_one_is_narrowed() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("peer");
    // An existing directory and file open to everyone (an older twinfs, a copy).
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("mirror.img"), b"").unwrap();
    std::fs::set_permissions(
        dir.join("mirror.img"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let d = start(&dir, PeerLimits::default());
    let src = Source::new(BLOCKS);
    let a = src.create("a");
    src.write(a, 0, &pattern(3 * BLOCK_SIZE, 1));
    src.vol.fsync().unwrap();
    let mut s = connect_retrying(&d, BLOCKS).await;
    // A transfer (a log segment) and a resync (the image, the state).
    let mut msgs = vec![src.hello()];
    msgs.extend(transfer_messages(&src.batches_from(1)));
    msgs.extend(src.resync_from_nothing());
    for m in &msgs {
        s.send(m).await.unwrap();
    }
    loop {
        if let Message::CpApplied { .. } = recv(&mut s).await {
            break;
        }
    }
    s.close().await.unwrap();
    d.shutdown().unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let mut seen = 0;
    for entry in walk(&dir) {
        let m = mode(&entry);
        if entry.is_dir() {
            assert_eq!(m, 0o700, "{}", entry.display());
        } else {
            assert_eq!(m, 0o600, "{}", entry.display());
        }
        seen += 1;
    }
    assert!(
        walk(&dir.join("log")).len() >= 2,
        "a log segment was checked too"
    );
    assert!(seen >= 6, "{seen} entries");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
