//! AVX-512 micro-kernels: one call adds an `MR × 32` block of `A·B` over one depth block to C
//! (or to the bias), with the 2·MR accumulators in registers, B read from a packed weight panel
//! (32 columns per depth step, small enough to stay in L1 across the micro-tiles of a row block)
//! and A from a packed micro-panel (MR rows per depth step, read sequentially).
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

/// Rows of one micro-tile.
pub const MR: usize = 8;

/// Loads the accumulators of a micro-tile: the bias on the first depth block, else what the
/// earlier blocks left in C (only the `rows` valid rows are read).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn start(
    first: bool,
    bias: *const f32,
    c: *const f32,
    ldc: usize,
    rows: usize,
    m: (u16, u16),
) -> ([__m512; MR], [__m512; MR]) {
    let b0 = _mm512_loadu_ps(bias);
    let b1 = _mm512_loadu_ps(bias.add(16));
    let mut acc0 = [b0; MR];
    let mut acc1 = [b1; MR];
    if !first {
        for i in 0..rows {
            let row = c.add(i * ldc);
            acc0[i] = _mm512_maskz_loadu_ps(m.0, row);
            acc1[i] = _mm512_maskz_loadu_ps(m.1, row.add(16));
        }
    }
    (acc0, acc1)
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn finish(
    acc: ([__m512; MR], [__m512; MR]),
    c: *mut f32,
    ldc: usize,
    rows: usize,
    m: (u16, u16),
) {
    for i in 0..rows {
        let row = c.add(i * ldc);
        _mm512_mask_storeu_ps(row, m.0, acc.0[i]);
        _mm512_mask_storeu_ps(row.add(16), m.1, acc.1[i]);
    }
}

/// `C[rows × cols] (+)= A · B` over one depth block of `kc` steps: `a` is a packed micro-panel
/// (`kc × MR`, the MR rows of one step side by side), `panel` the matching `kc × 32` slice of a
/// packed weight panel. `first`: start from the bias instead of C.
///
/// # Safety
/// AVX-512F is available; the pointers cover what is described above; C has `rows` rows of at
/// least `cols` floats at stride `ldc`, 32 bias values are readable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn f32_tile(
    a: *const f32,
    panel: *const f32,
    kc: usize,
    first: bool,
    bias: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let m = masks(cols);
    let (mut acc0, mut acc1) = start(first, bias, c, ldc, rows, m);
    for p in 0..kc {
        let w0 = _mm512_loadu_ps(panel.add(p * NR));
        let w1 = _mm512_loadu_ps(panel.add(p * NR + 16));
        let ap = a.add(p * MR);
        for i in 0..MR {
            let av = _mm512_set1_ps(*ap.add(i));
            acc0[i] = _mm512_fmadd_ps(av, w0, acc0[i]);
            acc1[i] = _mm512_fmadd_ps(av, w1, acc1[i]);
        }
    }
    finish((acc0, acc1), c, ldc, rows, m);
}

/// [`f32_tile`] in bf16: `a` is a packed micro-panel of `pairs × MR` depth pairs (two bf16 in
/// 32 bits), `p0`/`p1` the matching slices of the two 16-column panels (`pairs × 16 × 2` bf16,
/// as `vdpbf16ps` and AMX read them); products summed in fp32.
///
/// # Safety
/// AVX-512F and AVX512_BF16 are available; the pointers cover what is described above.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn bf16_tile(
    a: *const u32,
    p0: *const u16,
    p1: *const u16,
    pairs: usize,
    first: bool,
    bias: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let m = masks(cols);
    let (mut acc0, mut acc1) = start(first, bias, c, ldc, rows, m);
    for p in 0..pairs {
        let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(p0.add(p * 32).cast()));
        let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(p1.add(p * 32).cast()));
        let ap = a.add(p * MR);
        for i in 0..MR {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(i) as i32));
            acc0[i] = _mm512_dpbf16_ps(acc0[i], av, w0);
            acc1[i] = _mm512_dpbf16_ps(acc1[i], av, w1);
        }
    }
    finish((acc0, acc1), c, ldc, rows, m);
}

/// Round to nearest even with `vcvtneps2bf16`, 16 values at a time.
///
/// # Safety
/// AVX-512F and AVX512_BF16 are available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn to_bf16(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 16 <= n {
        let v = _mm512_loadu_ps(src.as_ptr().add(i));
        let b: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
        _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast(), b);
        i += 16;
    }
    for j in i..n {
        dst[j] = super::to_bf16(src[j]);
    }
}
