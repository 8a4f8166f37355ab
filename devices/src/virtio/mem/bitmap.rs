//! Which blocks of the virtio-mem region are plugged: one bit per block.
//!
//! The words are what a snapshot stores, so the layout is fixed: block `i`
//! is bit `i % 64` of word `i / 64`, and bits past the last block are zero.

use std::ops::Range;

const BITS: usize = u64::BITS as usize;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockBitmap {
    words: Vec<u64>,
    blocks: usize,
    /// Number of set bits, kept so that `plugged_size` costs nothing.
    set: usize,
}

/// Why saved words cannot describe a region of a given number of blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BitmapError {
    WordCount { expected: usize, found: usize },
    BitsPastEnd { blocks: usize },
}

impl std::fmt::Display for BitmapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BitmapError::WordCount { expected, found } => write!(
                f,
                "the plugged-block bitmap has {found} words, the region needs {expected}"
            ),
            BitmapError::BitsPastEnd { blocks } => write!(
                f,
                "the plugged-block bitmap marks blocks past the region's {blocks} blocks"
            ),
        }
    }
}

impl BlockBitmap {
    /// All `blocks` unplugged.
    pub fn new(blocks: usize) -> Self {
        BlockBitmap {
            words: vec![0; blocks.div_ceil(BITS)],
            blocks,
            set: 0,
        }
    }

    /// Rebuilds a bitmap from saved words, refusing any that do not fit `blocks`.
    pub fn from_words(words: Vec<u64>, blocks: usize) -> Result<Self, BitmapError> {
        let expected = blocks.div_ceil(BITS);
        if words.len() != expected {
            return Err(BitmapError::WordCount {
                expected,
                found: words.len(),
            });
        }
        let tail = blocks % BITS;
        if tail != 0 && words[expected - 1] >> tail != 0 {
            return Err(BitmapError::BitsPastEnd { blocks });
        }
        let set = words.iter().map(|w| w.count_ones() as usize).sum();
        Ok(BlockBitmap { words, blocks, set })
    }

    pub fn words(&self) -> &[u64] {
        &self.words
    }

    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// Number of plugged blocks.
    pub fn count(&self) -> usize {
        self.set
    }

    pub fn is_set(&self, block: usize) -> bool {
        block < self.blocks && self.words[block / BITS] & (1 << (block % BITS)) != 0
    }

    /// Number of set bits in `range` (which must lie inside the bitmap).
    pub fn count_in(&self, range: Range<usize>) -> usize {
        assert!(range.end <= self.blocks, "range past the bitmap");
        let mut n = 0;
        for_each_word(range, |w, mask| {
            n += (self.words[w] & mask).count_ones() as usize;
        });
        n
    }

    /// Sets or clears every bit in `range`.
    pub fn assign(&mut self, range: Range<usize>, value: bool) {
        assert!(range.end <= self.blocks, "range past the bitmap");
        let words = &mut self.words;
        let mut set = self.set;
        for_each_word(range, |w, mask| {
            let before = (words[w] & mask).count_ones() as usize;
            if value {
                words[w] |= mask;
                set += mask.count_ones() as usize - before;
            } else {
                words[w] &= !mask;
                set -= before;
            }
        });
        self.set = set;
    }

    pub fn clear_all(&mut self) {
        self.words.fill(0);
        self.set = 0;
    }

    /// Maximal runs of set bits, in order.
    pub fn runs(&self) -> Vec<Range<usize>> {
        let mut runs = Vec::new();
        let mut start = None;
        let mut b = 0;
        while b < self.blocks {
            // Whole zero words are skipped at once: most of a large region is unplugged.
            if start.is_none() && b % BITS == 0 && self.words[b / BITS] == 0 {
                b += BITS;
                continue;
            }
            match (self.is_set(b), start) {
                (true, None) => start = Some(b),
                (false, Some(s)) => {
                    runs.push(s..b);
                    start = None;
                }
                _ => {}
            }
            b += 1;
        }
        if let Some(s) = start {
            runs.push(s..self.blocks);
        }
        runs
    }
}

/// Calls `f(word index, mask)` for each word `range` touches.
fn for_each_word(range: Range<usize>, mut f: impl FnMut(usize, u64)) {
    let mut b = range.start;
    while b < range.end {
        let w = b / BITS;
        let lo = b % BITS;
        let hi = (range.end - w * BITS).min(BITS);
        let mask = if hi - lo == BITS {
            u64::MAX
        } else {
            ((1u64 << (hi - lo)) - 1) << lo
        };
        f(w, mask);
        b = w * BITS + hi;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn assign_count_and_runs() {
        let mut b = BlockBitmap::new(130);
        assert_eq!(b.words().len(), 3);
        b.assign(3..70, true);
        assert_eq!(b.count(), 67);
        assert_eq!(b.count_in(0..130), 67);
        assert_eq!(b.count_in(60..80), 10);
        assert!(b.is_set(3) && b.is_set(69) && !b.is_set(70) && !b.is_set(2));
        b.assign(10..12, false);
        assert_eq!(b.runs(), vec![3..10, 12..70]);
        b.assign(128..130, true);
        assert_eq!(b.runs(), vec![3..10, 12..70, 128..130]);
        assert_eq!(b.count(), 67);
        // Setting bits already set does not count them twice.
        b.assign(0..130, true);
        assert_eq!(b.count(), 130);
        assert_eq!(b.runs(), vec![0..130]);
        b.clear_all();
        assert_eq!(b.count(), 0);
        assert!(b.runs().is_empty());
    }

    #[test]
    fn from_words_rejects_bad_shapes() {
        assert_eq!(
            BlockBitmap::from_words(vec![0; 2], 130),
            Err(BitmapError::WordCount {
                expected: 3,
                found: 2
            })
        );
        assert_eq!(
            BlockBitmap::from_words(vec![0, 0, 1 << 2], 130),
            Err(BitmapError::BitsPastEnd { blocks: 130 })
        );
        let b = BlockBitmap::from_words(vec![u64::MAX, 0, 0b11], 130).unwrap();
        assert_eq!(b.count(), 66);
        assert_eq!(b.runs(), vec![0..64, 128..130]);
        // A whole last word is all valid.
        assert!(BlockBitmap::from_words(vec![u64::MAX], 64).is_ok());
    }

    proptest! {
        #[test]
        fn matches_a_vec_of_bools(
            blocks in 1usize..200,
            ops in proptest::collection::vec((any::<bool>(), 0usize..200, 0usize..200), 0..20),
        ) {
            let mut b = BlockBitmap::new(blocks);
            let mut model = vec![false; blocks];
            for (value, x, y) in ops {
                let (lo, hi) = (x.min(y).min(blocks), x.max(y).min(blocks));
                b.assign(lo..hi, value);
                model[lo..hi].fill(value);
                prop_assert_eq!(b.count(), model.iter().filter(|v| **v).count());
                prop_assert_eq!(b.count_in(lo..hi), if value { hi - lo } else { 0 });
            }
            let mut runs = Vec::new();
            let mut i = 0;
            while i < blocks {
                if model[i] {
                    let s = i;
                    while i < blocks && model[i] { i += 1; }
                    runs.push(s..i);
                } else {
                    i += 1;
                }
            }
            prop_assert_eq!(b.runs(), runs);
            let again = BlockBitmap::from_words(b.words().to_vec(), blocks).unwrap();
            prop_assert_eq!(again, b);
        }
    }
}
