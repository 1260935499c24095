//! Mask selection: which weights to zero, given a score per weight (higher = more important).
//!
//! - Unstructured s%: within each comparison group (the whole matrix, or each output row),
//!   exactly ⌊s/100 · group size⌋ weights with the smallest scores are pruned.
//! - N:M: in every aligned group of M consecutive weights along the input dimension of a row,
//!   exactly N are pruned ("2:4" zeroes 2 of every 4, as Wanda and SparseGPT read it).
//!
//! Ties are broken by position (the lower flat index is pruned first), so the selection is a
//! pure function of the scores: the same on every run, platform and thread count.
//! Selection uses `select_nth_unstable` (linear time), not a full sort.

use anyhow::{bail, ensure, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Unstructured sparsity without a percentage: half the weights, as in the anchors' tables.
pub const DEFAULT_PERCENT: f64 = 50.0;

/// The sparsity pattern.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Pattern {
    /// Prune this percentage (0 < s < 100) of each comparison group.
    Unstructured { percent: f64 },
    /// Prune `n` of every `m` consecutive input weights of each row.
    NM { n: usize, m: usize },
}

impl Pattern {
    /// Parses `unstructured` (with `percent`, default 50) or `N:M`. Errors are usage errors
    /// about the settings `sparsity` and `pattern`.
    pub fn parse(pattern: &str, percent: Option<f64>) -> Result<Self> {
        if pattern == "unstructured" {
            let p = percent.unwrap_or(DEFAULT_PERCENT);
            crate::usage_ensure!(
                p.is_finite() && p > 0.0 && p < 100.0,
                "sparsity",
                "must be a percentage strictly between 0 and 100, got {p}"
            );
            if p < 1.0 {
                crate::usage_bail!(
                    "sparsity",
                    "{p} is a percentage: {p}% of the weights. For {}% write {}",
                    p * 100.0,
                    p * 100.0
                );
            }
            return Ok(Pattern::Unstructured { percent: p });
        }
        let Some((n, m)) = pattern.split_once(':') else {
            crate::usage_bail!(
                "pattern",
                "{pattern:?}: expected unstructured, 2:4, 4:8 or another N:M"
            );
        };
        let (n, m): (usize, usize) = match (n.parse(), m.parse()) {
            (Ok(n), Ok(m)) => (n, m),
            _ => crate::usage_bail!(
                "pattern",
                "{pattern:?}: N and M must be integers, as in 2:4"
            ),
        };
        crate::usage_ensure!(
            n > 0 && n < m,
            "pattern",
            "{pattern}: need 0 < N < M (N of every M weights are zeroed)"
        );
        if let Some(p) = percent {
            let implied = 100.0 * n as f64 / m as f64;
            crate::usage_ensure!(
                (p - implied).abs() < 1e-9,
                "pattern",
                "{pattern} zeroes {implied}% of the weights, but the sparsity says {p}; drop \
                 the sparsity or make it {implied}"
            );
        }
        Ok(Pattern::NM { n, m })
    }

    /// The fraction of weights pruned.
    pub fn fraction(&self) -> f64 {
        match *self {
            Pattern::Unstructured { percent } => percent / 100.0,
            Pattern::NM { n, m } => n as f64 / m as f64,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Unstructured { percent } => write!(f, "unstructured {percent}%"),
            Pattern::NM { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

/// The comparison group of an unstructured threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// One threshold per weight matrix (COPAL's T_s, magnitude's default).
    Matrix,
    /// One threshold per output row (Wanda's default).
    Row,
}

crate::display_as_value!(Group);

/// Which weights of an (rows × cols) matrix are pruned; `true` = zeroed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    pub rows: usize,
    pub cols: usize,
    pub pruned: Vec<bool>,
}

impl Mask {
    pub fn count(&self) -> usize {
        self.pruned.iter().filter(|&&p| p).count()
    }

    pub fn fraction(&self) -> f64 {
        self.count() as f64 / self.pruned.len().max(1) as f64
    }

    /// Keep-mask as f32 (1 = kept), to multiply a weight with.
    /// Zeroes the pruned weights of `w` (row-major, the mask's shape) as +0.0: `w · keep`
    /// would leave -0.0 wherever a pruned weight was negative, which a bitmask or 2:4
    /// compressor reads as a kept weight (vLLM's CUTLASS 2:4 path did, vllm#12417).
    pub fn zero_pruned(&self, w: &mut [f32]) {
        debug_assert_eq!(w.len(), self.pruned.len());
        for (x, &p) in w.iter_mut().zip(&self.pruned) {
            if p {
                *x = 0.0;
            }
        }
    }

    pub fn keep_f32(&self) -> Vec<f32> {
        self.pruned
            .iter()
            .map(|&p| if p { 0.0 } else { 1.0 })
            .collect()
    }

    /// Packed bits, one row after another, `ceil(cols / 8)` bytes per row, least significant
    /// bit first along the input dimension; a set bit means the weight is **kept**.
    pub fn pack(&self) -> Vec<u8> {
        let per_row = self.cols.div_ceil(8);
        let mut out = vec![0u8; self.rows * per_row];
        for r in 0..self.rows {
            for c in 0..self.cols {
                if !self.pruned[r * self.cols + c] {
                    out[r * per_row + c / 8] |= 1 << (c % 8);
                }
            }
        }
        out
    }
}

/// An f32 mapped to a u32 whose unsigned order is `f32::total_cmp`'s order.
#[inline]
fn order_key(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// Marks the `k` lowest-scored entries of `scores` (ties by index) in `out`.
///
/// (score, index) is packed into one u64 whose integer order is the wanted total order, so
/// the selection compares plain integers instead of chasing indices into `scores`.
fn prune_lowest(scores: &[f32], k: usize, out: &mut [bool]) {
    if k == 0 {
        return;
    }
    if k >= scores.len() {
        out.iter_mut().for_each(|p| *p = true);
        return;
    }
    debug_assert!(scores.len() <= u32::MAX as usize);
    let mut keys: Vec<u64> = scores
        .iter()
        .enumerate()
        .map(|(i, &s)| (order_key(s) as u64) << 32 | i as u64)
        .collect();
    keys.select_nth_unstable(k - 1);
    for &key in &keys[..k] {
        out[(key & 0xFFFF_FFFF) as usize] = true;
    }
}

/// Number pruned in a group of `n` at `percent`: ⌊n · percent / 100⌋.
pub fn prune_count(n: usize, percent: f64) -> usize {
    // The small epsilon keeps e.g. 10 × 70% from flooring 6.999… to 6.
    (((n as f64) * percent / 100.0) + 1e-9).floor() as usize
}

/// Selects the mask for a (rows × cols) score matrix.
pub fn select(
    scores: &[f32],
    rows: usize,
    cols: usize,
    pattern: &Pattern,
    group: Group,
) -> Result<Mask> {
    ensure!(
        scores.len() == rows * cols,
        "score has {} entries, expected {rows} × {cols}",
        scores.len()
    );
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        bail!(
            "score of weight ({}, {}) is {}: the statistics overflowed or the inputs hold NaN/Inf",
            i / cols,
            i % cols,
            scores[i]
        );
    }
    let mut pruned = vec![false; rows * cols];
    match (*pattern, group) {
        (Pattern::Unstructured { percent }, Group::Matrix) => {
            prune_lowest(scores, prune_count(scores.len(), percent), &mut pruned);
        }
        (Pattern::Unstructured { percent }, Group::Row) => {
            let k = prune_count(cols, percent);
            pruned
                .par_chunks_mut(cols)
                .zip(scores.par_chunks(cols))
                .for_each(|(out, s)| prune_lowest(s, k, out));
        }
        (Pattern::NM { n, m }, _) => {
            ensure!(
                cols % m == 0,
                "the {n}:{m} pattern needs an input width divisible by {m}, but this matrix has \
                 {cols} columns"
            );
            // Whole rows per task; within a row, each group of M is a tiny fixed-size select.
            pruned
                .par_chunks_mut(cols)
                .zip(scores.par_chunks(cols))
                .for_each(|(out, s)| {
                    for (o, g) in out.chunks_mut(m).zip(s.chunks(m)) {
                        prune_lowest_small(g, n, o);
                    }
                });
        }
    }
    Ok(Mask { rows, cols, pruned })
}

/// Marks the `n` lowest-scored of one N:M group's `scores` in `out` (ties by index): the
/// selection every N:M mask uses, also where the OBS update chooses groups as it goes.
pub fn prune_lowest_in_group(scores: &[f32], n: usize, out: &mut [bool]) {
    prune_lowest_small(scores, n, out)
}

/// [`prune_lowest`] for a small group (N:M, M ≤ 64 in practice) without allocating: the
/// group's packed (order key, index) values are insertion-sorted in a stack buffer.
fn prune_lowest_small(scores: &[f32], k: usize, out: &mut [bool]) {
    const CAP: usize = 64;
    if scores.len() > CAP {
        return prune_lowest(scores, k, out);
    }
    let mut keys = [0u64; CAP];
    let m = scores.len();
    for (i, &s) in scores.iter().enumerate() {
        let key = (order_key(s) as u64) << 32 | i as u64;
        // Insert key into keys[..i], kept sorted.
        let mut j = i;
        while j > 0 && keys[j - 1] > key {
            keys[j] = keys[j - 1];
            j -= 1;
        }
        keys[j] = key;
    }
    for &key in &keys[..k.min(m)] {
        out[(key & 0xFFFF_FFFF) as usize] = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn random(n: usize, seed: u64, levels: u64) -> Vec<f32> {
        let mut r = SplitMix64::new(seed);
        (0..n).map(|_| (r.next() % levels) as f32).collect()
    }

    /// Reference: sort all (score, index) pairs and take the first k.
    fn naive(scores: &[f32], k: usize) -> Vec<bool> {
        let mut idx: Vec<usize> = (0..scores.len()).collect();
        idx.sort_by(|&a, &b| scores[a].partial_cmp(&scores[b]).unwrap().then(a.cmp(&b)));
        let mut out = vec![false; scores.len()];
        for &i in &idx[..k] {
            out[i] = true;
        }
        out
    }

    #[test]
    fn matrix_group_prunes_exact_count_with_ties() {
        // Only 3 distinct values: most comparisons are ties.
        let s = random(12 * 10, 1, 3);
        let p = Pattern::Unstructured { percent: 50.0 };
        let m = select(&s, 12, 10, &p, Group::Matrix).unwrap();
        assert_eq!(m.count(), 60);
        assert_eq!(m.pruned, naive(&s, 60));
    }

    #[test]
    fn row_group_prunes_exact_count_per_row() {
        let s = random(7 * 9, 2, 4);
        let p = Pattern::Unstructured { percent: 30.0 };
        let m = select(&s, 7, 9, &p, Group::Row).unwrap();
        for r in 0..7 {
            let row = &m.pruned[r * 9..(r + 1) * 9];
            assert_eq!(row.iter().filter(|&&x| x).count(), 2, "row {r}");
            assert_eq!(row, naive(&s[r * 9..(r + 1) * 9], 2).as_slice());
        }
    }

    #[test]
    fn nm_holds_in_every_group() {
        let s = random(5 * 16, 3, 2);
        for (n, mm) in [(2, 4), (4, 8)] {
            let m = select(&s, 5, 16, &Pattern::NM { n, m: mm }, Group::Matrix).unwrap();
            for (g, sg) in m.pruned.chunks(mm).zip(s.chunks(mm)) {
                assert_eq!(g.iter().filter(|&&x| x).count(), n);
                // Scores take two values only, so ties decide most groups.
                assert_eq!(g, naive(sg, n).as_slice());
            }
        }
        let e = select(&s[..5 * 6], 5, 6, &Pattern::NM { n: 2, m: 4 }, Group::Row).unwrap_err();
        assert!(e.to_string().contains("divisible by 4"), "{e}");
    }

    #[test]
    fn order_key_orders_like_total_cmp() {
        let mut r = SplitMix64::new(9);
        let mut v: Vec<f32> = (0..2000)
            .map(|_| f32::from_bits((r.next() >> 32) as u32))
            .filter(|x| !x.is_nan())
            .collect();
        v.extend([0.0, -0.0, 1.0, -1.0, f32::MIN_POSITIVE, -f32::MIN_POSITIVE]);
        let mut a = v.clone();
        a.sort_by(|x, y| x.total_cmp(y));
        let mut b = v.clone();
        b.sort_by_key(|x| order_key(*x));
        assert_eq!(
            a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn ties_prune_lower_index_first() {
        let s = vec![1.0f32; 4];
        let m = select(
            &s,
            1,
            4,
            &Pattern::Unstructured { percent: 50.0 },
            Group::Matrix,
        )
        .unwrap();
        assert_eq!(m.pruned, vec![true, true, false, false]);
    }

    #[test]
    fn non_finite_scores_are_refused() {
        let s = vec![1.0, f32::NAN, 2.0, 3.0];
        assert!(select(
            &s,
            2,
            2,
            &Pattern::Unstructured { percent: 50.0 },
            Group::Row
        )
        .is_err());
    }

    #[test]
    fn pattern_parsing() {
        assert_eq!(
            Pattern::parse("2:4", None).unwrap(),
            Pattern::NM { n: 2, m: 4 }
        );
        assert!(Pattern::parse("2:4", Some(60.0)).is_err());
        assert!(Pattern::parse("unstructured", Some(0.5))
            .unwrap_err()
            .to_string()
            .contains("50"));
        for bad in [0.0, 100.0, -5.0, f64::NAN] {
            assert!(Pattern::parse("unstructured", Some(bad)).is_err(), "{bad}");
        }
        assert!(Pattern::parse("4:2", None).is_err());
    }

    #[test]
    fn pack_sets_kept_bits() {
        let m = Mask {
            rows: 1,
            cols: 9,
            pruned: vec![true, false, true, true, true, true, true, true, false],
        };
        assert_eq!(m.pack(), vec![0b0000_0010, 0b0000_0001]);
    }
}
