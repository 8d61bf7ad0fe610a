//! The AMX kernel: a 32 × 32 block of `C = A·B` in four fp32 accumulator tiles (tmm0–3), A's
//! rows in two bf16 tiles (tmm4–5, 16 rows × 32 depth steps), B in two (tmm6–7, 16 depth pairs
//! × 16 columns), four `tdpbf16ps` per 32 steps of depth. Rust's AMX intrinsics are not stable;
//! the assembler knows the instructions, so this is inline assembly. Tile registers are not
//! Rust registers: nothing else in the process uses them, and every block starts with
//! `tilezero`.

#![allow(clippy::too_many_arguments)]

/// Rows and columns of the block one call computes.
pub const BLOCK: usize = 32;

/// The tile configuration (palette 1): eight tiles of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new() -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1; // palette
        for t in 0..8 {
            // bytes per row (u16, little-endian) at 16 + 2t, rows at 48 + t
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
        }
        TileConfig(c)
    }
}

/// Loads the tile configuration on this thread for the duration of `f`, then releases the tile
/// state (so the thread's context switches stay small afterwards).
///
/// # Safety
/// AMX is available and this process has the tile-data permission ([`super::cpu::features`]).
#[cfg(target_arch = "x86_64")]
pub unsafe fn with_tiles<R>(f: impl FnOnce() -> R) -> R {
    let cfg = TileConfig::new();
    std::arch::asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    let r = f();
    std::arch::asm!("tilerelease", options(nostack, nomem));
    r
}

/// `out[32 × 32]` (row stride 32 floats) `= A[32 × 32·steps] · B`.
///
/// `a`: 32 rows of bf16 at a stride of `lda` elements; `p0`, `p1`: the two 16-column panels,
/// each `16·steps` depth pairs of 64 bytes.
///
/// # Safety
/// Inside [`with_tiles`]; the pointers cover what is described above and `steps ≥ 1`.
#[cfg(target_arch = "x86_64")]
pub unsafe fn block(
    a: *const u16,
    lda: usize,
    p0: *const u16,
    p1: *const u16,
    steps: usize,
    out: &mut [f32; BLOCK * BLOCK],
) {
    let stride_a = lda * 2;
    let a1 = a.add(16 * lda);
    let c = out.as_mut_ptr();
    std::arch::asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        "2:",
        "tileloadd tmm4, [{a0} + {sa}*1]",
        "tileloadd tmm5, [{a1} + {sa}*1]",
        "tileloadd tmm6, [{b0} + {s64}*1]",
        "tileloadd tmm7, [{b1} + {s64}*1]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tdpbf16ps tmm1, tmm4, tmm7",
        "tdpbf16ps tmm2, tmm5, tmm6",
        "tdpbf16ps tmm3, tmm5, tmm7",
        "add {a0}, 64",
        "add {a1}, 64",
        "add {b0}, 1024",
        "add {b1}, 1024",
        "dec {n}",
        "jnz 2b",
        "tilestored [{c} + {s128}*1], tmm0",
        "tilestored [{c} + {s128}*1 + 64], tmm1",
        "tilestored [{c2} + {s128}*1], tmm2",
        "tilestored [{c2} + {s128}*1 + 64], tmm3",
        a0 = inout(reg) a => _,
        a1 = inout(reg) a1 => _,
        b0 = inout(reg) p0 => _,
        b1 = inout(reg) p1 => _,
        n = inout(reg) steps => _,
        sa = in(reg) stride_a,
        s64 = in(reg) 64usize,
        s128 = in(reg) 128usize,
        c = in(reg) c,
        c2 = in(reg) c.add(16 * BLOCK),
        options(nostack),
    );
}
