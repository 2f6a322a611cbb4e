//! Key files: what `StaticKey::write_files` writes, what the readers accept
//! and refuse (and how they say so), and the defaults next to the secret.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use twinfs_replicate::keys::{public_key_path, PUBLIC_KEY_LABEL};
use twinfs_replicate::{KeyPaths, PublicKey, ReplicateError, StaticKey, TrustedKeys};

fn problem(result: Result<impl std::fmt::Debug, ReplicateError>) -> String {
    match result {
        Err(ReplicateError::Key { problem, .. }) => problem,
        other => panic!("expected a Key error, got {other:?}"),
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_written_key_pair_reads_back_with_private_and_public_modes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    let key = StaticKey::generate().unwrap();
    let public = key.write_files(&path, "peer.lan", false).unwrap();
    assert_eq!(public, public_key_path(&path));
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&public), 0o644);
    let back = StaticKey::from_file(&path).unwrap();
    assert_eq!(back.public(), key.public());
    let line = std::fs::read_to_string(&public).unwrap();
    assert!(line.starts_with(PUBLIC_KEY_LABEL) && line.trim_end().ends_with("peer.lan"));
    assert_eq!(PublicKey::parse_line(&line).unwrap(), key.public());
    // The .pub file is itself a valid trusted-keys file.
    assert_eq!(
        TrustedKeys::from_file(&public).unwrap().keys(),
        &[key.public()]
    );
    // Never overwritten by accident; --force replaces both.
    assert!(problem(key.write_files(&path, "", false)).contains("--force"));
    let other = StaticKey::generate().unwrap();
    other.write_files(&path, "", true).unwrap();
    assert_eq!(
        StaticKey::from_file(&path).unwrap().public(),
        other.public()
    );
}

#[test]
fn the_private_key_never_shows_in_debug_output() {
    let key = StaticKey::generate().unwrap();
    let shown = format!("{key:?}");
    assert!(shown.contains(&key.public().to_hex()));
    assert!(shown.contains("redacted"));
}

#[test]
fn a_private_key_others_can_read_and_a_trusted_file_others_can_write_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    let key = StaticKey::generate().unwrap();
    let public = key.write_files(&path, "", false).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(problem(StaticKey::from_file(&path)).contains("chmod 600"));
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert!(problem(TrustedKeys::from_file(&public)).contains("chmod go-w"));
}

#[test]
fn wrong_files_are_refused_with_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    let key = StaticKey::generate().unwrap();
    let public = key.write_files(&path, "", false).unwrap();
    // The public key where the private one is expected, and the reverse.
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(problem(StaticKey::from_file(&public)).contains("public key"));
    assert!(problem(TrustedKeys::from_file(&path)).contains("private key"));
    // Garbage lines, a short key, no key at all.
    let trusted = dir.path().join("trusted-keys");
    for (text, expect) in [
        ("ssh-ed25519 AAAA me@host\n", "line 1"),
        (&*format!("# ok\n{PUBLIC_KEY_LABEL} abcd\n"), "line 2"),
        ("# nothing here\n\n", "lists no key"),
    ] {
        std::fs::write(&trusted, text).unwrap();
        std::fs::set_permissions(&trusted, std::fs::Permissions::from_mode(0o644)).unwrap();
        let p = problem(TrustedKeys::from_file(&trusted));
        assert!(p.contains(expect), "{text:?}: {p}");
    }
    let missing = problem(StaticKey::from_file(&dir.path().join("none")));
    assert!(missing.contains("twinfs keygen"), "{missing}");
}

#[test]
fn a_trusted_keys_file_lists_several_keys_with_comments() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        StaticKey::generate().unwrap(),
        StaticKey::generate().unwrap(),
        StaticKey::generate().unwrap(),
    );
    let text = format!(
        "# sources of this peer\n{}\n\n  {}  \n",
        a.public().to_line("laptop"),
        b.public().to_line("")
    );
    let path = dir.path().join("trusted-keys");
    std::fs::write(&path, text).unwrap();
    let trusted = TrustedKeys::from_file(&path).unwrap();
    assert!(trusted.contains(&a.public()) && trusted.contains(&b.public()));
    assert!(!trusted.contains(&c.public()));
}

#[test]
fn keys_default_to_files_next_to_the_secret() {
    let p = KeyPaths::resolve(Path::new("/etc/twinfs/secret"), None, None);
    assert_eq!(p.key, Path::new("/etc/twinfs/key"));
    assert_eq!(p.trusted, Path::new("/etc/twinfs/trusted-keys"));
    let p = KeyPaths::resolve(Path::new("secret"), Some(Path::new("/k")), None);
    assert_eq!(p.key, Path::new("/k"));
    assert_eq!(p.trusted, Path::new("./trusted-keys"));
}
