//! The messages of an established session and the limits they must keep.
//!
//! Numbers on the wire are plain integers (MessagePack picks the shortest form), byte
//! payloads are MessagePack `bin` (serde_bytes), hashes are fixed-size `bin`. Every
//! received message is checked against the limits below before the caller sees it, so
//! nothing sized by the network grows past them.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Direction, FrameFault, Result};
use crate::frame::MAX_FRAME_BYTES;

/// Size of a volume block; `Full` blocks and superblocks are exactly this long.
pub const BLOCK_BYTES: usize = twinfs_fs::BLOCK_SIZE;

/// Size of the superblock carried by `CpEnd`.
pub const SUPERBLOCK_BYTES: usize = BLOCK_BYTES;

/// Room kept in a frame for the envelope around the largest payload (variant name,
/// integers, sequence number, AEAD tag).
pub const FRAME_HEADROOM_BYTES: usize = 64 * 1024;

/// Largest NVLOG batch one `Transfer` may carry. The forwarder must cut batches to fit.
pub const MAX_BATCH_BYTES: usize = MAX_FRAME_BYTES - FRAME_HEADROOM_BYTES;

/// Most blocks in one `CpBlocks` frame: a CP of many MiB is streamed as many frames of
/// at most about `MAX_BLOCKS_PER_CP_FRAME * BLOCK_BYTES` bytes each.
pub const MAX_BLOCKS_PER_CP_FRAME: usize = 1024;

/// Most patches in one `Recipe` (more than this, and `Full` is cheaper anyway).
pub const MAX_PATCHES_PER_BLOCK: usize = 256;

/// Most byte ranges in one `Delta`.
pub const MAX_RANGES_PER_BLOCK: usize = 256;

/// Most moves in one `Delta`.
pub const MAX_MOVES_PER_BLOCK: usize = 64;

/// Most addresses in one `CpMissing` frame; longer lists go in several frames.
pub const MAX_MISSING_ADDRS: usize = 65_536;

/// Longest human-readable reason (`Refused`, `CpRejected`, `Error`), in bytes.
pub const MAX_REASON_BYTES: usize = 1024;

/// Longest `deep_hash` in a `VerifyReply`, in bytes.
pub const MAX_DEEP_HASH_BYTES: usize = 64;

/// "No transfer": transfer IDs start at 1, so 0 in `covers_transfer` or in a resume
/// point's `durable_transfer` means that no transfer is included or durable.
pub const NO_TRANSFER: u64 = 0;

/// A message of an established, sealed session.
///
/// Source → peer: `SourceLineage`, `LogEnd`, `Transfer`, `CpBegin`, `CpBlocks`, `CpEnd`,
/// `VerifyRequest`.
/// Peer → source: `LineageVerdict`, `TransferAck`, `CpApplied`, `CpMissing`, `CpRejected`,
/// `VerifyReply`.
/// Either way: `Ping`, `Pong`, `Error`, `Bye`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// The source's history: the first message of every session. The peer
    /// accepts the source only if the CP it holds lies on this history, and
    /// answers `LineageVerdict` before it takes anything else.
    SourceLineage {
        /// The lineage of the source's CPs, oldest generation first (at most
        /// `MAX_GENERATIONS`).
        generations: Vec<WireGeneration>,
        /// The source's committed CP.
        cp: u64,
        /// Its root hash.
        #[serde(with = "serde_bytes")]
        root_hash: [u8; 32],
        /// The source holds changes its committed CP does not contain yet
        /// (logged, to be in its next CP): a peer ahead of `cp` on the same
        /// history is then a split brain, not merely a source behind.
        uncommitted: bool,
        /// The source's record of the last CP a peer directory applied (its
        /// peer hold), so that a directory restored from an older copy is
        /// recognised.
        hold: Option<HoldRecord>,
    },
    /// The peer's answer to `SourceLineage`. With a refusal the peer ends
    /// the session and applies nothing of this source.
    LineageVerdict {
        /// The peer directory's random ID (the source records it with its hold).
        peer_id: u64,
        /// The lineage of the CP the peer holds (empty when it holds none).
        generations: Vec<WireGeneration>,
        /// `None`: accepted. Otherwise why not.
        refusal: Option<Refusal>,
    },
    /// One sealed NVLOG batch, opaque to this layer. Many may be in flight.
    Transfer {
        /// Transfer ID: strictly increasing, starting at 1.
        id: u64,
        /// The batch as the volume wrote it to its log (at most `MAX_BATCH_BYTES`).
        #[serde(with = "serde_bytes")]
        batch: Vec<u8>,
    },
    /// A planned role swap (`twinfs switchover`): the source has stopped
    /// taking changes, and CP `cp`, which holds every change it made, is
    /// applied here. The peer becomes the primary of the volume, mirroring
    /// to the old source at `return_to`, and answers `SwitchedOver` once it
    /// takes writes (or `SwitchoverRefused`).
    Switchover {
        /// The source's final CP.
        cp: u64,
        /// Its root hash.
        #[serde(with = "serde_bytes")]
        root_hash: [u8; 32],
        /// `HOST:PORT` where the old source will listen as the new peer
        /// (at most `MAX_REASON_BYTES`).
        return_to: String,
        /// The mode the new primary mirrors in: `sync`, `strict` or `async`.
        mode: String,
        /// How it sends CPs: `full`, `refs` or `best`.
        cp_sync: String,
    },
    /// The peer is the primary now; its first CP (a new generation) is `cp`.
    SwitchedOver {
        /// The new primary's first CP.
        cp: u64,
        /// Its root hash (the same contents as the source's final CP).
        #[serde(with = "serde_bytes")]
        root_hash: [u8; 32],
    },
    /// The peer cannot take over; the source goes on as the primary.
    SwitchoverRefused {
        /// Why (at most `MAX_REASON_BYTES`).
        reason: String,
    },
    /// A `Transfer` whose batch travels lz4-compressed (block format). The
    /// receiving session turns it back into a `Transfer` before anyone else
    /// sees it.
    TransferLz4 {
        /// Transfer ID, as in `Transfer`.
        id: u64,
        /// Length of the batch once decompressed (at most `MAX_BATCH_BYTES`).
        raw_len: u32,
        /// The compressed batch.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The source's log ends at `transfer` (`NO_TRANSFER`: it holds none);
    /// the first message of every session. The source sends a transfer
    /// while its own disk writes it, so a peer may hold transfers a crash
    /// took from the source: it drops, durably, every stored transfer
    /// after this one before it acknowledges anything.
    LogEnd {
        /// The last transfer durable at the source when the session began.
        transfer: u64,
    },
    /// Cumulative acknowledgement: every transfer with an ID `<= id` is durable at the peer.
    TransferAck {
        /// Highest durable transfer ID.
        id: u64,
    },
    /// Starts the stream of CP `cp`; `CpBlocks` frames follow, then `CpEnd`.
    CpBegin {
        /// Number of the CP being sent.
        cp: u64,
        /// CP the peer must hold for the non-`Full` encodings to resolve against
        /// (the peer's last applied CP); `None` for a resync from nothing.
        base_cp: Option<u64>,
        /// Every transfer with an ID `<=` this is included in the CP (`NO_TRANSFER`: none);
        /// once the CP is applied the peer may release them.
        covers_transfer: u64,
        /// True when the CP is a resync (after a gap, or to a new peer) rather than the
        /// next CP of a connected peer.
        resync: bool,
    },
    /// A slice of the CP's blocks (at most `MAX_BLOCKS_PER_CP_FRAME`).
    CpBlocks {
        /// The CP these blocks belong to (must match the open `CpBegin`).
        cp: u64,
        /// The blocks, each with its address, hash and encoding.
        blocks: Vec<CpBlock>,
    },
    /// Ends the CP stream: the peer writes the superblock after all blocks are durable.
    CpEnd {
        /// The CP being closed.
        cp: u64,
        /// The new superblock, exactly `SUPERBLOCK_BYTES`.
        #[serde(with = "serde_bytes")]
        superblock: Vec<u8>,
        /// Root hash the applied CP must have.
        #[serde(with = "serde_bytes")]
        root_hash: [u8; 32],
    },
    /// The peer applied and committed the CP.
    CpApplied {
        /// The CP applied.
        cp: u64,
        /// Its root hash, as computed by the peer.
        #[serde(with = "serde_bytes")]
        root_hash: [u8; 32],
    },
    /// Blocks the peer could not rebuild; the source answers with `CpBlocks` of `Full`
    /// blocks and, after the last `CpMissing` (`more == false`), repeats `CpEnd`.
    CpMissing {
        /// The CP concerned.
        cp: u64,
        /// Addresses of the blocks to send in full (at most `MAX_MISSING_ADDRS`).
        addrs: Vec<u64>,
        /// True if another `CpMissing` for the same CP follows.
        more: bool,
    },
    /// The peer will not apply the CP (e.g. its base is not the peer's CP). The source
    /// should resync.
    CpRejected {
        /// The CP concerned.
        cp: u64,
        /// Why, for the logs and `twinfs status`.
        reason: String,
    },
    /// Keepalive and round-trip probe; the other side answers `Pong` with the same nonce.
    Ping {
        /// Chosen by the sender to match the `Pong`.
        nonce: u64,
    },
    /// Answer to `Ping`.
    Pong {
        /// The nonce of the `Ping` answered.
        nonce: u64,
    },
    /// Asks the peer for the root hash of its applied CP (`twinfs verify`).
    VerifyRequest {
        /// The CP to compare.
        cp: u64,
        /// Also rehash every block of the peer's image.
        deep: bool,
    },
    /// Answer to `VerifyRequest`.
    VerifyReply {
        /// The CP the peer reports on (its last applied CP if it differs from the request).
        cp: u64,
        /// Root hash of that CP at the peer.
        #[serde(with = "serde_bytes")]
        root_hash: [u8; 32],
        /// Hash over all blocks rehashed from disk, when `deep` was asked (at most
        /// `MAX_DEEP_HASH_BYTES`).
        #[serde(with = "serde_bytes")]
        deep_hash: Option<Vec<u8>>,
    },
    /// The sender hit an error and is closing the session; the reason says which.
    Error {
        /// What went wrong (at most `MAX_REASON_BYTES`).
        reason: String,
    },
    /// Clean end of the session: the sender sends nothing more.
    Bye,
}

/// One generation of a lineage on the wire: `[id, first_cp]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireGeneration {
    /// The generation's random ID.
    pub id: u64,
    /// The first CP written in it.
    pub first_cp: u64,
}

/// The last CP a peer directory applied, as the source recorded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRecord {
    /// The peer directory's ID (from its `LineageVerdict`).
    pub peer_id: u64,
    /// The CP it applied.
    pub cp: u64,
    /// That CP's root hash.
    #[serde(with = "serde_bytes")]
    pub root_hash: [u8; 32],
}

/// Why a peer refuses a source's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// How the histories relate.
    pub kind: Divergence,
    /// The newest CP both histories share, if any.
    pub common_cp: Option<u64>,
    /// What happened and what to do, for logs and status (at most `MAX_REASON_BYTES`).
    pub reason: String,
}

/// How a source's history fails to extend what the peer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Divergence {
    /// Both sides wrote after their last common CP (a split brain).
    SplitBrain,
    /// The source's CP is older than the peer's on the same history (the
    /// source's image went back: restored from an older copy?).
    SourceBehind,
    /// The peer holds an older CP than the source saw it apply (the peer's
    /// directory went back: restored from an older copy?).
    PeerBehind,
}

impl Divergence {
    /// The name status shows.
    pub fn name(self) -> &'static str {
        match self {
            Divergence::SplitBrain => "split-brain",
            Divergence::SourceBehind => "source-behind",
            Divergence::PeerBehind => "peer-behind",
        }
    }
}

/// A lineage for the wire.
pub fn wire_lineage(l: &twinfs_fs::lineage::Lineage) -> Vec<WireGeneration> {
    l.generations()
        .iter()
        .map(|g| WireGeneration {
            id: g.id.0,
            first_cp: g.first_cp.0,
        })
        .collect()
}

/// A lineage from the wire, checked (`None` for an empty list).
pub fn lineage_from_wire(
    gens: &[WireGeneration],
) -> Result<Option<twinfs_fs::lineage::Lineage>, String> {
    use twinfs_fs::lineage::{Generation, GenerationId, Lineage};
    if gens.is_empty() {
        return Ok(None);
    }
    Lineage::new(
        gens.iter()
            .map(|g| Generation {
                id: GenerationId(g.id),
                first_cp: twinfs_fs::CpNumber(g.first_cp),
            })
            .collect(),
    )
    .map(Some)
}

/// Compresses a batch for `TransferLz4` when that is worth it: batches of
/// incompressible data (random or already compressed files) go as they are,
/// and after one such batch the next few are not even tried.
#[derive(Debug, Default)]
pub struct TransferCompressor {
    skip: u32,
}

impl TransferCompressor {
    /// Batches sent uncompressed, untried, after one that did not compress.
    const SKIP_AFTER_MISS: u32 = 8;

    /// The compressed batch, or `None` to send it as it is.
    pub fn compress(&mut self, batch: &[u8]) -> Option<Vec<u8>> {
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        let packed = lz4_flex::block::compress(batch);
        // Worth it only below 7/8 of the original.
        if packed.len() * 8 >= batch.len() * 7 {
            self.skip = Self::SKIP_AFTER_MISS;
            return None;
        }
        Some(packed)
    }
}

/// Turns a `TransferLz4` back into the `Transfer` it stands for; any other
/// message is returned as it is. A batch that does not decompress to exactly
/// `raw_len` bytes is a malformed frame.
pub fn decompress_transfer(msg: Message) -> Result<Message, String> {
    let Message::TransferLz4 { id, raw_len, data } = msg else {
        return Ok(msg);
    };
    let raw_len = raw_len as usize;
    if raw_len > MAX_BATCH_BYTES {
        return Err(format!(
            "TransferLz4 {id}: raw_len {raw_len} is above MAX_BATCH_BYTES"
        ));
    }
    let batch = lz4_flex::block::decompress(&data, raw_len)
        .map_err(|e| format!("TransferLz4 {id} does not decompress: {e}"))?;
    if batch.len() != raw_len {
        return Err(format!(
            "TransferLz4 {id} decompresses to {} bytes, not {raw_len}",
            batch.len()
        ));
    }
    Ok(Message::Transfer { id, batch })
}

/// Borrowed twin of `Message::Transfer`: encodes to exactly the same bytes (the enum's
/// own name never reaches the wire), so the forwarder can send a batch straight from
/// its log buffer without copying it into a `Message` first.
#[derive(Serialize)]
pub(crate) enum TransferRef<'a> {
    Transfer {
        id: u64,
        #[serde(with = "serde_bytes")]
        batch: &'a [u8],
    },
}

impl TransferRef<'_> {
    pub(crate) fn validate(&self) -> Result<(), String> {
        let TransferRef::Transfer { id, batch } = self;
        check_transfer_id(*id, "Transfer id")?;
        check_max(batch.len(), MAX_BATCH_BYTES, "Transfer batch bytes")
    }
}

/// Borrowed twin of `Message::CpBlocks` whose blocks all travel `Full` (a
/// resync): encodes to exactly the same bytes, straight from the one buffer
/// the blocks were read into, without a `Vec` per block.
#[derive(Serialize)]
pub(crate) enum FullBlocksRef<'a> {
    CpBlocks {
        cp: u64,
        blocks: Vec<FullBlockRef<'a>>,
    },
}

/// One block of a [`FullBlocksRef`], encoded like a [`CpBlock`].
#[derive(Serialize)]
pub(crate) struct FullBlockRef<'a> {
    addr: u64,
    #[serde(with = "serde_bytes")]
    hash: [u8; 16],
    enc: FullRef<'a>,
}

/// `Encoding::Full`, borrowed.
#[derive(Serialize)]
pub(crate) enum FullRef<'a> {
    Full(#[serde(with = "serde_bytes")] &'a [u8]),
}

impl<'a> FullBlocksRef<'a> {
    /// CP `cp`'s blocks `blocks[i] = (addr, hash)` whose contents are
    /// `data[i * BLOCK_BYTES..][..BLOCK_BYTES]`. Refuses what `validate`
    /// would refuse of the owned message.
    pub(crate) fn new(
        cp: u64,
        blocks: &[(u64, [u8; 16])],
        data: &'a [u8],
    ) -> Result<FullBlocksRef<'a>, String> {
        check_max(blocks.len(), MAX_BLOCKS_PER_CP_FRAME, "CpBlocks blocks")?;
        check_exact(
            data.len(),
            blocks.len() * BLOCK_BYTES,
            "CpBlocks data bytes",
        )?;
        let blocks = blocks
            .iter()
            .zip(data.chunks_exact(BLOCK_BYTES))
            .map(|(&(addr, hash), block)| FullBlockRef {
                addr,
                hash,
                enc: FullRef::Full(block),
            })
            .collect();
        Ok(FullBlocksRef::CpBlocks { cp, blocks })
    }
}

/// One block written by a CP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpBlock {
    /// Address of the block in the image.
    pub addr: u64,
    /// Truncated blake3 of the block's content (`twinfs_fs::Hash128`); the peer
    /// checks the block it rebuilt against it.
    #[serde(with = "serde_bytes")]
    pub hash: [u8; 16],
    /// How the peer gets the content.
    pub enc: Encoding,
}

/// How the peer obtains a block's content (DESIGN "CP encodings").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// The block itself, exactly `BLOCK_BYTES`.
    Full(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The patent's reference: block `block_no` of the block area of transfer `transfer`.
    Ref {
        /// Transfer ID holding the block.
        transfer: u64,
        /// Block number inside that transfer's block area.
        block_no: u32,
    },
    /// The block rebuilt from a base overlaid, in order, with patches.
    Recipe {
        /// What to start from.
        base: Base,
        /// Applied in order; later patches overwrite earlier ones.
        patches: Vec<Patch>,
    },
    /// A block the peer has (or zeros), with some of its byte runs moved
    /// (a B-tree leaf whose items shifted), plus the changed byte ranges.
    Delta {
        /// What to start from: zeros (a new, mostly empty metadata block) or
        /// the block's previous version in the peer's mirror of the base CP.
        base: Base,
        /// Runs of the base block copied elsewhere in the block, each reading
        /// the base as it was (applied before `ranges`).
        moves: Vec<Move>,
        /// Changed ranges, sorted by offset, not overlapping.
        ranges: Vec<DeltaRange>,
    },
}

/// Starting content of a `Recipe` or a `Delta`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Base {
    /// A block of zeros.
    Zero,
    /// The block at `addr` in the peer's mirror of the base CP (the block's previous
    /// address: copy-on-write moved it).
    Prev {
        /// Address in the base CP.
        addr: u64,
    },
    /// Block `block_no` of transfer `transfer`'s block area: a logged whole
    /// block that later partial writes changed.
    Ref {
        /// Transfer ID holding the block.
        transfer: u64,
        /// Block number inside that transfer's block area.
        block_no: u32,
    },
}

/// One overlay of a `Recipe`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Patch {
    /// Copy `len` bytes from byte `src_offset` of transfer `transfer`'s batch to byte
    /// `offset` of the block.
    Bytes {
        /// Offset in the block.
        offset: u16,
        /// Transfer ID holding the bytes.
        transfer: u64,
        /// Offset of the bytes inside the batch as sent in `Transfer::batch`.
        src_offset: u32,
        /// Number of bytes.
        len: u16,
    },
    /// Zero `len` bytes at byte `offset` of the block.
    Zero {
        /// Offset in the block.
        offset: u16,
        /// Number of bytes.
        len: u16,
    },
}

/// One run of a `Delta`'s base block copied to another offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// Offset of the run in the base block.
    pub from: u16,
    /// Offset it goes to in the new block.
    pub to: u16,
    /// Number of bytes.
    pub len: u16,
}

/// One changed range of a `Delta`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaRange {
    /// Offset in the block.
    pub offset: u16,
    /// The new bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl Message {
    /// The variant's name, for logs and errors (never the payload).
    pub fn kind(&self) -> &'static str {
        match self {
            Message::SourceLineage { .. } => "SourceLineage",
            Message::Switchover { .. } => "Switchover",
            Message::SwitchedOver { .. } => "SwitchedOver",
            Message::SwitchoverRefused { .. } => "SwitchoverRefused",
            Message::LineageVerdict { .. } => "LineageVerdict",
            Message::Transfer { .. } => "Transfer",
            Message::TransferLz4 { .. } => "TransferLz4",
            Message::LogEnd { .. } => "LogEnd",
            Message::TransferAck { .. } => "TransferAck",
            Message::CpBegin { .. } => "CpBegin",
            Message::CpBlocks { .. } => "CpBlocks",
            Message::CpEnd { .. } => "CpEnd",
            Message::CpApplied { .. } => "CpApplied",
            Message::CpMissing { .. } => "CpMissing",
            Message::CpRejected { .. } => "CpRejected",
            Message::Ping { .. } => "Ping",
            Message::Pong { .. } => "Pong",
            Message::VerifyRequest { .. } => "VerifyRequest",
            Message::VerifyReply { .. } => "VerifyReply",
            Message::Error { .. } => "Error",
            Message::Bye => "Bye",
        }
    }

    /// Whether this message may travel in `direction` (a peer never sends a
    /// `Transfer`, a source never sends a `TransferAck`, ...).
    pub fn may_travel(&self, direction: Direction) -> bool {
        match self {
            Message::SourceLineage { .. }
            | Message::Switchover { .. }
            | Message::Transfer { .. }
            | Message::TransferLz4 { .. }
            | Message::LogEnd { .. }
            | Message::CpBegin { .. }
            | Message::CpBlocks { .. }
            | Message::CpEnd { .. }
            | Message::VerifyRequest { .. } => direction == Direction::SourceToPeer,
            Message::LineageVerdict { .. }
            | Message::SwitchedOver { .. }
            | Message::SwitchoverRefused { .. }
            | Message::TransferAck { .. }
            | Message::CpApplied { .. }
            | Message::CpMissing { .. }
            | Message::CpRejected { .. }
            | Message::VerifyReply { .. } => direction == Direction::PeerToSource,
            Message::Ping { .. } | Message::Pong { .. } | Message::Error { .. } | Message::Bye => {
                true
            }
        }
    }

    /// Checks the protocol limits; the error says which one is broken.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Message::SourceLineage { generations, .. } => match lineage_from_wire(generations)? {
                Some(_) => Ok(()),
                None => Err("SourceLineage with no generation".into()),
            },
            Message::Switchover {
                return_to,
                mode,
                cp_sync,
                ..
            } => {
                check_max(
                    return_to.len(),
                    MAX_REASON_BYTES,
                    "Switchover return_to bytes",
                )?;
                if !["sync", "strict", "async"].contains(&mode.as_str()) {
                    return Err(format!("Switchover mode {mode:?}"));
                }
                if !["full", "refs", "best"].contains(&cp_sync.as_str()) {
                    return Err(format!("Switchover cp_sync {cp_sync:?}"));
                }
                Ok(())
            }
            Message::SwitchoverRefused { reason } => {
                check_max(reason.len(), MAX_REASON_BYTES, "reason bytes")
            }
            Message::LineageVerdict {
                generations,
                refusal,
                ..
            } => {
                lineage_from_wire(generations)?;
                match refusal {
                    Some(r) => check_max(r.reason.len(), MAX_REASON_BYTES, "reason bytes"),
                    None => Ok(()),
                }
            }
            Message::Transfer { id, batch } => {
                check_transfer_id(*id, "Transfer id")?;
                check_max(batch.len(), MAX_BATCH_BYTES, "Transfer batch bytes")
            }
            Message::TransferLz4 { id, raw_len, data } => {
                check_transfer_id(*id, "TransferLz4 id")?;
                check_max(*raw_len as usize, MAX_BATCH_BYTES, "TransferLz4 raw_len")?;
                check_max(data.len(), MAX_BATCH_BYTES, "TransferLz4 data bytes")
            }
            Message::TransferAck { id } => check_transfer_id(*id, "TransferAck id"),
            Message::CpBegin { cp, base_cp, .. } => match base_cp {
                Some(base) if base >= cp => {
                    Err(format!("CpBegin base_cp {base} is not older than cp {cp}"))
                }
                _ => Ok(()),
            },
            Message::CpBlocks { blocks, .. } => {
                check_max(blocks.len(), MAX_BLOCKS_PER_CP_FRAME, "CpBlocks blocks")?;
                blocks.iter().try_for_each(CpBlock::validate)
            }
            Message::CpEnd { superblock, .. } => {
                check_exact(superblock.len(), SUPERBLOCK_BYTES, "CpEnd superblock bytes")
            }
            Message::CpMissing { addrs, .. } => {
                check_max(addrs.len(), MAX_MISSING_ADDRS, "CpMissing addrs")
            }
            Message::CpRejected { reason, .. } | Message::Error { reason } => {
                check_max(reason.len(), MAX_REASON_BYTES, "reason bytes")
            }
            Message::VerifyReply { deep_hash, .. } => match deep_hash {
                Some(h) => check_max(h.len(), MAX_DEEP_HASH_BYTES, "VerifyReply deep_hash bytes"),
                None => Ok(()),
            },
            Message::LogEnd { .. }
            | Message::SwitchedOver { .. }
            | Message::CpApplied { .. }
            | Message::Ping { .. }
            | Message::Pong { .. }
            | Message::VerifyRequest { .. }
            | Message::Bye => Ok(()),
        }
    }

    /// Decodes and validates one message from a frame's plaintext.
    pub fn decode(bytes: &[u8]) -> Result<Message, FrameFault> {
        let msg: Message = codec::decode(bytes)?;
        msg.validate().map_err(FrameFault::Limit)?;
        Ok(msg)
    }

    /// Its MessagePack encoding.
    pub fn encode(&self) -> Result<Vec<u8>> {
        codec::encode(self)
    }

    /// Bytes of its MessagePack encoding, for packing `CpBlocks` frames to a budget.
    /// A sealed frame adds `SEALED_OVERHEAD_BYTES` to this.
    pub fn encoded_len(&self) -> Result<usize> {
        Ok(self.encode()?.len())
    }
}

impl CpBlock {
    /// Checks the encoding's limits (sizes, counts, ranges inside the block).
    pub fn validate(&self) -> Result<(), String> {
        let at = self.addr;
        match &self.enc {
            Encoding::Full(data) => check_exact(data.len(), BLOCK_BYTES, "Full block bytes")
                .map_err(|e| format!("block {at}: {e}")),
            Encoding::Ref { transfer, .. } => {
                check_transfer_id(*transfer, "Ref transfer").map_err(|e| format!("block {at}: {e}"))
            }
            Encoding::Recipe { base, patches } => base
                .validate()
                .and_then(|()| check_max(patches.len(), MAX_PATCHES_PER_BLOCK, "Recipe patches"))
                .and_then(|()| patches.iter().try_for_each(Patch::validate))
                .map_err(|e| format!("block {at}: {e}")),
            Encoding::Delta {
                base,
                moves,
                ranges,
            } => base
                .validate()
                .and_then(|()| check_moves(moves))
                .and_then(|()| check_delta_ranges(ranges))
                .map_err(|e| format!("block {at}: {e}")),
        }
    }
}

impl Base {
    fn validate(&self) -> Result<(), String> {
        match *self {
            Base::Ref { transfer, .. } => check_transfer_id(transfer, "base Ref transfer"),
            Base::Zero | Base::Prev { .. } => Ok(()),
        }
    }
}

impl Patch {
    fn validate(&self) -> Result<(), String> {
        let (offset, len) = match *self {
            Patch::Bytes {
                offset,
                len,
                transfer,
                ..
            } => {
                check_transfer_id(transfer, "Recipe patch transfer")?;
                (offset, len)
            }
            Patch::Zero { offset, len } => (offset, len),
        };
        check_range(usize::from(offset), usize::from(len), "Recipe patch")
    }
}

fn check_moves(moves: &[Move]) -> Result<(), String> {
    check_max(moves.len(), MAX_MOVES_PER_BLOCK, "Delta moves")?;
    for m in moves {
        check_range(usize::from(m.from), usize::from(m.len), "Delta move source")?;
        check_range(usize::from(m.to), usize::from(m.len), "Delta move target")?;
    }
    Ok(())
}

fn check_delta_ranges(ranges: &[DeltaRange]) -> Result<(), String> {
    check_max(ranges.len(), MAX_RANGES_PER_BLOCK, "Delta ranges")?;
    let mut end_of_previous = 0usize;
    for range in ranges {
        let offset = usize::from(range.offset);
        if offset < end_of_previous {
            return Err(format!(
                "Delta range at offset {offset} overlaps or precedes the previous one (ranges must be sorted and disjoint)"
            ));
        }
        check_range(offset, range.data.len(), "Delta range")?;
        end_of_previous = offset + range.data.len();
    }
    Ok(())
}

fn check_range(offset: usize, len: usize, what: &str) -> Result<(), String> {
    if len == 0 || offset + len > BLOCK_BYTES {
        return Err(format!(
            "{what} of {len} bytes at offset {offset} is empty or runs past the {BLOCK_BYTES}-byte block"
        ));
    }
    Ok(())
}

fn check_max(value: usize, max: usize, what: &str) -> Result<(), String> {
    if value > max {
        return Err(format!("{what}: {value} is above the limit of {max}"));
    }
    Ok(())
}

fn check_exact(value: usize, expected: usize, what: &str) -> Result<(), String> {
    if value != expected {
        return Err(format!("{what}: {value}, must be exactly {expected}"));
    }
    Ok(())
}

fn check_transfer_id(id: u64, what: &str) -> Result<(), String> {
    if id == NO_TRANSFER {
        return Err(format!("{what} is 0; transfer IDs start at 1"));
    }
    Ok(())
}

/// Cuts `reason` to at most `MAX_REASON_BYTES` on a character boundary, so any text
/// can be put in a `Refused`, `CpRejected` or `Error`.
pub fn clip_reason(reason: &str) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason.to_string();
    }
    let mut end = MAX_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_batch_travels_compressed_and_comes_back_whole() {
        let batch: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("#define LINE_{i} {}\n", i % 97).into_bytes())
            .take(1 << 20)
            .collect();
        let mut c = TransferCompressor::default();
        let data = c.compress(&batch).expect("text compresses");
        assert!(
            data.len() < batch.len() / 2,
            "{} of {}",
            data.len(),
            batch.len()
        );
        let msg = Message::TransferLz4 {
            id: 9,
            raw_len: batch.len() as u32,
            data,
        };
        assert_eq!(msg.validate(), Ok(()));
        assert_eq!(
            decompress_transfer(msg),
            Ok(Message::Transfer { id: 9, batch })
        );
    }

    #[test]
    fn incompressible_batches_go_as_they_are_and_pause_the_attempts() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let random: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let text = vec![b'a'; 65536];
        let mut c = TransferCompressor::default();
        assert_eq!(c.compress(&random), None);
        for _ in 0..TransferCompressor::SKIP_AFTER_MISS {
            assert_eq!(c.compress(&text), None, "attempts pause after a miss");
        }
        assert!(c.compress(&text).is_some(), "and resume after");
    }

    #[test]
    fn a_compressed_transfer_that_lies_is_an_error_not_a_panic() {
        let data = lz4_flex::block::compress(b"hello hello hello hello");
        for (raw_len, data) in [
            (23 + 1, data.clone()),
            (5, data.clone()),
            ((MAX_BATCH_BYTES + 1) as u32 as usize, data.clone()),
            (100, vec![0xF0, 1, 2, 3]),
            (100, Vec::new()),
        ] {
            let msg = Message::TransferLz4 {
                id: 1,
                raw_len: raw_len as u32,
                data,
            };
            let err = decompress_transfer(msg).expect_err("refused");
            assert!(err.contains("TransferLz4 1"), "{err}");
        }
        // Other messages pass through.
        assert_eq!(decompress_transfer(Message::Bye), Ok(Message::Bye));
    }
}
