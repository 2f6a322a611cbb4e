//! AEAD sealing of session frames with ChaCha20-Poly1305.
//!
//! Sealed frame body: `seq u64 BE | ciphertext | tag (16)`. The AEAD nonce is
//! `[0, 0, 0, 0] ++ seq (BE)` and the associated data is the 12 header bytes
//! (length prefix + seq), so nothing of the frame is unauthenticated. `seq` is the
//! frame's number in its direction; each direction has its own key, so a (key, nonce)
//! pair is never used twice. Any altered byte (the `seq` and the length included)
//! makes the tag fail; an authentic frame whose `seq` is not the one due was dropped,
//! replayed or reordered on the way, and is reported as such.

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce, Tag};

use crate::error::{FrameFault, ReplicateError, Result};
use crate::frame::{len_prefix, LEN_PREFIX_BYTES};

/// Bytes of the sequence number at the head of a sealed body.
pub const SEQ_BYTES: usize = 8;
/// Bytes of the Poly1305 tag at the end of a sealed body.
pub const TAG_BYTES: usize = 16;
/// What sealing adds to a message's plaintext inside the frame body.
pub const SEALED_OVERHEAD_BYTES: usize = SEQ_BYTES + TAG_BYTES;
/// Bytes of the authenticated header: length prefix and sequence number.
pub const SEALED_HEADER_BYTES: usize = LEN_PREFIX_BYTES + SEQ_BYTES;
/// Bytes of a ChaCha20-Poly1305 nonce.
pub const AEAD_NONCE_BYTES: usize = 12;

/// The AEAD nonce of frame `seq`: four zero bytes, then `seq` big-endian.
pub fn aead_nonce(seq: u64) -> [u8; AEAD_NONCE_BYTES] {
    let mut nonce = [0u8; AEAD_NONCE_BYTES];
    nonce[AEAD_NONCE_BYTES - SEQ_BYTES..].copy_from_slice(&seq.to_be_bytes());
    nonce
}

/// One direction's cipher.
pub(crate) struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl Sealer {
    pub(crate) fn new(key: &[u8; 32]) -> Sealer {
        Sealer {
            cipher: ChaCha20Poly1305::new(key.into()),
        }
    }

    /// Seals a frame built in `frame`: on entry `frame` holds the length-prefix
    /// placeholder, `seq`, and the plaintext; on return the prefix is filled in, the
    /// plaintext is ciphertext, and the tag is appended.
    pub(crate) fn seal_in_place(
        &self,
        seq: u64,
        frame: &mut Vec<u8>,
        what: &'static str,
    ) -> Result<()> {
        debug_assert!(frame.len() >= SEALED_HEADER_BYTES);
        let body_len = frame.len() - LEN_PREFIX_BYTES + TAG_BYTES;
        let prefix = len_prefix(body_len).map_err(|fault| ReplicateError::InvalidOutgoing {
            what,
            problem: format!("{fault}; split it into smaller messages"),
        })?;
        frame[..LEN_PREFIX_BYTES].copy_from_slice(&prefix);
        frame[LEN_PREFIX_BYTES..SEALED_HEADER_BYTES].copy_from_slice(&seq.to_be_bytes());
        let (header, plaintext) = frame.split_at_mut(SEALED_HEADER_BYTES);
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&aead_nonce(seq)), header, plaintext)
            .map_err(|_| {
                ReplicateError::Encode("ChaCha20-Poly1305 refused to seal the frame".into())
            })?;
        frame.extend_from_slice(&tag);
        Ok(())
    }

    /// Opens a sealed frame body in place and returns its plaintext. `expected_seq` is
    /// the number of the frame due. The tag is checked under the sequence number the
    /// frame carries, so a failure is told apart: a frame that does not authenticate
    /// was damaged or forged ([`FrameFault::BadTag`]); an authentic frame of this
    /// session with the wrong number was dropped, replayed or reordered on the way
    /// ([`FrameFault::OutOfSequence`]).
    pub(crate) fn open_in_place<'a>(
        &self,
        expected_seq: u64,
        body: &'a mut [u8],
    ) -> Result<&'a [u8], FrameFault> {
        if body.len() < SEALED_OVERHEAD_BYTES {
            return Err(FrameFault::TooShort {
                len: body.len(),
                min: SEALED_OVERHEAD_BYTES,
            });
        }
        let mut header = [0u8; SEALED_HEADER_BYTES];
        header[..LEN_PREFIX_BYTES].copy_from_slice(&len_prefix(body.len())?);
        header[LEN_PREFIX_BYTES..].copy_from_slice(&body[..SEQ_BYTES]);
        let mut seq_bytes = [0u8; SEQ_BYTES];
        seq_bytes.copy_from_slice(&body[..SEQ_BYTES]);
        let seq = u64::from_be_bytes(seq_bytes);
        let (_, rest) = body.split_at_mut(SEQ_BYTES);
        let (ciphertext, tag) = rest.split_at_mut(rest.len() - TAG_BYTES);
        let tag = Tag::clone_from_slice(tag);
        self.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&aead_nonce(seq)),
                &header,
                ciphertext,
                &tag,
            )
            .map_err(|_| FrameFault::BadTag)?;
        if seq != expected_seq {
            return Err(FrameFault::OutOfSequence {
                expected: expected_seq,
                got: seq,
            });
        }
        Ok(ciphertext)
    }
}
