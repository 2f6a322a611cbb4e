//! Known bugs planted on purpose, to prove the simulator finds them
//! (`--features planted-bugs`, off by default; `twinfs-sim --plant BUG`).
//!
//! Without the feature [`active`] is a constant `false` and every planted
//! branch compiles away.

/// The bugs that can be planted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Bug {
    /// The source counts every transfer it handed over as acknowledged when
    /// any acknowledgement arrives: fsync returns before the peer holds its
    /// changes.
    AckBeforeDurable = 1,
    /// The peer commits a CP's superblock although some of its blocks could
    /// not be rebuilt (instead of asking for them first).
    SuperblockBeforeBlocks = 2,
    /// The peer writes a block rebuilt from a `Ref` without checking its hash.
    SkipRefHash = 3,
    /// The peer keeps the transfers a CP it applied covers: its log store
    /// grows without bound.
    KeepCoveredLog = 4,
    /// Promote replays the transfers the peer holds but the last.
    PromoteDropsLast = 5,
}

impl Bug {
    pub const ALL: [Bug; 5] = [
        Bug::AckBeforeDurable,
        Bug::SuperblockBeforeBlocks,
        Bug::SkipRefHash,
        Bug::KeepCoveredLog,
        Bug::PromoteDropsLast,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeDurable => "ack-before-durable",
            Bug::SuperblockBeforeBlocks => "superblock-before-blocks",
            Bug::SkipRefHash => "skip-ref-hash",
            Bug::KeepCoveredLog => "keep-covered-log",
            Bug::PromoteDropsLast => "promote-drops-last",
        }
    }

    pub fn from_name(s: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == s)
    }
}

/// Whether this build can plant bugs (the `planted-bugs` feature).
pub const ENABLED: bool = cfg!(feature = "planted-bugs");

#[cfg(feature = "planted-bugs")]
static ACTIVE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Plants `bug` (or none) for this process.
#[cfg(feature = "planted-bugs")]
pub fn plant(bug: Option<Bug>) {
    ACTIVE.store(
        bug.map_or(0, |b| b as u8),
        std::sync::atomic::Ordering::SeqCst,
    );
}

/// Whether `bug` is planted.
#[cfg(feature = "planted-bugs")]
#[inline]
pub fn active(bug: Bug) -> bool {
    ACTIVE.load(std::sync::atomic::Ordering::Relaxed) == bug as u8
}

/// Whether `bug` is planted: never, without the `planted-bugs` feature.
#[cfg(not(feature = "planted-bugs"))]
#[inline(always)]
pub fn active(_bug: Bug) -> bool {
    false
}
