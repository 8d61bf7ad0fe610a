//! The in-memory, copy-on-write view of all stored vectors that the exact scan reads.
//!
//! Vectors are kept contiguous in fixed-size segments, ordered by item id. A commit produces a new
//! [`VectorSet`] that shares every untouched segment with the previous one (`Arc`), so publishing
//! it costs a copy of at most the segments that changed, and searches holding the old set are
//! never blocked or disturbed.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;

use rayon::prelude::*;
use roaring::RoaringBitmap;

use crate::simd::dispatch;

pub const SEGMENT_ITEMS: usize = 4096;

#[derive(Debug, Clone)]
pub struct Segment {
    ids: Vec<u32>,
    data: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct VectorSet {
    dims: usize,
    segments: Vec<Arc<Segment>>,
    len: usize,
}

/// A scored item; ordered so that a `BinaryHeap` of them is a min-heap on score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub id: u32,
    pub score: f32,
}

impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: the heap's top is the worst kept hit. Ties broken by id for determinism.
        other
            .score
            .total_cmp(&self.score)
            .then_with(|| self.id.cmp(&other.id))
    }
}

impl VectorSet {
    pub fn new(dims: usize) -> Self {
        VectorSet {
            dims,
            segments: Vec::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends items whose ids are all greater than every id present.
    pub fn with_appended(&self, items: &[(u32, &[f32])]) -> VectorSet {
        let mut next = self.clone();
        for &(id, v) in items {
            debug_assert_eq!(v.len(), self.dims);
            let need_new = next
                .segments
                .last()
                .is_none_or(|s| s.ids.len() >= SEGMENT_ITEMS);
            if need_new {
                next.segments.push(Arc::new(Segment {
                    ids: Vec::with_capacity(SEGMENT_ITEMS),
                    data: Vec::with_capacity(SEGMENT_ITEMS * self.dims),
                }));
            }
            let last = next.segments.last_mut().expect("a segment exists");
            // Copies the segment only if a published set still shares it.
            let seg = Arc::make_mut(last);
            debug_assert!(seg.ids.last().is_none_or(|&l| l < id), "ids must grow");
            seg.ids.push(id);
            seg.data.extend_from_slice(v);
            next.len += 1;
        }
        next
    }

    /// Removes the given ids; only the segments that hold one are rebuilt.
    pub fn without(&self, ids: &RoaringBitmap) -> VectorSet {
        if ids.is_empty() {
            return self.clone();
        }
        let mut next = VectorSet::new(self.dims);
        for seg in &self.segments {
            let (first, last) = (
                seg.ids[0],
                *seg.ids.last().expect("segments are never empty"),
            );
            if ids.range_cardinality(first..=last) == 0 {
                next.len += seg.ids.len();
                next.segments.push(seg.clone());
                continue;
            }
            let mut kept = Segment {
                ids: Vec::new(),
                data: Vec::new(),
            };
            for (i, &id) in seg.ids.iter().enumerate() {
                if !ids.contains(id) {
                    kept.ids.push(id);
                    kept.data
                        .extend_from_slice(&seg.data[i * self.dims..(i + 1) * self.dims]);
                }
            }
            if !kept.ids.is_empty() {
                next.len += kept.ids.len();
                next.segments.push(Arc::new(kept));
            }
        }
        next
    }

    pub fn get(&self, id: u32) -> Option<&[f32]> {
        let si = self
            .segments
            .partition_point(|s| *s.ids.last().expect("non-empty") < id);
        let seg = self.segments.get(si)?;
        let i = seg.ids.binary_search(&id).ok()?;
        Some(&seg.data[i * self.dims..(i + 1) * self.dims])
    }

    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.segments.iter().flat_map(|s| s.ids.iter().copied())
    }

    /// Exact top-`k` by dot product (cosine, for unit vectors), optionally restricted to
    /// `candidates`. Returns hits best first. Large sets are scanned by all cores, segment by
    /// segment, and the per-thread heaps merged: the scan is bound by memory bandwidth, which one
    /// core alone does not saturate.
    pub fn top_k(
        &self,
        query: &[f32],
        k: usize,
        candidates: Option<&RoaringBitmap>,
    ) -> Vec<Scored> {
        if k == 0 {
            return Vec::new();
        }
        if let Some(c) = candidates {
            // A small candidate set: visit just those items.
            if (c.len() as usize) * 8 < self.len {
                let mut heap = TopK::new(k);
                for id in c {
                    if let Some(v) = self.get(id) {
                        heap.push(id, dot(query, v));
                    }
                }
                return heap.into_sorted();
            }
        }
        let scan = |segs: &[Arc<Segment>]| -> TopK {
            let mut heap = TopK::new(k);
            let mut scores = vec![0f32; SEGMENT_ITEMS];
            for seg in segs {
                if let Some(c) = candidates {
                    let (first, last) = (seg.ids[0], *seg.ids.last().expect("non-empty"));
                    if c.range_cardinality(first..=last) == 0 {
                        continue;
                    }
                }
                let n = seg.ids.len();
                if scores.len() < n {
                    scores.resize(n, 0.0);
                }
                scores_into(query, &seg.data, &mut scores[..n]);
                for (&id, &score) in seg.ids.iter().zip(&scores[..n]) {
                    if candidates.is_none_or(|c| c.contains(id)) {
                        heap.push(id, score);
                    }
                }
            }
            heap
        };
        if self.len < PARALLEL_SCAN_ABOVE {
            return scan(&self.segments).into_sorted();
        }
        let per_task = self
            .segments
            .len()
            .div_ceil(rayon::current_num_threads().max(1) * 2)
            .max(1);
        self.segments
            .par_chunks(per_task)
            .map(scan)
            .reduce(
                || TopK::new(k),
                |mut a, b| {
                    for s in b.heap {
                        a.push(s.id, s.score);
                    }
                    a
                },
            )
            .into_sorted()
    }
}

/// Sets smaller than this are scanned on the calling thread (thread hand-off costs more).
const PARALLEL_SCAN_ABOVE: usize = 32 * 1024;

/// The best `k` scores seen so far (a min-heap on score).
struct TopK {
    k: usize,
    heap: BinaryHeap<Scored>,
}

impl TopK {
    fn new(k: usize) -> Self {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    #[inline]
    fn push(&mut self, id: u32, score: f32) {
        if self.heap.len() < self.k {
            self.heap.push(Scored { id, score });
        } else if self.heap.peek().is_some_and(|worst| score > worst.score) {
            self.heap.pop();
            self.heap.push(Scored { id, score });
        }
    }

    fn into_sorted(self) -> Vec<Scored> {
        let mut out = self.heap.into_vec();
        out.sort();
        out
    }
}

dispatch!(pub fn dot => dot_portable(a: &[f32], b: &[f32]) -> f32);
dispatch!(fn scores_into => scores_portable(query: &[f32], data: &[f32], out: &mut [f32]));

/// Scores of every vector of a segment in one call, so the feature dispatch happens once per
/// segment and the dot product is inlined into the loop.
#[inline(always)]
fn scores_portable(query: &[f32], data: &[f32], out: &mut [f32]) {
    for (v, o) in data.chunks_exact(query.len()).zip(out.iter_mut()) {
        *o = dot_portable(query, v);
    }
}

#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    // Sixteen independent accumulators let the compiler keep a full vector register busy.
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u32, dims: usize) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2654435761).wrapping_add(12345);
        let mut v: Vec<f32> = (0..dims)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32) - 0.5
            })
            .collect();
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.iter_mut().for_each(|a| *a /= n);
        v
    }

    #[test]
    fn scan_equals_brute_force_with_and_without_filters() {
        let dims = 24;
        let vecs: Vec<Vec<f32>> = (0..10_000).map(|i| unit(i, dims)).collect();
        let items: Vec<(u32, &[f32])> = vecs
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u32 * 2, v.as_slice()))
            .collect();
        let set = VectorSet::new(dims)
            .with_appended(&items[..5000])
            .with_appended(&items[5000..]);
        assert_eq!(set.len(), 10_000);
        let q = unit(999_999, dims);
        let mut brute: Vec<Scored> = items
            .iter()
            .map(|&(id, v)| Scored {
                id,
                score: dot_portable(&q, v),
            })
            .collect();
        brute.sort();
        let got = set.top_k(&q, 10, None);
        assert_eq!(
            got.iter().map(|s| s.id).collect::<Vec<_>>(),
            brute[..10].iter().map(|s| s.id).collect::<Vec<_>>()
        );

        for filter_size in [50u32, 6000] {
            let cand: RoaringBitmap = (0..filter_size).map(|i| i * 2).collect();
            let mut expect: Vec<Scored> = brute
                .iter()
                .copied()
                .filter(|s| cand.contains(s.id))
                .collect();
            expect.sort();
            let got = set.top_k(&q, 10, Some(&cand));
            assert_eq!(
                got.iter().map(|s| s.id).collect::<Vec<_>>(),
                expect[..10].iter().map(|s| s.id).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn copy_on_write_keeps_old_sets_intact() {
        let dims = 4;
        let a = VectorSet::new(dims)
            .with_appended(&[(1, &[1.0, 0.0, 0.0, 0.0]), (2, &[0.0, 1.0, 0.0, 0.0])]);
        let b = a.with_appended(&[(3, &[0.0, 0.0, 1.0, 0.0])]);
        let c = b.without(&RoaringBitmap::from_iter([1u32]));
        assert_eq!((a.len(), b.len(), c.len()), (2, 3, 2));
        assert!(a.get(3).is_none());
        assert_eq!(b.get(3).unwrap(), &[0.0, 0.0, 1.0, 0.0]);
        assert!(c.get(1).is_none());
        assert_eq!(c.ids().collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn dot_dispatch_matches_portable() {
        let a = unit(1, 384);
        let b = unit(2, 384);
        assert!((dot(&a, &b) - dot_portable(&a, &b)).abs() < 1e-5);
    }
}
