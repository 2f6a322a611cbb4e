//! Handshake: success, and every refusal with the reason each side sees.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
use twinfs_replicate::codec;
use twinfs_replicate::frame::{FrameReader, FrameWriter};
use twinfs_replicate::handshake::{HandshakeMsg, PROTOCOL_MAGIC};
use twinfs_replicate::{
    handshake_client, handshake_server, AppliedCp, Direction, FrameFault, Message, ReplicateError,
    ResumePoint, Secret, PROTOCOL_VERSION,
};

const UUID: [u8; 16] = *b"volume-uuid-0001";
const OTHER_UUID: [u8; 16] = *b"volume-uuid-0002";

fn secret(text: &str) -> Secret {
    Secret::from_bytes(text.as_bytes()).expect("test secrets are long enough")
}

fn resume() -> ResumePoint {
    ResumePoint {
        applied_cp: Some(AppliedCp {
            cp: 41,
            root_hash: [7; 32],
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
        let body = self.reader.read_frame().await.unwrap()?;
        Some(codec::decode(body).unwrap())
    }

    fn hello(version: u32) -> HandshakeMsg {
        HandshakeMsg::Hello {
            magic: PROTOCOL_MAGIC,
            version,
            volume_uuid: UUID,
            nonce: [9; 32],
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
async fn handshake_with_the_same_secret_delivers_the_resume_point_and_opens_a_session() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (source_secret, peer_secret) = (
        secret("correct horse battery staple"),
        secret("correct horse battery staple"),
    );
    let (client, server) = tokio::join!(
        handshake_client(a, &source_secret, UUID),
        handshake_server(b, &peer_secret, resume(), accept_bound),
    );
    let (mut source, source_info) = client.unwrap();
    let (mut peer, peer_info) = server.unwrap();

    assert_eq!(source_info.resume, resume());
    assert_eq!(source_info, peer_info);
    assert_eq!(source_info.version, PROTOCOL_VERSION);
    assert_eq!(peer_info.volume_uuid, UUID);

    source
        .send(&Message::Transfer {
            id: 1,
            batch: b"batch one".to_vec(),
        })
        .await
        .unwrap();
    assert_eq!(
        peer.recv().await.unwrap(),
        Message::Transfer {
            id: 1,
            batch: b"batch one".to_vec()
        }
    );
    peer.send(&Message::TransferAck { id: 1 }).await.unwrap();
    assert_eq!(source.recv().await.unwrap(), Message::TransferAck { id: 1 });
    // Handshake frames count: source sent Hello, ClientProof, then frame 2; the peer
    // sent Challenge, Accepted, Welcome, then frame 3.
    assert_eq!(source.sender().frames_sent(), 3);
    assert_eq!(peer.receiver().frames_received(), 3);
    assert_eq!(peer.sender().frames_sent(), 4);
    assert_eq!(source.receiver().frames_received(), 4);
    assert_eq!(
        source.sender().bytes_sent(),
        peer.receiver().bytes_received()
    );
}

#[tokio::test]
async fn handshake_works_over_loopback_tcp_for_a_new_peer() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fresh = ResumePoint {
        applied_cp: None,
        durable_transfer: 0,
    };
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let s = secret("a shared secret of some length");
        let (mut peer, info) = handshake_server(stream, &s, fresh, accept_bound)
            .await
            .unwrap();
        let msg = peer.recv().await.unwrap();
        (info, msg)
    });
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let s = secret("a shared secret of some length");
    let (mut source, info) = handshake_client(stream, &s, UUID).await.unwrap();
    assert_eq!(info.resume, fresh);
    source.close().await.unwrap();
    let (peer_info, msg) = server.await.unwrap();
    assert_eq!(peer_info.volume_uuid, UUID);
    assert_eq!(msg, Message::Bye);
}

#[tokio::test]
async fn wrong_secret_is_refused_on_both_sides_with_a_clear_message() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let uuid_checked = Arc::new(AtomicBool::new(false));
    let flag = uuid_checked.clone();
    let (s1, s2) = (
        secret("the source's secret, version A"),
        secret("the peer's secret, version B!"),
    );
    let (client, server) = tokio::join!(
        handshake_client(a, &s1, UUID),
        handshake_server(b, &s2, resume(), move |uuid| {
            flag.store(true, Ordering::SeqCst);
            accept_bound(uuid)
        }),
    );
    let server_err = server.err().expect("peer must refuse");
    assert!(
        matches!(server_err, ReplicateError::AuthFailed(_)),
        "{server_err}"
    );
    assert!(server_err.to_string().contains("--secret"), "{server_err}");
    match client.err().expect("source must be refused") {
        ReplicateError::Refused { reason } => {
            assert!(reason.contains("shared secret did not match"), "{reason}");
            assert!(reason.contains("--secret"), "{reason}");
        }
        other => panic!("expected Refused, got {other}"),
    }
    assert!(
        !uuid_checked.load(Ordering::SeqCst),
        "the binding policy must not run for an unauthenticated source"
    );
}

#[tokio::test]
async fn a_connector_without_the_secret_learns_only_a_nonce_and_a_refusal() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let s = secret("the peer's real secret value");
        handshake_server(b, &s, resume(), accept_bound)
            .await
            .map(|_| ())
    });
    let mut raw = RawEnd::new(a, Direction::PeerToSource);
    raw.send(&RawEnd::hello(PROTOCOL_VERSION)).await;
    let challenge = raw.recv().await;
    assert!(matches!(
        challenge,
        Some(HandshakeMsg::Challenge {
            version: PROTOCOL_VERSION,
            ..
        })
    ));
    raw.send(&HandshakeMsg::ClientProof { proof: [0x55; 32] })
        .await;
    let reason = refused_reason(raw.recv().await);
    assert!(reason.contains("shared secret"), "{reason}");
    assert!(!reason.contains(&twinfs_fs::hex(&resume().applied_cp.unwrap().root_hash)));
    assert_eq!(raw.recv().await, None, "nothing follows a refusal");
    assert!(matches!(
        server.await.unwrap(),
        Err(ReplicateError::AuthFailed(_))
    ));
}

#[tokio::test]
async fn an_impostor_peer_that_cannot_prove_the_secret_is_refused_by_the_source() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let client = tokio::spawn(async move {
        let s = secret("the source's real secret value");
        handshake_client(a, &s, UUID).await.map(|_| ())
    });
    let mut raw = RawEnd::new(b, Direction::SourceToPeer);
    assert!(matches!(raw.recv().await, Some(HandshakeMsg::Hello { .. })));
    raw.send(&HandshakeMsg::Challenge {
        version: PROTOCOL_VERSION,
        nonce: [1; 32],
    })
    .await;
    assert!(matches!(
        raw.recv().await,
        Some(HandshakeMsg::ClientProof { .. })
    ));
    raw.send(&HandshakeMsg::Accepted { proof: [2; 32] }).await;
    let reason = refused_reason(raw.recv().await);
    assert!(reason.contains("secret"), "{reason}");
    match client.await.unwrap() {
        Err(ReplicateError::AuthFailed(msg)) => {
            assert!(msg.contains("peer did not prove"), "{msg}")
        }
        other => panic!("expected AuthFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn a_volume_other_than_the_bound_one_is_refused_with_the_policy_reason() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let s = secret("one secret for both machines");
    let (client, server) = tokio::join!(
        handshake_client(a, &s, OTHER_UUID),
        handshake_server(b, &s, resume(), accept_bound),
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

#[tokio::test]
async fn a_source_with_another_protocol_version_is_refused_with_both_versions_named() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let s = secret("one secret for both machines");
        handshake_server(b, &s, resume(), accept_bound)
            .await
            .map(|_| ())
    });
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
async fn a_peer_with_another_protocol_version_is_refused_by_the_source() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let client = tokio::spawn(async move {
        let s = secret("one secret for both machines");
        handshake_client(a, &s, UUID).await.map(|_| ())
    });
    let mut raw = RawEnd::new(b, Direction::SourceToPeer);
    assert!(matches!(
        raw.recv().await,
        Some(HandshakeMsg::Hello {
            version: PROTOCOL_VERSION,
            ..
        })
    ));
    raw.send(&HandshakeMsg::Challenge {
        version: PROTOCOL_VERSION + 1,
        nonce: [3; 32],
    })
    .await;
    let reason = refused_reason(raw.recv().await);
    assert!(
        reason.contains("source speaks protocol version"),
        "{reason}"
    );
    assert!(matches!(
        client.await.unwrap(),
        Err(ReplicateError::VersionMismatch { theirs, .. }) if theirs == PROTOCOL_VERSION + 1
    ));
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
        let server = tokio::spawn(async move {
            let s = secret("one secret for both machines");
            handshake_server(b, &s, resume(), accept_bound)
                .await
                .map(|_| ())
        });
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
    let server = tokio::spawn(async move {
        let s = secret("one secret for both machines");
        handshake_server(b, &s, resume(), accept_bound)
            .await
            .map(|_| ())
    });
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
async fn a_silent_connector_times_out() {
    let (_client_end, b) = tokio::io::duplex(64 * 1024);
    let s = secret("one secret for both machines");
    let result = handshake_server(b, &s, resume(), accept_bound).await;
    assert!(
        matches!(
            result,
            Err(ReplicateError::HandshakeTimeout { after_ms: 10_000 })
        ),
        "{:?}",
        result.err()
    );
}

#[tokio::test]
async fn a_connection_closed_during_the_handshake_is_reported_as_such() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    drop(a);
    let s = secret("one secret for both machines");
    let result = handshake_server(b, &s, resume(), accept_bound).await;
    assert!(
        matches!(
            result,
            Err(ReplicateError::ConnectionClosed {
                direction: Direction::SourceToPeer,
                frame: 0
            })
        ),
        "{:?}",
        result.err()
    );
}

#[tokio::test]
async fn an_unauthenticated_connector_cannot_make_the_peer_buffer_a_big_frame() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let s = secret("one secret for both machines");
        handshake_server(b, &s, resume(), accept_bound)
            .await
            .map(|_| ())
    });
    let mut a = a;
    // Announce a 1 MiB Hello and send only the prefix: refused from the prefix alone.
    tokio::io::AsyncWriteExt::write_all(&mut a, &(1u32 << 20).to_be_bytes())
        .await
        .unwrap();
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
