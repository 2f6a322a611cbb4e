//! twinfs-fs: the volume — a WAFL-like copy-on-write layout with
//! blake3-checksummed block pointers, an NVLOG of every modifying operation,
//! consistency points, snapshots — and the thin FUSE adapter over it.
//!
//! The on-disk format is documented in `fs/FORMAT.md`.

pub mod alloc;
pub mod apply;
pub mod blockhash;
pub mod btree;
pub mod cache;
mod codec;
pub mod cp;
pub mod descriptor;
pub mod device;
pub mod diff;
pub mod error;
pub mod filetree;
pub mod fsck;
pub mod fuse;
pub mod items;
pub mod lineage;
pub mod nvlog;
pub mod overlay;
pub mod pacer;
pub mod rangeset;
pub mod superblock;
pub mod types;
pub mod volume;

pub use error::{FsError, Result};
pub use types::*;
pub use volume::{
    Attr, AttrChanges, Listing, MkfsOptions, StatFs, TimeSet, View, Volume, VolumeConfig,
};
