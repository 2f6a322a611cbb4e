//! The Noise parameters of the channel: the two cipher suites, the prologue
//! that binds the plaintext part of the handshake, and the handshake states.
//!
//! Pattern `XXpsk3`: both sides prove their static key, the initiator (the
//! source) sends its own only after it checked the peer's, and the shared
//! secret enters at the third message, so the peer has verified the source —
//! its key, the secret, and that the message is fresh — before it does
//! anything for it. All key derivation is Noise's (HKDF-SHA256 over X25519
//! results): session keys come from ephemeral keys, so recorded sessions stay
//! secret when the static keys or the secret leak later.

use snow::params::NoiseParams;

use crate::keys::Credentials;

/// Position of the pre-shared key in `XXpsk3`.
pub const PSK_POSITION: u8 = 3;

/// Noise protocol name with AES-256-GCM (CPUs with AES instructions).
pub const NOISE_AESGCM: &str = "Noise_XXpsk3_25519_AESGCM_SHA256";
/// Noise protocol name with ChaCha20-Poly1305 (CPUs without them).
pub const NOISE_CHACHAPOLY: &str = "Noise_XXpsk3_25519_ChaChaPoly_SHA256";

/// What goes before the `Hello` frame's body in the Noise prologue.
pub const PROLOGUE_LABEL: &[u8] = b"twinfs-replicate prologue v4\n";

/// The cipher of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// AES-256-GCM.
    AesGcm,
    /// ChaCha20-Poly1305.
    ChaChaPoly,
}

impl Suite {
    /// The suite this machine seals fastest: AES-GCM where the CPU has AES and
    /// carry-less multiply instructions, ChaCha20-Poly1305 elsewhere.
    pub fn preferred() -> Suite {
        if cpu_has_aes() {
            Suite::AesGcm
        } else {
            Suite::ChaChaPoly
        }
    }

    /// The Noise protocol name.
    pub fn protocol_name(self) -> &'static str {
        match self {
            Suite::AesGcm => NOISE_AESGCM,
            Suite::ChaChaPoly => NOISE_CHACHAPOLY,
        }
    }

    /// The suite of a protocol name the peer accepts, if it is one.
    pub fn from_protocol_name(name: &str) -> Option<Suite> {
        match name {
            NOISE_AESGCM => Some(Suite::AesGcm),
            NOISE_CHACHAPOLY => Some(Suite::ChaChaPoly),
            _ => None,
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_aes() -> bool {
    std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
}

#[cfg(target_arch = "aarch64")]
fn cpu_has_aes() -> bool {
    std::arch::is_aarch64_feature_detected!("aes")
        && std::arch::is_aarch64_feature_detected!("pmull")
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn cpu_has_aes() -> bool {
    false
}

/// The parsed Noise parameters of `suite`.
pub(crate) fn noise_params(suite: Suite) -> NoiseParams {
    suite
        .protocol_name()
        .parse()
        .expect("both protocol names are valid Noise names")
}

/// The prologue: the label, then the `Hello` frame body exactly as it travelled.
pub(crate) fn prologue(hello_body: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(PROLOGUE_LABEL.len() + hello_body.len());
    p.extend_from_slice(PROLOGUE_LABEL);
    p.extend_from_slice(hello_body);
    p
}

/// The handshake state of one side.
pub(crate) fn handshake_state(
    suite: Suite,
    creds: &Credentials,
    hello_body: &[u8],
    initiator: bool,
) -> Result<snow::HandshakeState, snow::Error> {
    let prologue = prologue(hello_body);
    let builder = snow::Builder::new(noise_params(suite))
        .local_private_key(creds.key().private())?
        .psk(PSK_POSITION, creds.secret().key())?
        .prologue(&prologue)?;
    if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    }
}
