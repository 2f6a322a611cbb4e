//! The handshake of either side against an unauthenticated stream: the input
//! is everything the other end sends (a peer fed by whoever connects, or a
//! source that connected to an impostor). The first byte picks the side (bit
//! 7) and the read size; the rest is the stream. Checked: the handshake
//! fails cleanly, never panics, and never succeeds (the other end cannot know
//! the secret, and both nonces are fresh); the peer never asks its binding
//! policy about a volume before the source proved the secret.

use std::cell::Cell;

use twinfs_replicate::handshake::{handshake_client, handshake_server, ResumePoint};
use twinfs_replicate::Secret;

use crate::util::{block_on, ChunkedReader};

/// The secret both ends would share; the fuzzer never learns the proofs.
pub const SECRET: &[u8] = b"twinfs fuzz secret: sixteen bytes or more";

/// Entry point.
pub fn run(data: &[u8]) {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let secret = Secret::from_bytes(SECRET).expect("a long enough secret");
    let chunk = usize::from(ctl & 0x7f) + 1;
    let io = tokio::io::join(ChunkedReader::new(stream, chunk), tokio::io::sink());
    let asked = Cell::new(false);
    let result = block_on(async {
        if ctl & 0x80 == 0 {
            let resume = ResumePoint {
                applied_cp: None,
                durable_transfer: 0,
            };
            handshake_server(io, &secret, resume, |_| {
                asked.set(true);
                Ok(())
            })
            .await
            .map(|_| ())
        } else {
            handshake_client(io, &secret, [0x5A; 16]).await.map(|_| ())
        }
    });
    assert!(
        result.is_err(),
        "a handshake succeeded against a stream that does not know the secret"
    );
    assert!(
        !asked.get(),
        "the peer's binding policy ran before the source proved the secret"
    );
}
