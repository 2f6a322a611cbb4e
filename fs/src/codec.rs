//! The little-endian cursor every on-disk decoder uses (items, log
//! records): each short or impossible read becomes a corruption error that
//! names what was being decoded, so that a damaged image is reported, never
//! a panic or a value made up.

use crate::error::{FsError, Result};
use crate::types::{BlockPtr, Timestamp};

/// Reads `buf` from a position on; `what` names the thing decoded
/// ("inode item", "log record") in every error.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self::at(buf, 0, what)
    }

    /// A cursor starting at `pos`.
    pub fn at(buf: &'a [u8], pos: usize, what: &'static str) -> Self {
        Reader { buf, pos, what }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The error for a malformed field (`detail`) of what is decoded.
    pub fn corrupt(&self, detail: &str) -> FsError {
        FsError::CorruptVolume(format!("malformed {}: bad {detail}", self.what))
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let s = self
            .pos
            .checked_add(n)
            .and_then(|end| self.buf.get(self.pos..end))
            .ok_or_else(|| self.corrupt("length (it runs past its end)"))?;
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.bytes(N)?.try_into().expect("N bytes"))
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16> {
        self.array().map(u16::from_le_bytes)
    }

    pub fn u32(&mut self) -> Result<u32> {
        self.array().map(u32::from_le_bytes)
    }

    pub fn u64(&mut self) -> Result<u64> {
        self.array().map(u64::from_le_bytes)
    }

    pub fn ts(&mut self) -> Result<Timestamp> {
        let t = Timestamp::decode(self.bytes(Timestamp::SIZE)?);
        if t.nanos >= 1_000_000_000 {
            return Err(self.corrupt("time stamp"));
        }
        Ok(t)
    }

    pub fn ptr(&mut self) -> Result<BlockPtr> {
        Ok(BlockPtr::decode(self.bytes(BlockPtr::SIZE)?))
    }

    /// A name: one length byte, then that many bytes.
    pub fn name(&mut self) -> Result<Vec<u8>> {
        let n = self.u8()? as usize;
        Ok(self.bytes(n)?.to_vec())
    }

    /// Every byte was read.
    pub fn done(&self) -> Result<()> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(self.corrupt("length (bytes left over)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_reads_and_leftovers_are_corruption_naming_the_thing() {
        let mut r = Reader::new(&[1, 2, 3, 0, 0, 0, 0, 0], "test item");
        assert_eq!(r.u8().unwrap(), 1);
        assert_eq!(r.u16().unwrap(), 0x0302);
        assert!(r.done().is_err());
        let e = r.u64().unwrap_err();
        assert!(e.to_string().contains("malformed test item"), "{e}");
        assert_eq!(r.pos(), 3, "a failed read moves nothing");
        assert_eq!(r.u32().unwrap(), 0);
        assert_eq!(r.u8().unwrap(), 0);
        r.done().unwrap();
        assert!(r.u8().is_err(), "nothing left");
        let mut r = Reader::at(&[2, b'h', b'i', 9], 0, "name");
        assert_eq!(r.name().unwrap(), b"hi");
        assert!(r.name().is_err());
    }
}
