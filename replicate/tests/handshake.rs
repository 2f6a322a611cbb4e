//! The Noise handshake: interoperation of both cipher suites, and every
//! refusal (wrong key either way, wrong secret, replay, downgrade, another
//! version, garbage, truncation, silence) with the reason each side sees;
//! what an eavesdropper or a keyless connector learns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use twinfs_replicate::codec;
use twinfs_replicate::fault::{faulty_duplex, Fault, FaultPlan};
use twinfs_replicate::frame::{FrameReader, FrameWriter};
use twinfs_replicate::handshake::{
    handshake_client_with_suite, HandshakeMsg, FIRST_FRAME_TIMEOUT_MS, HANDSHAKE_TIMEOUT_MS,
    PROTOCOL_MAGIC,
};
use twinfs_replicate::{
    authenticate_source, handshake_client, handshake_server, AppliedCp, Credentials, Direction,
    FrameFault, Message, ReplicateError, ResumePoint, Secret, StaticKey, Suite, TrustedKeys,
    PROTOCOL_VERSION,
};

const UUID: [u8; 16] = *b"volume-uuid-0001";
const OTHER_UUID: [u8; 16] = *b"volume-uuid-0002";
const BLOCKS: u64 = 1 << 18;

fn secret(text: &str) -> Secret {
    Secret::from_bytes(text.as_bytes()).expect("test secrets look random enough")
}

const SECRET: &str = "2c81f0a95e3d47b6c1098fe2a7d5b34e";
const OTHER_SECRET: &str = "9d4e07c2b1a8f6e35d0c9b7a4e2f1803";

/// A source and a peer that trust each other, sharing `SECRET`.
fn pair() -> (Credentials, Credentials) {
    Credentials::pair(&secret(SECRET)).expect("keys")
}

fn resume() -> ResumePoint {
    ResumePoint {
        applied_cp: Some(AppliedCp {
            cp: 41,
            root_hash: [0xA7; 32],
        }),
        durable_transfer: 1234,
    }
}

fn accept_bound(uuid: [u8; 16]) -> Result<(), String> {
    if uuid == UUID {
        Ok(())
    } else {
        Err("this peer is bound to another volume".to_string())
    }
}

/// A raw end that speaks frames by hand, to play a misbehaving or outdated side.
struct RawEnd {
    reader: FrameReader<ReadHalf<DuplexStream>>,
    writer: FrameWriter<WriteHalf<DuplexStream>>,
}

impl RawEnd {
    fn new(stream: DuplexStream, incoming: Direction) -> RawEnd {
        let (r, w) = tokio::io::split(stream);
        RawEnd {
            reader: FrameReader::new(r, incoming),
            writer: FrameWriter::new(w, incoming.reverse()),
        }
    }

    async fn send(&mut self, msg: &HandshakeMsg) {
        let body = codec::encode(msg).unwrap();
        self.writer.write_frame(&body).await.unwrap();
    }

    async fn send_body(&mut self, body: &[u8]) {
        self.writer.write_frame(body).await.unwrap();
    }

    async fn recv(&mut self) -> Option<HandshakeMsg> {
        let body = self.reader.read_frame().await.ok()??;
        Some(codec::decode(body).unwrap())
    }

    fn hello(version: u32) -> HandshakeMsg {
        HandshakeMsg::Hello {
            magic: PROTOCOL_MAGIC,
            version,
            volume_uuid: [0; 16],
            nonce: [0; 32],
        }
    }
}

fn refused_reason(msg: Option<HandshakeMsg>) -> String {
    match msg {
        Some(HandshakeMsg::Refused { reason }) => reason,
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[tokio::test]
async fn both_suites_deliver_the_resume_point_and_open_a_session() {
    for suite in [Suite::AesGcm, Suite::ChaChaPoly] {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (source_creds, peer_creds) = pair();
        let (client, server) = tokio::join!(
            handshake_client_with_suite(a, &source_creds, UUID, BLOCKS, suite),
            handshake_server(b, &peer_creds, resume(), accept_bound),
        );
        let (mut source, source_info) = client.unwrap();
        let (mut peer, peer_info) = server.unwrap();

        assert_eq!(source_info.resume, resume());
        assert_eq!((source_info.suite, peer_info.suite), (suite, suite));
        assert_eq!(source_info.remote_key, peer_creds.key().public());
        assert_eq!(peer_info.remote_key, source_creds.key().public());
        assert_eq!(source_info.version, PROTOCOL_VERSION);
        assert_eq!(
            (peer_info.volume_uuid, peer_info.volume_blocks),
            (UUID, BLOCKS)
        );

        let transfer = Message::Transfer {
            id: 1,
            batch: b"batch one".to_vec(),
        };
        source.send(&transfer).await.unwrap();
        assert_eq!(peer.recv().await.unwrap(), transfer);
        peer.send(&Message::TransferAck { id: 1 }).await.unwrap();
        assert_eq!(source.recv().await.unwrap(), Message::TransferAck { id: 1 });
        // Source sent Hello, NoiseInit, NoiseFinal, then frame 3; the peer sent
        // NoiseReply, Authenticated, Welcome, then frame 3.
        assert_eq!(source.sender().frames_sent(), 4);
        assert_eq!(peer.receiver().frames_received(), 4);
        assert_eq!(peer.sender().frames_sent(), 4);
        assert_eq!(source.receiver().frames_received(), 4);
        assert_eq!(
            source.sender().bytes_sent(),
            peer.receiver().bytes_received()
        );
    }
}

#[tokio::test]
async fn handshake_works_over_loopback_tcp_for_a_new_peer() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fresh = ResumePoint {
        applied_cp: None,
        durable_transfer: 0,
    };
    let (source_creds, peer_creds) = pair();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (mut peer, info) = handshake_server(stream, &peer_creds, fresh, accept_bound)
            .await
            .unwrap();
        let msg = peer.recv().await.unwrap();
        (info, msg)
    });
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut source, info) = handshake_client(stream, &source_creds, UUID, BLOCKS)
        .await
        .unwrap();
    assert_eq!(info.resume, fresh);
    source.close().await.unwrap();
    let (peer_info, msg) = server.await.unwrap();
    assert_eq!(peer_info.volume_uuid, UUID);
    assert_eq!(msg, Message::Bye);
}

/// Runs a handshake; returns (client result, server result, whether the
/// peer's binding policy ran).
async fn run(
    source: Credentials,
    peer: Credentials,
) -> (Result<(), ReplicateError>, Result<(), ReplicateError>, bool) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let policy_ran = Arc::new(AtomicBool::new(false));
    let flag = policy_ran.clone();
    let (client, server) = tokio::join!(
        handshake_client(a, &source, UUID, BLOCKS),
        handshake_server(b, &peer, resume(), move |uuid| {
            flag.store(true, Ordering::SeqCst);
            accept_bound(uuid)
        }),
    );
    (
        client.map(|_| ()),
        server.map(|_| ()),
        policy_ran.load(Ordering::SeqCst),
    )
}

#[tokio::test]
async fn a_wrong_secret_is_refused_on_both_sides_before_the_binding_policy_runs() {
    let (source, peer) = pair();
    let source = Credentials::new(
        source.key().clone(),
        source.trusted().clone(),
        secret(OTHER_SECRET),
    );
    let (client, server, policy_ran) = run(source, peer).await;
    let server_err = server.expect_err("the peer must refuse");
    assert!(
        matches!(server_err, ReplicateError::AuthFailed(_)),
        "{server_err}"
    );
    assert!(server_err.to_string().contains("--secret"), "{server_err}");
    match client.expect_err("the source must be refused") {
        ReplicateError::Refused { reason } => {
            assert!(reason.contains("shared secret"), "{reason}");
        }
        other => panic!("expected Refused, got {other}"),
    }
    assert!(
        !policy_ran,
        "the binding policy ran for an unauthenticated source"
    );
}

#[tokio::test]
async fn a_source_key_the_peer_does_not_trust_is_refused_naming_the_key() {
    let (_, peer) = pair();
    let stranger = StaticKey::generate().unwrap();
    let stranger_public = stranger.public();
    let source = Credentials::new(
        stranger,
        TrustedKeys::new([peer.key().public()]),
        secret(SECRET),
    );
    let (client, server, policy_ran) = run(source, peer).await;
    match server.expect_err("the peer must refuse") {
        ReplicateError::AuthFailed(why) => {
            assert!(why.contains(&stranger_public.to_hex()), "{why}");
            assert!(why.contains("trusted keys"), "{why}");
        }
        other => panic!("expected AuthFailed, got {other}"),
    }
    match client.expect_err("the source must be refused") {
        ReplicateError::Refused { reason } => {
            assert!(reason.contains(&stranger_public.to_hex()), "{reason}")
        }
        other => panic!("expected Refused, got {other}"),
    }
    assert!(!policy_ran);
}

#[tokio::test]
async fn an_impostor_peer_with_a_key_the_source_does_not_trust_learns_neither_key_nor_volume() {
    let (source, _) = pair();
    // The impostor holds the secret and trusts the source, but its own key is
    // not the one the source pins.
    let impostor = Credentials::new(
        StaticKey::generate().unwrap(),
        TrustedKeys::new([source.key().public()]),
        secret(SECRET),
    );
    let impostor_key = impostor.key().public();
    let (client, server, policy_ran) = run(source, impostor).await;
    match client.expect_err("the source must refuse") {
        ReplicateError::AuthFailed(why) => {
            assert!(why.contains(&impostor_key.to_hex()), "{why}");
            assert!(why.contains("trusted keys"), "{why}");
        }
        other => panic!("expected AuthFailed, got {other}"),
    }
    // The source refused instead of sending its last message (its own key and
    // the volume), so the impostor never got that far.
    match server.expect_err("no session") {
        ReplicateError::Refused { reason } => {
            assert!(reason.contains("source refuses"), "{reason}")
        }
        other => panic!("expected Refused, got {other}"),
    }
    assert!(!policy_ran);
}

#[tokio::test]
async fn a_volume_other_than_the_bound_one_is_refused_with_the_policy_reason_sealed() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (source, peer) = pair();
    let (client, server) = tokio::join!(
        handshake_client(a, &source, OTHER_UUID, BLOCKS),
        handshake_server(b, &peer, resume(), accept_bound),
    );
    match server.err().expect("peer must refuse") {
        ReplicateError::VolumeRefused { uuid, reason } => {
            assert_eq!(uuid, twinfs_fs::hex(&OTHER_UUID));
            assert_eq!(reason, "this peer is bound to another volume");
        }
        other => panic!("expected VolumeRefused, got {other}"),
    }
    match client.err().expect("source must be refused") {
        ReplicateError::Refused { reason } => {
            assert!(reason.contains("bound to another volume"), "{reason}");
            assert!(reason.contains(&twinfs_fs::hex(&OTHER_UUID)), "{reason}");
        }
        other => panic!("expected Refused, got {other}"),
    }
}

/// Every byte either side sent, frame by frame, of a handshake and one
/// message each way.
async fn recorded_session(
    (source, peer): (Credentials, Credentials),
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (s2p, p2s) = (FaultPlan::new().record(), FaultPlan::new().record());
    let (a, b) = faulty_duplex(s2p.clone(), p2s.clone());
    let (client, server) = tokio::join!(
        handshake_client(a, &source, UUID, BLOCKS),
        handshake_server(b, &peer, resume(), accept_bound),
    );
    let (mut source, mut peer) = (client.unwrap().0, server.unwrap().0);
    source.send(&Message::Ping { nonce: 7 }).await.unwrap();
    assert_eq!(peer.recv().await.unwrap(), Message::Ping { nonce: 7 });
    peer.send(&Message::Pong { nonce: 7 }).await.unwrap();
    assert_eq!(source.recv().await.unwrap(), Message::Pong { nonce: 7 });
    (s2p.recorded(), p2s.recorded())
}

#[tokio::test]
async fn an_eavesdropper_sees_neither_the_volume_nor_the_resume_point() {
    let (s2p, p2s) = recorded_session(pair()).await;
    let hex = twinfs_fs::hex(&UUID);
    for frame in s2p.iter().chain(&p2s) {
        for secret_bytes in [
            &UUID[..],
            hex.as_bytes(),
            &resume().applied_cp.unwrap().root_hash[..8],
        ] {
            assert!(
                !frame.windows(secret_bytes.len()).any(|w| w == secret_bytes),
                "{secret_bytes:?} visible on the wire"
            );
        }
    }
    // The Hello carries only the magic and the version.
    match codec::decode::<HandshakeMsg>(&s2p[0]).unwrap() {
        HandshakeMsg::Hello {
            volume_uuid, nonce, ..
        } => assert_eq!((volume_uuid, nonce), ([0; 16], [0; 32])),
        other => panic!("frame 0 is {other:?}"),
    }
}

#[tokio::test]
async fn the_long_term_keys_and_secret_do_not_open_a_recorded_session() {
    // Forward secrecy: a recorded session replayed to a peer holding the very
    // keys and secret of the original fails at the source's last message,
    // because the session keys came from ephemeral keys that are gone.
    let creds = pair();
    let peer_creds = creds.1.clone();
    let (s2p, _) = recorded_session(creds).await;
    let (a, b) = tokio::io::duplex(64 * 1024);
    let peer = tokio::spawn(async move { authenticate_source(b, &peer_creds).await.map(|_| ()) });
    let mut raw = RawEnd::new(a, Direction::PeerToSource);
    for frame in &s2p[..3] {
        raw.send_body(frame).await;
    }
    assert!(matches!(
        peer.await.unwrap(),
        Err(ReplicateError::AuthFailed(_))
    ));
}

/// A man in the middle between a real source and a real peer that rewrites
/// source→peer frame `n` with `rewrite`.
async fn through_a_tampering_relay(
    n: u64,
    rewrite: impl Fn(Vec<u8>) -> Vec<u8> + Send + 'static,
) -> (Result<(), ReplicateError>, Result<(), ReplicateError>) {
    let (source_end, relay_in) = tokio::io::duplex(64 * 1024);
    let (relay_out, peer_end) = tokio::io::duplex(64 * 1024);
    let (from_source_r, to_source_w) = tokio::io::split(relay_in);
    let (from_peer_r, to_peer_w) = tokio::io::split(relay_out);
    let forward = tokio::spawn(async move {
        let mut reader = FrameReader::new(from_source_r, Direction::SourceToPeer);
        let mut writer = FrameWriter::new(to_peer_w, Direction::SourceToPeer);
        let mut i = 0;
        while let Ok(Some(body)) = reader.read_frame().await {
            let body = if i == n {
                rewrite(body.to_vec())
            } else {
                body.to_vec()
            };
            if writer.write_frame(&body).await.is_err() {
                break;
            }
            i += 1;
        }
        let _ = writer.shutdown().await;
    });
    let backward = tokio::spawn(async move {
        let (mut r, mut w) = (from_peer_r, to_source_w);
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    });
    let (source, peer) = pair();
    let (client, server) = tokio::join!(
        handshake_client_with_suite(source_end, &source, UUID, BLOCKS, Suite::AesGcm),
        handshake_server(peer_end, &peer, resume(), accept_bound),
    );
    forward.abort();
    backward.abort();
    (client.map(|_| ()), server.map(|_| ()))
}

#[tokio::test]
async fn a_relay_that_swaps_the_cipher_suite_breaks_the_handshake() {
    let (client, server) =
        through_a_tampering_relay(1, |body| {
            match codec::decode::<HandshakeMsg>(&body).unwrap() {
                HandshakeMsg::NoiseInit { message, .. } => {
                    codec::encode(&HandshakeMsg::NoiseInit {
                        protocol: Suite::ChaChaPoly.protocol_name().into(),
                        message,
                    })
                    .unwrap()
                }
                other => panic!("frame 1 is {other:?}"),
            }
        })
        .await;
    // The first message's tag covers the protocol name: the peer notices.
    match server.expect_err("no session with a suite the source did not choose") {
        ReplicateError::AuthFailed(why) => assert!(why.contains("downgrade"), "{why}"),
        other => panic!("expected AuthFailed, got {other}"),
    }
    match client.expect_err("refused") {
        ReplicateError::Refused { reason } => assert!(reason.contains("altered"), "{reason}"),
        other => panic!("expected Refused, got {other}"),
    }
}

#[tokio::test]
async fn a_relay_that_rewrites_the_hello_breaks_the_handshake() {
    // Any change to the Hello (here its unused nonce field) changes the
    // Noise prologue on one side only.
    let (client, server) = through_a_tampering_relay(0, |_| {
        codec::encode(&HandshakeMsg::Hello {
            magic: PROTOCOL_MAGIC,
            version: PROTOCOL_VERSION,
            volume_uuid: [0; 16],
            nonce: [1; 32],
        })
        .unwrap()
    })
    .await;
    assert!(
        matches!(server, Err(ReplicateError::AuthFailed(_))),
        "{server:?}"
    );
    assert!(
        matches!(client, Err(ReplicateError::Refused { .. })),
        "{client:?}"
    );
}

#[tokio::test]
async fn a_relay_that_announces_an_older_version_gets_the_version_refusal() {
    let (client, server) = through_a_tampering_relay(0, |_| {
        codec::encode(&RawEnd::hello(PROTOCOL_VERSION - 1)).unwrap()
    })
    .await;
    assert!(
        matches!(server, Err(ReplicateError::VersionMismatch { ours, theirs }) if ours == PROTOCOL_VERSION && theirs == PROTOCOL_VERSION - 1)
    );
    match client {
        Err(ReplicateError::Refused { reason }) => {
            assert!(reason.contains("protocol version"), "{reason}")
        }
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[tokio::test]
async fn a_source_with_another_protocol_version_is_refused_with_both_versions_named() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (_, peer) = pair();
    let server = tokio::spawn(async move { authenticate_source(b, &peer).await.map(|_| ()) });
    let mut raw = RawEnd::new(a, Direction::PeerToSource);
    raw.send(&RawEnd::hello(PROTOCOL_VERSION + 98)).await;
    let reason = refused_reason(raw.recv().await);
    assert!(
        reason.contains(&format!("version {PROTOCOL_VERSION}")),
        "{reason}"
    );
    assert!(
        reason.contains(&format!("{}", PROTOCOL_VERSION + 98)),
        "{reason}"
    );
    match server.await.unwrap() {
        Err(ReplicateError::VersionMismatch { ours, theirs }) => {
            assert_eq!((ours, theirs), (PROTOCOL_VERSION, PROTOCOL_VERSION + 98));
        }
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn a_peer_of_another_version_refusing_the_hello_is_reported_with_its_reason() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (source, _) = pair();
    let client =
        tokio::spawn(async move { handshake_client(a, &source, UUID, BLOCKS).await.map(|_| ()) });
    let mut raw = RawEnd::new(b, Direction::SourceToPeer);
    assert!(matches!(
        raw.recv().await,
        Some(HandshakeMsg::Hello {
            version: PROTOCOL_VERSION,
            ..
        })
    ));
    let old = "the peer speaks protocol version 3, not 4; install the same twinfs release on both machines";
    raw.send(&HandshakeMsg::Refused { reason: old.into() })
        .await;
    match client.await.unwrap() {
        Err(ReplicateError::Refused { reason }) => assert_eq!(reason, old),
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[tokio::test]
async fn a_connector_without_keys_learns_nothing_of_the_peer_state() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (_, peer) = pair();
    let server = tokio::spawn(async move { authenticate_source(b, &peer).await.map(|_| ()) });
    let mut raw = RawEnd::new(a, Direction::PeerToSource);
    raw.send(&RawEnd::hello(PROTOCOL_VERSION)).await;
    raw.send(&HandshakeMsg::NoiseInit {
        protocol: Suite::AesGcm.protocol_name().into(),
        message: vec![9; 48],
    })
    .await;
    let reason = refused_reason(raw.recv().await);
    assert!(reason.contains("does not check"), "{reason}");
    assert!(!reason.contains(&twinfs_fs::hex(&UUID)), "{reason}");
    assert_eq!(raw.recv().await, None, "nothing follows a refusal");
    assert!(matches!(
        server.await.unwrap(),
        Err(ReplicateError::AuthFailed(_))
    ));
}

#[tokio::test]
async fn an_unknown_noise_protocol_is_refused_naming_the_ones_spoken() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (_, peer) = pair();
    let server = tokio::spawn(async move { authenticate_source(b, &peer).await.map(|_| ()) });
    let mut raw = RawEnd::new(a, Direction::PeerToSource);
    raw.send(&RawEnd::hello(PROTOCOL_VERSION)).await;
    raw.send(&HandshakeMsg::NoiseInit {
        protocol: "Noise_NN_25519_ChaChaPoly_BLAKE2s".into(),
        message: vec![9; 32],
    })
    .await;
    let reason = refused_reason(raw.recv().await);
    assert!(
        reason.contains("Noise_XXpsk3_25519_AESGCM_SHA256"),
        "{reason}"
    );
    assert!(server.await.unwrap().is_err());
}

#[tokio::test]
async fn truncated_handshake_frames_are_frame_errors_on_either_side() {
    // The source's last handshake message cut mid-frame: the peer reports a
    // truncated frame 2 and the source sees the connection end.
    let plan = FaultPlan::new().at(2, Fault::Cut { keep: 20 });
    let (a, b) = faulty_duplex(plan, FaultPlan::new());
    let (source, peer) = pair();
    let (client, server) = tokio::join!(
        handshake_client(a, &source, UUID, BLOCKS),
        handshake_server(b, &peer, resume(), accept_bound),
    );
    match server.err() {
        Some(ReplicateError::Frame {
            direction: Direction::SourceToPeer,
            frame: 2,
            fault: FrameFault::Truncated { .. },
        }) => {}
        other => panic!("expected a truncated frame 2, got {other:?}"),
    }
    assert!(client.is_err());
    // The peer's reply cut: the source reports it.
    let plan = FaultPlan::new().at(0, Fault::Cut { keep: 10 });
    let (a, b) = faulty_duplex(FaultPlan::new(), plan);
    let (source, peer) = pair();
    let (client, server) = tokio::join!(
        handshake_client(a, &source, UUID, BLOCKS),
        handshake_server(b, &peer, resume(), accept_bound),
    );
    match client.err() {
        Some(ReplicateError::Frame {
            direction: Direction::PeerToSource,
            frame: 0,
            fault: FrameFault::Truncated { .. },
        }) => {}
        other => panic!("expected a truncated frame 0, got {other:?}"),
    }
    assert!(server.is_err());
}

#[tokio::test]
async fn garbage_or_the_wrong_message_instead_of_hello_is_a_clean_frame_error() {
    for (body, what) in [
        (vec![0xc1, 0x00, 0x01], "garbage MessagePack"),
        (
            codec::encode(&Message::Ping { nonce: 5 }).unwrap(),
            "a session message",
        ),
        (
            codec::encode(&(1u8, "hello")).unwrap(),
            "valid MessagePack of another shape",
        ),
    ] {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (_, peer) = pair();
        let server = tokio::spawn(async move { authenticate_source(b, &peer).await.map(|_| ()) });
        let mut raw = RawEnd::new(a, Direction::PeerToSource);
        raw.send_body(&body).await;
        match server.await.unwrap() {
            Err(ReplicateError::Frame {
                direction: Direction::SourceToPeer,
                frame: 0,
                fault: FrameFault::Malformed(_),
            }) => {}
            other => panic!("{what}: expected a Malformed frame 0 error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_hello_without_the_magic_is_refused() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (_, peer) = pair();
    let server = tokio::spawn(async move { authenticate_source(b, &peer).await.map(|_| ()) });
    let mut raw = RawEnd::new(a, Direction::PeerToSource);
    raw.send(&HandshakeMsg::Hello {
        magic: *b"notmine!",
        version: PROTOCOL_VERSION,
        volume_uuid: UUID,
        nonce: [0; 32],
    })
    .await;
    let reason = refused_reason(raw.recv().await);
    assert!(reason.contains("magic"), "{reason}");
    assert!(matches!(
        server.await.unwrap(),
        Err(ReplicateError::UnexpectedMessage { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_silent_connector_is_dropped_after_the_first_frame_deadline() {
    let (_client_end, b) = tokio::io::duplex(64 * 1024);
    let (_, peer) = pair();
    let result = authenticate_source(b, &peer).await.map(|_| ());
    assert!(
        matches!(
            result,
            Err(ReplicateError::HandshakeTimeout { after_ms }) if after_ms == FIRST_FRAME_TIMEOUT_MS
        ),
        "{result:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_connector_that_stalls_after_its_hello_is_dropped_at_the_handshake_deadline() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (_, peer) = pair();
    let server = tokio::spawn(async move { authenticate_source(b, &peer).await.map(|_| ()) });
    let mut raw = RawEnd::new(a, Direction::PeerToSource);
    raw.send(&RawEnd::hello(PROTOCOL_VERSION)).await;
    assert!(matches!(
        server.await.unwrap(),
        Err(ReplicateError::HandshakeTimeout { after_ms }) if after_ms == HANDSHAKE_TIMEOUT_MS
    ));
}

#[tokio::test]
async fn a_connection_closed_during_the_handshake_is_reported_as_such() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    drop(a);
    let (_, peer) = pair();
    let result = authenticate_source(b, &peer).await.map(|_| ());
    assert!(
        matches!(
            result,
            Err(ReplicateError::ConnectionClosed {
                direction: Direction::SourceToPeer,
                frame: 0
            })
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn an_unauthenticated_connector_cannot_make_the_peer_buffer_a_big_frame() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (_, peer) = pair();
    let server = tokio::spawn(async move { authenticate_source(b, &peer).await.map(|_| ()) });
    let mut a = a;
    // Announce a 1 MiB Hello and send only the prefix: refused from the prefix alone.
    a.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
    match server.await.unwrap() {
        Err(ReplicateError::Frame {
            frame: 0,
            fault: FrameFault::TooLarge { len, max },
            ..
        }) => {
            assert_eq!(
                (len, max),
                (1 << 20, twinfs_replicate::frame::MAX_HANDSHAKE_FRAME_BYTES)
            );
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}
