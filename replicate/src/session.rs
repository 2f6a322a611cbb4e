//! An established session: sealed frames in both directions, splittable into a send
//! half and a receive half so that a forwarder can send transfers while another task
//! receives acknowledgements. Both halves share the connection's [`Channel`]; each
//! rekeys its own direction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};

use crate::codec;
use crate::error::{Direction, FrameFault, ReplicateError, Result};
use crate::frame::{FrameReader, FrameWriter};
use crate::message::{
    decompress_transfer, FullBlocksRef, Message, TransferCompressor, TransferRef,
};
use crate::noise::Suite;
use crate::seal::{Channel, REKEY_AFTER_BYTES, REKEY_AFTER_MS};

/// Bytes waiting in the source's outbound queue from which `--compress auto`
/// compresses transfers: below it the link keeps up, and lz4 would only cost
/// CPU on both sides.
pub const AUTO_COMPRESS_BACKLOG_BYTES: usize = 8 << 20;

/// When transfers travel lz4-compressed (`--compress`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// Only while transfers wait to be sent (a send backlog of at least
    /// [`AUTO_COMPRESS_BACKLOG_BYTES`]): when the link is the bottleneck.
    #[default]
    Auto,
    /// Every transfer that shrinks enough.
    Always,
    /// Never: the lengths of sealed frames then tell an observer nothing about
    /// how compressible the data is.
    Never,
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Compression::Auto),
            "always" => Ok(Compression::Always),
            "never" => Ok(Compression::Never),
            _ => Err(format!(
                "unknown compression {s:?}: use auto, always or never"
            )),
        }
    }
}

impl Compression {
    /// The name as typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Auto => "auto",
            Compression::Always => "always",
            Compression::Never => "never",
        }
    }
}

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

    /// The send half (counters, settings).
    pub fn sender(&self) -> &SendHalf<WriteHalf<S>> {
        &self.tx
    }

    /// The send half, to change its settings.
    pub fn sender_mut(&mut self) -> &mut SendHalf<WriteHalf<S>> {
        &mut self.tx
    }

    /// The receive half (counters).
    pub fn receiver(&self) -> &RecvHalf<ReadHalf<S>> {
        &self.rx
    }
}

/// When a direction's key is replaced.
#[derive(Clone, Copy, Debug)]
struct RekeyBudget {
    bytes: u64,
    after: Duration,
}

/// The sending half of a session. Not cancel-safe: dropping a `send` future half-way
/// closes the half (the other side could no longer find frame boundaries).
pub struct SendHalf<W> {
    frames: FrameWriter<W>,
    channel: Arc<Channel>,
    /// The message being sealed, encoded.
    plain: Vec<u8>,
    compressor: TransferCompressor,
    compression: Compression,
    backlog: usize,
    budget: RekeyBudget,
    key_bytes: u64,
    key_since: Instant,
    rekeys: u64,
}

impl<W: AsyncWrite + Unpin> SendHalf<W> {
    pub(crate) fn new(frames: FrameWriter<W>, channel: Arc<Channel>) -> Self {
        SendHalf {
            frames,
            channel,
            plain: Vec::new(),
            compressor: TransferCompressor::default(),
            compression: Compression::default(),
            backlog: 0,
            budget: RekeyBudget {
                bytes: REKEY_AFTER_BYTES,
                after: Duration::from_millis(REKEY_AFTER_MS),
            },
            key_bytes: 0,
            key_since: Instant::now(),
            rekeys: 0,
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

    /// Sets when transfers are compressed (the default is [`Compression::Auto`]).
    pub fn set_compression(&mut self, compression: Compression) {
        self.compression = compression;
    }

    /// Tells the half how many bytes wait to be sent after the next transfer
    /// (the source's outbound queue); [`Compression::Auto`] compresses only
    /// while that is at least [`AUTO_COMPRESS_BACKLOG_BYTES`].
    pub fn note_backlog(&mut self, bytes: usize) {
        self.backlog = bytes;
    }

    /// Replaces the rekey budget (tests use small ones to see many rekeys).
    #[doc(hidden)]
    pub fn set_rekey_budget(&mut self, bytes: u64, after: Duration) {
        self.budget = RekeyBudget { bytes, after };
    }

    /// Times this direction's key was replaced on this connection.
    pub fn rekeys(&self) -> u64 {
        self.rekeys
    }

    /// The session's cipher.
    pub fn suite(&self) -> Suite {
        self.channel.suite()
    }

    /// Sends `Message::Transfer { id, batch }` without the caller building a `Message`
    /// (no copy of the batch), or `TransferLz4` when the compression policy asks for it
    /// and the batch compresses well; the receiving half hands both out as `Transfer`.
    pub async fn send_transfer(&mut self, id: u64, batch: &[u8]) -> Result<usize> {
        let msg = TransferRef::Transfer { id, batch };
        msg.validate()
            .map_err(|problem| ReplicateError::InvalidOutgoing {
                what: "Transfer",
                problem,
            })?;
        self.check_source_to_peer("Transfer")?;
        let compress = match self.compression {
            Compression::Always => true,
            Compression::Auto => self.backlog >= AUTO_COMPRESS_BACKLOG_BYTES,
            Compression::Never => false,
        };
        if compress {
            if let Some(data) = self.compressor.compress(batch) {
                let packed = Message::TransferLz4 {
                    id,
                    raw_len: batch.len() as u32,
                    data,
                };
                return self.send_sealed(&packed, "TransferLz4").await;
            }
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

    /// Shuts the write direction down without a `Bye` (after a refusal).
    pub(crate) async fn shutdown(&mut self) -> Result<()> {
        self.frames.shutdown().await
    }

    /// Seals any serializable value as the next frame.
    pub(crate) async fn send_sealed<T: Serialize>(
        &mut self,
        msg: &T,
        what: &'static str,
    ) -> Result<usize> {
        let mut plain = std::mem::take(&mut self.plain);
        plain.clear();
        let encoded = codec::encode_into(msg, &mut plain);
        let sent = match encoded {
            Ok(()) => self.seal_and_write(&plain, what).await,
            Err(e) => Err(e),
        };
        self.plain = plain;
        sent
    }

    /// Seals `plaintext` (never empty: an empty frame is the rekey marker) as
    /// the next frame, after a rekey marker when the key's budget is spent.
    async fn seal_and_write(&mut self, plaintext: &[u8], what: &'static str) -> Result<usize> {
        debug_assert!(!plaintext.is_empty(), "no message encodes to nothing");
        let mut wire = 0;
        if self.key_bytes >= self.budget.bytes || self.key_since.elapsed() >= self.budget.after {
            let seq = self.frames.frames_written();
            let buf = self.frames.start_frame();
            self.channel.seal(seq, &[], buf, "rekey marker")?;
            wire += self.frames.write_started_frame().await?;
            self.channel.rekey_outgoing();
            self.rekeys += 1;
            self.key_bytes = 0;
            self.key_since = Instant::now();
            log::debug!("{} key replaced (rekey {})", self.direction(), self.rekeys);
        }
        let seq = self.frames.frames_written();
        let buf = self.frames.start_frame();
        self.channel.seal(seq, plaintext, buf, what)?;
        self.key_bytes += plaintext.len() as u64;
        wire += self.frames.write_started_frame().await?;
        Ok(wire)
    }

    /// Test hook: seals `plaintext` as the next frame without encoding or checking it,
    /// to show that the receiver rejects authentic frames that are not valid messages.
    #[cfg(test)]
    pub(crate) async fn send_sealed_raw(&mut self, plaintext: &[u8]) -> Result<usize> {
        self.seal_and_write(plaintext, "raw").await
    }

    /// Direction of the frames sent.
    pub fn direction(&self) -> Direction {
        self.frames.direction()
    }

    /// Frames sent on this connection so far, handshake and rekey markers
    /// included; also the sequence number of the next frame.
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
    channel: Arc<Channel>,
    /// The plaintext of the frame being decoded.
    plain: Vec<u8>,
    rekeys: u64,
    closed: bool,
}

impl<R: AsyncRead + Unpin> RecvHalf<R> {
    pub(crate) fn new(frames: FrameReader<R>, channel: Arc<Channel>) -> Self {
        RecvHalf {
            frames,
            channel,
            plain: Vec::new(),
            rekeys: 0,
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
        mut decode: impl FnMut(&[u8]) -> Result<T, FrameFault>,
    ) -> Result<T> {
        let direction = self.frames.direction();
        if self.closed {
            return Err(ReplicateError::SessionClosed { direction });
        }
        loop {
            let seq = self.frames.frames_read();
            let opened = match self.frames.read_frame().await {
                Ok(Some(body)) => self
                    .channel
                    .open(seq, body, &mut self.plain)
                    .map(|p| p.is_empty()),
                Ok(None) => {
                    self.closed = true;
                    return Err(ReplicateError::ConnectionClosed {
                        direction,
                        frame: seq,
                    });
                }
                Err(e) => {
                    self.closed = true;
                    return Err(e);
                }
            };
            let result = match opened {
                // The rekey marker: the next frame is sealed under the next key.
                Ok(true) => {
                    self.channel.rekey_incoming();
                    self.rekeys += 1;
                    continue;
                }
                Ok(false) => decode(&self.plain),
                Err(fault) => Err(fault),
            };
            return result.map_err(|fault| {
                self.closed = true;
                ReplicateError::Frame {
                    direction,
                    frame: seq,
                    fault,
                }
            });
        }
    }

    /// Direction of the frames received.
    pub fn direction(&self) -> Direction {
        self.frames.direction()
    }

    /// Times the other side's key was replaced on this connection.
    pub fn rekeys(&self) -> u64 {
        self.rekeys
    }

    /// Frames received on this connection so far, handshake and rekey
    /// markers included; also the sequence number of the next frame due.
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
    use crate::keys::Credentials;
    use crate::message::{CpBlock, Encoding, BLOCK_BYTES, MAX_BLOCKS_PER_CP_FRAME};
    use crate::secret::Secret;
    use tokio::io::DuplexStream;

    /// Frame number of the first session frame in either direction.
    const FIRST_SESSION_FRAME: u64 = 3;

    async fn pair() -> (Session<DuplexStream>, Session<DuplexStream>) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let s = Secret::from_bytes(b"unit test secret: 7f3a9c21e4b8d605").expect("random enough");
        let (cs, cp) = Credentials::pair(&s).expect("keys");
        let resume = ResumePoint {
            applied_cp: None,
            durable_transfer: 0,
        };
        let (c, d) = tokio::join!(
            handshake_client(a, &cs, [0; 16], 1 << 20),
            handshake_server(b, &cp, resume, |_| Ok(()))
        );
        (c.expect("client").0, d.expect("server").0)
    }

    async fn fault_after_sealing(plaintext: &[u8]) -> FrameFault {
        let (mut source, mut peer) = pair().await;
        source.tx.send_sealed_raw(plaintext).await.expect("send");
        match peer.recv().await {
            Err(ReplicateError::Frame {
                direction: Direction::SourceToPeer,
                frame: FIRST_SESSION_FRAME,
                fault,
            }) => fault,
            other => panic!("expected a frame {FIRST_SESSION_FRAME} error, got {other:?}"),
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
    async fn compression_follows_the_policy_and_the_backlog() {
        // Small enough for the in-memory pipe to hold a whole frame.
        let batch = vec![0x3C; 16 * 1024];
        let (mut source, mut peer) = pair().await;
        let mut wire = Vec::new();
        for (id, policy, backlog) in [
            (1, Compression::Never, usize::MAX),
            (2, Compression::Auto, 0),
            (3, Compression::Auto, AUTO_COMPRESS_BACKLOG_BYTES),
            (4, Compression::Always, 0),
        ] {
            source.sender_mut().set_compression(policy);
            source.sender_mut().note_backlog(backlog);
            wire.push(source.send_transfer(id, &batch).await.expect("send"));
            let got = peer.recv().await.expect("recv");
            assert_eq!(
                got,
                Message::Transfer {
                    id,
                    batch: batch.clone()
                }
            );
        }
        let big = batch.len();
        assert!(wire[0] > big && wire[1] > big, "not compressed: {wire:?}");
        assert!(
            wire[2] < big / 8 && wire[3] < big / 8,
            "compressed: {wire:?}"
        );
    }

    #[tokio::test]
    async fn keys_are_replaced_on_the_byte_and_the_time_budget() {
        let (source, peer) = pair().await;
        let (mut tx, _source_rx) = source.split();
        let (_peer_tx, mut rx) = peer.split();
        tx.set_rekey_budget(10_000, std::time::Duration::from_secs(3600));
        for id in 1..=40u64 {
            let batch = vec![id as u8; 1000];
            tx.send_transfer(id, &batch).await.expect("send");
            assert_eq!(
                rx.recv().await.expect("recv"),
                Message::Transfer { id, batch }
            );
        }
        // About one key per ten 1 KB transfers, each announced by a marker frame.
        assert!((3..=4).contains(&tx.rekeys()), "{}", tx.rekeys());
        assert_eq!(tx.rekeys(), rx.rekeys());
        assert_eq!(tx.frames_sent(), FIRST_SESSION_FRAME + 40 + tx.rekeys());
        assert_eq!(rx.frames_received(), tx.frames_sent());
        tx.set_rekey_budget(u64::MAX, std::time::Duration::ZERO);
        for nonce in 0..5 {
            tx.send(&Message::Ping { nonce }).await.expect("send");
            assert_eq!(rx.recv().await.expect("recv"), Message::Ping { nonce });
        }
        assert_eq!(rx.rekeys(), tx.rekeys());
        assert!(tx.rekeys() >= 8);
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
