//! The encoder's linear layers, `y = x·Wᵀ + b`, on the CPU: weights packed once at load for the
//! kernel this CPU runs best at the index's precision, activations read in place.
//!
//! fp32 runs an AVX-512 micro-kernel (candle's matmul where the CPU has no AVX-512). bf16 keeps
//! the weights in bf16 only (half the memory), rounds the activations to bf16 on the way in and
//! accumulates in fp32: on AMX tiles where the CPU has them, with AVX512_BF16 dot products where
//! it has only that, and in software elsewhere ([`Kernel::Bf16Emulated`]: the same bf16-rounded
//! inputs multiplied exactly and summed in fp32, so an index built on one CPU is extended with
//! the same numerics on another). Everything around the GEMMs (layer norm, softmax, GELU,
//! pooling) stays fp32 whatever the precision.

mod amx;
mod avx512;
pub mod cpu;
#[cfg(test)]
mod tests;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::simd::dispatch;

/// How vectors are computed; part of what an index is built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    Fp32,
    Bf16,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }

    pub fn parse(s: &str) -> Option<Precision> {
        match s {
            "fp32" => Some(Precision::Fp32),
            "bf16" => Some(Precision::Bf16),
            _ => None,
        }
    }

    /// What `auto` means on this CPU: bf16 where it has AMX, else fp32. With AVX512_BF16 alone
    /// bf16 is measured no faster than fp32 (docs/benchmarks.md), so `auto` keeps fp32 there.
    pub fn auto() -> Precision {
        if cpu::features().amx_bf16 {
            Precision::Bf16
        } else {
            Precision::Fp32
        }
    }
}

/// What the configuration asks for (`embedding.precision`). `auto` is resolved once, when an
/// index is created ([`Precision::auto`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionChoice {
    #[default]
    Fp32,
    Bf16,
    Auto,
}

impl std::str::FromStr for PrecisionChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp32" => Ok(PrecisionChoice::Fp32),
            "bf16" => Ok(PrecisionChoice::Bf16),
            "auto" => Ok(PrecisionChoice::Auto),
            _ => Err(format!(
                "unknown precision {s:?}: expected fp32, bf16 or auto"
            )),
        }
    }
}

impl PrecisionChoice {
    /// The precision of an index: the one it was created with when it exists (`recorded`), a
    /// different explicit choice being refused (vectors of two precisions are not mixed in one
    /// index); for a new index the choice, `auto` resolved on this CPU.
    pub fn resolve(self, recorded: Option<Precision>) -> anyhow::Result<Precision> {
        let wanted = match self {
            PrecisionChoice::Fp32 => Some(Precision::Fp32),
            PrecisionChoice::Bf16 => Some(Precision::Bf16),
            PrecisionChoice::Auto => None,
        };
        match (recorded, wanted) {
            (Some(r), Some(w)) if r != w => anyhow::bail!(
                "the index was built with {} vectors and this node is configured for {}: one index never mixes precisions, and changing it needs a new index (set embedding.precision to {:?} or \"auto\", or start from an empty data directory and re-ingest)",
                r.as_str(),
                w.as_str(),
                r.as_str()
            ),
            (Some(r), _) => Ok(r),
            (None, Some(w)) => Ok(w),
            (None, None) => Ok(Precision::auto()),
        }
    }
}

/// The code that runs the GEMMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// fp32, AVX-512 FMA.
    Avx512,
    /// fp32 through candle's matmul (the gemm crate: AVX2+FMA or baseline).
    Portable,
    /// bf16 on AMX tiles.
    Amx,
    /// bf16 with AVX512_BF16 dot products.
    Avx512Bf16,
    /// bf16 numerics in software on a CPU without bf16 instructions.
    Bf16Emulated,
}

impl Kernel {
    pub fn as_str(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512",
            Kernel::Portable => "portable",
            Kernel::Amx => "amx",
            Kernel::Avx512Bf16 => "avx512_bf16",
            Kernel::Bf16Emulated => "emulated",
        }
    }

    pub fn parse(s: &str) -> Option<Kernel> {
        [
            Kernel::Avx512,
            Kernel::Portable,
            Kernel::Amx,
            Kernel::Avx512Bf16,
            Kernel::Bf16Emulated,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    pub fn precision(self) -> Precision {
        match self {
            Kernel::Avx512 | Kernel::Portable => Precision::Fp32,
            Kernel::Amx | Kernel::Avx512Bf16 | Kernel::Bf16Emulated => Precision::Bf16,
        }
    }

    /// The fastest kernel of `precision` on this CPU.
    pub fn best(precision: Precision) -> Kernel {
        Self::available(precision)[0]
    }

    /// Every kernel of `precision` this CPU can run, fastest first (tests run them all).
    pub fn available(precision: Precision) -> Vec<Kernel> {
        let f = cpu::features();
        let mut v = Vec::new();
        match precision {
            Precision::Fp32 => {
                if f.avx512f {
                    v.push(Kernel::Avx512);
                }
                v.push(Kernel::Portable);
            }
            Precision::Bf16 => {
                if f.amx_bf16 {
                    v.push(Kernel::Amx);
                }
                if f.avx512_bf16 {
                    v.push(Kernel::Avx512Bf16);
                }
                v.push(Kernel::Bf16Emulated);
            }
        }
        v
    }
}

/// What is applied to the GEMM's output (bias already added) while it is still in cache.
#[derive(Clone, Copy)]
pub enum Epilogue<'a> {
    None,
    /// Exact-erf GELU.
    Gelu,
    /// `+ residual` (same shape as the output).
    Residual(&'a [f32]),
    /// `+ residual`, then layer normalization of each row.
    ResidualNorm(&'a [f32], &'a Norm),
}

/// Layer normalization's parameters (width = the GEMM's output features).
pub struct Norm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub eps: f32,
}

enum Weights {
    /// Panels of 32 columns, `[n_pad / 32][k][32]`.
    F32(Vec<f32>),
    /// Panels of 16 columns with depth pairs side by side, `[n_pad / 16][k_pad / 2][16][2]`.
    Bf16(Vec<u16>),
    /// `Wᵀ` (k × n) for candle's matmul.
    Tensor(Tensor),
}

/// A linear layer's weights and bias, packed for one kernel.
pub struct Packed {
    kernel: Kernel,
    k: usize,
    n: usize,
    /// `k` rounded up to 32 (bf16 layouts).
    k_pad: usize,
    /// The bias, zero-padded to a whole number of 32-column panels.
    bias: Vec<f32>,
    weights: Weights,
}

fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// Round to nearest even, as the hardware conversions do.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

#[inline(always)]
fn bf16_round(x: f32) -> f32 {
    f32::from_bits((to_bf16(x) as u32) << 16)
}

#[inline(always)]
fn round_rows_inner(src: &[f32], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = bf16_round(*s);
    }
}

#[inline(always)]
fn to_bf16_rows_inner(src: &[f32], dst: &mut [u16]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = to_bf16(*s);
    }
}

dispatch!(fn round_rows => round_rows_inner(src: &[f32], dst: &mut [f32]));
dispatch!(fn to_bf16_rows => to_bf16_rows_inner(src: &[f32], dst: &mut [u16]));

/// `to_bf16` over a slice: the CPU's own conversion where it has AVX512_BF16 (the same round
/// to nearest even), else the portable loop.
fn to_bf16_slice(src: &[f32], dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if cpu::features().avx512_bf16 {
        // SAFETY: AVX512_BF16 (and AVX-512F) detected.
        unsafe { avx512::to_bf16(src, dst) };
        return;
    }
    to_bf16_rows(src, dst)
}

thread_local! {
    static SCRATCH: std::cell::Cell<Vec<u16>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Packed {
    /// `w`: the checkpoint's `(n, k)` row-major weight (out × in); `bias`: `n` values.
    pub fn new(w: &[f32], bias: &[f32], n: usize, k: usize, kernel: Kernel) -> Packed {
        assert_eq!(w.len(), n * k);
        assert_eq!(bias.len(), n);
        let n_pad = round_up(n, avx512::NR);
        let k_pad = round_up(k, amx::BLOCK);
        let mut b = bias.to_vec();
        b.resize(n_pad, 0.0);
        let emulated = kernel == Kernel::Bf16Emulated;
        let weights = match kernel {
            Kernel::Avx512 => Weights::F32(pack_f32(w, n, k, false)),
            Kernel::Bf16Emulated if cpu::features().avx512f => {
                Weights::F32(pack_f32(w, n, k, true))
            }
            Kernel::Portable | Kernel::Bf16Emulated => {
                let vals: Vec<f32> = if emulated {
                    w.iter().map(|&x| bf16_round(x)).collect()
                } else {
                    w.to_vec()
                };
                let t = Tensor::from_vec(vals, (n, k), &Device::Cpu)
                    .and_then(|t| t.t()?.contiguous())
                    .expect("a CPU tensor of the right size");
                Weights::Tensor(t)
            }
            Kernel::Amx | Kernel::Avx512Bf16 => Weights::Bf16(pack_bf16(w, n, k, k_pad)),
        };
        Packed {
            kernel,
            k,
            n,
            k_pad,
            bias: b,
            weights,
        }
    }

    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    pub fn out_features(&self) -> usize {
        self.n
    }

    /// Bytes held for the weights.
    pub fn weight_bytes(&self) -> usize {
        match &self.weights {
            Weights::F32(v) => v.len() * 4,
            Weights::Bf16(v) => v.len() * 2,
            Weights::Tensor(t) => t.elem_count() * 4,
        }
    }

    /// `x`: (m × k) row-major → (m × n).
    pub fn forward(&self, x: &[f32], m: usize, epilogue: Epilogue) -> Vec<f32> {
        let mut out = vec![0f32; m * self.n];
        self.forward_into(x, m, epilogue, &mut out);
        out
    }

    /// [`Packed::forward`] into a buffer the caller keeps (the encoder reuses its activations'
    /// buffers across layers: large buffers allocated per layer cost page faults and zeroing).
    pub fn forward_into(&self, x: &[f32], m: usize, epilogue: Epilogue, out: &mut [f32]) {
        assert_eq!(x.len(), m * self.k);
        assert_eq!(out.len(), m * self.n);
        match epilogue {
            Epilogue::Residual(r) | Epilogue::ResidualNorm(r, _) => assert_eq!(r.len(), m * self.n),
            Epilogue::None | Epilogue::Gelu => {}
        }
        if m == 0 {
            return;
        }
        let out = &mut *out;
        match (&self.weights, self.kernel) {
            (Weights::F32(panels), Kernel::Bf16Emulated) => {
                let mut rounded = vec![0f32; x.len()];
                rounded
                    .par_chunks_mut(self.k * 64)
                    .zip(x.par_chunks(self.k * 64))
                    .for_each(|(d, s)| round_rows(s, d));
                self.f32_gemm(&rounded, panels, out, epilogue);
            }
            (Weights::F32(panels), _) => self.f32_gemm(x, panels, out, epilogue),
            (Weights::Bf16(panels), Kernel::Amx) => {
                // The bf16 copy of A goes to a buffer kept per thread. Taken, not borrowed: a
                // thread waiting inside a GEMM may run another task that calls a GEMM.
                let mut a = SCRATCH.with(|s| s.take());
                self.to_bf16_padded(x, m, amx::BLOCK, &mut a);
                self.amx_gemm(&a, panels, out, epilogue);
                SCRATCH.with(|s| s.replace(a));
            }
            (Weights::Bf16(panels), _) => self.bf16_gemm(x, panels, out, epilogue),
            (Weights::Tensor(wt), _) => self.candle_gemm(x, m, wt, out, epilogue),
        }
    }

    /// A as bf16 into `a`, `k` padded to `k_pad` and rows to a multiple of `rows_to` with zeros.
    fn to_bf16_padded(&self, x: &[f32], m: usize, rows_to: usize, a: &mut Vec<u16>) {
        let (k, kp) = (self.k, self.k_pad);
        let len = round_up(m, rows_to) * kp;
        a.clear();
        a.resize(len, 0);
        a.par_chunks_mut(kp * 16)
            .zip(x.par_chunks(k * 16))
            .for_each(|(d, s)| {
                for (drow, srow) in d.chunks_mut(kp).zip(s.chunks(k)) {
                    to_bf16_slice(srow, &mut drow[..k]);
                }
            });
    }

    /// Row blocks of `MC` rows run in parallel; in each, depth blocks of `KC` steps (the weight
    /// panel's slice, `KC × 32` floats, stays in L1 while every micro-tile of the block uses it;
    /// the block's packed A, `MC × KC`, stays in L2).
    fn f32_gemm(&self, a: &[f32], panels: &[f32], out: &mut [f32], epilogue: Epilogue) {
        const MC: usize = 96;
        const KC: usize = 128;
        const MR: usize = avx512::MR;
        let (k, n) = (self.k, self.n);
        out.par_chunks_mut(MC * n).enumerate().for_each(|(bi, c)| {
            let r0 = bi * MC;
            let rows = c.len() / n;
            let groups = rows.div_ceil(MR);
            // A's rows packed per micro-tile: [group][k][MR], padding rows zero.
            let mut ap = vec![0f32; groups * k * MR];
            for (g, dst) in ap.chunks_exact_mut(k * MR).enumerate() {
                for r in 0..MR.min(rows - g * MR) {
                    let src = &a[(r0 + g * MR + r) * k..][..k];
                    for (p, &v) in src.iter().enumerate() {
                        dst[p * MR + r] = v;
                    }
                }
            }
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                for (j, panel) in panels.chunks_exact(k * avx512::NR).enumerate() {
                    let col = j * avx512::NR;
                    let cols = (n - col).min(avx512::NR);
                    let bp = panel[pc * avx512::NR..].as_ptr();
                    for g in 0..groups {
                        let mr = (rows - g * MR).min(MR);
                        // SAFETY: Avx512 and emulated-on-AVX-512 weights are packed only
                        // where AVX-512F was detected; the slices cover a micro-panel of
                        // kc steps, the panel's slice, mr rows of C and 32 (padded) biases.
                        unsafe {
                            avx512::f32_tile(
                                ap[(g * k + pc) * MR..].as_ptr(),
                                bp,
                                kc,
                                pc == 0,
                                self.bias[col..].as_ptr(),
                                c[g * MR * n + col..].as_mut_ptr(),
                                n,
                                mr,
                                cols,
                            );
                        }
                    }
                }
            }
            apply(epilogue, c, r0 * n);
        });
    }

    /// [`Packed::f32_gemm`] with AVX512_BF16: A is converted to bf16 while it is packed.
    fn bf16_gemm(&self, a: &[f32], panels: &[u16], out: &mut [f32], epilogue: Epilogue) {
        const MC: usize = 96;
        const KCP: usize = 64; // depth pairs per block
        const MR: usize = avx512::MR;
        let (k, kp, n) = (self.k, self.k_pad, self.n);
        let pairs = kp / 2;
        let panel_len = kp * 16;
        out.par_chunks_mut(MC * n).enumerate().for_each(|(bi, c)| {
            let r0 = bi * MC;
            let rows = c.len() / n;
            let groups = rows.div_ceil(MR);
            // [group][pair][MR] of two bf16 each (low half: the even depth step).
            let mut ap = vec![0u32; groups * pairs * MR];
            for (g, dst) in ap.chunks_exact_mut(pairs * MR).enumerate() {
                for r in 0..MR.min(rows - g * MR) {
                    let src = &a[(r0 + g * MR + r) * k..][..k];
                    for (q, two) in src.chunks(2).enumerate() {
                        let lo = to_bf16(two[0]) as u32;
                        let hi = two.get(1).map_or(0, |&v| to_bf16(v) as u32);
                        dst[q * MR + r] = lo | hi << 16;
                    }
                }
            }
            for qc in (0..pairs).step_by(KCP) {
                let kc = KCP.min(pairs - qc);
                for (j, pair) in panels.chunks_exact(2 * panel_len).enumerate() {
                    let col = j * avx512::NR;
                    let cols = (n - col).min(avx512::NR);
                    let p0 = pair[qc * 32..].as_ptr();
                    let p1 = pair[panel_len + qc * 32..].as_ptr();
                    for g in 0..groups {
                        let mr = (rows - g * MR).min(MR);
                        // SAFETY: bf16 panels for this kernel exist only where AVX512_BF16
                        // was detected; the slices cover what the kernel reads and writes.
                        unsafe {
                            avx512::bf16_tile(
                                ap[(g * pairs + qc) * MR..].as_ptr(),
                                p0,
                                p1,
                                kc,
                                qc == 0,
                                self.bias[col..].as_ptr(),
                                c[g * MR * n + col..].as_mut_ptr(),
                                n,
                                mr,
                                cols,
                            );
                        }
                    }
                }
            }
            apply(epilogue, c, r0 * n);
        });
    }

    fn amx_gemm(&self, a: &[u16], panels: &[u16], out: &mut [f32], epilogue: Epilogue) {
        const B: usize = amx::BLOCK;
        let (kp, n) = (self.k_pad, self.n);
        let panel_len = kp * 16;
        out.par_chunks_mut(B * n).enumerate().for_each(|(bi, c)| {
            let r0 = bi * B;
            let rows = c.len() / n;
            let mut scratch = [0f32; B * B];
            let ap = a[r0 * kp..].as_ptr();
            // SAFETY: Amx panels exist only where AMX was detected and this process holds the
            // tile-data permission; A is padded to whole 32-row blocks and k_pad depth.
            unsafe {
                amx::with_tiles(|| {
                    for (j, pair) in panels.chunks_exact(2 * panel_len).enumerate() {
                        let (p0, p1) = (pair.as_ptr(), pair[panel_len..].as_ptr());
                        amx::block(ap, kp, p0, p1, kp / B, &mut scratch);
                        let col = j * B;
                        let cols = (n - col).min(B);
                        let bias = &self.bias[col..col + cols];
                        for (r, src) in scratch.chunks_exact(B).take(rows).enumerate() {
                            let dst = &mut c[r * n + col..r * n + col + cols];
                            for ((d, s), b) in dst.iter_mut().zip(src).zip(bias) {
                                *d = s + b;
                            }
                        }
                    }
                })
            }
            apply(epilogue, c, r0 * n);
        });
    }

    fn candle_gemm(&self, x: &[f32], m: usize, wt: &Tensor, out: &mut [f32], epilogue: Epilogue) {
        let y = if self.kernel == Kernel::Bf16Emulated {
            let r: Vec<f32> = x.iter().map(|&v| bf16_round(v)).collect();
            Tensor::from_vec(r, (m, self.k), &Device::Cpu)
        } else {
            Tensor::from_slice(x, (m, self.k), &Device::Cpu)
        }
        .and_then(|t| t.matmul(wt))
        .and_then(|y| y.flatten_all()?.to_vec1::<f32>())
        .expect("CPU matmul of checked shapes");
        let n = self.n;
        out.par_chunks_mut(64 * n)
            .zip(y.par_chunks(64 * n))
            .enumerate()
            .for_each(|(bi, (c, ys))| {
                for (crow, yrow) in c.chunks_exact_mut(n).zip(ys.chunks_exact(n)) {
                    for ((d, s), b) in crow.iter_mut().zip(yrow).zip(&self.bias) {
                        *d = s + b;
                    }
                }
                apply(epilogue, c, bi * 64 * n);
            });
    }
}

fn apply(epilogue: Epilogue, c: &mut [f32], offset: usize) {
    match epilogue {
        Epilogue::None => {}
        Epilogue::Gelu => super::kernels::gelu_in_place(c),
        Epilogue::Residual(r) => super::kernels::add_in_place(c, &r[offset..offset + c.len()]),
        Epilogue::ResidualNorm(r, norm) => {
            super::kernels::add_in_place(c, &r[offset..offset + c.len()]);
            super::kernels::layer_norm_in_place(c, &norm.weight, &norm.bias, norm.eps);
        }
    }
}

fn pack_f32(w: &[f32], n: usize, k: usize, round: bool) -> Vec<f32> {
    const NR: usize = avx512::NR;
    let n_pad = round_up(n, NR);
    let mut out = vec![0f32; n_pad * k];
    for (j, panel) in out.chunks_exact_mut(k * NR).enumerate() {
        for c in 0..NR.min(n - (j * NR).min(n)) {
            let row = &w[(j * NR + c) * k..(j * NR + c + 1) * k];
            for (p, &v) in row.iter().enumerate() {
                panel[p * NR + c] = if round { bf16_round(v) } else { v };
            }
        }
    }
    out
}

fn pack_bf16(w: &[f32], n: usize, k: usize, k_pad: usize) -> Vec<u16> {
    let n_pad = round_up(n, avx512::NR);
    let mut out = vec![0u16; n_pad * k_pad];
    for (j, panel) in out.chunks_exact_mut(k_pad * 16).enumerate() {
        for c in 0..16.min(n - (j * 16).min(n)) {
            let row = &w[(j * 16 + c) * k..(j * 16 + c + 1) * k];
            for (p, &v) in row.iter().enumerate() {
                panel[((p / 2) * 16 + c) * 2 + p % 2] = to_bf16(v);
            }
        }
    }
    out
}
