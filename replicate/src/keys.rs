//! Static keys of the secure channel and the files that hold them.
//!
//! Each machine has one X25519 key pair (`twinfs keygen FILE` writes the
//! private key to `FILE`, mode 0600, and the public key to `FILE.pub`), and a
//! *trusted keys* file listing the public keys of the other side it accepts:
//! on the source, the peer's key; on the peer, the keys of the sources it
//! serves. The handshake (`handshake`) proves possession of the private key
//! on both sides, and the shared secret (`secret`) is a second factor on top.
//!
//! File formats (text, one key per line):
//!
//! ```text
//! FILE       twinfs-private-key-x25519 <64 hex digits>
//! FILE.pub   twinfs-key-x25519 <64 hex digits> <comment>
//! trusted    any number of public key lines; blank lines and lines starting
//!            with '#' are ignored
//! ```
//!
//! Defaults (`KeyPaths::resolve`): without `--key` and `--trusted-keys`,
//! the files `key` and `trusted-keys` in the directory of the `--secret` file
//! (e.g. `/etc/twinfs/secret`, `/etc/twinfs/key`, `/etc/twinfs/trusted-keys`).

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};

use crate::error::{ReplicateError, Result};
use crate::secret::{wipe, Secret};

/// Bytes of an X25519 key, private or public.
pub const KEY_BYTES: usize = 32;
/// First word of a private key file's key line.
pub const PRIVATE_KEY_LABEL: &str = "twinfs-private-key-x25519";
/// First word of a public key line.
pub const PUBLIC_KEY_LABEL: &str = "twinfs-key-x25519";
/// Default name of the private key file, next to the secret file.
pub const DEFAULT_KEY_FILE: &str = "key";
/// Default name of the trusted keys file, next to the secret file.
pub const DEFAULT_TRUSTED_FILE: &str = "trusted-keys";
/// Largest key or trusted-keys file read (a wrong path rather than a key file).
pub const MAX_KEY_FILE_BYTES: u64 = 256 * 1024;

/// A public static key (X25519).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; KEY_BYTES]);

impl PublicKey {
    /// The key as 64 lower-case hex digits (what key files and messages show).
    pub fn to_hex(&self) -> String {
        twinfs_fs::hex(&self.0)
    }

    /// The line of a `.pub` or trusted-keys file for this key.
    pub fn to_line(&self, comment: &str) -> String {
        let comment = comment.trim();
        if comment.is_empty() {
            format!("{PUBLIC_KEY_LABEL} {}", self.to_hex())
        } else {
            format!("{PUBLIC_KEY_LABEL} {} {comment}", self.to_hex())
        }
    }

    /// Parses one public key line (`twinfs-key-x25519 HEX [comment]`).
    pub fn parse_line(line: &str) -> std::result::Result<PublicKey, String> {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some(PUBLIC_KEY_LABEL), Some(hex)) => parse_key_hex(hex).map(PublicKey),
            (Some(PRIVATE_KEY_LABEL), _) => Err(
                "it holds a private key; give the public key (the .pub file `twinfs keygen` wrote next to it)".into(),
            ),
            _ => Err(format!(
                "expected `{PUBLIC_KEY_LABEL} <64 hex digits> [comment]`"
            )),
        }
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A static key pair (X25519). The private half is wiped when dropped and
/// never shown by `Debug`.
#[derive(Clone)]
pub struct StaticKey {
    private: [u8; KEY_BYTES],
    public: PublicKey,
}

impl StaticKey {
    /// A new random key pair.
    pub fn generate() -> Result<StaticKey> {
        let params = crate::noise::noise_params(crate::noise::Suite::AesGcm);
        let pair =
            snow::Builder::new(params)
                .generate_keypair()
                .map_err(|e| ReplicateError::Key {
                    path: PathBuf::new(),
                    problem: format!(
                        "generating a key pair failed ({e}); check the system's random source"
                    ),
                })?;
        let mut private = [0u8; KEY_BYTES];
        private.copy_from_slice(&pair.private);
        let mut public = [0u8; KEY_BYTES];
        public.copy_from_slice(&pair.public);
        let mut pair = pair;
        wipe(&mut pair.private);
        Ok(StaticKey {
            private,
            public: PublicKey(public),
        })
    }

    /// The key pair of a private key (its public half is computed).
    pub fn from_private(private: [u8; KEY_BYTES]) -> StaticKey {
        let mut dh = DefaultResolver
            .resolve_dh(&DHChoice::Curve25519)
            .expect("snow is built with X25519 (use-curve25519)");
        dh.set(&private);
        let mut public = [0u8; KEY_BYTES];
        public.copy_from_slice(dh.pubkey());
        StaticKey {
            private,
            public: PublicKey(public),
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    pub(crate) fn private(&self) -> &[u8; KEY_BYTES] {
        &self.private
    }

    /// Reads a private key file. Refused: a file other users can read or
    /// write (like ssh), or one that is not a twinfs private key.
    pub fn from_file(path: &Path) -> Result<StaticKey> {
        let problem = |problem: String| ReplicateError::Key {
            path: path.to_path_buf(),
            problem,
        };
        let mut text = read_key_file(path, 0o077, "chmod 600 it")?;
        let result = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| problem("it holds no key; make one with `twinfs keygen FILE`".into()))
            .and_then(|line| {
                let mut words = line.split_whitespace();
                match (words.next(), words.next()) {
                    (Some(PRIVATE_KEY_LABEL), Some(hex)) => parse_key_hex(hex).map_err(problem),
                    (Some(PUBLIC_KEY_LABEL), _) => Err(problem(
                        "it holds a public key; --key takes the private key file (without .pub)"
                            .into(),
                    )),
                    _ => Err(problem(format!(
                        "not a twinfs private key (expected `{PRIVATE_KEY_LABEL} <64 hex digits>`); make one with `twinfs keygen FILE`"
                    ))),
                }
            });
        wipe_string(&mut text);
        result.map(StaticKey::from_private)
    }

    /// Writes the private key to `path` (mode 0600) and the public key to
    /// `path.pub` (mode 0644). Refuses to overwrite either unless `force`.
    pub fn write_files(&self, path: &Path, comment: &str, force: bool) -> Result<PathBuf> {
        let pub_path = public_key_path(path);
        let mut private_line = format!("{PRIVATE_KEY_LABEL} {}\n", twinfs_fs::hex(&self.private));
        let written = write_new(
            path,
            private_line.as_bytes(),
            0o600,
            force,
            "# twinfs static key (X25519). Private: it stays on this machine.\n",
        );
        wipe_string(&mut private_line);
        written?;
        let public_line = format!("{}\n", self.public.to_line(comment));
        write_new(&pub_path, public_line.as_bytes(), 0o644, force, "")?;
        Ok(pub_path)
    }
}

impl fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StaticKey(public {}, private <redacted>)", self.public)
    }
}

impl Drop for StaticKey {
    fn drop(&mut self) {
        wipe(&mut self.private);
    }
}

/// The public keys of the other side that this side accepts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedKeys(Vec<PublicKey>);

impl TrustedKeys {
    /// A set of trusted keys.
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> TrustedKeys {
        TrustedKeys(keys.into_iter().collect())
    }

    /// Whether `key` is trusted (compared in constant time per key).
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.0
            .iter()
            .fold(false, |found, k| found | ct_eq(&k.0, &key.0))
    }

    /// The trusted keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.0
    }

    /// Reads a trusted keys file. Refused: a file other users can write
    /// (anyone could add a key), a line that is not a public key, no key.
    pub fn from_file(path: &Path) -> Result<TrustedKeys> {
        let text = read_key_file(path, 0o022, "chmod go-w it")?;
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = PublicKey::parse_line(line).map_err(|p| ReplicateError::Key {
                path: path.to_path_buf(),
                problem: format!("line {}: {p}", i + 1),
            })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(ReplicateError::Key {
                path: path.to_path_buf(),
                problem: "it lists no key; add the other machine's KEY.pub line (written by `twinfs keygen KEY` there)".into(),
            });
        }
        Ok(TrustedKeys(keys))
    }
}

/// What one side brings to the handshake: its static key, the other side's
/// keys it trusts, and the shared secret (the second factor).
#[derive(Clone, Debug)]
pub struct Credentials {
    key: StaticKey,
    trusted: TrustedKeys,
    secret: Secret,
}

impl Credentials {
    /// Credentials from their parts.
    pub fn new(key: StaticKey, trusted: TrustedKeys, secret: Secret) -> Credentials {
        Credentials {
            key,
            trusted,
            secret,
        }
    }

    /// A source's and a peer's credentials that trust each other, with fresh
    /// keys and the given shared secret (tests and demonstrations).
    pub fn pair(secret: &Secret) -> Result<(Credentials, Credentials)> {
        let (source, peer) = (StaticKey::generate()?, StaticKey::generate()?);
        let source_trusts = TrustedKeys::new([peer.public()]);
        let peer_trusts = TrustedKeys::new([source.public()]);
        Ok((
            Credentials::new(source, source_trusts, secret.clone()),
            Credentials::new(peer, peer_trusts, secret.clone()),
        ))
    }

    /// Reads the three files (see [`KeyPaths`]).
    pub fn load(paths: &KeyPaths) -> Result<Credentials> {
        let secret = Secret::from_file(&paths.secret)?;
        let key = StaticKey::from_file(&paths.key)?;
        let trusted = TrustedKeys::from_file(&paths.trusted)?;
        Ok(Credentials::new(key, trusted, secret))
    }

    /// This side's static key.
    pub fn key(&self) -> &StaticKey {
        &self.key
    }

    /// The other side's keys this side accepts.
    pub fn trusted(&self) -> &TrustedKeys {
        &self.trusted
    }

    /// The shared secret.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }
}

/// Where the credentials' files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPaths {
    /// The shared secret (`--secret`).
    pub secret: PathBuf,
    /// This side's private key (`--key`).
    pub key: PathBuf,
    /// The other side's public keys (`--trusted-keys`).
    pub trusted: PathBuf,
}

impl KeyPaths {
    /// The paths given, with the defaults for those not given: `key` and
    /// `trusted-keys` in the directory of the secret file.
    pub fn resolve(secret: &Path, key: Option<&Path>, trusted: Option<&Path>) -> KeyPaths {
        let dir = secret
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| Path::new("."));
        KeyPaths {
            secret: secret.to_path_buf(),
            key: key.map_or_else(|| dir.join(DEFAULT_KEY_FILE), Path::to_path_buf),
            trusted: trusted.map_or_else(|| dir.join(DEFAULT_TRUSTED_FILE), Path::to_path_buf),
        }
    }
}

/// `FILE.pub` for the private key file `FILE`.
pub fn public_key_path(private: &Path) -> PathBuf {
    let mut name = private.as_os_str().to_os_string();
    name.push(".pub");
    PathBuf::from(name)
}

fn parse_key_hex(hex: &str) -> std::result::Result<[u8; KEY_BYTES], String> {
    crate::peer::parse_hex::<KEY_BYTES>(hex)
        .ok_or_else(|| format!("the key is not {} hex digits", 2 * KEY_BYTES))
}

/// Reads a key file after checking that no permission in `forbidden_mode`
/// is set (`fix` says how to clear them).
fn read_key_file(path: &Path, forbidden_mode: u32, fix: &str) -> Result<String> {
    let problem = |problem: String| ReplicateError::Key {
        path: path.to_path_buf(),
        problem,
    };
    let file = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            problem(
                "it does not exist; make a key pair with `twinfs keygen FILE` on each machine and list each machine's FILE.pub in the other's trusted keys file".into(),
            )
        } else {
            problem(format!("cannot open it ({e})"))
        }
    })?;
    let meta = file
        .metadata()
        .map_err(|e| problem(format!("cannot read it ({e})")))?;
    let mode = meta.permissions().mode();
    if mode & forbidden_mode != 0 {
        let what = if forbidden_mode & 0o044 != 0 {
            "read or change"
        } else {
            "change"
        };
        return Err(problem(format!(
            "its mode {:o} lets other users {what} it; {fix}",
            mode & 0o777
        )));
    }
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(problem(
            "it is too large to be a key file; check the path".into(),
        ));
    }
    let mut text = String::new();
    file.take(MAX_KEY_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| problem(format!("cannot read it as text ({e})")))?;
    Ok(text)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32, force: bool, header: &str) -> Result<()> {
    let problem = |problem: String| ReplicateError::Key {
        path: path.to_path_buf(),
        problem,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(mode);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut file = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            problem("it already exists; choose another path, or give --force to replace the key (the other side must then trust the new one)".into())
        } else {
            problem(format!("cannot create it ({e})"))
        }
    })?;
    // A replaced file keeps its old mode: set it.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(header.as_bytes()))
        .and_then(|()| file.write_all(bytes))
        .and_then(|()| file.sync_all())
        .map_err(|e| problem(format!("cannot write it ({e})")))
}

fn ct_eq(a: &[u8; KEY_BYTES], b: &[u8; KEY_BYTES]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn wipe_string(s: &mut str) {
    // SAFETY: zero bytes are valid UTF-8.
    wipe(unsafe { s.as_bytes_mut() });
}
