//! twinfs-fs: the volume — a WAFL-like copy-on-write layout with
//! blake3-checksummed block pointers, an NVLOG of every modifying operation,
//! consistency points, snapshots — and the thin FUSE adapter over it.
//!
//! The on-disk format is documented in `fs/FORMAT.md`.

pub mod btree;
pub mod device;
pub mod error;
pub mod types;

pub use error::{FsError, Result};
pub use types::*;
