//! Text → vectors with a sentence-embedding model of the BERT family (BERT, XLM-RoBERTa) on
//! the CPU.
//!
//! The model directory holds `model.safetensors`, `tokenizer.json` and `config.json`, and the
//! sentence-transformers files that say how to pool, normalize and prompt ([`sentence`]). The tokenizer file of all-MiniLM-L6-v2 ships with
//! truncation *and* padding fixed at 128 tokens; sentence-transformers ignores that and uses
//! `max_seq_length` (256), so we do the same: truncate at the model's window, pad each batch only
//! to its own longest text, and sort by length before batching so little compute goes to padding.

mod bert;
pub mod gemm;
mod kernels;
pub mod sentence;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use sha2::{Digest, Sha256};
use tokenizers::{Encoding, Tokenizer};

use bert::Bert;
pub use bert::BertConfig;
pub use gemm::{Kernel, Precision};
use sentence::SentenceConfig;

/// Where the setup step installs the default model (all-MiniLM-L6-v2).
pub fn default_model_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("rag-node/models/all-MiniLM-L6-v2")
}

/// Batching parameters: a batch is closed when it has `max_batch` texts or its padded size
/// (texts × longest) would exceed `token_budget`.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    pub max_batch: usize,
    pub token_budget: usize,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            max_batch: 32,
            token_budget: 32 * 256,
        }
    }
}

/// Why an embedding call stopped early.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("{0}")]
    Aborted(anyhow::Error),
    #[error("embedding failed: {0}")]
    Model(#[from] candle_core::Error),
    #[error("tokenizer failed: {0}")]
    Tokenizer(String),
}

pub struct Embedder {
    model: Bert,
    tokenizer: Tokenizer,
    /// Same vocabulary without truncation: chunking must see every token of a block.
    plain_tokenizer: Tokenizer,
    model_id: String,
    name: String,
    dimensions: usize,
    /// The window, special tokens included.
    window: usize,
    /// Tokens the passage prompt takes from the window.
    passage_prefix_tokens: usize,
    sentence: SentenceConfig,
    policy: BatchPolicy,
}

/// Prompts that override the model directory's (`[embedding] query_prefix`, `passage_prefix`).
#[derive(Debug, Clone, Default)]
pub struct Prompts {
    pub query_prefix: Option<String>,
    pub passage_prefix: Option<String>,
}

impl Embedder {
    pub fn load(dir: &Path) -> anyhow::Result<Embedder> {
        Self::load_with(dir, BatchPolicy::default())
    }

    pub fn load_with(dir: &Path, policy: BatchPolicy) -> anyhow::Result<Embedder> {
        Self::load_with_prompts(dir, policy, &Prompts::default())
    }

    /// fp32 on the fastest fp32 kernel.
    pub fn load_with_prompts(
        dir: &Path,
        policy: BatchPolicy,
        prompts: &Prompts,
    ) -> anyhow::Result<Embedder> {
        Self::load_with_kernel(dir, policy, prompts, Kernel::best(Precision::Fp32))
    }

    /// With the linear layers on `kernel` (its precision is the vectors' precision).
    pub fn load_with_kernel(
        dir: &Path,
        policy: BatchPolicy,
        prompts: &Prompts,
        kernel: Kernel,
    ) -> anyhow::Result<Embedder> {
        for f in ["model.safetensors", "tokenizer.json", "config.json"] {
            anyhow::ensure!(
                dir.join(f).is_file(),
                "model directory {} has no {f} (run `scripts/setup-model.sh` or pass --model-dir)",
                dir.display()
            );
        }
        let mut sentence =
            SentenceConfig::read(dir).context("reading the sentence-transformers configuration")?;
        if let Some(q) = &prompts.query_prefix {
            sentence.query_prefix = q.clone();
        }
        if let Some(p) = &prompts.passage_prefix {
            sentence.passage_prefix = p.clone();
        }
        let (model, config) = Bert::load(dir, kernel).context("loading the encoder's weights")?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow!("loading tokenizer.json: {e}"))?;
        let window = sentence
            .max_seq_length
            .unwrap_or(256)
            .min(model.max_positions());
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: window,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("configuring truncation: {e}"))?;
        tokenizer.with_padding(None);
        let mut plain_tokenizer = tokenizer.clone();
        plain_tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow!("configuring tokenizer: {e}"))?;

        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let digest = file_sha256(&dir.join("model.safetensors"))?;
        // The weights, and (when not the all-MiniLM-L6-v2 recipe) how they are used.
        let fingerprint = sentence.fingerprint(window);
        let model_id = match fingerprint.is_empty() {
            true => format!("{name}@{}", &digest[..12]),
            false => format!("{name}@{}+{fingerprint}", &digest[..12]),
        };
        let passage_prefix_tokens = plain_tokenizer
            .encode(sentence.passage_prefix.as_str(), false)
            .map_err(|e| anyhow!("tokenizing the passage prefix: {e}"))?
            .len();
        anyhow::ensure!(
            passage_prefix_tokens + 8 < window,
            "the passage prefix takes {passage_prefix_tokens} of the {window} tokens of the window"
        );
        Ok(Embedder {
            model,
            tokenizer,
            plain_tokenizer,
            model_id,
            name,
            dimensions: config.hidden_size,
            window,
            passage_prefix_tokens,
            sentence,
            policy,
        })
    }

    /// The precision of the vectors this embedder makes.
    pub fn precision(&self) -> Precision {
        self.model.kernel().precision()
    }

    /// The code its GEMMs run on.
    pub fn kernel(&self) -> Kernel {
        self.model.kernel()
    }

    /// Bytes of the packed linear-layer weights.
    pub fn weight_bytes(&self) -> usize {
        self.model.linear_weight_bytes()
    }

    /// How vectors are made from the encoder: pooling, normalization, prompts.
    pub fn sentence_config(&self) -> &SentenceConfig {
        &self.sentence
    }

    /// Identifies the exact weights: the index refuses vectors from any other model.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Tokens a passage may have, special tokens included: the window less the passage prompt
    /// (what the chunker fills).
    pub fn max_tokens(&self) -> usize {
        self.window - self.passage_prefix_tokens
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Tokens of `text` without special tokens and without truncation, with character offsets.
    pub fn encode_plain(&self, text: &str) -> Result<Encoding, EmbedError> {
        self.plain_tokenizer
            .encode(text, false)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))
    }

    /// The share of `text`'s words (runs of three or more letters) that the model's vocabulary
    /// holds whole, as one token; `None` when it has no such word. A model knows the words of
    /// the languages it was trained on (all-MiniLM-L6-v2's English vocabulary keeps most
    /// English query words whole and splits most Portuguese ones): how far its embedding of a
    /// query can be trusted, with no language detection, which is unreliable on a few words.
    pub fn vocabulary_coverage(&self, text: &str) -> Option<f32> {
        let (mut words, mut whole) = (0usize, 0usize);
        for word in text
            .split(|c: char| !c.is_alphabetic())
            .filter(|w| w.chars().count() >= 3)
            .take(64)
        {
            words += 1;
            if self
                .plain_tokenizer
                .encode(word, false)
                .is_ok_and(|e| e.get_ids().len() == 1)
            {
                whole += 1;
            }
        }
        (words > 0).then(|| whole as f32 / words as f32)
    }

    /// Embeds `texts` as they are (no prompt): `POST /api/v1/embed`, probes, benchmarks.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.embed_with_progress(texts, &mut |_| Ok(()))
    }

    /// Embeds a search query, with the model's query prompt.
    pub fn embed_query(&self, query: &str) -> Result<Vec<f32>, EmbedError> {
        let text = format!("{}{query}", self.sentence.query_prefix);
        Ok(self.embed(&[text.as_str()])?.remove(0))
    }

    /// Embeds chunks to index, with the model's passage prompt. `progress` is called after each
    /// batch with the number of texts done so far; an `Err` from it aborts.
    pub fn embed_passages(
        &self,
        texts: &[&str],
        progress: &mut dyn FnMut(usize) -> anyhow::Result<()>,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let prefix = &self.sentence.passage_prefix;
        if prefix.is_empty() {
            return self.embed_with_progress(texts, progress);
        }
        let owned: Vec<String> = texts.iter().map(|t| format!("{prefix}{t}")).collect();
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        self.embed_with_progress(&refs, progress)
    }

    /// Embeds `texts` (output in input order). `progress` is called after each batch with the
    /// number of texts done so far; an `Err` from it aborts (cancellation, deadlines).
    fn embed_with_progress(
        &self,
        texts: &[&str],
        progress: &mut dyn FnMut(usize) -> anyhow::Result<()>,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (pooling, normalize) = (self.sentence.pooling, self.sentence.normalize);
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());

        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        let mut done = 0;
        for batch in plan_batches(&order, |i| encodings[i].get_ids().len(), self.policy) {
            let len = batch
                .iter()
                .map(|&i| encodings[i].get_ids().len())
                .max()
                .unwrap_or(0);
            let mut ids = vec![0u32; batch.len() * len];
            let mut mask = vec![0u32; batch.len() * len];
            for (row, &i) in batch.iter().enumerate() {
                let e = &encodings[i];
                let n = e.get_ids().len();
                ids[row * len..row * len + n].copy_from_slice(e.get_ids());
                mask[row * len..row * len + n].fill(1);
            }
            let vectors =
                self.model
                    .embed_batch(&ids, &mask, batch.len(), len, pooling, normalize)?;
            for (&i, v) in batch.iter().zip(vectors) {
                out[i] = v;
            }
            done += batch.len();
            progress(done).map_err(EmbedError::Aborted)?;
        }
        Ok(out)
    }
}

/// Groups indices (already sorted by token length) into batches under `policy`.
pub fn plan_batches(
    sorted: &[usize],
    len_of: impl Fn(usize) -> usize,
    policy: BatchPolicy,
) -> Vec<Vec<usize>> {
    let mut batches = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut longest = 0;
    for &i in sorted {
        let l = len_of(i).max(1);
        let new_longest = longest.max(l);
        if !cur.is_empty()
            && (cur.len() >= policy.max_batch
                || new_longest * (cur.len() + 1) > policy.token_budget)
        {
            batches.push(std::mem::take(&mut cur));
            longest = 0;
        }
        longest = longest.max(l);
        cur.push(i);
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    batches
}

pub fn file_sha256(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_count_and_token_budget() {
        let lens = [10, 10, 10, 200, 200, 250];
        let order: Vec<usize> = (0..lens.len()).collect();
        let b = plan_batches(
            &order,
            |i| lens[i],
            BatchPolicy {
                max_batch: 2,
                token_budget: 450,
            },
        );
        assert_eq!(b, vec![vec![0, 1], vec![2, 3], vec![4], vec![5]]);
        let b = plan_batches(
            &order,
            |i| lens[i],
            BatchPolicy {
                max_batch: 32,
                token_budget: 10_000,
            },
        );
        assert_eq!(b.len(), 1);
    }
}
