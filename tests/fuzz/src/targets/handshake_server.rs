//! The handshake of either side against an unauthenticated stream: the input
//! is everything the other end sends (a peer fed by whoever connects, or a
//! source that connected to an impostor). The first byte picks the side (bit
//! 7) and the read size; the rest is the stream. The seeds replay a real
//! source's first frames (`Hello`, `NoiseInit`), which a peer accepts: its
//! first Noise message authenticates nothing but the prologue. Checked: the
//! handshake fails cleanly, never panics, and never succeeds (the stream
//! holds neither a trusted static key nor the pre-shared key, and it cannot
//! answer the other side's fresh ephemeral key); the peer never asks its
//! binding policy about a volume before the source authenticated.

use std::cell::Cell;

use twinfs_replicate::handshake::{handshake_client, handshake_server, ResumePoint};

use crate::creds::{self, SourceCreds};
use crate::util::{block_on, ChunkedReader};

/// Entry point.
pub fn run(data: &[u8]) {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(ctl & 0x7f) + 1;
    let io = tokio::io::join(ChunkedReader::new(stream, chunk), tokio::io::sink());
    let asked = Cell::new(false);
    let result = block_on(async {
        if ctl & 0x80 == 0 {
            let resume = ResumePoint {
                applied_cp: None,
                durable_transfer: 0,
            };
            handshake_server(io, creds::peer(), resume, |_| {
                asked.set(true);
                Ok(())
            })
            .await
            .map(|_| ())
        } else {
            handshake_client(io, creds::source(SourceCreds::Right), [0x5A; 16], 1 << 20)
                .await
                .map(|_| ())
        }
    });
    assert!(
        result.is_err(),
        "a handshake succeeded against a stream that holds no key and no secret"
    );
    assert!(
        !asked.get(),
        "the peer's binding policy ran before the source authenticated"
    );
}
