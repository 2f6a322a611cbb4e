//! The peer daemon over TCP: a scripted source (handshake + sealed session)
//! drives it through transfers and CPs; binding, refusals, errors, restarts
//! and status are checked from the outside. The last test runs the real
//! source-side `Mirror` against it.

mod peer_support;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peer_support::*;
use tokio::net::TcpStream;
use twinfs_fs::{CpNumber, VolumeConfig, BLOCK_SIZE};
use twinfs_replicate::encode::CpSync;
use twinfs_replicate::message::Message;
use twinfs_replicate::peer::{peer_status, promote, PeerConfig, PeerDaemon, ReplicaView};
use twinfs_replicate::source::{Mirror, MirrorConfig, Mode, Phase, DEFAULT_QUEUE_BYTES};
use twinfs_replicate::{handshake_client, HandshakeInfo, ReplicateError, Session};

/// The size the scripted source announces: its `Source::new` volumes'.
const TEST_VOLUME_BLOCKS: u64 = 4096;

fn start(dir: &Path) -> PeerDaemon {
    start_with(dir, None)
}

fn start_with(dir: &Path, view: Option<Arc<dyn ReplicaView>>) -> PeerDaemon {
    PeerDaemon::start(PeerConfig {
        dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".into(),
        credentials: peer_credentials(),
        limits: Default::default(),
        view,
        takeover: None,
        listener: None,
    })
    .expect("the daemon starts")
}

async fn connect(
    d: &PeerDaemon,
    uuid: [u8; 16],
) -> Result<(Session<TcpStream>, HandshakeInfo), ReplicateError> {
    let stream = TcpStream::connect(d.local_addr()).await.expect("connect");
    handshake_client(stream, &source_credentials(), uuid, TEST_VOLUME_BLOCKS).await
}

/// Connects, retrying while the daemon finishes a previous session.
async fn connect_retrying(d: &PeerDaemon) -> (Session<TcpStream>, HandshakeInfo) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match connect(d, UUID).await {
            Ok(s) => return s,
            Err(ReplicateError::Refused { reason })
                if reason.contains("busy") && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
}

async fn recv(s: &mut Session<TcpStream>) -> Message {
    tokio::time::timeout(Duration::from_secs(10), s.recv())
        .await
        .expect("an answer in time")
        .expect("an answer")
}

/// Sends `msgs`, then receives until `done` says so; returns what came back.
async fn exchange(
    s: &mut Session<TcpStream>,
    msgs: &[Message],
    done: impl Fn(&Message) -> bool,
) -> Vec<Message> {
    for m in msgs {
        s.send(m).await.expect("send");
    }
    let mut got = Vec::new();
    loop {
        let m = recv(s).await;
        let stop = done(&m);
        got.push(m);
        if stop {
            return got;
        }
    }
}

/// A volume in memory of `blocks` blocks mirrored to the peer at `peer`,
/// returned once the session streams (batches made durable before that are
/// only sent with the next CP).
fn mirrored_volume(
    blocks: u64,
    peer: std::net::SocketAddr,
    mode: Mode,
    cp_sync: CpSync,
    queue_bytes: usize,
) -> (Arc<twinfs_fs::Volume>, Arc<Mirror>) {
    let dev = Arc::new(twinfs_fs::device::MemDevice::new(blocks));
    twinfs_fs::volume::mkfs(dev.clone(), &Default::default()).unwrap();
    let vol = Arc::new(
        twinfs_fs::Volume::open(
            dev,
            VolumeConfig {
                cp_interval: None,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let mirror = Mirror::start(
        vol.clone(),
        MirrorConfig {
            peer: peer.to_string(),
            credentials: source_credentials(),
            compress: Default::default(),
            mode,
            cp_sync,
            sync_timeout: Duration::from_secs(5),
            queue_bytes,
        },
    )
    .unwrap();
    wait_for("the mirror to stream", || {
        mirror.status().phase == Phase::Streaming
    });
    (vol, mirror)
}

/// Creates `name` in the root directory holding `data`.
fn create_file(vol: &twinfs_fs::Volume, name: &str, data: &[u8]) {
    let ino = vol
        .create(
            twinfs_fs::ROOT_INO,
            name.as_bytes(),
            twinfs_fs::FileKind::Regular,
            0o644,
            0,
            0,
            0,
        )
        .unwrap()
        .ino;
    vol.write(ino, 0, data, false).unwrap();
}

/// Waits until the peer applied `cp`, through reconnections and resyncs
/// (`wait_applied` answers false at once while the source reconnects).
fn wait_applied_within(mirror: &Mirror, cp: CpNumber, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !mirror.wait_applied(cp, Duration::from_secs(1)) {
        assert!(Instant::now() < deadline, "the peer applied CP {}", cp.0);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_applied(cp: u64) -> impl Fn(&Message) -> bool {
    move |m| matches!(m, Message::CpApplied { cp: c, .. } if *c == cp)
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stores_transfers_applies_cps_and_status_reports_it() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path());
    let src = Source::new(4096);
    let a = src.create("a");
    src.write(a, 0, &pattern(5 * BLOCK_SIZE, 4));
    let cp1 = src.checkpoint();
    // Three more transfers the CP does not contain.
    for i in 0..3u64 {
        src.write(a, i * 100, b"later");
        src.vol.fsync().unwrap();
    }
    let batches = src.batches_from(1);
    let last = batches.last().unwrap().id.0;
    assert!(last >= cp1.covers + 3);

    let (mut s, info) = connect(&d, UUID).await.expect("accepted");
    assert_eq!(info.resume.applied_cp, None);
    assert_eq!(info.resume.durable_transfer, 0);

    // CP 0 cannot be sent as it was (it predates the captures): resync it.
    let src0 = Source::new(4096);
    let got = exchange(&mut s, &src0.resync_from_nothing(), is_applied(0)).await;
    assert!(matches!(got.last(), Some(Message::CpApplied { cp: 0, .. })));
    let got = exchange(
        &mut s,
        &transfer_messages(&batches),
        |m| matches!(m, Message::TransferAck { id } if *id == last),
    )
    .await;
    let acks: Vec<u64> = got
        .iter()
        .map(|m| match m {
            Message::TransferAck { id } => *id,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert!(
        acks.windows(2).all(|w| w[0] < w[1]),
        "cumulative, increasing: {acks:?}"
    );
    let got = exchange(&mut s, &cp_messages(&cp1, Enc::Best), is_applied(1)).await;
    assert_eq!(
        got.last().unwrap(),
        &Message::CpApplied {
            cp: 1,
            root_hash: cp1.sb.root_hash().0
        }
    );
    let got = exchange(&mut s, &[Message::Ping { nonce: 7 }], |_| true).await;
    assert_eq!(got, vec![Message::Pong { nonce: 7 }]);

    let st = peer_status(tmp.path()).unwrap();
    assert_eq!(st.applied_cp, Some(1));
    assert_eq!(st.root_hash, Some(cp1.sb.root_hash().to_hex()));
    assert_eq!(st.volume_uuid, Some("5a".repeat(16)));
    // One segment holds them all: release frees whole segments only.
    assert_eq!(st.log_transfers, last);
    assert!(st.log_bytes_held > 0);
    assert_eq!(st.durable_transfer, last);
    assert!(st.source_connected && st.daemon_running);
    assert_eq!(st.last_error, None);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("status.json")).unwrap()).unwrap();
    for field in [
        "applied_cp",
        "root_hash",
        "log_bytes_held",
        "log_transfers",
        "volume_uuid",
        "source_connected",
        "last_error",
    ] {
        assert!(json.get(field).is_some(), "status.json has {field}: {json}");
    }

    s.close().await.unwrap();
    assert_eq!(recv(&mut s).await, Message::Bye);
    wait_for("the session to end", || {
        !peer_status(tmp.path()).unwrap().source_connected
    });

    d.shutdown().unwrap();
    let st = peer_status(tmp.path()).unwrap();
    assert!(!st.daemon_running);
    assert_eq!(st.applied_cp, Some(1));
    assert_eq!(st.root_hash, Some(cp1.sb.root_hash().to_hex()));
    assert_eq!(st.log_transfers, last);
    assert_eq!(st.durable_transfer, last);

    // After a restart, the resume point is what was durable.
    let d = start(tmp.path());
    let (_s, info) = connect(&d, UUID).await.expect("accepted");
    let resume = info.resume;
    assert_eq!(
        resume.applied_cp.map(|a| (a.cp, a.root_hash)),
        Some((1, cp1.sb.root_hash().0))
    );
    assert_eq!(resume.durable_transfer, last);
    d.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_volume_is_refused_with_both_uuids_named() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path());
    let (mut s, _) = connect(&d, UUID)
        .await
        .expect("the first volume binds the directory");
    s.close().await.unwrap();
    let state = std::fs::read_to_string(tmp.path().join("state")).unwrap();
    assert!(state.contains(&"5a".repeat(16)), "bound durably: {state}");

    let err = connect_other(&d, [0x11; 16]).await;
    match err {
        ReplicateError::Refused { reason } => {
            assert!(
                reason.contains(&"5a".repeat(16)) && reason.contains(&"11".repeat(16)),
                "{reason}"
            );
        }
        other => panic!("expected a refusal, got {other}"),
    }
    // Still bound, still serving the right volume.
    let (_s, _) = connect_retrying(&d).await;
    d.shutdown().unwrap();
}

async fn connect_other(d: &PeerDaemon, uuid: [u8; 16]) -> ReplicateError {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match connect(d, uuid).await {
            Err(ReplicateError::Refused { reason })
                if reason.contains("busy") && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return e,
            Ok(_) => panic!("volume {uuid:?} was accepted"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_source_is_refused_while_a_session_is_up() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path());
    let (mut first, _) = connect(&d, UUID).await.expect("accepted");
    // The second one is told the peer is busy: in the handshake, or, once
    // the peer knows the volume it is bound to, after its history was
    // judged (so that a split brain is refused as such).
    let reason = match connect(&d, UUID).await {
        Err(ReplicateError::Refused { reason }) => reason,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok((mut second, _)) => {
            second.send(&new_source_hello()).await.expect("send");
            match recv(&mut second).await {
                Message::Error { reason } => reason,
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    };
    assert!(reason.contains("one source at a time"), "{reason}");
    // The first session is unharmed.
    let got = exchange(&mut first, &[Message::Ping { nonce: 1 }], |_| true).await;
    assert_eq!(got, vec![Message::Pong { nonce: 1 }]);
    first.close().await.unwrap();
    let (_second, _) = connect_retrying(&d).await;
    d.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_without_the_secret_gets_nothing() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path());
    let stream = TcpStream::connect(d.local_addr()).await.unwrap();
    let wrong = twinfs_replicate::Secret::from_bytes(b"not the peer's secret: 51e0a9c3").unwrap();
    let creds = source_credentials();
    let wrong =
        twinfs_replicate::Credentials::new(creds.key().clone(), creds.trusted().clone(), wrong);
    let err = handshake_client(stream, &wrong, UUID, TEST_VOLUME_BLOCKS)
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(&err, ReplicateError::Refused { reason } if reason.contains("secret")),
        "{err}"
    );
    assert!(!tmp.path().join("state").exists(), "nothing was bound");
    d.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_batch_ends_the_session_and_the_daemon_keeps_listening() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path());
    let (mut s, _) = connect(&d, UUID).await.unwrap();
    exchange(&mut s, &[new_source_hello()], |m| {
        matches!(m, Message::LineageVerdict { refusal: None, .. })
    })
    .await;
    let one = make_batch(UUID, 1, [0; 32], 2, 1);
    let got = exchange(
        &mut s,
        &transfer_messages(std::slice::from_ref(&one)),
        |_| true,
    )
    .await;
    assert_eq!(got, vec![Message::TransferAck { id: 1 }]);
    let mut bad = make_batch(UUID, 2, one.hash, 2, 2).bytes.to_vec();
    bad[BLOCK_SIZE + 3] ^= 4;
    s.send(&Message::Transfer { id: 2, batch: bad })
        .await
        .unwrap();
    match recv(&mut s).await {
        Message::Error { reason } => assert!(reason.contains("transfer 2"), "{reason}"),
        other => panic!("expected an Error, got {other:?}"),
    }
    assert!(s.recv().await.is_err(), "the session is over");
    wait_for("the error in status", || {
        peer_status(tmp.path())
            .unwrap()
            .last_error
            .is_some_and(|e| e.contains("transfer 2"))
    });

    let (_s, info) = connect_retrying(&d).await;
    assert_eq!(info.resume.durable_transfer, 1);
    d.shutdown().unwrap();
}

#[test]
fn a_promoted_directory_is_refused_by_the_daemon() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let d = start(tmp.path());
    let src = Source::new(4096);
    rt.block_on(async {
        let (mut s, _) = connect(&d, UUID).await.unwrap();
        exchange(&mut s, &src.resync_from_nothing(), is_applied(0)).await;
        s.close().await.unwrap();
    });
    assert!(
        promote(tmp.path()).is_err(),
        "promote refuses while the daemon holds the directory"
    );
    d.shutdown().unwrap();
    promote(tmp.path()).expect("promote");
    let err = PeerDaemon::start(PeerConfig {
        dir: tmp.path().to_path_buf(),
        listen: "127.0.0.1:0".into(),
        credentials: peer_credentials(),
        limits: Default::default(),
        view: None,
        takeover: None,
        listener: None,
    })
    .err()
    .expect("refused");
    assert!(err.to_string().contains("promoted"), "{err}");
    assert!(peer_status(tmp.path()).unwrap().promoted);
}

/// Counts the CPs a replica view was told about.
struct Commits(AtomicU64);

impl ReplicaView for Commits {
    fn after_commit(&self, cp: u64, _root_hash: [u8; 32]) {
        self.0.store(cp, Ordering::SeqCst);
    }
}

#[test]
fn the_source_mirror_keeps_the_replica_in_step() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    let view = Arc::new(Commits(AtomicU64::new(u64::MAX)));
    let d = start_with(tmp.path(), Some(view.clone()));

    let (vol, mirror) = mirrored_volume(
        8192,
        d.local_addr(),
        Mode::Sync,
        CpSync::Best,
        DEFAULT_QUEUE_BYTES,
    );
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("f{i}"), pattern(3 * BLOCK_SIZE + 100 * i, i as u64)))
        .collect();
    for (name, data) in &files {
        create_file(&vol, name, data);
    }
    vol.fsync().unwrap();
    let cp = vol.checkpoint().unwrap();
    assert!(
        mirror.wait_applied(cp, Duration::from_secs(20)),
        "the peer applied CP {}",
        cp.0
    );
    let outcome = mirror
        .verify(true, Duration::from_secs(20))
        .expect("verify");
    assert!(outcome.equal(), "{outcome:?}");
    assert_eq!(outcome.cp, cp);
    wait_for("the view to be told", || {
        view.0.load(Ordering::SeqCst) == cp.0
    });

    let st = peer_status(tmp.path()).unwrap();
    assert_eq!(st.applied_cp, Some(cp.0));
    assert_eq!(st.root_hash, Some(vol.committed().root_hash().to_hex()));
    let replica = open_read_only(&tmp.path().join("mirror.img"));
    assert_eq!(replica.committed().cp, CpNumber(cp.0));
    for (name, data) in &files {
        assert_eq!(&read_file(&replica, name), data);
    }
    mirror.shutdown();
    vol.close().unwrap();
    drop(replica);
    d.shutdown().unwrap();
}

#[test]
fn a_peer_that_was_away_is_resynced_by_the_source_mirror() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path());
    let addr = d.local_addr();

    let (vol, mirror) = mirrored_volume(8192, addr, Mode::Async, CpSync::Best, DEFAULT_QUEUE_BYTES);
    let write = |name: &str, data: &[u8]| {
        match vol.lookup(twinfs_fs::View::Live, twinfs_fs::ROOT_INO, name.as_bytes()) {
            Ok(a) => vol.write(a.ino, 0, data, false).map(drop).unwrap(),
            Err(_) => create_file(&vol, name, data),
        }
        vol.fsync().unwrap();
        vol.checkpoint().unwrap()
    };
    let cp1 = write("a", &pattern(8 * BLOCK_SIZE, 1));
    assert!(mirror.wait_applied(cp1, Duration::from_secs(20)));

    // The peer goes away; the source goes on for two CPs.
    d.shutdown().unwrap();
    write("a", &pattern(8 * BLOCK_SIZE, 2));
    let b = pattern(5 * BLOCK_SIZE + 3, 3);
    let cp3 = write("b", &b);
    assert_eq!(peer_status(tmp.path()).unwrap().applied_cp, Some(cp1.0));

    // It comes back on the same address: the source resyncs it from CP 1.
    let d = PeerDaemon::start(PeerConfig {
        dir: tmp.path().to_path_buf(),
        listen: addr.to_string(),
        credentials: peer_credentials(),
        limits: Default::default(),
        view: None,
        takeover: None,
        listener: None,
    })
    .expect("restart on the same address");
    wait_applied_within(&mirror, cp3, Duration::from_secs(30));
    let outcome = mirror
        .verify(true, Duration::from_secs(20))
        .expect("verify");
    assert!(outcome.equal(), "{outcome:?}");
    let replica = open_read_only(&tmp.path().join("mirror.img"));
    assert_eq!(read_file(&replica, "a"), pattern(8 * BLOCK_SIZE, 2));
    assert_eq!(read_file(&replica, "b"), b);
    drop(replica);
    mirror.shutdown();
    vol.close().unwrap();
    d.shutdown().unwrap();
}

#[test]
fn setting_the_shutdown_flag_stops_the_daemon() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path());
    // What a SIGTERM handler does: store true, nothing else.
    d.shutdown_handle().flag().store(true, Ordering::SeqCst);
    let started = Instant::now();
    d.run().expect("a clean stop");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!peer_status(tmp.path()).unwrap().daemon_running);
}

/// In async mode a full queue makes the source drop what it cannot queue
/// and catch up with a resync. With a queue far too small for the work (every
/// CP overflows it), the session must only ever resync, never break, and the
/// replica must end equal. Two bugs lived on this path: a CP waited 2 s for
/// log transfers that had been dropped (nothing woke it), and the rest of a
/// CP whose begin had been cleared from the queue still went out, so that
/// the peer ended the session ("CpBlocks for CP N, which did not begin";
/// seen in the comparison benchmark, not reproduced by this test, whose
/// peer is faster than the benchmark's).
#[test]
fn an_overflowing_async_queue_resyncs_without_breaking_the_session() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path());
    let (vol, mirror) = mirrored_volume(
        65536,
        d.local_addr(),
        Mode::Async,
        CpSync::Full,
        8 * BLOCK_SIZE,
    );
    let mut files = Vec::new();
    let mut cp = CpNumber(0);
    // CPs of several frames each, so that the queue overflows in the middle
    // of a CP.
    for i in 0..12u64 {
        let name = format!("f{i}");
        let data = pattern(1500 * BLOCK_SIZE + i as usize, i);
        create_file(&vol, &name, &data);
        cp = vol.checkpoint().unwrap();
        files.push((name, data));
    }
    wait_applied_within(&mirror, cp, Duration::from_secs(60));
    let status = mirror.status();
    assert_eq!(status.last_error, None, "the session broke");
    let outcome = mirror
        .verify(true, Duration::from_secs(20))
        .expect("verify");
    assert!(outcome.equal(), "{outcome:?}");
    let replica = open_read_only(&tmp.path().join("mirror.img"));
    for (name, data) in &files {
        assert_eq!(&read_file(&replica, name), data, "{name}");
    }
    drop(replica);
    mirror.shutdown();
    vol.close().unwrap();
    d.shutdown().unwrap();
}
