//! Whether a source's history extends what a peer holds, and the report of
//! a divergence that both sides show.
//!
//! At the start of every session the source states its lineage and CP
//! (`SourceLineage`); the peer accepts only a source on whose history the
//! peer's CP lies ([`verdict`]). Anything else — a split brain after a
//! failover, a source image restored from an older copy, a peer directory
//! restored from an older backup — is refused before anything is applied,
//! reported on both sides ([`DivergenceReport`]) and left for a person to
//! resolve: neither side is ever overwritten automatically.

use serde::{Deserialize, Serialize};

use twinfs_fs::lineage::{self, Lineage, Relation};
use twinfs_fs::CpNumber;

use crate::message::{Divergence, HoldRecord, Refusal};

/// One side's CP and the history it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    pub lineage: Lineage,
    pub cp: u64,
    pub root_hash: [u8; 32],
    /// Changes beyond `cp` that no CP holds yet (a source's logged writes).
    pub uncommitted: bool,
}

/// The peer's decision on a source: `None` accepts it. `peer` is the CP the
/// peer holds (`None` for an empty peer), `peer_id` the directory's ID,
/// `hold` the source's record of the last CP a peer directory applied.
pub fn verdict(
    peer: Option<&Side>,
    peer_id: u64,
    source: &Side,
    hold: Option<&HoldRecord>,
) -> Option<Refusal> {
    let own_hold = hold.filter(|h| h.peer_id == peer_id && peer_id != 0);
    let Some(peer) = peer else {
        return own_hold.map(|h| Refusal {
            kind: Divergence::PeerBehind,
            common_cp: None,
            reason: format!(
                "this peer directory holds no CP, but the source saw it apply CP {}: the directory was emptied or restored from an older copy; nothing was applied. If that is what you want, start it over with `twinfs resolve --dir DIR --keep-as FILE`",
                h.cp
            ),
        });
    };
    match lineage::compare(
        &peer.lineage,
        CpNumber(peer.cp),
        &source.lineage,
        CpNumber(source.cp),
    ) {
        Relation::Same if peer.root_hash != source.root_hash => Some(Refusal {
            kind: Divergence::SplitBrain,
            common_cp: peer.cp.checked_sub(1),
            reason: format!(
                "the source and this peer both hold CP {} of the same history with different root hashes ({} and {}): one of them is damaged; nothing was applied. Run `twinfs fsck` on both",
                peer.cp,
                short(&source.root_hash),
                short(&peer.root_hash)
            ),
        }),
        Relation::Same | Relation::Behind => match own_hold {
            Some(h) if h.cp > peer.cp || (h.cp == peer.cp && h.root_hash != peer.root_hash) => {
                Some(Refusal {
                    kind: Divergence::PeerBehind,
                    common_cp: Some(peer.cp),
                    reason: format!(
                        "this peer directory holds CP {}, but the source saw it apply CP {}: the directory went back in time (restored from an older copy?); nothing was applied. If that is what you want, keep it aside and start over with `twinfs resolve --dir DIR --keep-as FILE`",
                        peer.cp, h.cp
                    ),
                })
            }
            _ => None,
        },
        Relation::Ahead if source.uncommitted => Some(Refusal {
            kind: Divergence::SplitBrain,
            common_cp: Some(source.cp),
            reason: format!(
                "split brain: this peer went on from CP {} to CP {} (generation {}) while the source wrote changes after CP {} that it has not committed yet; nothing was applied. To keep the peer's side, turn the source into a peer with `twinfs failback IMAGE --dir DIR` (its own changes are kept in a copy); to keep the source's side, run `twinfs resolve --dir DIR --keep-as FILE` on the peer",
                source.cp,
                peer.cp,
                peer.lineage.current().id,
                source.cp
            ),
        }),
        Relation::Ahead => Some(Refusal {
            kind: Divergence::SourceBehind,
            common_cp: Some(source.cp),
            reason: format!(
                "the source's CP {} is older than this peer's CP {} of the same history: the source's image went back in time (restored from an older copy?); nothing was applied. Mount the newest copy of the volume, or promote this peer",
                source.cp, peer.cp
            ),
        }),
        Relation::Diverged { common } => Some(Refusal {
            kind: Divergence::SplitBrain,
            common_cp: common.map(|c| c.0),
            reason: format!(
                "split brain: the source (CP {}, generation {}) and this peer (CP {}, generation {}) went separate ways after {}; nothing was applied. To keep the peer's side, turn the source into a peer with `twinfs failback IMAGE --dir DIR` (its own changes are kept in a copy); to keep the source's side, run `twinfs resolve --dir DIR --keep-as FILE` on the peer",
                source.cp,
                source.lineage.current().id,
                peer.cp,
                peer.lineage.current().id,
                common.map_or("no CP they both record".to_string(), |c| format!("CP {}", c.0))
            ),
        }),
    }
}

fn short(h: &[u8; 32]) -> String {
    twinfs_fs::hex(&h[..8])
}

/// A divergence as both sides report it (status JSON, the peer's state file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DivergenceReport {
    /// `split-brain`, `source-behind` or `peer-behind`.
    pub kind: String,
    /// The newest CP both histories share, if any.
    pub common_cp: Option<u64>,
    /// The source's CP and lineage.
    pub source_cp: u64,
    pub source_lineage: Vec<GenerationJson>,
    /// The peer's CP (`None`: it holds none) and lineage.
    pub peer_cp: Option<u64>,
    pub peer_lineage: Vec<GenerationJson>,
    /// What happened and what to do.
    pub reason: String,
    /// When it was detected (seconds since the epoch).
    pub detected_at: u64,
}

/// One generation in a report: `{"generation": "<16 hex>", "first_cp": N}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationJson {
    pub generation: String,
    pub first_cp: u64,
}

/// A lineage as a report lists it.
pub fn lineage_json(l: Option<&Lineage>) -> Vec<GenerationJson> {
    l.map_or_else(Vec::new, |l| {
        l.generations()
            .iter()
            .map(|g| GenerationJson {
                generation: g.id.to_string(),
                first_cp: g.first_cp.0,
            })
            .collect()
    })
}

impl DivergenceReport {
    /// The report of `refusal` between `source` and `peer`.
    pub fn new(refusal: &Refusal, source: &Side, peer: Option<&Side>) -> DivergenceReport {
        DivergenceReport {
            kind: refusal.kind.name().to_string(),
            common_cp: refusal.common_cp,
            source_cp: source.cp,
            source_lineage: lineage_json(Some(&source.lineage)),
            peer_cp: peer.map(|p| p.cp),
            peer_lineage: lineage_json(peer.map(|p| &p.lineage)),
            reason: refusal.reason.clone(),
            detected_at: now_secs(),
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinfs_fs::lineage::GenerationId;

    fn side(lineage: &Lineage, cp: u64, root: u8) -> Side {
        Side {
            lineage: lineage.clone(),
            cp,
            root_hash: [root; 32],
            uncommitted: false,
        }
    }

    fn history() -> Lineage {
        Lineage::start(GenerationId(1)).begin(GenerationId(2), CpNumber(3))
    }

    #[test]
    fn a_source_on_whose_history_the_peer_lies_is_accepted() {
        let l = history();
        assert_eq!(verdict(None, 9, &side(&l, 8, 8), None), None);
        let peer = side(&l.up_to(CpNumber(5)), 5, 5);
        assert_eq!(verdict(Some(&peer), 9, &side(&l, 8, 8), None), None);
        assert_eq!(verdict(Some(&peer), 9, &side(&l, 5, 5), None), None);
    }

    #[test]
    fn a_promoted_side_and_the_old_source_are_a_split_brain() {
        let old = history();
        let promoted = old.up_to(CpNumber(6)).begin(GenerationId(7), CpNumber(7));
        let r =
            verdict(Some(&side(&promoted, 7, 70)), 9, &side(&old, 7, 71), None).expect("refused");
        assert_eq!(r.kind, Divergence::SplitBrain);
        assert_eq!(r.common_cp, Some(6));
    }

    #[test]
    fn a_source_behind_the_peer_is_refused() {
        let l = history();
        let r = verdict(
            Some(&side(&l, 9, 9)),
            9,
            &side(&l.up_to(CpNumber(4)), 4, 4),
            None,
        )
        .expect("refused");
        assert_eq!(r.kind, Divergence::SourceBehind);
    }

    #[test]
    fn a_source_behind_with_uncommitted_changes_is_a_split_brain() {
        let l = history();
        let source = Side {
            uncommitted: true,
            ..side(&l.up_to(CpNumber(4)), 4, 4)
        };
        let r = verdict(Some(&side(&l, 9, 9)), 9, &source, None).expect("refused");
        assert_eq!(r.kind, Divergence::SplitBrain);
        assert_eq!(r.common_cp, Some(4));
    }

    #[test]
    fn a_peer_behind_what_the_source_saw_it_apply_is_refused_only_if_it_is_that_peer() {
        let l = history();
        let peer = side(&l.up_to(CpNumber(4)), 4, 4);
        let hold = HoldRecord {
            peer_id: 9,
            cp: 7,
            root_hash: [7; 32],
        };
        let r = verdict(Some(&peer), 9, &side(&l, 8, 8), Some(&hold)).expect("refused");
        assert_eq!(r.kind, Divergence::PeerBehind);
        // Another directory (a new peer) is simply behind.
        assert_eq!(verdict(Some(&peer), 10, &side(&l, 8, 8), Some(&hold)), None);
        // An emptied directory that the source knew.
        let r = verdict(None, 9, &side(&l, 8, 8), Some(&hold)).expect("refused");
        assert_eq!(r.kind, Divergence::PeerBehind);
    }

    #[test]
    fn the_same_cp_with_another_root_hash_is_refused() {
        let l = history();
        let r = verdict(Some(&side(&l, 5, 1)), 9, &side(&l, 5, 2), None).expect("refused");
        assert_eq!(r.kind, Divergence::SplitBrain);
    }
}
