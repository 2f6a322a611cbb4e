//! MessagePack encoding rules shared by every message type.
//!
//! rmp-serde's compact form: structs as arrays (fields by position), enum variants as
//! a one-entry map keyed by the variant's name. Every byte payload is declared with
//! `serde_bytes` so it travels as one MessagePack `bin`, not one integer per byte.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{FrameFault, ReplicateError, Result};

/// Appends the MessagePack encoding of `msg` to `buf`.
pub fn encode_into<T: Serialize + ?Sized>(msg: &T, buf: &mut Vec<u8>) -> Result<()> {
    rmp_serde::encode::write(buf, msg).map_err(|e| ReplicateError::Encode(e.to_string()))
}

/// The MessagePack encoding of `msg`.
pub fn encode<T: Serialize + ?Sized>(msg: &T) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    encode_into(msg, &mut buf)?;
    Ok(buf)
}

/// Decodes exactly one `T` from `bytes`; trailing bytes are an error, so a frame means
/// one thing only.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameFault> {
    // A reader over a slice: byte strings are bounded by the bytes actually present,
    // so a lying length inside the payload cannot make the decoder allocate.
    let mut rest = bytes;
    let mut de = rmp_serde::Deserializer::new(&mut rest);
    let value = T::deserialize(&mut de).map_err(|e| FrameFault::Malformed(e.to_string()))?;
    let rest = rest.len();
    if rest != 0 {
        return Err(FrameFault::Malformed(format!(
            "{rest} trailing bytes after the message"
        )));
    }
    Ok(value)
}
