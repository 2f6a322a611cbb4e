//! Lineages (`fs/src/lineage.rs`): the generation history a superblock
//! records and `SourceLineage`/`LineageVerdict` carry. The input is two
//! encoded lineages (a count byte, then `count × 16` bytes each) and a CP
//! of each. Checked: what decodes keeps the rules (1 to 128 generations,
//! first CPs increasing, distinct IDs, the legacy ID only first at CP 0) and
//! re-encodes to the same lineage; `compare` is antisymmetric (`Behind` one
//! way is `Ahead` the other, `Same` and `Diverged` with their common CP
//! both ways) and says `Same` only for the same CP; `up_to` and `begin`
//! keep the rules.

use twinfs_fs::lineage::{self, Generation, GenerationId, Lineage, Relation, GENERATION_BYTES};
use twinfs_fs::CpNumber;

/// Splits off a lineage: a count byte, then that many generations.
fn take(data: &[u8]) -> Option<(Result<Lineage, String>, &[u8])> {
    let (&n, rest) = data.split_first()?;
    let n = usize::from(n);
    let len = (n * GENERATION_BYTES).min(rest.len());
    Some((Lineage::decode(&rest[..len], n), &rest[len..]))
}

fn cp(data: &[u8]) -> (CpNumber, &[u8]) {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    // Small CPs mostly, so that they fall inside the generations.
    (CpNumber(u64::from_le_bytes(b) % 4096), &data[n..])
}

fn valid(l: &Lineage) -> bool {
    Lineage::new(l.generations().to_vec()).is_ok()
}

fn round_trip(l: &Lineage) {
    assert!(valid(l), "a lineage that breaks the rules: {l}");
    let n = l.generations().len();
    let mut bytes = vec![0u8; n * GENERATION_BYTES];
    l.encode_into(&mut bytes);
    assert_eq!(&Lineage::decode(&bytes, n).expect("re-encoded"), l);
}

/// Entry point.
pub fn run(data: &[u8]) {
    let Some((a, rest)) = take(data) else {
        return;
    };
    let Some((b, rest)) = take(rest) else {
        return;
    };
    let (ca, rest) = cp(rest);
    let (cb, rest) = cp(rest);
    let (Ok(la), Ok(lb)) = (a, b) else {
        return;
    };
    round_trip(&la);
    round_trip(&lb);

    let ab = lineage::compare(&la, ca, &lb, cb);
    let ba = lineage::compare(&lb, cb, &la, ca);
    let mirrored = match ab {
        Relation::Behind => Relation::Ahead,
        Relation::Ahead => Relation::Behind,
        other => other,
    };
    assert_eq!(
        ba, mirrored,
        "compare is not antisymmetric: {la} @{} vs {lb} @{}",
        ca.0, cb.0
    );
    if ab == Relation::Same {
        assert_eq!(ca, cb);
    }
    if ca >= la.generations()[0].first_cp {
        assert_eq!(lineage::compare(&la, ca, &la, ca), Relation::Same);
    }
    assert_eq!(
        la.common_ancestor(ca, &lb, cb),
        lb.common_ancestor(cb, &la, ca),
        "common_ancestor is not symmetric"
    );

    round_trip(&la.up_to(ca));
    let id = GenerationId(u64::from_le_bytes({
        let mut b = [0u8; 8];
        let n = rest.len().min(8);
        b[..n].copy_from_slice(&rest[..n]);
        b
    }));
    let next = CpNumber(la.current().first_cp.0.saturating_add(1 + ca.0));
    let fresh = id != lineage::LEGACY_GENERATION && la.generations().iter().all(|g| g.id != id);
    if fresh && next > la.current().first_cp {
        let grown = la.begin(id, next);
        round_trip(&grown);
        assert_eq!(grown.current(), Generation { id, first_cp: next });
    }
}
