//! The shared-secret file: what it accepts, what it refuses and how it says so.

use std::io::Write;

use twinfs_replicate::secret::{MAX_SECRET_BYTES, MIN_SECRET_BYTES};
use twinfs_replicate::{ReplicateError, Secret};

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
    let f = file_with(&vec![1; MAX_SECRET_BYTES + 1]);
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
    let s = Secret::from_bytes(b"super-secret-value-1234").unwrap();
    let shown = format!("{s:?}");
    assert_eq!(shown, "Secret(<redacted>)");
    let err = format!("{:?}", Secret::from_bytes(b"short"));
    assert!(!err.contains("short\""), "{err}");
}

#[tokio::test]
async fn the_same_file_bytes_authenticate_and_one_changed_byte_does_not() {
    let a = file_with(b"0123456789abcdef0123456789abcdef\n");
    let b = file_with(b"0123456789abcdef0123456789abcdef\n");
    let c = file_with(b"0123456789abcdef0123456789abcdef");
    let (sa, sb, sc) = (
        Secret::from_file(a.path()).unwrap(),
        Secret::from_file(b.path()).unwrap(),
        Secret::from_file(c.path()).unwrap(),
    );
    let uuid = [1; 16];
    let resume = twinfs_replicate::ResumePoint {
        applied_cp: None,
        durable_transfer: 0,
    };

    let (x, y) = tokio::io::duplex(4096);
    let (client, server) = tokio::join!(
        twinfs_replicate::handshake_client(x, &sa, uuid),
        twinfs_replicate::handshake_server(y, &sb, resume, |_| Ok(())),
    );
    assert!(
        client.is_ok() && server.is_ok(),
        "identical files must match"
    );

    let (x, y) = tokio::io::duplex(4096);
    let (client, server) = tokio::join!(
        twinfs_replicate::handshake_client(x, &sa, uuid),
        twinfs_replicate::handshake_server(y, &sc, resume, |_| Ok(())),
    );
    assert!(
        client.is_err() && server.is_err(),
        "a missing trailing newline is a different secret"
    );
}
