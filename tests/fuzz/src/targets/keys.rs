//! The channel's credential files, raw (`replicate/src/keys.rs`,
//! `secret.rs`): the input is written as a file (mode 0600) and read as a
//! private key file, as a trusted-keys file and as a secret file. Checked
//! against a reference reading of the formats in keys.rs: a private key file
//! is accepted exactly when its first line that is neither blank nor a
//! comment is `twinfs-private-key-x25519` and 64 hex digits, and yields that
//! key; a trusted-keys file exactly when every such line is a public key
//! line and there is one, and yields those keys in order; what is accepted
//! is written back (`write_files`, `to_line`) and read again to the same
//! keys, and `contains` agrees with the list. A secret file is accepted
//! exactly when it holds `MIN_SECRET_BYTES` to `MAX_SECRET_BYTES` bytes
//! whose estimated entropy reaches `MIN_SECRET_BITS`, and the estimate never
//! passes 8 bits a byte.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use twinfs_replicate::keys::{PRIVATE_KEY_LABEL, PUBLIC_KEY_LABEL};
use twinfs_replicate::secret::{
    estimated_bits, MAX_SECRET_BYTES, MIN_SECRET_BITS, MIN_SECRET_BYTES,
};
use twinfs_replicate::{PublicKey, Secret, StaticKey, TrustedKeys};

use crate::util::scratch_dir;

/// Entry point.
pub fn run(data: &[u8]) {
    let dir = scratch_dir();
    let path = dir.path().join("file");
    write_private(&path, data);
    let text = std::str::from_utf8(data).ok();
    private_key(&path, text, dir.path());
    trusted_keys(&path, text, dir.path());
    secret(&path, data);
}

fn write_private(path: &Path, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("a scratch file");
    f.write_all(data).expect("written");
}

/// The 32 bytes of 64 hex digits (either case).
fn hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex digits");
    }
    Some(out)
}

/// Lines that are neither blank nor comments, trimmed.
fn key_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// `LABEL HEX ...` with this label: the key.
fn key_line(line: &str, label: &str) -> Option<[u8; 32]> {
    let mut words = line.split_whitespace();
    (words.next()? == label).then_some(())?;
    hex32(words.next()?)
}

fn private_key(path: &Path, text: Option<&str>, dir: &Path) {
    let want = text
        .and_then(|t| key_lines(t).next())
        .and_then(|l| key_line(l, PRIVATE_KEY_LABEL));
    let got = StaticKey::from_file(path);
    assert_eq!(
        got.is_ok(),
        want.is_some(),
        "private key file: {got:?}, the reference reads {want:?}"
    );
    let (Ok(key), Some(private)) = (got, want) else {
        return;
    };
    // Written back: the file holds the reference's key (compared as text:
    // deriving a public key again would cost a scalar multiplication), the
    // .pub line parses to the decoded key's public half.
    let again = dir.join("again");
    let public = key
        .write_files(&again, "fuzz", true)
        .expect("a key file is written");
    let written = std::fs::read_to_string(&again).expect("the key file reads");
    assert_eq!(
        key_lines(&written)
            .next()
            .and_then(|l| key_line(l, PRIVATE_KEY_LABEL)),
        Some(private)
    );
    let line = std::fs::read_to_string(public).expect("the .pub file reads");
    assert_eq!(PublicKey::parse_line(line.trim()), Ok(key.public()));
}

fn trusted_keys(path: &Path, text: Option<&str>, dir: &Path) {
    let want: Option<Vec<PublicKey>> = text.and_then(|t| {
        key_lines(t)
            .map(|l| key_line(l, PUBLIC_KEY_LABEL).map(PublicKey))
            .collect::<Option<Vec<_>>>()
            .filter(|keys| !keys.is_empty())
    });
    let got = TrustedKeys::from_file(path);
    assert_eq!(
        got.as_ref().ok().map(TrustedKeys::keys),
        want.as_deref(),
        "trusted keys file: {got:?}"
    );
    let Ok(trusted) = got else {
        return;
    };
    for k in trusted.keys() {
        assert!(trusted.contains(k));
        let mut other = *k;
        other.0[31] ^= 1;
        assert_eq!(trusted.contains(&other), trusted.keys().contains(&other));
    }
    // Written back, one line each with a comment, and read again.
    let lines: String = trusted
        .keys()
        .iter()
        .map(|k| format!("{}\n", k.to_line(" a comment ")))
        .collect();
    let again = dir.join("trusted-again");
    write_private(&again, lines.as_bytes());
    assert_eq!(TrustedKeys::from_file(&again).ok(), Some(trusted));
}

/// `Secret::from_file` against the rules of `Secret::from_bytes`
/// (estimating the entropy sorts the input's windows: done once here).
fn secret(path: &Path, data: &[u8]) {
    let bits = estimated_bits(data);
    assert!(
        u64::from(bits) <= 8 * data.len() as u64,
        "{bits} bits estimated for {} bytes",
        data.len()
    );
    let want =
        (MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&data.len()) && bits >= MIN_SECRET_BITS;
    let got = Secret::from_file(path);
    assert_eq!(
        got.is_ok(),
        want,
        "the secret file: {got:?} ({} bytes, {bits} bits)",
        data.len()
    );
}
