//! A BERT encoder for sentence embeddings, written for CPU inference.
//!
//! It follows the weights layout of Hugging Face `BertModel` checkpoints (as shipped with
//! all-MiniLM-L6-v2) and of `XLMRobertaModel`/`RobertaModel` ones (the base of the multilingual
//! models), which are the same encoder with two differences: weights under `roberta.`, and
//! position ids that start after the padding id (`pad_token_id + 1`). Differences from a literal port are for speed and keep the maths identical:
//! queries are scaled before `QK^T` (a (b·l·d) multiply instead of a (b·h·l·l) one), the softmax is
//! candle's fused last-dimension kernel, and every linear layer is a single 2-D GEMM over all tokens
//! of the batch.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, LayerNorm, VarBuilder};
use serde::Deserialize;

use super::gemm::{Epilogue, Kernel, Norm, Packed};
use super::sentence::Pooling;

#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// `bert`, `xlm-roberta`, `roberta`…
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub pad_token_id: Option<usize>,
}

impl BertConfig {
    /// The first position id: RoBERTa models count positions from `pad_token_id + 1`.
    pub fn position_offset(&self) -> usize {
        match self.model_type.as_deref() {
            Some("roberta" | "xlm-roberta" | "camembert") => self.pad_token_id.unwrap_or(1) + 1,
            _ => 0,
        }
    }
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

/// A linear layer, `x·Wᵀ + b`, with its weights packed for the index's kernel ([`gemm`]).
struct Linear(Packed);

impl Linear {
    fn load(vb: VarBuilder, inp: usize, out: usize, kernel: Kernel) -> candle_core::Result<Self> {
        Self::new(vb.get((out, inp), "weight")?, vb.get(out, "bias")?, kernel)
    }

    fn new(weight: Tensor, bias: Tensor, kernel: Kernel) -> candle_core::Result<Self> {
        let (n, k) = weight.dims2()?;
        let w = weight.flatten_all()?.to_vec1::<f32>()?;
        Ok(Linear(Packed::new(&w, &bias.to_vec1()?, n, k, kernel)))
    }

    fn out_features(&self) -> usize {
        self.0.out_features()
    }
}

/// A layer norm's parameters, applied in the epilogue of the GEMM before it.
fn norm(vb: VarBuilder, h: usize, eps: f64) -> candle_core::Result<Norm> {
    Ok(Norm {
        weight: vb.get(h, "weight")?.to_vec1()?,
        bias: vb.get(h, "bias")?.to_vec1()?,
        eps: eps as f32,
    })
}

/// Self-attention of every text of a batch: `qkv` is (texts·len) × [3][heads][head_dim] (queries
/// pre-scaled); each text attends over its own `n` tokens. Texts run in parallel; per head, the
/// scores `Q·Kᵀ` and the context `P·V` are GEMMs on the layer's kernel (so bf16 covers them too,
/// and keys and values are packed once per head, as weights are), softmax in fp32 between. Rows
/// of padding stay zero.
fn attention(
    qkv: &[f32],
    lens: &[usize],
    len: usize,
    heads: usize,
    hd: usize,
    kernel: Kernel,
    ctx: &mut [f32],
) {
    use rayon::prelude::*;
    let h = heads * hd;
    ctx.par_chunks_mut(len * h)
        .zip(lens.par_iter())
        .enumerate()
        .for_each(|(b, (out, &n))| {
            let rows = &qkv[b * len * 3 * h..(b * len + n) * 3 * h];
            let (mut q, mut k, mut vt) =
                (vec![0f32; n * hd], vec![0f32; n * hd], vec![0f32; n * hd]);
            let zeros_n = vec![0f32; n];
            let zeros_hd = vec![0f32; hd];
            for head in 0..heads {
                for (t, row) in rows.chunks_exact(3 * h).enumerate() {
                    let at = |part: usize| &row[part * h + head * hd..part * h + (head + 1) * hd];
                    q[t * hd..(t + 1) * hd].copy_from_slice(at(0));
                    k[t * hd..(t + 1) * hd].copy_from_slice(at(1));
                    for (d, &v) in at(2).iter().enumerate() {
                        vt[d * n + t] = v;
                    }
                }
                // Keys as the (n × hd) "weights" of Q·Kᵀ; Vᵀ as the (hd × n) ones of P·V.
                let mut scores =
                    Packed::new(&k, &zeros_n, n, hd, kernel).forward(&q, n, Epilogue::None);
                super::kernels::softmax_rows_in_place(&mut scores, n);
                let o =
                    Packed::new(&vt, &zeros_hd, hd, n, kernel).forward(&scores, n, Epilogue::None);
                for (t, orow) in o.chunks_exact(hd).enumerate() {
                    out[t * h + head * hd..t * h + (head + 1) * hd].copy_from_slice(orow);
                }
            }
            // Padding rows are zero (the buffer is reused).
            out[n * h..].fill(0.0);
        });
}

thread_local! {
    static BUFFERS: std::cell::Cell<[Vec<f32>; 4]> = const {
        std::cell::Cell::new([Vec::new(), Vec::new(), Vec::new(), Vec::new()])
    };
}

struct Layer {
    /// Query, key and value projections as one GEMM; the query part is pre-scaled by 1/√d.
    qkv: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    intermediate: Linear,
    output: Linear,
    out_norm: Norm,
}

pub struct Bert {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    head_dim: usize,
    hidden: usize,
    max_positions: usize,
    position_offset: usize,
    kernel: Kernel,
}

impl Bert {
    /// Loads the weights with the linear layers packed for `kernel`.
    pub fn load(dir: &Path, kernel: Kernel) -> anyhow::Result<(Bert, BertConfig)> {
        let config: BertConfig = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
        anyhow::ensure!(
            config.hidden_act == "gelu",
            "unsupported hidden_act {:?} (only exact GELU BERT models are supported)",
            config.hidden_act
        );
        anyhow::ensure!(
            config
                .hidden_size
                .is_multiple_of(config.num_attention_heads),
            "hidden_size is not a multiple of num_attention_heads"
        );
        let weights = dir.join("model.safetensors");
        // SAFETY: the weights file is memory-mapped read-only; nothing in this process writes it.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu)? };
        // Checkpoints exported from BertForX / XLMRobertaForX carry their family's prefix.
        let vb = match ["bert", "roberta"]
            .into_iter()
            .find(|p| vb.contains_tensor(&format!("{p}.embeddings.word_embeddings.weight")))
        {
            Some(prefix) => vb.pp(prefix),
            None => vb,
        };
        let offset = config.position_offset();
        anyhow::ensure!(
            config.max_position_embeddings > offset,
            "max_position_embeddings {} leaves no position after the offset {offset}",
            config.max_position_embeddings
        );
        let h = config.hidden_size;
        let e = vb.pp("embeddings");
        let emb = |name: &str, n: usize| -> candle_core::Result<Embedding> {
            Ok(Embedding::new(e.pp(name).get((n, h), "weight")?, h))
        };
        let word = emb("word_embeddings", config.vocab_size)?;
        let position = emb("position_embeddings", config.max_position_embeddings)?;
        let token_type = emb("token_type_embeddings", config.type_vocab_size)?;
        let emb_norm = candle_nn::layer_norm(h, config.layer_norm_eps, e.pp("LayerNorm"))?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention");
            let s = a.pp("self");
            // Scaling queries instead of the (heads, n, n) scores is the same maths, done once here.
            let scale = 1.0 / ((h / config.num_attention_heads) as f64).sqrt();
            let w = Tensor::cat(
                &[
                    (s.pp("query").get((h, h), "weight")? * scale)?,
                    s.pp("key").get((h, h), "weight")?,
                    s.pp("value").get((h, h), "weight")?,
                ],
                0,
            )?;
            let b = Tensor::cat(
                &[
                    (s.pp("query").get(h, "bias")? * scale)?,
                    s.pp("key").get(h, "bias")?,
                    s.pp("value").get(h, "bias")?,
                ],
                0,
            )?;
            layers.push(Layer {
                qkv: Linear::new(w, b, kernel)?,
                attn_out: Linear::load(a.pp("output.dense"), h, h, kernel)?,
                attn_norm: norm(a.pp("output.LayerNorm"), h, config.layer_norm_eps)?,
                intermediate: Linear::load(
                    l.pp("intermediate.dense"),
                    h,
                    config.intermediate_size,
                    kernel,
                )?,
                output: Linear::load(l.pp("output.dense"), config.intermediate_size, h, kernel)?,
                out_norm: norm(l.pp("output.LayerNorm"), h, config.layer_norm_eps)?,
            });
        }
        let bert = Bert {
            word,
            position,
            token_type,
            emb_norm,
            layers,
            heads: config.num_attention_heads,
            head_dim: h / config.num_attention_heads,
            hidden: h,
            max_positions: config.max_position_embeddings - offset,
            position_offset: offset,
            kernel,
        };
        Ok((bert, config))
    }

    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Bytes of the packed linear-layer weights (half in bf16).
    pub fn linear_weight_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                [&l.qkv, &l.attn_out, &l.intermediate, &l.output]
                    .iter()
                    .map(|x| x.0.weight_bytes())
                    .sum::<usize>()
            })
            .sum()
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Sentence embeddings for one padded batch: the last hidden state pooled as the model's
    /// sentence-transformers configuration says (masked mean, first token or masked maximum),
    /// then L2-normalised if it says so.
    ///
    /// `ids` and `mask` are row-major (batch, len); `mask` is 1 for real tokens, 0 for padding.
    pub fn embed_batch(
        &self,
        ids: &[u32],
        mask: &[u32],
        batch: usize,
        len: usize,
        pooling: Pooling,
        normalize: bool,
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let dev = Device::Cpu;
        let (h, heads, hd) = (self.hidden, self.heads, self.head_dim);
        let ids_t = Tensor::from_slice(ids, (batch, len), &dev)?;
        // Padding is on the right, so a text's positions are the first `n` either way.
        let first = self.position_offset as u32;
        let positions = Tensor::arange(first, first + len as u32, &dev)?;
        let types = Tensor::zeros((batch, len), DType::U32, &dev)?;
        let x = self
            .word
            .forward(&ids_t)?
            .broadcast_add(&self.position.forward(&positions)?)?
            .add(&self.token_type.forward(&types)?)?;
        let m = batch * len;
        let mut x: Vec<f32> = self.emb_norm.forward(&x)?.flatten_all()?.to_vec1()?;

        // Padding is always on the right: each text attends over its own tokens only, so no mask
        // is needed and the score tensor per text, (heads, n, n), stays cache-sized.
        let lens: Vec<usize> = mask
            .chunks(len)
            .map(|m| m.iter().filter(|&&v| v != 0).count().max(1))
            .collect();
        // The activations' buffers, reused by every layer and, per thread, by the next batch
        // (fresh large buffers cost page faults and zeroing on every use).
        let inter_size = self
            .layers
            .first()
            .map_or(0, |l| l.intermediate.out_features());
        let mut bufs = BUFFERS.with(|b| b.take());
        let [qkv, ctx, attn, inter] = &mut bufs;
        for (buf, width) in [
            (&mut *qkv, 3 * h),
            (&mut *ctx, h),
            (&mut *attn, h),
            (&mut *inter, inter_size),
        ] {
            buf.clear();
            buf.resize(m * width, 0.0);
        }
        for layer in &self.layers {
            layer.qkv.0.forward_into(&x, m, Epilogue::None, qkv);
            attention(qkv, &lens, len, heads, hd, self.kernel, ctx);
            let norm = Epilogue::ResidualNorm(&x, &layer.attn_norm);
            layer.attn_out.0.forward_into(ctx, m, norm, attn);
            layer
                .intermediate
                .0
                .forward_into(attn, m, Epilogue::Gelu, inter);
            let norm = Epilogue::ResidualNorm(attn, &layer.out_norm);
            layer.output.0.forward_into(inter, m, norm, &mut x);
        }
        BUFFERS.with(|b| b.set(bufs));

        let hidden = Tensor::from_vec(x, (batch, len, h), &dev)?;
        let mask_f: Vec<f32> = mask.iter().map(|&m| m as f32).collect();
        let mask_t = Tensor::from_vec(mask_f, (batch, len, 1), &dev)?;
        let pooled = match pooling {
            Pooling::Mean => {
                let summed = hidden.broadcast_mul(&mask_t)?.sum(1)?; // (batch, h)
                let counts = mask_t.sum(1)?.clamp(1e-9, f64::MAX)?; // (batch, 1)
                summed.broadcast_div(&counts)?
            }
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Max => {
                // As sentence-transformers: padding pushed to -1e9 before the maximum.
                let pad = ((mask_t.ones_like()? - &mask_t)? * -1e9)?;
                hidden.broadcast_add(&pad)?.max(1)?
            }
        };
        if !normalize {
            return pooled.to_vec2::<f32>();
        }
        let norm = pooled
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        pooled.broadcast_div(&norm)?.to_vec2::<f32>()
    }
}
