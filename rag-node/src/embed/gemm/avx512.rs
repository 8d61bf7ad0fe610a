//! AVX-512 micro-kernels: one call computes an `MR × 32` block of `C = A·B + bias` over the whole
//! depth `k`, with the 2·MR accumulators in registers, B read from a packed panel (contiguous,
//! 32 columns per depth step) and A's elements broadcast from their rows.
//!
//! The fp32 kernel does one FMA per element pair; the bf16 one (`vdpbf16ps`, AVX512_BF16) two
//! products per lane and instruction, accumulating in fp32.

#![allow(clippy::too_many_arguments)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Columns of one packed panel (two zmm registers of f32).
pub const NR: usize = 32;

/// Lane masks for the valid columns of a 32-wide block whose last `cols` may be padding.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn masks(cols: usize) -> (u16, u16) {
    let lo = if cols >= 16 {
        0xffff
    } else {
        ((1u32 << cols) - 1) as u16
    };
    let hi = if cols >= 32 {
        0xffff
    } else if cols <= 16 {
        0
    } else {
        ((1u32 << (cols - 16)) - 1) as u16
    };
    (lo, hi)
}

/// `C[MR × cols] = A[MR × k] · panel + bias`.
///
/// # Safety
/// AVX-512F is available; `a` holds MR rows of `k` floats at stride `lda`; `panel` holds
/// `k × 32` floats; `bias` 32 floats; `c` MR rows of at least `cols` floats at stride `ldc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn f32_tile<const MR: usize>(
    a: *const f32,
    lda: usize,
    panel: *const f32,
    k: usize,
    bias: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
) {
    let b0 = _mm512_loadu_ps(bias);
    let b1 = _mm512_loadu_ps(bias.add(16));
    let mut acc0 = [b0; MR];
    let mut acc1 = [b1; MR];
    for p in 0..k {
        let w0 = _mm512_loadu_ps(panel.add(p * NR));
        let w1 = _mm512_loadu_ps(panel.add(p * NR + 16));
        for i in 0..MR {
            let av = _mm512_set1_ps(*a.add(i * lda + p));
            acc0[i] = _mm512_fmadd_ps(av, w0, acc0[i]);
            acc1[i] = _mm512_fmadd_ps(av, w1, acc1[i]);
        }
    }
    let (m0, m1) = masks(cols);
    for i in 0..MR {
        let row = c.add(i * ldc);
        _mm512_mask_storeu_ps(row, m0, acc0[i]);
        _mm512_mask_storeu_ps(row.add(16), m1, acc1[i]);
    }
}

/// `C[MR × cols] = A[MR × 2·pairs] · B + bias` in bf16 with fp32 accumulation. A's rows are bf16
/// at stride `lda` (elements); `p0`/`p1` are the two 16-column panels, each `pairs × 16 × 2` bf16
/// (the two depth steps of a pair side by side, as `vdpbf16ps` and AMX read them).
///
/// # Safety
/// AVX-512F and AVX512_BF16 are available; the pointers cover what is described above.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn bf16_tile<const MR: usize>(
    a: *const u16,
    lda: usize,
    p0: *const u16,
    p1: *const u16,
    pairs: usize,
    bias: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
) {
    let b0 = _mm512_loadu_ps(bias);
    let b1 = _mm512_loadu_ps(bias.add(16));
    let mut acc0 = [b0; MR];
    let mut acc1 = [b1; MR];
    for p in 0..pairs {
        let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(p0.add(p * 32).cast()));
        let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(p1.add(p * 32).cast()));
        for i in 0..MR {
            let pair = (a.add(i * lda + 2 * p) as *const i32).read_unaligned();
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
            acc0[i] = _mm512_dpbf16_ps(acc0[i], av, w0);
            acc1[i] = _mm512_dpbf16_ps(acc1[i], av, w1);
        }
    }
    let (m0, m1) = masks(cols);
    for i in 0..MR {
        let row = c.add(i * ldc);
        _mm512_mask_storeu_ps(row, m0, acc0[i]);
        _mm512_mask_storeu_ps(row.add(16), m1, acc1[i]);
    }
}
