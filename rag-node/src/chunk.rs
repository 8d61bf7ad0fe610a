//! Token-aware chunking that follows the document's structure.
//!
//! Blocks (paragraphs, headings, rows) are packed greedily into chunks of at most
//! `max_tokens` model tokens ([CLS]/[SEP] included), never across a section boundary (page, sheet,
//! heading path). A new chunk in the same section starts with the tail of the previous one
//! (`overlap_tokens`), so a sentence cut at a boundary is still searchable in one piece. A block
//! longer than the window is cut into overlapping token windows at token offsets.

use rag_api::{ChunkingOptions, SourceLocation};

use crate::extract::Block;

/// Tokens [CLS] and [SEP] take in every model input.
const SPECIAL_TOKENS: usize = 2;

#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub text: String,
    pub location: SourceLocation,
    pub tokens: usize,
}

/// Character offsets of each token of a text (what the chunker needs from a tokenizer).
pub trait TokenOffsets {
    fn token_offsets(&self, text: &str) -> Vec<(usize, usize)>;
}

impl TokenOffsets for crate::embed::Embedder {
    fn token_offsets(&self, text: &str) -> Vec<(usize, usize)> {
        match self.encode_plain(text) {
            Ok(enc) => enc.get_offsets().to_vec(),
            // Cannot happen for valid UTF-8 with a WordPiece model; fall back to whitespace words.
            Err(_) => whitespace_offsets(text),
        }
    }
}

pub fn whitespace_offsets(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((s, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, text.len()));
    }
    out
}

/// Checks and clamps options to what the model accepts.
pub fn validate(
    opts: &ChunkingOptions,
    model_max_tokens: usize,
) -> Result<ChunkingOptions, String> {
    if opts.max_tokens <= SPECIAL_TOKENS + 8 {
        return Err(format!(
            "chunking.max_tokens must be greater than {}",
            SPECIAL_TOKENS + 8
        ));
    }
    if opts.max_tokens > model_max_tokens {
        return Err(format!(
            "chunking.max_tokens {} exceeds the model's window of {model_max_tokens} tokens",
            opts.max_tokens
        ));
    }
    if opts.overlap_tokens * 2 > opts.max_tokens {
        return Err("chunking.overlap_tokens must be at most half of max_tokens".into());
    }
    Ok(*opts)
}

struct Piece<'a> {
    text: &'a str,
    offsets: Vec<(usize, usize)>,
    location: &'a SourceLocation,
}

fn same_section(a: &SourceLocation, b: &SourceLocation) -> bool {
    a.page == b.page && a.sheet == b.sheet && a.heading_path == b.heading_path
}

pub fn chunk_blocks(
    blocks: &[Block],
    tok: &dyn TokenOffsets,
    opts: &ChunkingOptions,
) -> Vec<Chunk> {
    let budget = opts.max_tokens - SPECIAL_TOKENS;
    let overlap = opts.overlap_tokens.min(budget / 2);
    let mut chunks = Vec::new();
    let mut cur: Vec<Piece> = Vec::new();
    let mut cur_tokens = 0usize;
    // Tokens in `cur` that are not overlap carried from the previous chunk: a chunk made only of
    // carried overlap would repeat text already indexed.
    let mut fresh = 0usize;

    let emit = |cur: &[Piece], chunks: &mut Vec<Chunk>| {
        if cur.is_empty() {
            return;
        }
        let text = cur.iter().map(|p| p.text).collect::<Vec<_>>().join("\n");
        let mut location = cur[0].location.clone();
        if let Some(end) = cur.iter().rev().find_map(|p| p.location.row_end) {
            location.row_end = Some(end);
        }
        let tokens = cur.iter().map(|p| p.offsets.len()).sum::<usize>() + SPECIAL_TOKENS;
        chunks.push(Chunk {
            text,
            location,
            tokens,
        });
    };

    for block in blocks {
        let text = block.text.trim();
        if text.is_empty() {
            continue;
        }
        let offsets = tok.token_offsets(text);
        let n = offsets.len();
        let continues = cur
            .last()
            .is_some_and(|p| same_section(p.location, &block.location));
        if !continues || n > budget {
            if fresh > 0 {
                emit(&cur, &mut chunks);
            }
            cur.clear();
            cur_tokens = 0;
            fresh = 0;
        }
        if n > budget {
            // Overlapping windows over the long block.
            let stride = budget - overlap;
            let mut start = 0;
            loop {
                let end = (start + budget).min(n);
                let (a, b) = (offsets[start].0, offsets[end - 1].1);
                let window = &text[a..b];
                let piece = Piece {
                    text: window,
                    offsets: offsets[start..end]
                        .iter()
                        .map(|&(x, y)| (x - a, y - a))
                        .collect(),
                    location: &block.location,
                };
                emit(std::slice::from_ref(&piece), &mut chunks);
                if end == n {
                    // The last window seeds the next chunk's overlap.
                    if overlap > 0 {
                        let tail = tail_piece(&piece, overlap);
                        cur_tokens = tail.offsets.len();
                        cur.push(tail);
                    }
                    break;
                }
                start += stride;
            }
            continue;
        }
        if cur_tokens + n > budget {
            if fresh > 0 {
                emit(&cur, &mut chunks);
            }
            // Seed the next chunk with up to `overlap` tokens from the end of this one.
            let mut seed: Vec<Piece> = Vec::new();
            let mut seed_tokens = 0;
            for p in cur.iter().rev() {
                let room = overlap.min(budget - n).saturating_sub(seed_tokens);
                if room == 0 {
                    break;
                }
                let t = if p.offsets.len() <= room {
                    Piece {
                        text: p.text,
                        offsets: p.offsets.clone(),
                        location: p.location,
                    }
                } else {
                    tail_piece(p, room)
                };
                seed_tokens += t.offsets.len();
                seed.push(t);
            }
            seed.reverse();
            cur = seed;
            cur_tokens = seed_tokens;
            fresh = 0;
        }
        cur_tokens += n;
        fresh += n;
        cur.push(Piece {
            text,
            offsets,
            location: &block.location,
        });
    }
    if fresh > 0 {
        emit(&cur, &mut chunks);
    }
    chunks
}

/// The last `n` tokens of a piece, with offsets rebased to the shorter text.
fn tail_piece<'a>(p: &Piece<'a>, n: usize) -> Piece<'a> {
    let k = p.offsets.len();
    debug_assert!(n > 0, "an empty tail is never asked for");
    let from = k.saturating_sub(n.max(1));
    if from == 0 {
        return Piece {
            text: p.text,
            offsets: p.offsets.clone(),
            location: p.location,
        };
    }
    let base = p.offsets[from].0;
    Piece {
        text: &p.text[base..],
        offsets: p.offsets[from..]
            .iter()
            .map(|&(a, b)| (a - base, b - base))
            .collect(),
        location: p.location,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::BlockKind;

    struct Words;
    impl TokenOffsets for Words {
        fn token_offsets(&self, text: &str) -> Vec<(usize, usize)> {
            whitespace_offsets(text)
        }
    }

    fn para(text: &str, page: u32) -> Block {
        Block {
            text: text.into(),
            kind: BlockKind::Paragraph,
            location: SourceLocation {
                page: Some(page),
                ..Default::default()
            },
        }
    }

    fn words(range: std::ops::Range<usize>) -> String {
        range.map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn packs_small_blocks_and_never_crosses_pages() {
        let blocks = vec![para("a b c", 1), para("d e", 1), para("f g", 2)];
        let opts = ChunkingOptions {
            max_tokens: 20,
            overlap_tokens: 2,
        };
        let c = chunk_blocks(&blocks, &Words, &opts);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].text, "a b c\nd e");
        assert_eq!(c[0].location.page, Some(1));
        assert_eq!(c[1].text, "f g");
        assert_eq!(c[1].location.page, Some(2));
    }

    #[test]
    fn long_blocks_become_overlapping_windows_within_budget() {
        let text = words(0..100);
        let opts = ChunkingOptions {
            max_tokens: 22,
            overlap_tokens: 5,
        };
        let c = chunk_blocks(&[para(&text, 1)], &Words, &opts);
        for ch in &c {
            assert!(ch.tokens <= 22, "{} tokens", ch.tokens);
        }
        // every word appears, and consecutive windows share the overlap
        for i in 0..100 {
            assert!(
                c.iter()
                    .any(|ch| ch.text.split(' ').any(|w| w == format!("w{i}"))),
                "w{i} lost"
            );
        }
        assert!(c[0].text.ends_with("w19"));
        assert!(c[1].text.starts_with("w15 "));
    }

    #[test]
    fn overlap_carries_tail_of_previous_chunk() {
        let blocks = vec![para(&words(0..8), 1), para(&words(8..16), 1)];
        let opts = ChunkingOptions {
            max_tokens: 12,
            overlap_tokens: 3,
        };
        let c = chunk_blocks(&blocks, &Words, &opts);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].text, words(0..8));
        // room for the overlap is what the next block leaves: 10 - 8 = 2 tokens
        assert_eq!(c[1].text, format!("w6 w7\n{}", words(8..16)));
    }

    /// Many shapes of input and options: never a panic, never a chunk over budget, no word lost.
    #[test]
    fn randomized_inputs_keep_invariants() {
        let mut x: u64 = 7;
        let mut rnd = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for _ in 0..300 {
            let max_tokens = 11 + rnd(60) as usize;
            let overlap_tokens = rnd((max_tokens / 2) as u64 + 1) as usize;
            let opts = ChunkingOptions {
                max_tokens,
                overlap_tokens,
            };
            let mut next_word = 0;
            let blocks: Vec<Block> = (0..rnd(12))
                .map(|_| {
                    let len = rnd(150) as usize;
                    let b = para(&words(next_word..next_word + len), 1 + rnd(3) as u32);
                    next_word += len;
                    b
                })
                .collect();
            let chunks = chunk_blocks(&blocks, &Words, &opts);
            for c in &chunks {
                assert!(c.tokens <= max_tokens, "{} > {max_tokens}", c.tokens);
                assert!(!c.text.trim().is_empty());
            }
            for i in 0..next_word {
                let w = format!("w{i}");
                assert!(
                    chunks
                        .iter()
                        .any(|c| c.text.split([' ', '\n']).any(|t| t == w)),
                    "{w} lost with {opts:?}"
                );
            }
        }
    }

    #[test]
    fn options_are_validated() {
        assert!(validate(
            &ChunkingOptions {
                max_tokens: 300,
                overlap_tokens: 32
            },
            256
        )
        .is_err());
        assert!(validate(
            &ChunkingOptions {
                max_tokens: 100,
                overlap_tokens: 60
            },
            256
        )
        .is_err());
        assert!(validate(&ChunkingOptions::default(), 256).is_ok());
    }
}
