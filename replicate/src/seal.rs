//! Sealing of session frames with the Noise transport ciphers.
//!
//! A sealed frame body is `seq u64 BE`, then the frame's plaintext as one or
//! more Noise transport messages ("chunks", each at most 65,535 bytes: up to
//! [`CHUNK_PLAINTEXT_BYTES`] of ciphertext and a 16-byte tag). Every chunk but
//! the last is full, so the body's length alone says where chunks begin. Each
//! chunk is sealed under an explicit Noise nonce built from the frame's `seq`,
//! the chunk's index and whether it is the last one ([`chunk_nonce`]):
//!
//! - the `seq` a frame carries is authenticated by its chunks' tags, so an
//!   authentic frame with an unexpected `seq` is told apart (dropped,
//!   replayed, reordered) from an altered one;
//! - chunks cannot be reordered or moved between frames, and a frame cut at a
//!   chunk boundary fails, because its new last chunk was not sealed as last
//!   (the STREAM construction of segmented AEAD).
//!
//! Rekeying (Noise `REKEY`, one-way) happens after a frame whose plaintext is
//! empty: no message encodes to zero bytes, so an empty frame means "my next
//! frame uses the next key". The session layer sends one when a key has
//! sealed [`REKEY_AFTER_BYTES`] or lived [`REKEY_AFTER_MS`].

use parking_lot::RwLock;
use snow::StatelessTransportState;

use crate::error::{FrameFault, ReplicateError, Result};
use crate::frame::{len_prefix, LEN_PREFIX_BYTES};
use crate::noise::Suite;

/// Bytes of the sequence number at the head of a sealed body.
pub const SEQ_BYTES: usize = 8;
/// Bytes of the AEAD tag at the end of each chunk.
pub const TAG_BYTES: usize = 16;
/// Largest Noise message (a chunk on the wire).
pub const NOISE_MAX_MESSAGE_BYTES: usize = 65535;
/// Plaintext bytes of a full chunk.
pub const CHUNK_PLAINTEXT_BYTES: usize = NOISE_MAX_MESSAGE_BYTES - TAG_BYTES;
/// What sealing adds to a plaintext of at most one chunk (most messages).
pub const SEALED_OVERHEAD_BYTES: usize = SEQ_BYTES + TAG_BYTES;
/// Bits of a chunk nonce that hold the chunk's index (the bit above them
/// marks the last chunk; `seq` takes the rest).
pub const CHUNK_INDEX_BITS: u32 = 9;
/// Highest `seq` a sender uses (a nonce must stay below `2^64 - 1`).
pub const MAX_SEQ: u64 = (1 << (64 - CHUNK_INDEX_BITS - 1)) - 1;
/// A direction's key is replaced after sealing this many bytes...
pub const REKEY_AFTER_BYTES: u64 = 1 << 30;
/// ...or after this long, whichever comes first.
pub const REKEY_AFTER_MS: u64 = 60_000;

/// The Noise nonce of chunk `index` of frame `seq`.
pub fn chunk_nonce(seq: u64, index: usize, last: bool) -> u64 {
    debug_assert!(seq <= MAX_SEQ && index < 1 << CHUNK_INDEX_BITS);
    (seq << (CHUNK_INDEX_BITS + 1)) | (u64::from(last) << CHUNK_INDEX_BITS) | index as u64
}

/// Chunks that carry a plaintext of `len` bytes (at least one: an empty
/// plaintext is a chunk that is only a tag).
pub fn chunk_count(plaintext_len: usize) -> usize {
    plaintext_len.div_ceil(CHUNK_PLAINTEXT_BYTES).max(1)
}

/// Bytes of the sealed body of a plaintext of `len` bytes.
pub fn sealed_len(plaintext_len: usize) -> usize {
    SEQ_BYTES + plaintext_len + TAG_BYTES * chunk_count(plaintext_len)
}

/// The two directions' transport ciphers of one connection, shared by its
/// send and receive halves. Sealing and opening take a read lock (they may run
/// at once); a rekey takes the write lock for the time of one block cipher call.
pub(crate) struct Channel {
    transport: RwLock<StatelessTransportState>,
    suite: Suite,
}

impl Channel {
    pub(crate) fn new(transport: StatelessTransportState, suite: Suite) -> Channel {
        Channel {
            transport: RwLock::new(transport),
            suite,
        }
    }

    pub(crate) fn suite(&self) -> Suite {
        self.suite
    }

    /// Seals `plaintext` as frame `seq` into `frame`, which holds the length
    /// prefix's placeholder on entry; on return it holds the whole frame.
    pub(crate) fn seal(
        &self,
        seq: u64,
        plaintext: &[u8],
        frame: &mut Vec<u8>,
        what: &'static str,
    ) -> Result<()> {
        debug_assert_eq!(frame.len(), LEN_PREFIX_BYTES);
        let invalid = |problem: String| ReplicateError::InvalidOutgoing { what, problem };
        if seq > MAX_SEQ {
            return Err(invalid(
                "the frame counter is exhausted; reconnect for fresh session keys".into(),
            ));
        }
        let body_len = sealed_len(plaintext.len());
        let prefix = len_prefix(body_len)
            .map_err(|fault| invalid(format!("{fault}; split it into smaller messages")))?;
        frame.resize(LEN_PREFIX_BYTES + body_len, 0);
        frame[..LEN_PREFIX_BYTES].copy_from_slice(&prefix);
        frame[LEN_PREFIX_BYTES..LEN_PREFIX_BYTES + SEQ_BYTES].copy_from_slice(&seq.to_be_bytes());
        let count = chunk_count(plaintext.len());
        let transport = self.transport.read();
        let mut at = LEN_PREFIX_BYTES + SEQ_BYTES;
        for i in 0..count {
            let from = i * CHUNK_PLAINTEXT_BYTES;
            let piece = &plaintext[from..(from + CHUNK_PLAINTEXT_BYTES).min(plaintext.len())];
            let out = &mut frame[at..at + piece.len() + TAG_BYTES];
            let n = transport
                .write_message(chunk_nonce(seq, i, i + 1 == count), piece, out)
                .map_err(|e| ReplicateError::Encode(format!("sealing {what} failed: {e}")))?;
            debug_assert_eq!(n, piece.len() + TAG_BYTES);
            at += n;
        }
        debug_assert_eq!(at, frame.len());
        Ok(())
    }

    /// Opens the sealed body of the frame due as number `expected_seq` into
    /// `out` and returns the plaintext. The chunks are checked under the `seq`
    /// the frame carries, so a failure is told apart: a frame that does not
    /// authenticate was damaged or forged ([`FrameFault::BadTag`]); an
    /// authentic frame of this session with the wrong number was dropped,
    /// replayed or reordered ([`FrameFault::OutOfSequence`]).
    pub(crate) fn open<'a>(
        &self,
        expected_seq: u64,
        body: &[u8],
        out: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], FrameFault> {
        if body.len() < SEALED_OVERHEAD_BYTES {
            return Err(FrameFault::TooShort {
                len: body.len(),
                min: SEALED_OVERHEAD_BYTES,
            });
        }
        let (seq_bytes, chunks) = body.split_at(SEQ_BYTES);
        let seq = u64::from_be_bytes(seq_bytes.try_into().expect("8 bytes"));
        if seq > MAX_SEQ {
            return Err(FrameFault::BadTag);
        }
        let count = chunks.len().div_ceil(NOISE_MAX_MESSAGE_BYTES);
        let last_len = chunks.len() - (count - 1) * NOISE_MAX_MESSAGE_BYTES;
        if last_len < TAG_BYTES || count > 1 << CHUNK_INDEX_BITS {
            return Err(FrameFault::BadTag);
        }
        let plaintext_len = chunks.len() - count * TAG_BYTES;
        // Room for the last chunk's tag: the cipher opens each chunk in place.
        out.clear();
        out.resize(plaintext_len + TAG_BYTES, 0);
        let transport = self.transport.read();
        for (i, chunk) in chunks.chunks(NOISE_MAX_MESSAGE_BYTES).enumerate() {
            let at = i * CHUNK_PLAINTEXT_BYTES;
            transport
                .read_message(chunk_nonce(seq, i, i + 1 == count), chunk, &mut out[at..])
                .map_err(|_| FrameFault::BadTag)?;
        }
        drop(transport);
        out.truncate(plaintext_len);
        if seq != expected_seq {
            return Err(FrameFault::OutOfSequence {
                expected: expected_seq,
                got: seq,
            });
        }
        Ok(&out[..])
    }

    /// Replaces the sending direction's key (Noise `REKEY`).
    pub(crate) fn rekey_outgoing(&self) {
        self.transport.write().rekey_outgoing();
    }

    /// Replaces the receiving direction's key (Noise `REKEY`).
    pub(crate) fn rekey_incoming(&self) {
        self.transport.write().rekey_incoming();
    }
}
