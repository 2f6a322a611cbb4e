//! The shared secret both machines hold (`--secret FILE`).
//!
//! Only a 32-byte key derived from the file's bytes is kept in memory; the bytes
//! themselves are wiped after derivation and never logged. Debug output is redacted.

use std::fmt;
use std::io::Read;
use std::path::Path;

use crate::error::{ReplicateError, Result};

/// Fewest bytes a secret file may hold. Use random bytes: `head -c 32 /dev/urandom > FILE`.
/// (The handshake shows a keyed hash to whoever the source connects to, so a short or
/// guessable secret could be brute-forced offline.)
pub const MIN_SECRET_BYTES: usize = 16;

/// Most bytes read from a secret file; larger files are refused (a wrong path, e.g. a
/// device or an image, rather than a secret).
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// blake3 `derive_key` context for the long-term key. Unique to this application and use.
const SECRET_KEY_CONTEXT: &str = "twinfs-replicate 2026-11 shared secret key v1";

/// The key both sides derive from the shared secret file.
#[derive(Clone)]
pub struct Secret {
    key: [u8; 32],
}

impl Secret {
    /// Reads the secret file and derives the key. The whole file, byte for byte
    /// (a trailing newline included), is the secret: copy the file, do not retype it.
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
        warn_if_readable_by_others(path, &file);
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
    /// elsewhere). Errors name the size rule that the bytes break.
    pub fn from_bytes(bytes: &[u8]) -> Result<Secret, String> {
        if bytes.is_empty() {
            return Err(format!(
                "it is empty; write at least {MIN_SECRET_BYTES} random bytes to it (head -c 32 /dev/urandom > FILE) and copy it to both machines"
            ));
        }
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "it holds {} bytes, fewer than the {MIN_SECRET_BYTES} required; write random bytes to it (head -c 32 /dev/urandom > FILE) and copy it to both machines",
                bytes.len()
            ));
        }
        if bytes.len() > MAX_SECRET_BYTES {
            return Err(format!(
                "it is larger than {MAX_SECRET_BYTES} bytes, which is not a secret file; check the path"
            ));
        }
        Ok(Secret {
            key: blake3::derive_key(SECRET_KEY_CONTEXT, bytes),
        })
    }

    /// The derived 32-byte key (input to the handshake's proof and session keys).
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

/// Overwrites secret material with zeros in a way the optimizer keeps.
fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: `b` is a valid, aligned, exclusive reference to one byte.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path, file: &std::fs::File) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = file.metadata() {
        if meta.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "secret file {} can be read by other users; chmod 600 it",
                path.display()
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path, _file: &std::fs::File) {}
