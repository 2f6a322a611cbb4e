//! Key schedule of the handshake: the transcript, both proofs, and the two session keys.
//!
//! All derivations start from the long-term key of [`Secret`] and use blake3 with a
//! distinct context string per purpose, so a value computed for one purpose (say the
//! peer's proof) is useless for another (the source's proof, a session key).

use crate::error::Direction;
use crate::secret::Secret;

const CLIENT_PROOF_CONTEXT: &str = "twinfs-replicate 2026-11 handshake source proof v1";
const SERVER_PROOF_CONTEXT: &str = "twinfs-replicate 2026-11 handshake peer proof v1";
const SOURCE_TO_PEER_CONTEXT: &str = "twinfs-replicate 2026-11 session key source-to-peer v1";
const PEER_TO_SOURCE_CONTEXT: &str = "twinfs-replicate 2026-11 session key peer-to-source v1";

/// blake3 of everything both sides agreed on in the clear: magic, version, volume
/// UUID, and both nonces (fixed-size fields, concatenated in this order).
#[derive(Clone, Copy)]
pub(crate) struct Transcript([u8; 32]);

impl Transcript {
    pub(crate) fn new(
        magic: &[u8; 8],
        version: u32,
        volume_uuid: &[u8; 16],
        source_nonce: &[u8; 32],
        peer_nonce: &[u8; 32],
    ) -> Transcript {
        let mut h = blake3::Hasher::new();
        h.update(magic);
        h.update(&version.to_le_bytes());
        h.update(volume_uuid);
        h.update(source_nonce);
        h.update(peer_nonce);
        Transcript(*h.finalize().as_bytes())
    }
}

/// The proof the source sends: a keyed hash of the transcript.
pub(crate) fn source_proof(secret: &Secret, t: &Transcript) -> [u8; 32] {
    proof(secret, CLIENT_PROOF_CONTEXT, t)
}

/// The proof the peer sends.
pub(crate) fn peer_proof(secret: &Secret, t: &Transcript) -> [u8; 32] {
    proof(secret, SERVER_PROOF_CONTEXT, t)
}

fn proof(secret: &Secret, context: &str, t: &Transcript) -> [u8; 32] {
    let proof_key = blake3::derive_key(context, secret.key());
    *blake3::keyed_hash(&proof_key, &t.0).as_bytes()
}

/// Compares a received proof with the expected one in constant time.
pub(crate) fn proof_matches(expected: &[u8; 32], received: &[u8; 32]) -> bool {
    blake3::Hash::from(*expected) == blake3::Hash::from(*received)
}

/// The session key of one direction: depends on the secret and on both nonces.
pub(crate) fn session_key(secret: &Secret, t: &Transcript, direction: Direction) -> [u8; 32] {
    let context = match direction {
        Direction::SourceToPeer => SOURCE_TO_PEER_CONTEXT,
        Direction::PeerToSource => PEER_TO_SOURCE_CONTEXT,
    };
    let mut material = [0u8; 64];
    material[..32].copy_from_slice(secret.key());
    material[32..].copy_from_slice(&t.0);
    let key = blake3::derive_key(context, &material);
    material.fill(0);
    key
}
