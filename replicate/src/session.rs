//! An established session: sealed frames in both directions, splittable into a send
//! half and a receive half so that a forwarder can send transfers while another task
//! receives acknowledgements.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};

use crate::codec;
use crate::error::{Direction, FrameFault, ReplicateError, Result};
use crate::frame::{FrameReader, FrameWriter};
use crate::message::{
    decompress_transfer, FullBlocksRef, Message, TransferCompressor, TransferRef,
};
use crate::seal::{Sealer, SEQ_BYTES};

/// Both halves of a session over one stream `S` (a `TcpStream` in production, an
/// in-memory or fault-injecting stream in tests).
pub struct Session<S> {
    tx: SendHalf<WriteHalf<S>>,
    rx: RecvHalf<ReadHalf<S>>,
}

impl<S: AsyncRead + AsyncWrite> Session<S> {
    pub(crate) fn new(tx: SendHalf<WriteHalf<S>>, rx: RecvHalf<ReadHalf<S>>) -> Self {
        Session { tx, rx }
    }

    /// Seals and sends one message; returns the wire bytes it took.
    pub async fn send(&mut self, msg: &Message) -> Result<usize> {
        self.tx.send(msg).await
    }

    /// Receives, opens and validates the next message.
    pub async fn recv(&mut self) -> Result<Message> {
        self.rx.recv().await
    }

    /// Sends a `Transfer` of a borrowed batch (see [`SendHalf::send_transfer`]).
    pub async fn send_transfer(&mut self, id: u64, batch: &[u8]) -> Result<usize> {
        self.tx.send_transfer(id, batch).await
    }

    /// Sends `Bye` and shuts the write direction down.
    pub async fn close(&mut self) -> Result<()> {
        self.tx.close().await
    }

    /// The two halves, to be driven by different tasks.
    pub fn split(self) -> (SendHalf<WriteHalf<S>>, RecvHalf<ReadHalf<S>>) {
        (self.tx, self.rx)
    }

    /// The send half (counters).
    pub fn sender(&self) -> &SendHalf<WriteHalf<S>> {
        &self.tx
    }

    /// The receive half (counters).
    pub fn receiver(&self) -> &RecvHalf<ReadHalf<S>> {
        &self.rx
    }
}

/// The sending half of a session. Not cancel-safe: dropping a `send` future half-way
/// closes the half (the other side could no longer find frame boundaries).
pub struct SendHalf<W> {
    frames: FrameWriter<W>,
    sealer: Sealer,
    compressor: TransferCompressor,
}

impl<W: AsyncWrite + Unpin> SendHalf<W> {
    pub(crate) fn new(frames: FrameWriter<W>, key: &[u8; 32]) -> Self {
        SendHalf {
            frames,
            sealer: Sealer::new(key),
            compressor: TransferCompressor::default(),
        }
    }

    /// Seals and sends one message; returns the wire bytes it took (for the
    /// `log_sent`/`cp_sent` counters). A message that breaks a limit or belongs to the
    /// other direction is refused with [`ReplicateError::InvalidOutgoing`]; nothing is
    /// sent and the half stays usable.
    pub async fn send(&mut self, msg: &Message) -> Result<usize> {
        let invalid = |problem: String| ReplicateError::InvalidOutgoing {
            what: msg.kind(),
            problem,
        };
        msg.validate().map_err(invalid)?;
        if !msg.may_travel(self.frames.direction()) {
            return Err(invalid(format!(
                "it is not sent {}",
                self.frames.direction()
            )));
        }
        self.send_sealed(msg, msg.kind()).await
    }

    /// Sends `Message::Transfer { id, batch }` without the caller building a `Message`
    /// (no copy of the batch), or `TransferLz4` when the batch compresses well;
    /// the receiving half hands both out as `Transfer`.
    pub async fn send_transfer(&mut self, id: u64, batch: &[u8]) -> Result<usize> {
        let msg = TransferRef::Transfer { id, batch };
        msg.validate()
            .map_err(|problem| ReplicateError::InvalidOutgoing {
                what: "Transfer",
                problem,
            })?;
        self.check_source_to_peer("Transfer")?;
        if let Some(data) = self.compressor.compress(batch) {
            let packed = Message::TransferLz4 {
                id,
                raw_len: batch.len() as u32,
                data,
            };
            return self.send_sealed(&packed, "TransferLz4").await;
        }
        self.send_sealed(&msg, "Transfer").await
    }

    /// Sends `Message::CpBlocks` of CP `cp` whose blocks `blocks[i] = (addr,
    /// hash)` travel whole, their contents back to back in `data`, without
    /// copying them into a `Message` first; the receiving half hands out
    /// `CpBlocks`.
    pub async fn send_full_blocks(
        &mut self,
        cp: u64,
        blocks: &[(u64, [u8; 16])],
        data: &[u8],
    ) -> Result<usize> {
        let msg = FullBlocksRef::new(cp, blocks, data).map_err(|problem| {
            ReplicateError::InvalidOutgoing {
                what: "CpBlocks",
                problem,
            }
        })?;
        self.check_source_to_peer("CpBlocks")?;
        self.send_sealed(&msg, "CpBlocks").await
    }

    fn check_source_to_peer(&self, what: &'static str) -> Result<()> {
        if self.frames.direction() != Direction::SourceToPeer {
            return Err(ReplicateError::InvalidOutgoing {
                what,
                problem: format!("it is not sent {}", self.frames.direction()),
            });
        }
        Ok(())
    }

    /// Sends `Bye`, then shuts the write direction down.
    pub async fn close(&mut self) -> Result<()> {
        self.send(&Message::Bye).await?;
        self.frames.shutdown().await
    }

    /// Seals any serializable value as the next frame.
    pub(crate) async fn send_sealed<T: Serialize>(
        &mut self,
        msg: &T,
        what: &'static str,
    ) -> Result<usize> {
        let seq = self.frames.frames_written();
        if seq == u64::MAX {
            return Err(ReplicateError::InvalidOutgoing {
                what,
                problem: "the frame counter is exhausted; reconnect for fresh session keys".into(),
            });
        }
        let buf = self.frames.start_frame();
        buf.extend_from_slice(&[0; SEQ_BYTES]);
        codec::encode_into(msg, buf)?;
        self.sealer.seal_in_place(seq, buf, what)?;
        self.frames.write_started_frame().await
    }

    /// Test hook: seals `plaintext` as the next frame without encoding or checking it,
    /// to show that the receiver rejects authentic frames that are not valid messages.
    #[cfg(test)]
    pub(crate) async fn send_sealed_raw(&mut self, plaintext: &[u8]) -> Result<usize> {
        let seq = self.frames.frames_written();
        let buf = self.frames.start_frame();
        buf.extend_from_slice(&[0; SEQ_BYTES]);
        buf.extend_from_slice(plaintext);
        self.sealer.seal_in_place(seq, buf, "raw")?;
        self.frames.write_started_frame().await
    }

    /// Direction of the frames sent.
    pub fn direction(&self) -> Direction {
        self.frames.direction()
    }

    /// Frames sent on this connection so far, handshake included; also the sequence
    /// number of the next frame.
    pub fn frames_sent(&self) -> u64 {
        self.frames.frames_written()
    }

    /// Wire bytes sent on this connection so far, handshake included.
    pub fn bytes_sent(&self) -> u64 {
        self.frames.bytes_written()
    }
}

/// The receiving half of a session. `recv` is cancel-safe (usable in `tokio::select!`).
/// After any error the half is closed: every later `recv` fails, so nothing that
/// follows a damaged frame is ever returned.
pub struct RecvHalf<R> {
    frames: FrameReader<R>,
    sealer: Sealer,
    closed: bool,
}

impl<R: AsyncRead + Unpin> RecvHalf<R> {
    pub(crate) fn new(frames: FrameReader<R>, key: &[u8; 32]) -> Self {
        RecvHalf {
            frames,
            sealer: Sealer::new(key),
            closed: false,
        }
    }

    /// Receives the next message. Errors name the direction, the frame number and what
    /// failed ([`ReplicateError::Frame`]); a clean end of stream is
    /// [`ReplicateError::ConnectionClosed`].
    pub async fn recv(&mut self) -> Result<Message> {
        let direction = self.frames.direction();
        self.recv_sealed(|plaintext| {
            let msg = Message::decode(plaintext)?;
            if !msg.may_travel(direction) {
                return Err(FrameFault::Limit(format!(
                    "{} is never sent {direction}",
                    msg.kind()
                )));
            }
            decompress_transfer(msg).map_err(FrameFault::Malformed)
        })
        .await
    }

    /// Receives the next sealed frame and decodes it as a `T` (handshake use).
    pub(crate) async fn recv_sealed_as<T: DeserializeOwned>(&mut self) -> Result<T> {
        self.recv_sealed(codec::decode).await
    }

    async fn recv_sealed<T>(
        &mut self,
        decode: impl FnOnce(&[u8]) -> Result<T, FrameFault>,
    ) -> Result<T> {
        let direction = self.frames.direction();
        if self.closed {
            return Err(ReplicateError::SessionClosed { direction });
        }
        let seq = self.frames.frames_read();
        let result = match self.frames.read_frame().await {
            Ok(Some(body)) => self
                .sealer
                .open_in_place(seq, body)
                .and_then(decode)
                .map_err(|fault| ReplicateError::Frame {
                    direction,
                    frame: seq,
                    fault,
                }),
            Ok(None) => Err(ReplicateError::ConnectionClosed {
                direction,
                frame: seq,
            }),
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.closed = true;
        }
        result
    }

    /// Direction of the frames received.
    pub fn direction(&self) -> Direction {
        self.frames.direction()
    }

    /// Frames received on this connection so far, handshake included; also the
    /// sequence number of the next frame due.
    pub fn frames_received(&self) -> u64 {
        self.frames.frames_read()
    }

    /// Wire bytes received on this connection so far, handshake included.
    pub fn bytes_received(&self) -> u64 {
        self.frames.bytes_read()
    }
}

#[cfg(test)]
mod tests {
    //! Authentic frames (sealed with the right key) whose plaintext is not a valid
    //! message: only code inside the crate can make them.

    use super::*;
    use crate::handshake::{handshake_client, handshake_server, ResumePoint};
    use crate::message::{CpBlock, Encoding, BLOCK_BYTES, MAX_BLOCKS_PER_CP_FRAME};
    use crate::secret::Secret;
    use tokio::io::DuplexStream;

    async fn pair() -> (Session<DuplexStream>, Session<DuplexStream>) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let s = Secret::from_bytes(b"unit test secret bytes").expect("long enough");
        let resume = ResumePoint {
            applied_cp: None,
            durable_transfer: 0,
        };
        let (c, d) = tokio::join!(
            handshake_client(a, &s, [0; 16]),
            handshake_server(b, &s, resume, |_| Ok(()))
        );
        (c.expect("client").0, d.expect("server").0)
    }

    async fn fault_after_sealing(plaintext: &[u8]) -> FrameFault {
        let (mut source, mut peer) = pair().await;
        source.tx.send_sealed_raw(plaintext).await.expect("send");
        match peer.recv().await {
            Err(ReplicateError::Frame {
                direction: Direction::SourceToPeer,
                frame: 2,
                fault,
            }) => fault,
            other => panic!("expected a frame 2 error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn authentic_garbage_messagepack_is_malformed() {
        let fault = fault_after_sealing(&[0xc1, 0xc1, 0xc1]).await;
        assert!(matches!(fault, FrameFault::Malformed(_)), "{fault}");
    }

    #[tokio::test]
    async fn an_authentic_frame_of_the_wrong_shape_is_malformed() {
        let welcome = codec::encode(&(1u64, "not a message")).expect("encode");
        let fault = fault_after_sealing(&welcome).await;
        assert!(matches!(fault, FrameFault::Malformed(_)), "{fault}");
    }

    #[tokio::test]
    async fn an_authentic_message_that_breaks_a_limit_is_refused() {
        let bad = Message::CpBlocks {
            cp: 1,
            blocks: vec![CpBlock {
                addr: 5,
                hash: [0; 16],
                enc: Encoding::Full(vec![0; 10]),
            }],
        };
        let fault = fault_after_sealing(&codec::encode(&bad).expect("encode")).await;
        assert!(
            matches!(&fault, FrameFault::Limit(r) if r.contains("block 5")),
            "{fault}"
        );
    }

    #[tokio::test]
    async fn an_authentic_message_in_the_wrong_direction_is_refused() {
        let ack = codec::encode(&Message::TransferAck { id: 1 }).expect("encode");
        let fault = fault_after_sealing(&ack).await;
        assert!(
            matches!(&fault, FrameFault::Limit(r) if r.contains("never sent source-to-peer")),
            "{fault}"
        );
    }

    #[tokio::test]
    async fn a_borrowed_transfer_is_the_same_bytes_as_a_transfer_message() {
        let batch = vec![0x3C; 5000];
        let owned = Message::Transfer {
            id: 77,
            batch: batch.clone(),
        };
        let borrowed = TransferRef::Transfer {
            id: 77,
            batch: &batch,
        };
        assert_eq!(
            codec::encode(&borrowed).expect("encode"),
            owned.encode().expect("encode")
        );
        let (mut source, mut peer) = pair().await;
        let before = peer.receiver().bytes_received();
        let wire = source.send_transfer(77, &batch).await.expect("send");
        assert_eq!(peer.recv().await.expect("recv"), owned);
        assert_eq!(wire as u64, peer.receiver().bytes_received() - before);
        assert!(matches!(
            source.send_transfer(0, &batch).await,
            Err(ReplicateError::InvalidOutgoing { .. })
        ));
        assert!(matches!(
            peer.send_transfer(78, &batch).await,
            Err(ReplicateError::InvalidOutgoing { .. })
        ));
    }

    #[tokio::test]
    async fn borrowed_full_blocks_are_the_same_bytes_as_a_cp_blocks_message() {
        let data: Vec<u8> = (0..3 * BLOCK_BYTES).map(|i| (i % 251) as u8).collect();
        let blocks = [(10, [1; 16]), (11, [2; 16]), (40, [3; 16])];
        let owned = Message::CpBlocks {
            cp: 9,
            blocks: blocks
                .iter()
                .zip(data.chunks(BLOCK_BYTES))
                .map(|(&(addr, hash), d)| CpBlock {
                    addr,
                    hash,
                    enc: Encoding::Full(d.to_vec()),
                })
                .collect(),
        };
        let borrowed = FullBlocksRef::new(9, &blocks, &data).expect("valid");
        assert_eq!(
            codec::encode(&borrowed).expect("encode"),
            owned.encode().expect("encode")
        );
        let (mut source, mut peer) = pair().await;
        let before = peer.receiver().bytes_received();
        let wire = source
            .tx
            .send_full_blocks(9, &blocks, &data)
            .await
            .expect("send");
        assert_eq!(peer.recv().await.expect("recv"), owned);
        assert_eq!(wire as u64, peer.receiver().bytes_received() - before);
        // What validate refuses of the owned message is refused here too,
        // and nothing is sent.
        for (blocks, data) in [
            (&blocks[..2], &data[..]),
            (&blocks[..], &data[..data.len() - 1]),
        ] {
            assert!(matches!(
                source.tx.send_full_blocks(9, blocks, data).await,
                Err(ReplicateError::InvalidOutgoing { .. })
            ));
        }
        let too_many = vec![(5, [0; 16]); MAX_BLOCKS_PER_CP_FRAME + 1];
        let big = vec![0; too_many.len() * BLOCK_BYTES];
        assert!(matches!(
            source.tx.send_full_blocks(9, &too_many, &big).await,
            Err(ReplicateError::InvalidOutgoing { .. })
        ));
        assert!(matches!(
            peer.tx.send_full_blocks(9, &blocks, &data).await,
            Err(ReplicateError::InvalidOutgoing { .. })
        ));
        source.send(&Message::Bye).await.expect("send");
        assert_eq!(peer.recv().await.expect("recv"), Message::Bye);
    }

    #[tokio::test]
    async fn recv_is_cancel_safe() {
        let (mut source, mut peer) = pair().await;
        // A recv cancelled while nothing has arrived loses nothing.
        let timed_out =
            tokio::time::timeout(std::time::Duration::from_millis(20), peer.recv()).await;
        assert!(timed_out.is_err());
        source
            .send(&Message::Ping { nonce: 9 })
            .await
            .expect("send");
        assert_eq!(peer.recv().await.expect("recv"), Message::Ping { nonce: 9 });
    }
}
