//! A set of disjoint half-open `u64` ranges: the block ranges of a file whose
//! older content is gone (truncated or punched) in a layer of dirty state.

use std::collections::BTreeMap;
use std::ops::Range;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start → end, disjoint and not touching.
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub fn new() -> RangeSet {
        RangeSet::default()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Adds `r`, merging with overlapping or adjacent ranges.
    pub fn insert(&mut self, r: Range<u64>) {
        if r.start >= r.end {
            return;
        }
        let (mut start, mut end) = (r.start, r.end);
        // A range starting before `start` that reaches it.
        if let Some((&s, &e)) = self.map.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
            }
        }
        let covered: Vec<u64> = self.map.range(start..=end).map(|(&s, _)| s).collect();
        for s in covered {
            if let Some(e) = self.map.remove(&s) {
                end = end.max(e);
            }
        }
        self.map.insert(start, end);
    }

    pub fn contains(&self, x: u64) -> bool {
        self.map
            .range(..=x)
            .next_back()
            .is_some_and(|(_, &e)| x < e)
    }

    /// Whether any range intersects `r`.
    pub fn intersects(&self, r: Range<u64>) -> bool {
        if r.start >= r.end {
            return false;
        }
        if self.contains(r.start) {
            return true;
        }
        self.map.range(r.start..r.end).next().is_some()
    }

    /// Whether `r` lies entirely inside one range.
    pub fn covers(&self, r: Range<u64>) -> bool {
        r.start >= r.end
            || self
                .map
                .range(..=r.start)
                .next_back()
                .is_some_and(|(_, &e)| r.end <= e)
    }

    pub fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.map.iter().map(|(&s, &e)| s..e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn behaves_like_a_set_of_points(ops in proptest::collection::vec((0u64..200, 0u64..40), 0..30)) {
            let mut set = RangeSet::new();
            let mut model = [false; 260];
            for (s, l) in ops {
                set.insert(s..s + l);
                for x in s..s + l { model[x as usize] = true; }
            }
            for x in 0..260u64 {
                prop_assert_eq!(set.contains(x), model[x as usize]);
            }
            for s in 0..250u64 {
                for l in [1u64, 3, 10] {
                    let pts = (s..s + l).map(|x| model[x as usize]);
                    prop_assert_eq!(set.intersects(s..s + l), pts.clone().any(|b| b));
                    prop_assert_eq!(set.covers(s..s + l), pts.clone().all(|b| b));
                }
            }
            let ranges: Vec<_> = set.iter().collect();
            for w in ranges.windows(2) {
                prop_assert!(w[0].end < w[1].start, "ranges must be disjoint and not touching");
            }
        }
    }
}
