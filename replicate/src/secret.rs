//! The shared secret both machines hold (`--secret FILE`): the second factor
//! of the channel, mixed into the Noise handshake as its pre-shared key.
//!
//! Only a 32-byte key derived from the file's bytes is kept in memory; the
//! bytes themselves are wiped after derivation and never logged. Debug output
//! is redacted. A file other users can read, and a secret that is plainly not
//! random (a repeated character, a short word, a pattern), are refused.

use std::fmt;
use std::io::Read;
use std::path::Path;

use crate::error::{ReplicateError, Result};

/// Fewest bytes a secret file may hold. Use random bytes: `head -c 32 /dev/urandom > FILE`.
pub const MIN_SECRET_BYTES: usize = 16;

/// Most bytes read from a secret file; larger files are refused (a wrong path, e.g. a
/// device or an image, rather than a secret).
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Fewest bits of estimated entropy a secret must have ([`estimated_bits`]).
/// 16 random bytes estimate at 115–128 bits, 32 random hex digits at about 120.
pub const MIN_SECRET_BITS: u32 = 96;

/// blake3 `derive_key` context of the Noise pre-shared key. Unique to this use.
const SECRET_KEY_CONTEXT: &str = "twinfs-replicate 2026-12 noise psk v4";

/// The key both sides derive from the shared secret file.
#[derive(Clone)]
pub struct Secret {
    key: [u8; 32],
}

impl Secret {
    /// Reads the secret file and derives the key. The whole file, byte for byte
    /// (a trailing newline included), is the secret: copy the file, do not retype it.
    /// Refused: a file that other users can read or change (chmod 600 it).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Secret> {
        let path = path.as_ref();
        let problem = |problem: String| ReplicateError::Secret {
            path: path.to_path_buf(),
            problem,
        };
        let file = std::fs::File::open(path).map_err(|e| {
            problem(format!(
                "cannot open it ({e}); give the path of the shared secret file with --secret"
            ))
        })?;
        refuse_if_open_to_others(&file).map_err(problem)?;
        let mut bytes = Vec::with_capacity(MIN_SECRET_BYTES * 4);
        let read = file
            .take(MAX_SECRET_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| problem(format!("cannot read it ({e})")));
        let secret = read.and_then(|_| Secret::from_bytes(&bytes).map_err(problem));
        wipe(&mut bytes);
        secret
    }

    /// Derives the key from secret bytes held in memory (tests, or a secret from
    /// elsewhere). Errors name the rule that the bytes break.
    pub fn from_bytes(bytes: &[u8]) -> Result<Secret, String> {
        const MAKE_ONE: &str =
            "write random bytes to it (head -c 32 /dev/urandom > FILE) and copy it to both machines";
        if bytes.is_empty() {
            return Err(format!(
                "it is empty; {MAKE_ONE} (at least {MIN_SECRET_BYTES} bytes)"
            ));
        }
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "it holds {} bytes, fewer than the {MIN_SECRET_BYTES} required; {MAKE_ONE}",
                bytes.len()
            ));
        }
        if bytes.len() > MAX_SECRET_BYTES {
            return Err(format!(
                "it is larger than {MAX_SECRET_BYTES} bytes, which is not a secret file; check the path"
            ));
        }
        let bits = estimated_bits(bytes);
        if bits < MIN_SECRET_BITS {
            return Err(format!(
                "it does not look random (about {bits} bits of entropy, fewer than the {MIN_SECRET_BITS} required: repeated characters, a word or a pattern); {MAKE_ONE}"
            ));
        }
        Ok(Secret {
            key: blake3::derive_key(SECRET_KEY_CONTEXT, bytes),
        })
    }

    /// The derived 32-byte key (the Noise handshake's pre-shared key).
    pub(crate) fn key(&self) -> &[u8; 32] {
        &self.key
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        wipe(&mut self.key);
    }
}

/// A conservative estimate of the entropy of a secret, in bits: what its
/// length would carry over the smallest usual alphabet that holds all its
/// bytes (digits, hex, letters, base64, printable ASCII, any byte), scaled
/// down by how unevenly the bytes are spread over that alphabet (empirical
/// Shannon entropy against the most a string of that length could show) and
/// by repetition (distinct three-byte windows rather than the length).
///
/// It catches obvious mistakes — 16 spaces, a word, `abab…`, digits only —
/// and cannot prove randomness: make secrets with a random source. One
/// trailing newline (`\n` or `\r\n`) is not counted.
pub fn estimated_bits(bytes: &[u8]) -> u32 {
    let s = bytes
        .strip_suffix(b"\r\n")
        .or_else(|| bytes.strip_suffix(b"\n"))
        .unwrap_or(bytes);
    let n = s.len();
    if n == 0 {
        return 0;
    }
    let alphabet = alphabet_size(s) as f64;
    let mut counts = [0u32; 256];
    for &b in s {
        counts[b as usize] += 1;
    }
    let shannon: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n as f64;
            -p * p.log2()
        })
        .sum();
    let most = (n as f64).min(alphabet).log2();
    if most <= 0.0 {
        return 0;
    }
    let spread = (shannon / most).min(1.0);
    let mut windows: Vec<&[u8]> = s.windows(3).collect();
    windows.sort_unstable();
    windows.dedup();
    let effective_len = (windows.len() + 2).min(n) as f64;
    (effective_len * alphabet.log2() * spread) as u32
}

/// Size of the smallest usual alphabet holding every byte of `s`.
fn alphabet_size(s: &[u8]) -> u32 {
    let all = |f: fn(&u8) -> bool| s.iter().all(f);
    if all(u8::is_ascii_digit) {
        10
    } else if all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        || all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b))
    {
        16
    } else if all(u8::is_ascii_lowercase) || all(u8::is_ascii_uppercase) {
        26
    } else if all(u8::is_ascii_alphabetic) {
        52
    } else if all(u8::is_ascii_alphanumeric) {
        62
    } else if all(|b| b.is_ascii_alphanumeric() || b"+/=-_".contains(b)) {
        67
    } else if all(|b| (0x20..0x7f).contains(b)) {
        95
    } else {
        256
    }
}

/// Overwrites secret material with zeros in a way the optimizer keeps.
pub(crate) fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: `b` is a valid, aligned, exclusive reference to one byte.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// Refuses a secret file that other users may read or change.
fn refuse_if_open_to_others(file: &std::fs::File) -> std::result::Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read it ({e})"))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "its mode {:o} lets other users read or change it; chmod 600 it (and make a new secret if others may have read it)",
            mode & 0o777
        ));
    }
    Ok(())
}
