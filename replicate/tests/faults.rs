//! Sessions under network faults: every damaged frame makes `recv` fail with the
//! direction, the frame number and what failed, and nothing damaged is ever returned.
//! Also: privacy of the stream, replay across sessions, and a long clean session.

mod common;

use std::time::{Duration, Instant};

use proptest::prelude::*;
use tokio::io::DuplexStream;
use twinfs_replicate::fault::{faulty_duplex, Fault, FaultPlan};
use twinfs_replicate::{
    handshake_client, handshake_server, Credentials, Direction, FrameFault, Message,
    ReplicateError, ResumePoint, Secret, Session,
};

const UUID: [u8; 16] = [0x11; 16];
/// Number of the first session frame source→peer (after Hello, NoiseInit, NoiseFinal).
const FIRST_S2P: u64 = 3;
/// Number of the first session frame peer→source (after NoiseReply, Authenticated, Admission).
const FIRST_P2S: u64 = 3;
/// Size the test source announces.
const BLOCKS: u64 = 1 << 16;

/// The source's and the peer's credentials (one key pair each, made once).
fn credentials() -> (Credentials, Credentials) {
    static PAIR: std::sync::OnceLock<(Credentials, Credentials)> = std::sync::OnceLock::new();
    PAIR.get_or_init(|| {
        let secret = Secret::from_bytes(b"a secret both test ends share: 0c9e47f1").unwrap();
        Credentials::pair(&secret).unwrap()
    })
    .clone()
}

fn fresh() -> ResumePoint {
    ResumePoint {
        applied_cp: None,
        durable_transfer: 0,
    }
}

async fn connect(s2p: FaultPlan, p2s: FaultPlan) -> (Session<DuplexStream>, Session<DuplexStream>) {
    let (a, b) = faulty_duplex(s2p, p2s);
    let (cs, cp) = credentials();
    let (client, server) = tokio::join!(
        handshake_client(a, &cs, UUID, BLOCKS),
        handshake_server(b, &cp, fresh(), |_| Ok(()))
    );
    (client.unwrap().0, server.unwrap().0)
}

/// A transfer whose content is a function of its ID, so any damage would show.
fn transfer(id: u64) -> Message {
    let len = (id as usize * 37) % 2000;
    let batch = (0..len)
        .map(|i| (i as u64).wrapping_mul(id).to_le_bytes()[0])
        .collect();
    Message::Transfer { id, batch }
}

/// Sends transfers 1..=count source→peer with `fault` on the frame carrying transfer
/// `hit`, then a closing `Ping` (so that even a fault on the last transfer is followed by
/// a frame that reveals it), and reads at the peer until the `Ping` or the first error.
/// Returns the transfers delivered, the error, and the error of one more `recv`.
async fn run_with_fault(
    fault: Fault,
    hit: u64,
    count: u64,
) -> (Vec<Message>, Option<ReplicateError>, Option<ReplicateError>) {
    let plan = FaultPlan::new().at(FIRST_S2P + hit - 1, fault);
    let (mut source, mut peer) = connect(plan, FaultPlan::new()).await;
    for id in 1..=count {
        source.send(&transfer(id)).await.unwrap();
    }
    source.send(&Message::Ping { nonce: count }).await.unwrap();
    // The source stays open, so an error is about the frames, not the end of the stream.
    let mut delivered = Vec::new();
    let first_error = loop {
        match peer.recv().await {
            Ok(Message::Ping { nonce }) => {
                assert_eq!(nonce, count);
                break None;
            }
            Ok(msg) => delivered.push(msg),
            Err(e) => break Some(e),
        }
    };
    let after = if first_error.is_some() {
        peer.recv().await.err()
    } else {
        None
    };
    drop(source);
    (delivered, first_error, after)
}

fn frame_error(err: Option<ReplicateError>) -> (Direction, u64, FrameFault) {
    match err {
        Some(ReplicateError::Frame {
            direction,
            frame,
            fault,
        }) => (direction, frame, fault),
        other => panic!("expected a frame error, got {other:?}"),
    }
}

fn assert_prefix_of_sent(delivered: &[Message]) {
    for (i, msg) in delivered.iter().enumerate() {
        assert_eq!(msg, &transfer(i as u64 + 1), "message {i} damaged");
    }
}

fn assert_closed(after: Option<ReplicateError>) {
    assert!(
        matches!(
            after,
            Some(ReplicateError::SessionClosed {
                direction: Direction::SourceToPeer
            })
        ),
        "after an error the half stays closed, got {after:?}"
    );
}

#[tokio::test]
async fn a_flipped_bit_in_the_payload_fails_authentication_at_that_frame() {
    let (delivered, err, after) = run_with_fault(Fault::FlipBit { bit: 8 * 30 + 3 }, 3, 5).await;
    assert_eq!(delivered.len(), 2);
    assert_prefix_of_sent(&delivered);
    assert_eq!(
        frame_error(err),
        (Direction::SourceToPeer, FIRST_S2P + 2, FrameFault::BadTag)
    );
    assert_closed(after);
}

#[tokio::test]
async fn a_flipped_bit_in_the_sequence_number_fails_authentication_too() {
    let (delivered, err, _) = run_with_fault(Fault::FlipBit { bit: 7 * 8 + 5 }, 2, 4).await;
    assert_eq!(delivered, vec![transfer(1)]);
    assert_eq!(
        frame_error(err),
        (Direction::SourceToPeer, FIRST_S2P + 1, FrameFault::BadTag)
    );
}

#[tokio::test]
async fn a_flipped_bit_in_the_tag_fails_authentication() {
    // Bit index modulo the body's bits: -1 from a multiple lands in the last byte.
    let (delivered, err, _) = run_with_fault(Fault::FlipBit { bit: usize::MAX }, 1, 2).await;
    assert!(delivered.is_empty());
    assert_eq!(
        frame_error(err),
        (Direction::SourceToPeer, FIRST_S2P, FrameFault::BadTag)
    );
}

#[tokio::test]
async fn a_dropped_frame_is_reported_as_missing() {
    let (delivered, err, after) = run_with_fault(Fault::Drop, 3, 5).await;
    assert_prefix_of_sent(&delivered);
    assert_eq!(delivered.len(), 2);
    let (dir, frame, fault) = frame_error(err);
    assert_eq!((dir, frame), (Direction::SourceToPeer, FIRST_S2P + 2));
    assert_eq!(
        fault,
        FrameFault::OutOfSequence {
            expected: FIRST_S2P + 2,
            got: FIRST_S2P + 3
        }
    );
    assert!(
        fault.to_string().contains("dropped or reordered"),
        "{fault}"
    );
    assert_closed(after);
}

#[tokio::test]
async fn a_duplicated_frame_is_reported_as_a_replay() {
    let (delivered, err, after) = run_with_fault(Fault::Duplicate, 2, 4).await;
    assert_eq!(delivered, vec![transfer(1), transfer(2)]);
    let (_, frame, fault) = frame_error(err);
    assert_eq!(frame, FIRST_S2P + 2);
    assert_eq!(
        fault,
        FrameFault::OutOfSequence {
            expected: FIRST_S2P + 2,
            got: FIRST_S2P + 1
        }
    );
    assert!(
        fault.to_string().contains("replayed or duplicated"),
        "{fault}"
    );
    assert_closed(after);
}

#[tokio::test]
async fn reordered_frames_are_refused_before_either_is_delivered() {
    let (delivered, err, _) = run_with_fault(Fault::Reorder, 2, 4).await;
    assert_eq!(delivered, vec![transfer(1)]);
    assert_eq!(
        frame_error(err).2,
        FrameFault::OutOfSequence {
            expected: FIRST_S2P + 1,
            got: FIRST_S2P + 2
        }
    );
}

#[tokio::test]
async fn a_frame_truncated_with_a_consistent_length_fails_authentication() {
    let (delivered, err, _) = run_with_fault(Fault::Truncate { keep: 40 }, 2, 3).await;
    assert_eq!(delivered, vec![transfer(1)]);
    assert_eq!(
        frame_error(err),
        (Direction::SourceToPeer, FIRST_S2P + 1, FrameFault::BadTag)
    );
}

#[tokio::test]
async fn a_frame_truncated_below_the_sealed_minimum_is_too_short() {
    let (_, err, _) = run_with_fault(Fault::Truncate { keep: 10 }, 1, 2).await;
    assert_eq!(
        frame_error(err).2,
        FrameFault::TooShort { len: 10, min: 24 }
    );
}

#[tokio::test]
async fn a_stream_cut_mid_frame_is_a_truncated_frame() {
    let (delivered, err, after) = run_with_fault(Fault::Cut { keep: 10 }, 3, 5).await;
    assert_eq!(delivered, vec![transfer(1), transfer(2)]);
    let (dir, frame, fault) = frame_error(err);
    assert_eq!((dir, frame), (Direction::SourceToPeer, FIRST_S2P + 2));
    match fault {
        FrameFault::Truncated { got, expected } => {
            assert_eq!(got, 14);
            assert!(expected > got);
        }
        other => panic!("expected Truncated, got {other}"),
    }
    assert_closed(after);
}

#[tokio::test]
async fn a_delayed_frame_arrives_late_and_intact() {
    let start = Instant::now();
    let (delivered, err, _) = run_with_fault(Fault::Delay(Duration::from_millis(150)), 2, 4).await;
    assert!(err.is_none(), "{err:?}");
    assert_prefix_of_sent(&delivered);
    assert_eq!(delivered.len(), 4);
    assert!(start.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn a_forged_length_above_the_maximum_is_refused() {
    let forged = vec![0u8; twinfs_replicate::frame::MAX_FRAME_BYTES + 1];
    let (_, err, _) = run_with_fault(Fault::Replace(forged), 1, 1).await;
    assert!(matches!(frame_error(err).2, FrameFault::TooLarge { .. }));
}

#[tokio::test]
async fn faults_on_acks_are_caught_by_the_source_the_same_way() {
    let p2s = FaultPlan::new().at(FIRST_P2S + 1, Fault::FlipBit { bit: 100 });
    let (mut source, mut peer) = connect(FaultPlan::new(), p2s).await;
    for id in 1..=3 {
        peer.send(&Message::TransferAck { id }).await.unwrap();
    }
    assert_eq!(source.recv().await.unwrap(), Message::TransferAck { id: 1 });
    let err = source.recv().await.unwrap_err();
    assert_eq!(
        frame_error(Some(err)),
        (Direction::PeerToSource, FIRST_P2S + 1, FrameFault::BadTag)
    );
}

#[tokio::test]
async fn a_frame_from_another_session_does_not_open() {
    // Record a real sealed frame of session one…
    let tap = FaultPlan::new().record();
    let (mut source1, mut peer1) = connect(tap.clone(), FaultPlan::new()).await;
    source1.send(&transfer(1)).await.unwrap();
    assert_eq!(peer1.recv().await.unwrap(), transfer(1));
    let captured = tap.recorded()[FIRST_S2P as usize].clone();
    // …and replay it, at the very same frame number, into session two (same secret).
    let replay = FaultPlan::new().at(FIRST_S2P, Fault::Replace(captured));
    let (mut source2, mut peer2) = connect(replay, FaultPlan::new()).await;
    source2.send(&transfer(7)).await.unwrap();
    let err = peer2.recv().await.unwrap_err();
    assert_eq!(
        frame_error(Some(err)),
        (Direction::SourceToPeer, FIRST_S2P, FrameFault::BadTag)
    );
}

#[tokio::test]
async fn a_frame_sealed_before_a_rekey_does_not_open_after_it() {
    // Transfers 1 and 2, a rekey marker, then transfer 3, which the relay
    // replaces with the recording of transfer 1: under the same key that
    // would be an authentic replay (OutOfSequence); under the next key it
    // does not authenticate at all.
    let tap = FaultPlan::new().record();
    let (source, mut peer) = connect(tap.clone(), FaultPlan::new()).await;
    let (mut tx, _rx) = source.split();
    for id in 1..=2 {
        tx.send(&transfer(id)).await.unwrap();
        assert_eq!(peer.recv().await.unwrap(), transfer(id));
    }
    let old = tap.recorded()[FIRST_S2P as usize].clone();
    tap.inject_at(FIRST_S2P + 3, Fault::Replace(old));
    tx.set_rekey_budget(0, Duration::from_secs(3600));
    tx.send(&transfer(3)).await.unwrap();
    assert_eq!(tx.rekeys(), 1);
    assert_eq!(
        frame_error(peer.recv().await.err()),
        (Direction::SourceToPeer, FIRST_S2P + 3, FrameFault::BadTag)
    );
}

#[tokio::test]
async fn a_recorded_handshake_cannot_be_replayed() {
    let tap = FaultPlan::new().record();
    let _ = connect(tap.clone(), FaultPlan::new()).await;
    // The source's last handshake message, which proves its key and the secret…
    let old_proof = tap.recorded()[2].clone();
    // …does not authenticate in a new handshake (the peer's ephemeral key differs).
    let replay = FaultPlan::new().at(2, Fault::Replace(old_proof));
    let (a, b) = faulty_duplex(replay, FaultPlan::new());
    let (cs, cp) = credentials();
    let (client, server) = tokio::join!(
        handshake_client(a, &cs, UUID, BLOCKS),
        handshake_server(b, &cp, fresh(), |_| Ok(()))
    );
    assert!(matches!(server.err(), Some(ReplicateError::AuthFailed(_))));
    assert!(matches!(client.err(), Some(ReplicateError::Refused { .. })));
}

#[tokio::test]
async fn a_corrupted_last_handshake_message_is_refused_as_unauthenticated() {
    let plan = FaultPlan::new().at(2, Fault::FlipBit { bit: 8 * 20 });
    let (a, b) = faulty_duplex(plan, FaultPlan::new());
    let (cs, cp) = credentials();
    let (client, server) = tokio::join!(
        handshake_client(a, &cs, UUID, BLOCKS),
        handshake_server(b, &cp, fresh(), |_| Ok(()))
    );
    assert!(matches!(server.err(), Some(ReplicateError::AuthFailed(_))));
    assert!(matches!(client.err(), Some(ReplicateError::Refused { .. })));
}

#[tokio::test]
async fn a_corrupted_welcome_fails_the_source_handshake_at_frame_two() {
    let plan = FaultPlan::new().at(2, Fault::FlipBit { bit: 8 * 10 });
    let (a, b) = faulty_duplex(FaultPlan::new(), plan);
    let (cs, cp) = credentials();
    let (client, _server) = tokio::join!(
        handshake_client(a, &cs, UUID, BLOCKS),
        handshake_server(b, &cp, fresh(), |_| Ok(()))
    );
    assert_eq!(
        frame_error(client.err()),
        (Direction::PeerToSource, 2, FrameFault::BadTag)
    );
}

#[tokio::test]
async fn the_stream_is_private_no_payload_byte_string_shows_on_the_wire() {
    let tap = FaultPlan::new().record();
    let (mut source, mut peer) = connect(tap.clone(), FaultPlan::new()).await;
    let marker = b"PLAINTEXT-MARKER-THAT-MUST-NOT-LEAK".to_vec();
    let msg = Message::Transfer {
        id: 1,
        batch: marker.repeat(10),
    };
    source.send(&msg).await.unwrap();
    assert_eq!(peer.recv().await.unwrap(), msg);
    let wire = &tap.recorded()[FIRST_S2P as usize];
    assert!(wire.len() > marker.len() * 10);
    assert!(
        !wire.windows(8).any(|w| marker.windows(8).any(|m| m == w)),
        "payload visible on the wire"
    );
}

#[tokio::test]
async fn a_clean_end_of_stream_is_reported_as_closed_with_the_frame_number() {
    let (source, mut peer) = connect(FaultPlan::new(), FaultPlan::new()).await;
    drop(source);
    let err = peer.recv().await.unwrap_err();
    assert!(matches!(
        err,
        ReplicateError::ConnectionClosed {
            direction: Direction::SourceToPeer,
            frame: FIRST_S2P
        }
    ));
}

#[tokio::test]
async fn an_oversized_or_invalid_message_is_refused_before_sending_and_the_session_goes_on() {
    let (mut source, mut peer) = connect(FaultPlan::new(), FaultPlan::new()).await;
    let too_big = Message::Transfer {
        id: 1,
        batch: vec![0; twinfs_replicate::message::MAX_BATCH_BYTES + 1],
    };
    assert!(matches!(
        source.send(&too_big).await,
        Err(ReplicateError::InvalidOutgoing {
            what: "Transfer",
            ..
        })
    ));
    let wrong_way = Message::TransferAck { id: 1 };
    assert!(matches!(
        source.send(&wrong_way).await,
        Err(ReplicateError::InvalidOutgoing { .. })
    ));
    source.send(&transfer(1)).await.unwrap();
    assert_eq!(peer.recv().await.unwrap(), transfer(1));
}

#[tokio::test]
async fn the_largest_transfer_fits_in_one_frame() {
    let (mut source, mut peer) = connect(FaultPlan::new(), FaultPlan::new()).await;
    let big = Message::Transfer {
        id: 1,
        batch: vec![0x77; twinfs_replicate::message::MAX_BATCH_BYTES],
    };
    let sender = tokio::spawn(async move {
        let n = source.send(&big).await.unwrap();
        (source, n)
    });
    let got = peer.recv().await.unwrap();
    let (_source, wire) = sender.await.unwrap();
    assert!(wire <= twinfs_replicate::frame::MAX_FRAME_BYTES + 4);
    assert!(
        matches!(got, Message::Transfer { id: 1, batch } if batch.len() == twinfs_replicate::message::MAX_BATCH_BYTES)
    );
}

/// Thousands of frames each way at once over split halves, through the relays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_carries_thousands_of_frames_both_ways_with_counters_intact() {
    const COUNT: u64 = 3000;
    let (source, peer) = connect(FaultPlan::new(), FaultPlan::new()).await;
    let (mut source_tx, mut source_rx) = source.split();
    let (mut peer_tx, mut peer_rx) = peer.split();
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::channel::<u64>(64);

    let forwarder = tokio::spawn(async move {
        let mut wire = 0usize;
        for id in 1..=COUNT {
            wire += source_tx.send(&transfer(id)).await.unwrap();
            if id % 100 == 0 {
                wire += source_tx.send(&Message::Ping { nonce: id }).await.unwrap();
            }
        }
        source_tx.close().await.unwrap();
        (source_tx, wire)
    });
    let peer_reader = tokio::spawn(async move {
        let mut next = 1;
        loop {
            match peer_rx.recv().await.unwrap() {
                Message::Transfer { id, batch } => {
                    assert_eq!(Message::Transfer { id, batch }, transfer(next));
                    ack_tx.send(id).await.unwrap();
                    next += 1;
                }
                Message::Ping { nonce } => assert_eq!(nonce, next - 1),
                Message::Bye => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        peer_rx
    });
    let peer_writer = tokio::spawn(async move {
        while let Some(id) = ack_rx.recv().await {
            peer_tx.send(&Message::TransferAck { id }).await.unwrap();
        }
        peer_tx.close().await.unwrap();
        peer_tx
    });
    let ack_reader = tokio::spawn(async move {
        let mut expected = 1;
        loop {
            match source_rx.recv().await.unwrap() {
                Message::TransferAck { id } => {
                    assert_eq!(id, expected);
                    expected += 1;
                }
                Message::Bye => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(expected, COUNT + 1);
        source_rx
    });

    let (source_tx, wire) = forwarder.await.unwrap();
    let peer_rx = peer_reader.await.unwrap();
    let peer_tx = peer_writer.await.unwrap();
    let source_rx = ack_reader.await.unwrap();

    let s2p_frames = FIRST_S2P + COUNT + COUNT / 100 + 1;
    let p2s_frames = FIRST_P2S + COUNT + 1;
    assert_eq!(source_tx.frames_sent(), s2p_frames);
    assert_eq!(peer_rx.frames_received(), s2p_frames);
    assert_eq!(peer_tx.frames_sent(), p2s_frames);
    assert_eq!(source_rx.frames_received(), p2s_frames);
    assert_eq!(source_tx.bytes_sent(), peer_rx.bytes_received());
    assert_eq!(peer_tx.bytes_sent(), source_rx.bytes_received());
    assert!(wire as u64 <= source_tx.bytes_sent());
}

/// Every fault, at every position of a short exchange: the receiver returns exactly
/// the messages before the damaged frame (intact), then only errors.
#[tokio::test]
async fn no_fault_ever_delivers_a_damaged_or_out_of_order_message() {
    let faults = [
        Fault::Drop,
        Fault::Truncate { keep: 30 },
        Fault::Cut { keep: 3 },
        Fault::FlipBit { bit: 0 },
        Fault::FlipBit { bit: 200 },
        Fault::Duplicate,
        Fault::Reorder,
        Fault::Replace(vec![0; 64]),
    ];
    for fault in faults {
        for hit in 1..=4 {
            let (delivered, err, after) = run_with_fault(fault.clone(), hit, 4).await;
            let expected_ok = match fault {
                Fault::Duplicate => hit,
                _ => hit - 1,
            };
            assert_eq!(
                delivered.len() as u64,
                expected_ok,
                "{fault:?} on transfer {hit}"
            );
            assert_prefix_of_sent(&delivered);
            assert!(err.is_some(), "{fault:?} on transfer {hit} went unnoticed");
            assert!(after.is_some());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_valid_message_survives_a_sealed_session_both_ways(msgs in prop::collection::vec(common::message(), 1..6)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (a, b) = tokio::io::duplex(1 << 20);
            let (cs, cp) = credentials();
            let (client, server) = tokio::join!(handshake_client(a, &cs, UUID, BLOCKS), handshake_server(b, &cp, fresh(), |_| Ok(())));
            let (mut source, mut peer) = (client.unwrap().0, server.unwrap().0);
            for msg in &msgs {
                let (sender, receiver) = if msg.may_travel(Direction::SourceToPeer) {
                    (&mut source, &mut peer)
                } else {
                    (&mut peer, &mut source)
                };
                sender.send(msg).await.unwrap();
                assert_eq!(&receiver.recv().await.unwrap(), msg);
            }
        });
    }
}
