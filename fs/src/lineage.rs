//! The lineage of a volume: which history each of its CPs belongs to.
//!
//! CP numbers alone cannot tell two histories apart: after a failover the
//! promoted replica and the returning old source both go on from the same CP
//! and both write a "CP 7". A *generation* names one stretch of history
//! written by one writer: every read-write open of a volume (a mount, a
//! promote, the new primary of a switchover) starts a new one, with a random
//! ID, at the CP after the one it opened. The *lineage* is the list of
//! generations that led to the current CP, oldest first; every superblock
//! carries the lineage of its CP (outside the root hash: it is history, not
//! contents).
//!
//! A CP is then named by (lineage, CP number): CP `c` belongs to the last
//! generation whose first CP is `<= c`. CP `a` of lineage `A` is an
//! ancestor of CP `b` of lineage `B` when `a`'s generation appears in `B`
//! with the same first CP and `a` falls before the next generation of `B`
//! begins. Because a crash, a restored copy or a promote always begins a new
//! generation at reopen, two different CPs never share both a generation and
//! a number.
//!
//! Mirroring uses this to refuse every source whose history does not extend
//! what the peer holds ([`compare`]): a split brain, a source restored from
//! an older copy, a peer directory restored from an older backup.

use std::fmt;

use crate::types::CpNumber;

/// Most generations a lineage keeps; older ones are dropped. A peer whose
/// generation was dropped from the source's lineage cannot be proved an
/// ancestor and is refused (resolved by hand), never overwritten.
pub const MAX_GENERATIONS: usize = 128;

/// Bytes of one encoded generation: ID, then first CP, both u64 LE.
pub const GENERATION_BYTES: usize = 16;

/// The generation of images written before lineages existed (format 1):
/// their whole history up to their CP is one unnamed generation from CP 0.
pub const LEGACY_GENERATION: GenerationId = GenerationId(0);

/// Random name of one generation (0 is reserved for [`LEGACY_GENERATION`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GenerationId(pub u64);

impl fmt::Debug for GenerationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GenerationId({:016x})", self.0)
    }
}

impl fmt::Display for GenerationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One generation: its ID and the first CP written in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generation {
    pub id: GenerationId,
    pub first_cp: CpNumber,
}

/// The generations that led to a CP, oldest first (never empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lineage {
    gens: Vec<Generation>,
}

/// How two CPs, each with its lineage, are related.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    /// The same CP of the same history (callers still compare root hashes).
    Same,
    /// The first is an ancestor of the second: it lies on the second's history.
    Behind,
    /// The second is an ancestor of the first.
    Ahead,
    /// Neither lies on the other's history: they went separate ways after
    /// `common`, the newest CP both histories share (`None` when the
    /// lineages have no generation in common that both still record).
    Diverged { common: Option<CpNumber> },
}

impl Lineage {
    /// A lineage from its generations, checked: 1 to [`MAX_GENERATIONS`]
    /// entries, first CPs strictly increasing, IDs distinct, and the legacy
    /// ID only as the first entry at CP 0.
    pub fn new(gens: Vec<Generation>) -> Result<Lineage, String> {
        if gens.is_empty() || gens.len() > MAX_GENERATIONS {
            return Err(format!(
                "a lineage of {} generations (1 to {MAX_GENERATIONS})",
                gens.len()
            ));
        }
        for (i, g) in gens.iter().enumerate() {
            if g.id == LEGACY_GENERATION && (i != 0 || g.first_cp.0 != 0) {
                return Err(format!(
                    "generation {i} has the reserved ID 0 but is not the first, at CP 0"
                ));
            }
            if i > 0 && g.first_cp <= gens[i - 1].first_cp {
                return Err(format!(
                    "generation {i} begins at CP {}, not after generation {} (CP {})",
                    g.first_cp.0,
                    i - 1,
                    gens[i - 1].first_cp.0
                ));
            }
            if gens[..i].iter().any(|o| o.id == g.id) {
                return Err(format!("generation {} appears twice", g.id));
            }
        }
        Ok(Lineage { gens })
    }

    /// The lineage of a new volume: one generation from CP 0.
    pub fn start(id: GenerationId) -> Lineage {
        Lineage {
            gens: vec![Generation {
                id,
                first_cp: CpNumber(0),
            }],
        }
    }

    /// The lineage of a format-1 image, which recorded none.
    pub fn legacy() -> Lineage {
        Lineage::start(LEGACY_GENERATION)
    }

    /// The generations, oldest first.
    pub fn generations(&self) -> &[Generation] {
        &self.gens
    }

    /// The newest generation.
    pub fn current(&self) -> Generation {
        *self.gens.last().expect("a lineage is never empty")
    }

    /// This lineage with a new generation `id` beginning at `first_cp`
    /// (which must follow the current generation's first CP); the oldest
    /// generation is dropped beyond [`MAX_GENERATIONS`].
    pub fn begin(&self, id: GenerationId, first_cp: CpNumber) -> Lineage {
        assert!(
            first_cp > self.current().first_cp && id != LEGACY_GENERATION,
            "a new generation begins after the current one and has a random ID"
        );
        let mut gens = self.gens.clone();
        gens.push(Generation { id, first_cp });
        if gens.len() > MAX_GENERATIONS {
            gens.remove(0);
        }
        Lineage { gens }
    }

    /// The lineage as it was at CP `cp` (the generations begun by then).
    pub fn up_to(&self, cp: CpNumber) -> Lineage {
        let n = self.gens.iter().take_while(|g| g.first_cp <= cp).count();
        Lineage {
            gens: self.gens[..n.max(1)].to_vec(),
        }
    }

    /// Index of the generation CP `cp` belongs to, `None` when it lies
    /// before the oldest generation kept.
    fn position(&self, cp: CpNumber) -> Option<usize> {
        self.gens.iter().rposition(|g| g.first_cp <= cp)
    }

    /// Last CP of generation `i` in this history, whose newest CP is `tip`.
    fn end_of(&self, i: usize, tip: CpNumber) -> CpNumber {
        match self.gens.get(i + 1) {
            Some(next) => CpNumber(next.first_cp.0 - 1),
            None => tip,
        }
    }

    /// Whether CP `cp` of lineage `other` lies on this history, whose newest
    /// CP is `tip`.
    fn holds(&self, tip: CpNumber, other: &Lineage, cp: CpNumber) -> bool {
        let Some(i) = other.position(cp) else {
            return false;
        };
        let g = other.gens[i];
        match self.gens.iter().position(|h| h.id == g.id) {
            Some(j) => {
                self.gens[j].first_cp == g.first_cp
                    && cp <= self.end_of(j, tip)
                    && cp <= tip
                    && self.same_before(j, other, i)
            }
            None => false,
        }
    }

    /// Whether the generations before `j` here and before `i` in `other`
    /// agree as far back as both record them.
    fn same_before(&self, j: usize, other: &Lineage, i: usize) -> bool {
        self.gens[..j]
            .iter()
            .rev()
            .zip(other.gens[..i].iter().rev())
            .all(|(a, b)| a == b)
    }

    /// The newest CP that CP `a` of this lineage and CP `b` of `other`
    /// share, if their lineages share a generation both still record.
    pub fn common_ancestor(&self, a: CpNumber, other: &Lineage, b: CpNumber) -> Option<CpNumber> {
        let (ia, ib) = (self.position(a)?, other.position(b)?);
        // The newest generation of a's history (up to ia) that b's history
        // (up to ib) also has, beginning at the same CP.
        let (i, j) = (0..=ia).rev().find_map(|i| {
            let g = self.gens[i];
            other.gens[..=ib]
                .iter()
                .position(|h| *h == g)
                .map(|j| (i, j))
        })?;
        let end = self.end_of(i, a).min(other.end_of(j, b));
        (end >= self.gens[i].first_cp).then_some(end)
    }
}

/// How CP `a` of lineage `la` relates to CP `b` of lineage `lb`.
pub fn compare(la: &Lineage, a: CpNumber, lb: &Lineage, b: CpNumber) -> Relation {
    if lb.holds(b, la, a) {
        if a == b {
            Relation::Same
        } else {
            Relation::Behind
        }
    } else if la.holds(a, lb, b) {
        Relation::Ahead
    } else {
        Relation::Diverged {
            common: la.common_ancestor(a, lb, b),
        }
    }
}

impl Lineage {
    /// Encodes the generations as `n ×` (ID u64 LE, first CP u64 LE).
    pub fn encode_into(&self, out: &mut [u8]) {
        for (g, chunk) in self.gens.iter().zip(out.chunks_exact_mut(GENERATION_BYTES)) {
            chunk[..8].copy_from_slice(&g.id.0.to_le_bytes());
            chunk[8..].copy_from_slice(&g.first_cp.0.to_le_bytes());
        }
    }

    /// Decodes `n` generations from `bytes` (see [`Lineage::encode_into`]) and checks them.
    pub fn decode(bytes: &[u8], n: usize) -> Result<Lineage, String> {
        if n == 0 || n > MAX_GENERATIONS || bytes.len() < n * GENERATION_BYTES {
            return Err(format!("a lineage of {n} generations"));
        }
        let gens = bytes
            .chunks_exact(GENERATION_BYTES)
            .take(n)
            .map(|c| Generation {
                id: GenerationId(u64::from_le_bytes(c[..8].try_into().expect("8 bytes"))),
                first_cp: CpNumber(u64::from_le_bytes(c[8..].try_into().expect("8 bytes"))),
            })
            .collect();
        Lineage::new(gens)
    }
}

impl fmt::Display for Lineage {
    /// `ID@CP -> ID@CP ...`, oldest first.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.gens.iter().enumerate() {
            if i > 0 {
                f.write_str(" -> ")?;
            }
            write!(f, "{}@{}", g.id, g.first_cp.0)?;
        }
        Ok(())
    }
}

/// A fresh random generation ID (never the legacy ID).
pub fn random_generation_id() -> GenerationId {
    use std::io::Read;
    let mut b = [0u8; 8];
    let id = match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let h = blake3::hash(
                &[
                    &t.as_nanos().to_le_bytes()[..],
                    &std::process::id().to_le_bytes(),
                ]
                .concat(),
            );
            u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
        }
    };
    GenerationId(id.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(id: u64, first: u64) -> Generation {
        Generation {
            id: GenerationId(id),
            first_cp: CpNumber(first),
        }
    }

    fn lin(gens: &[(u64, u64)]) -> Lineage {
        Lineage::new(gens.iter().map(|&(i, f)| g(i, f)).collect()).unwrap()
    }

    fn cp(n: u64) -> CpNumber {
        CpNumber(n)
    }

    #[test]
    fn a_cp_of_the_same_history_is_same_behind_or_ahead() {
        let l = lin(&[(1, 0), (2, 5), (3, 9)]);
        assert_eq!(compare(&l, cp(12), &l, cp(12)), Relation::Same);
        // The peer holds CP 7 (generation 2) as the source had it then.
        let peer = l.up_to(cp(7));
        assert_eq!(compare(&peer, cp(7), &l, cp(12)), Relation::Behind);
        assert_eq!(compare(&l, cp(12), &peer, cp(7)), Relation::Ahead);
        // CP 4 of generation 1 is before generation 2 began.
        assert_eq!(
            compare(&l.up_to(cp(4)), cp(4), &l, cp(12)),
            Relation::Behind
        );
    }

    #[test]
    fn a_promoted_replica_and_the_returning_source_diverge_at_the_fork() {
        // The source wrote CPs 1..=9 in generation 2 (from CP 1); the peer
        // held CP 6 when it was promoted, which began generation 7 at CP 7.
        let source = lin(&[(1, 0), (2, 1)]);
        let promoted = source.up_to(cp(6)).begin(GenerationId(7), cp(7));
        assert_eq!(
            compare(&promoted, cp(8), &source, cp(9)),
            Relation::Diverged {
                common: Some(cp(6))
            }
        );
        assert_eq!(
            compare(&source, cp(9), &promoted, cp(8)),
            Relation::Diverged {
                common: Some(cp(6))
            }
        );
        // A source that had not gone past the fork is behind, not diverged.
        assert_eq!(compare(&source, cp(6), &promoted, cp(8)), Relation::Behind);
    }

    #[test]
    fn a_copy_restored_and_reopened_is_not_the_history_it_was_copied_from() {
        // Copied at CP 3 of generation 2; the original went on to CP 8; the
        // copy, reopened, began generation 5 at CP 4 and reached CP 9.
        let original = lin(&[(1, 0), (2, 1)]);
        let restored = original.up_to(cp(3)).begin(GenerationId(5), cp(4));
        assert_eq!(
            compare(&original, cp(8), &restored, cp(9)),
            Relation::Diverged {
                common: Some(cp(3))
            }
        );
        // Not reopened yet: the copy is simply behind.
        assert_eq!(
            compare(&original.up_to(cp(3)), cp(3), &original, cp(8)),
            Relation::Behind
        );
    }

    #[test]
    fn unrelated_or_forgotten_histories_have_no_common_cp() {
        let a = lin(&[(1, 0), (2, 4)]);
        let b = lin(&[(9, 0)]);
        assert_eq!(
            compare(&a, cp(5), &b, cp(5)),
            Relation::Diverged { common: None }
        );
        // b's lineage dropped generation 1 long ago: a's CP 2 cannot be proved.
        let pruned = lin(&[(2, 4), (3, 6)]);
        assert_eq!(
            compare(&a.up_to(cp(2)), cp(2), &pruned, cp(7)),
            Relation::Diverged { common: None }
        );
        // ... but a CP in a generation both record can.
        assert_eq!(compare(&a, cp(5), &pruned, cp(7)), Relation::Behind);
    }

    #[test]
    fn generations_that_disagree_on_their_start_are_not_the_same() {
        let a = lin(&[(1, 0), (2, 4)]);
        let b = lin(&[(1, 0), (2, 5)]);
        assert!(matches!(
            compare(&a, cp(6), &b, cp(6)),
            Relation::Diverged { .. }
        ));
    }

    #[test]
    fn begin_prunes_the_oldest_generation_past_the_limit() {
        let mut l = Lineage::start(GenerationId(1));
        for i in 0..MAX_GENERATIONS as u64 + 5 {
            l = l.begin(GenerationId(100 + i), cp(i + 1));
        }
        assert_eq!(l.generations().len(), MAX_GENERATIONS);
        assert_eq!(l.current().first_cp, cp(MAX_GENERATIONS as u64 + 5));
    }

    #[test]
    fn decode_checks_every_rule_and_round_trips() {
        let l = lin(&[(1, 0), (2, 4), (3, 9)]);
        let mut buf = vec![0u8; 3 * GENERATION_BYTES];
        l.encode_into(&mut buf);
        assert_eq!(Lineage::decode(&buf, 3).unwrap(), l);
        assert!(Lineage::decode(&buf, 0).is_err());
        assert!(Lineage::decode(&buf, 4).is_err());
        assert!(
            Lineage::new(vec![g(1, 0), g(2, 0)]).is_err(),
            "same first CP"
        );
        assert!(Lineage::new(vec![g(1, 0), g(1, 3)]).is_err(), "same ID");
        assert!(
            Lineage::new(vec![g(1, 0), g(0, 3)]).is_err(),
            "legacy ID late"
        );
        assert!(Lineage::new(vec![g(0, 2)]).is_err(), "legacy ID not at 0");
        assert!(Lineage::new(vec![g(0, 0), g(4, 3)]).is_ok());
    }
}
