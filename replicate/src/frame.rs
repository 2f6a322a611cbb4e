//! Length-prefixed framing: `u32` big-endian body length, then the body.
//!
//! The reader checks before it parses (mini-redis style): it reads the prefix, rejects
//! a length above [`MAX_FRAME_BYTES`] before allocating anything for the body, and only
//! then waits for the body. Reading is cancel-safe: bytes already received stay in the
//! reader's buffer if a `read_frame` future is dropped (e.g. in `tokio::select!`).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Direction, FrameFault, ReplicateError, Result};

/// Bytes of the length prefix in front of every frame.
pub const LEN_PREFIX_BYTES: usize = 4;

/// Largest frame body accepted or sent, in bytes (prefix not included). Big enough for
/// a `Transfer` of `MAX_BATCH_BYTES` and a `CpBlocks` of `MAX_BLOCKS_PER_CP_FRAME` full
/// blocks; small enough that one connection never buffers more than this per frame.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Largest plaintext handshake frame body. Handshake messages are small; keeping the
/// limit low means a connector that has proved nothing cannot make the peer buffer
/// more than this (the reader's buffer stays this small until the limit is raised).
pub const MAX_HANDSHAKE_FRAME_BYTES: usize = 4096;

/// How much the reader asks the transport for when it does not yet know a frame's size.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Where a complete frame sits in a buffer: its body is `buf[body_start..frame_end]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSpan {
    /// Offset of the first body byte (always `LEN_PREFIX_BYTES`).
    pub body_start: usize,
    /// Offset one past the last body byte: the frame's total length on the wire.
    pub frame_end: usize,
}

/// Checks whether `buf` starts with a complete frame.
///
/// `Ok(None)` means "need more bytes"; an error means the stream can never become a
/// valid frame (the length is over the limit), decided from the prefix alone.
pub fn check_frame(buf: &[u8]) -> Result<Option<FrameSpan>, FrameFault> {
    check_frame_within(buf, MAX_FRAME_BYTES)
}

/// [`check_frame`] with a lower limit than `MAX_FRAME_BYTES` (used during the handshake).
pub fn check_frame_within(buf: &[u8], max: usize) -> Result<Option<FrameSpan>, FrameFault> {
    let max = max.min(MAX_FRAME_BYTES);
    let Some(prefix) = buf.get(..LEN_PREFIX_BYTES) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    let len = usize::try_from(len).map_err(|_| FrameFault::TooLarge {
        len: u64::from(len),
        max,
    })?;
    if len > max {
        return Err(FrameFault::TooLarge {
            len: len as u64,
            max,
        });
    }
    let frame_end = LEN_PREFIX_BYTES + len;
    if buf.len() < frame_end {
        return Ok(None);
    }
    Ok(Some(FrameSpan {
        body_start: LEN_PREFIX_BYTES,
        frame_end,
    }))
}

/// The length prefix for a body of `body_len` bytes, or an error above the limit.
pub fn len_prefix(body_len: usize) -> Result<[u8; LEN_PREFIX_BYTES], FrameFault> {
    if body_len > MAX_FRAME_BYTES {
        return Err(FrameFault::TooLarge {
            len: body_len as u64,
            max: MAX_FRAME_BYTES,
        });
    }
    // MAX_FRAME_BYTES < u32::MAX, so the cast is exact.
    Ok((body_len as u32).to_be_bytes())
}

/// A whole frame (prefix + body) as bytes, for tests and tools that craft raw streams.
pub fn encode_frame(body: &[u8]) -> Result<Vec<u8>, FrameFault> {
    let mut out = Vec::with_capacity(LEN_PREFIX_BYTES + body.len());
    out.extend_from_slice(&len_prefix(body.len())?);
    out.extend_from_slice(body);
    Ok(out)
}

/// Reads frames from a byte stream, counting them per connection.
pub struct FrameReader<R> {
    inner: R,
    direction: Direction,
    /// Received bytes; `buf[start..end]` are not yet consumed.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    frames_read: u64,
    bytes_read: u64,
    max_frame_bytes: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps `inner`; `direction` labels errors (the way the frames travel).
    pub fn new(inner: R, direction: Direction) -> Self {
        FrameReader {
            inner,
            direction,
            buf: Vec::new(),
            start: 0,
            end: 0,
            frames_read: 0,
            bytes_read: 0,
            max_frame_bytes: MAX_FRAME_BYTES,
        }
    }

    /// Lowers (or restores) the largest frame body accepted; never above
    /// `MAX_FRAME_BYTES`.
    pub fn set_max_frame_bytes(&mut self, max: usize) {
        self.max_frame_bytes = max.min(MAX_FRAME_BYTES);
    }

    /// Direction of the frames this reader receives.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Number of the next frame (frames returned so far).
    pub fn frames_read(&self) -> u64 {
        self.frames_read
    }

    /// Wire bytes of the frames returned so far, prefixes included.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The next frame's body, or `None` if the stream ended cleanly between frames.
    ///
    /// Errors: [`ReplicateError::Frame`] with [`FrameFault::TooLarge`] (decided from the
    /// prefix, before reading or allocating the body) or [`FrameFault::Truncated`]
    /// (the stream ended inside a frame), or [`ReplicateError::Io`].
    pub async fn read_frame(&mut self) -> Result<Option<&mut [u8]>> {
        loop {
            let pending = &self.buf[self.start..self.end];
            match check_frame_within(pending, self.max_frame_bytes)
                .map_err(|fault| self.fault(fault))?
            {
                Some(span) => {
                    let body = self.start + span.body_start..self.start + span.frame_end;
                    self.start += span.frame_end;
                    self.frames_read += 1;
                    self.bytes_read += span.frame_end as u64;
                    return Ok(Some(&mut self.buf[body]));
                }
                None => {
                    if !self.fill().await? {
                        return self.at_eof();
                    }
                }
            }
        }
    }

    fn fault(&self, fault: FrameFault) -> ReplicateError {
        ReplicateError::Frame {
            direction: self.direction,
            frame: self.frames_read,
            fault,
        }
    }

    fn at_eof(&self) -> Result<Option<&mut [u8]>> {
        let got = self.end - self.start;
        if got == 0 {
            return Ok(None);
        }
        let expected = if got >= LEN_PREFIX_BYTES {
            let p = &self.buf[self.start..self.start + LEN_PREFIX_BYTES];
            LEN_PREFIX_BYTES + u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize
        } else {
            LEN_PREFIX_BYTES
        };
        Err(self.fault(FrameFault::Truncated { got, expected }))
    }

    /// Reads more bytes into the buffer; `false` at end of stream. Cancel-safe: a
    /// dropped future has read nothing, and the buffer bookkeeping is unchanged.
    async fn fill(&mut self) -> Result<bool> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let want = self.bytes_wanted();
        if self.buf.len() < self.end + want {
            self.buf.resize(self.end + want, 0);
        }
        let direction = self.direction;
        let n = self
            .inner
            .read(&mut self.buf[self.end..])
            .await
            .map_err(|source| ReplicateError::Io {
                what: format!("reading the {direction} stream; reconnect and resume"),
                source,
            })?;
        self.end += n;
        Ok(n > 0)
    }

    /// How many more bytes to make room for: the rest of the current frame when its
    /// length is known (already checked against the limit), else one read chunk, but
    /// never more than the largest frame accepted now (small during the handshake).
    fn bytes_wanted(&self) -> usize {
        let have = self.end - self.start;
        if have >= LEN_PREFIX_BYTES {
            let p = &self.buf[self.start..self.start + LEN_PREFIX_BYTES];
            let total = LEN_PREFIX_BYTES + u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
            total.saturating_sub(have).max(1)
        } else {
            READ_CHUNK_BYTES.min(LEN_PREFIX_BYTES + self.max_frame_bytes)
        }
    }
}

/// Writes frames to a byte stream, counting them per connection.
///
/// A frame is built in the writer's buffer ([`FrameWriter::start_frame`]) and then
/// written whole ([`FrameWriter::write_started_frame`]). Writing is not cancel-safe:
/// a write that fails or is dropped half-way poisons the writer, because the other
/// side could no longer find frame boundaries.
pub struct FrameWriter<W> {
    inner: W,
    direction: Direction,
    buf: Vec<u8>,
    frames_written: u64,
    bytes_written: u64,
    /// Set while a frame is being written and on any write error.
    poisoned: bool,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps `inner`; `direction` is the way the written frames travel.
    pub fn new(inner: W, direction: Direction) -> Self {
        FrameWriter {
            inner,
            direction,
            buf: Vec::new(),
            frames_written: 0,
            bytes_written: 0,
            poisoned: false,
        }
    }

    /// Direction of the frames this writer sends.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Number of the next frame (frames written so far).
    pub fn frames_written(&self) -> u64 {
        self.frames_written
    }

    /// Wire bytes written so far, prefixes included.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Clears the frame buffer, reserves the length prefix, and returns the buffer for
    /// the caller to append the body to.
    pub fn start_frame(&mut self) -> &mut Vec<u8> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; LEN_PREFIX_BYTES]);
        &mut self.buf
    }

    /// Fills in the length prefix of the started frame and writes it. Returns the wire
    /// bytes written. A body over the limit is an error and nothing is written.
    pub async fn write_started_frame(&mut self) -> Result<usize> {
        if self.poisoned {
            return Err(ReplicateError::SessionClosed {
                direction: self.direction,
            });
        }
        let body_len = self.buf.len().saturating_sub(LEN_PREFIX_BYTES);
        let prefix = len_prefix(body_len).map_err(|fault| ReplicateError::InvalidOutgoing {
            what: "frame",
            problem: fault.to_string(),
        })?;
        self.buf[..LEN_PREFIX_BYTES].copy_from_slice(&prefix);
        self.poisoned = true;
        let (direction, frame) = (self.direction, self.frames_written);
        let io = |source| ReplicateError::Io {
            what: format!("writing {direction} frame {frame}; reconnect and resume"),
            source,
        };
        self.inner.write_all(&self.buf).await.map_err(io)?;
        self.inner.flush().await.map_err(io)?;
        self.poisoned = false;
        self.frames_written += 1;
        self.bytes_written += self.buf.len() as u64;
        Ok(self.buf.len())
    }

    /// Writes one frame with the given body.
    pub async fn write_frame(&mut self, body: &[u8]) -> Result<usize> {
        self.start_frame().extend_from_slice(body);
        self.write_started_frame().await
    }

    /// Shuts the write direction down (the other side sees end of stream).
    pub async fn shutdown(&mut self) -> Result<()> {
        let direction = self.direction;
        self.inner
            .shutdown()
            .await
            .map_err(|source| ReplicateError::Io {
                what: format!("closing the {direction} stream"),
                source,
            })?;
        Ok(())
    }
}
