//! Fixed credentials for the channel's targets: a source's and a peer's
//! static keys that trust each other and share a secret, and the wrong
//! ones an impostor or a misconfigured machine would hold. Built once per
//! process (deriving a public key costs a scalar multiplication).

use std::sync::OnceLock;

use twinfs_replicate::{Credentials, Secret, StaticKey, TrustedKeys};

/// The secret both ends share; the fuzzer never learns its key.
pub const SECRET: &[u8] = b"twinfs fuzz secret: 6b1f0e93a2c47d58";
/// A secret that is not theirs.
pub const OTHER_SECRET: &[u8] = b"another fuzz secret: 39d4a7e1c05f8b26";

/// Which credentials the source brings to a handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceCreds {
    /// Its own key, trusting the peer's, and the shared secret.
    Right,
    /// The right keys, another secret.
    WrongSecret,
    /// The secret, but a key the peer does not trust.
    UntrustedKey,
    /// Its own key and the secret, but it does not trust the peer's key.
    DistrustsPeer,
}

struct All {
    peer: Credentials,
    source: [Credentials; 4],
}

fn all() -> &'static All {
    static ALL: OnceLock<All> = OnceLock::new();
    ALL.get_or_init(|| {
        let secret = Secret::from_bytes(SECRET).expect("random enough");
        let other = Secret::from_bytes(OTHER_SECRET).expect("random enough");
        let source = StaticKey::from_private([0x11; 32]);
        let peer = StaticKey::from_private([0x22; 32]);
        let stranger = StaticKey::from_private([0x33; 32]);
        let trusts_peer = TrustedKeys::new([peer.public()]);
        let peer_creds =
            Credentials::new(peer, TrustedKeys::new([source.public()]), secret.clone());
        All {
            peer: peer_creds,
            source: [
                Credentials::new(source.clone(), trusts_peer.clone(), secret.clone()),
                Credentials::new(source.clone(), trusts_peer.clone(), other),
                Credentials::new(stranger.clone(), trusts_peer, secret.clone()),
                Credentials::new(source, TrustedKeys::new([stranger.public()]), secret),
            ],
        }
    })
}

/// The peer's credentials (it trusts the source's key only).
pub fn peer() -> &'static Credentials {
    &all().peer
}

/// The source's credentials of kind `which`.
pub fn source(which: SourceCreds) -> &'static Credentials {
    &all().source[which as usize]
}
