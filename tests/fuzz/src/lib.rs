//! Fuzz targets for every decoder of twinfs: what arrives from the network
//! (frames, handshake, session messages, lz4 payloads), the channel's key,
//! trusted-keys and secret files, what is read back
//! from disk (superblock slots, B-tree nodes, file-tree blocks, inode and
//! directory items, log batches and records, the peer's log store, journal,
//! state and status files), the control socket's requests and the relay's
//! control commands.
//!
//! Each target is a plain `fn(&[u8])` in [`targets`] that panics only when
//! it finds a bug: a decoder that panics, or one that accepts something that
//! breaks the property the target checks (a round trip, a checksum, an
//! agreement between two readers of the same bytes). The same function runs
//! under libFuzzer (`fuzz_targets/*.rs`, built by `cargo fuzz` on a nightly
//! toolchain) and under the stable driver ([`driver`], the `fuzz-stable`
//! binary), which replays the corpora and runs mutated inputs.

pub mod arb;
pub mod creds;
pub mod driver;
pub mod targets;
pub mod util;

/// One fuzz target: its name (also its corpus directory and binary) and its
/// entry point.
pub struct Target {
    /// Name of the target, its `corpus/NAME` and `regressions/NAME`.
    pub name: &'static str,
    /// What it decodes, for the driver's listing.
    pub about: &'static str,
    /// The entry point.
    pub run: fn(&[u8]),
}

/// Every target, in the order CI runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "frame",
        about: "length-prefixed frames through FrameReader, in chunks",
        run: targets::frame::run,
    },
    Target {
        name: "message",
        about: "a session Message's plaintext (MessagePack + limits), raw",
        run: targets::message::run,
    },
    Target {
        name: "message_arb",
        about: "valid and invalid Messages built from the input, encoded, flipped, cut",
        run: targets::message_arb::run,
    },
    Target {
        name: "lz4",
        about: "TransferLz4 payloads: decompression and the compressor's round trip",
        run: targets::lz4::run,
    },
    Target {
        name: "handshake_msg",
        about: "HandshakeMsg and Welcome, raw, with round trips",
        run: targets::handshake_msg::run,
    },
    Target {
        name: "handshake_server",
        about: "the handshake of either side fed by an unauthenticated stream",
        run: targets::handshake_server::run,
    },
    Target {
        name: "session",
        about:
            "handshake and session through a man in the middle: credentials, tamper, rekeys, damage",
        run: targets::session::run,
    },
    Target {
        name: "keys",
        about: "key files, trusted-keys files and secret files, against a reference reading",
        run: targets::keys::run,
    },
    Target {
        name: "cp_apply",
        about: "the peer's rebuilding of a CP block from its encoding, against a model",
        run: targets::cp_apply::run,
    },
    Target {
        name: "nvlog_batch",
        about: "log batches: raw, and built from records with the checksum fixed up",
        run: targets::nvlog_batch::run,
    },
    Target {
        name: "nvlog_record",
        about: "log records one after another, with round trips",
        run: targets::nvlog_record::run,
    },
    Target {
        name: "nvlog_scan",
        about: "replay's scan of the log region: chains of sealed batches, one damaged or stale",
        run: targets::nvlog_scan::run,
    },
    Target {
        name: "superblock",
        about: "superblock slots with the checksum fixed up, and read_latest",
        run: targets::superblock::run,
    },
    Target {
        name: "lineage",
        about: "lineages (generation histories): decode, compare, common ancestor, up_to, begin",
        run: targets::lineage::run,
    },
    Target {
        name: "btree",
        about: "metadata B-tree nodes: get, range, walk, check, leaf_items, fsck's decoder, apply",
        run: targets::btree::run,
    },
    Target {
        name: "filetree",
        about: "file-tree indirect blocks: lookup, lookup_run, find, count_blocks, walk",
        run: targets::filetree::run,
    },
    Target {
        name: "items",
        about: "inode records, directory and xattr buckets, snapshot items",
        run: targets::items::run,
    },
    Target {
        name: "peer_logstore",
        about: "the peer's log store segments: recovery, index, append, drop, release",
        run: targets::peer_logstore::run,
    },
    Target {
        name: "peer_journal",
        about: "the peer's staging journal and commit record: read and recover",
        run: targets::peer_journal::run,
    },
    Target {
        name: "peer_state",
        about: "the peer's state file (JSON)",
        run: targets::peer_state::run,
    },
    Target {
        name: "peer_status",
        about: "the peer's status.json and the log store's quick count",
        run: targets::peer_status::run,
    },
    Target {
        name: "relay_control",
        about: "the relay's control port commands, against a model of the link",
        run: targets::relay_control::run,
    },
    Target {
        name: "control",
        about: "control socket requests (JSON lines)",
        run: targets::control::run,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
