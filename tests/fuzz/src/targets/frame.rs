//! Length-prefixed frames (`replicate/src/frame.rs`), raw bytes.
//!
//! The input's first byte picks the read size (1 to 128 bytes per read, so
//! prefixes and bodies arrive split everywhere) and the limit (a session's or
//! the handshake's); the rest is the stream. Checked: every frame returned is
//! exactly the next prefix and body of the stream, a clean end comes only
//! between frames, `TooLarge` only for a prefix above the limit, and
//! `Truncated` counts exactly the bytes left.

use twinfs_replicate::frame::{
    check_frame, check_frame_within, encode_frame, FrameReader, LEN_PREFIX_BYTES, MAX_FRAME_BYTES,
    MAX_HANDSHAKE_FRAME_BYTES,
};
use twinfs_replicate::{Direction, FrameFault, ReplicateError};

use crate::util::{block_on, ChunkedReader};

/// Entry point.
pub fn run(data: &[u8]) {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let max = if ctl & 0x80 == 0 {
        MAX_HANDSHAKE_FRAME_BYTES
    } else {
        MAX_FRAME_BYTES
    };
    let chunk = usize::from(ctl & 0x7f) + 1;
    block_on(read_all(stream, max, chunk));

    // The pure check agrees with the prefix, and a body round-trips.
    if let Ok(Some(span)) = check_frame(stream) {
        let body = &stream[span.body_start..span.frame_end];
        let again = encode_frame(body).expect("a body that was framed can be framed");
        assert_eq!(&again[..], &stream[..span.frame_end]);
    }
}

async fn read_all(stream: &[u8], max: usize, chunk: usize) {
    let mut reader = FrameReader::new(ChunkedReader::new(stream, chunk), Direction::PeerToSource);
    reader.set_max_frame_bytes(max);
    let mut at = 0usize;
    loop {
        match reader.read_frame().await {
            Ok(Some(body)) => {
                let len = body.len();
                assert!(len <= max, "a frame of {len} bytes passed the limit {max}");
                let prefix = &stream[at..at + LEN_PREFIX_BYTES];
                assert_eq!(
                    u32::from_be_bytes(prefix.try_into().expect("4")) as usize,
                    len
                );
                let start = at + LEN_PREFIX_BYTES;
                assert_eq!(&*body, &stream[start..start + len], "body differs");
                at = start + len;
                assert_eq!(reader.bytes_read(), at as u64);
            }
            Ok(None) => {
                assert_eq!(at, stream.len(), "a clean end inside a frame");
                return;
            }
            Err(ReplicateError::Frame { fault, frame, .. }) => {
                assert_eq!(frame, reader.frames_read());
                let rest = &stream[at..];
                match fault {
                    FrameFault::TooLarge { len, max: m } => {
                        assert_eq!(m, max);
                        assert!(len as usize > max);
                        let prefix = u32::from_be_bytes(rest[..4].try_into().expect("4"));
                        assert_eq!(u64::from(prefix), len);
                        assert!(check_frame_within(rest, max).is_err());
                    }
                    FrameFault::Truncated { got, expected } => {
                        assert_eq!(got, rest.len());
                        assert!(got < expected, "{got} bytes of a {expected}-byte frame");
                        assert_eq!(check_frame_within(rest, max), Ok(None));
                    }
                    other => panic!("unexpected fault {other:?}"),
                }
                return;
            }
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
}
