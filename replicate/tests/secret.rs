//! The shared-secret file: what it accepts, what it refuses and how it says so.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use twinfs_replicate::secret::{
    estimated_bits, MAX_SECRET_BYTES, MIN_SECRET_BITS, MIN_SECRET_BYTES,
};
use twinfs_replicate::{Credentials, ReplicateError, Secret};

fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    f
}

fn problem(result: Result<Secret, ReplicateError>) -> String {
    match result {
        Err(ReplicateError::Secret { problem, .. }) => problem,
        other => panic!("expected a Secret error, got {other:?}"),
    }
}

#[test]
fn an_empty_file_is_refused_with_how_to_make_one() {
    let f = file_with(b"");
    let p = problem(Secret::from_file(f.path()));
    assert!(p.contains("empty"), "{p}");
    assert!(p.contains("/dev/urandom"), "{p}");
}

#[test]
fn a_file_shorter_than_the_minimum_is_refused_with_both_sizes() {
    let f = file_with(&[7; MIN_SECRET_BYTES - 1]);
    let p = problem(Secret::from_file(f.path()));
    assert!(
        p.contains(&format!("{} bytes", MIN_SECRET_BYTES - 1)),
        "{p}"
    );
    assert!(p.contains(&MIN_SECRET_BYTES.to_string()), "{p}");
}

#[test]
fn a_huge_file_is_refused_as_not_a_secret() {
    let big: Vec<u8> = (0..MAX_SECRET_BYTES + 1)
        .map(|i| (i * 7919 % 251) as u8)
        .collect();
    let f = file_with(&big);
    assert!(problem(Secret::from_file(f.path())).contains("check the path"));
}

#[test]
fn a_missing_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-secret");
    let err = Secret::from_file(&path).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("no-such-secret"), "{text}");
    assert!(text.contains("--secret"), "{text}");
}

#[test]
fn debug_output_never_shows_the_secret_or_its_key() {
    let s = Secret::from_bytes(b"super-secret-value-q8Zr4vK1pX").unwrap();
    let shown = format!("{s:?}");
    assert_eq!(shown, "Secret(<redacted>)");
    let err = format!("{:?}", Secret::from_bytes(b"short"));
    assert!(!err.contains("short\""), "{err}");
}

#[test]
fn a_file_other_users_can_read_is_refused_with_the_fix() {
    let f = file_with(b"f0c1a9e27b3d4c8596a1e0f7b2c3d4e5\n");
    for mode in [0o644, 0o640, 0o604, 0o660] {
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        let p = problem(Secret::from_file(f.path()));
        assert!(p.contains("chmod 600"), "{mode:o}: {p}");
    }
    std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o400)).unwrap();
    assert!(Secret::from_file(f.path()).is_ok());
}

#[test]
fn low_entropy_secrets_are_refused_and_random_ones_accepted() {
    for weak in [
        &b"                "[..],
        b"passwordpassword",
        b"abcdefghijklmnop\n",
        b"0000000000000000000000000000000000000000",
        b"ab".repeat(40).as_slice(),
        b"1234567812345678",
    ] {
        let p = Secret::from_bytes(weak).expect_err(&String::from_utf8_lossy(weak));
        assert!(p.contains("does not look random"), "{p}");
        assert!(p.contains("/dev/urandom"), "{p}");
    }
    // What the documentation tells people to use, over many draws.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..500 {
        let raw16: Vec<u8> = (0..16).map(|_| next() as u8).collect();
        let raw32: Vec<u8> = (0..32).map(|_| next() as u8).collect();
        let hex = format!("{}\n", twinfs_fs::hex(&raw16));
        for good in [&raw16[..], &raw32[..], hex.as_bytes()] {
            assert!(
                estimated_bits(good) >= MIN_SECRET_BITS,
                "{good:?}: {} bits",
                estimated_bits(good)
            );
        }
    }
}

#[tokio::test]
async fn the_same_file_bytes_authenticate_and_one_changed_byte_does_not() {
    let a = file_with(b"5e8a0c3f71d24b96e0a7c1f83d5b2e46\n");
    let b = file_with(b"5e8a0c3f71d24b96e0a7c1f83d5b2e46\n");
    let c = file_with(b"5e8a0c3f71d24b96e0a7c1f83d5b2e46");
    let (sa, sb, sc) = (
        Secret::from_file(a.path()).unwrap(),
        Secret::from_file(b.path()).unwrap(),
        Secret::from_file(c.path()).unwrap(),
    );
    let (source, peer) = Credentials::pair(&sa).unwrap();
    let with = |c: &Credentials, s: &Secret| {
        Credentials::new(c.key().clone(), c.trusted().clone(), s.clone())
    };
    let uuid = [1; 16];
    let resume = twinfs_replicate::ResumePoint {
        applied_cp: None,
        durable_transfer: 0,
    };

    let (source_a, peer_b, peer_c) = (with(&source, &sa), with(&peer, &sb), with(&peer, &sc));
    let (x, y) = tokio::io::duplex(4096);
    let (client, server) = tokio::join!(
        twinfs_replicate::handshake_client(x, &source_a, uuid, 4096),
        twinfs_replicate::handshake_server(y, &peer_b, resume, |_| Ok(())),
    );
    assert!(
        client.is_ok() && server.is_ok(),
        "identical files must match"
    );

    let (x, y) = tokio::io::duplex(4096);
    let (client, server) = tokio::join!(
        twinfs_replicate::handshake_client(x, &source_a, uuid, 4096),
        twinfs_replicate::handshake_server(y, &peer_c, resume, |_| Ok(())),
    );
    assert!(
        client.is_err() && server.is_err(),
        "a missing trailing newline is a different secret"
    );
}
