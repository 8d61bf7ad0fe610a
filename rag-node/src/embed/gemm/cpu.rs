//! What this CPU can run, read once by CPUID (never by compile flags: one binary runs on every
//! x86-64), and Linux's per-process permission for AMX tile data.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    pub avx512f: bool,
    pub avx512_bf16: bool,
    /// AMX tiles with bf16 dot products, enabled by the OS and granted to this process.
    pub amx_bf16: bool,
}

pub fn features() -> Features {
    static F: OnceLock<Features> = OnceLock::new();
    *F.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Features {
    let avx512f = std::is_x86_feature_detected!("avx512f");
    let avx512_bf16 = avx512f && std::is_x86_feature_detected!("avx512bf16");
    Features {
        avx512f,
        avx512_bf16,
        amx_bf16: avx512f && amx_usable(),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Features {
    Features {
        avx512f: false,
        avx512_bf16: false,
        amx_bf16: false,
    }
}

/// AMX needs three things: the CPU has it (CPUID.7.0:EDX bits 22 AMX-BF16 and 24 AMX-TILE;
/// std's detection macro for AMX is not stable), the OS saves its state (XCR0 bits 17 and 18),
/// and the kernel grants this process the large tile-data state (`arch_prctl`
/// `ARCH_REQ_XCOMP_PERM`, Linux 5.16+), without which the first tile load faults.
#[cfg(target_arch = "x86_64")]
fn amx_usable() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};
    if __cpuid(0).eax < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    let (amx_bf16, amx_tile) = (edx & (1 << 22) != 0, edx & (1 << 24) != 0);
    let osxsave = __cpuid(1).ecx & (1 << 27) != 0;
    if !(amx_bf16 && amx_tile && osxsave) {
        return false;
    }
    // SAFETY: OSXSAVE is set, so XGETBV is available.
    let xcr0 = unsafe { _xgetbv(0) };
    if xcr0 & (0b11 << 17) != 0b11 << 17 {
        return false;
    }
    request_tile_permission()
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments; the permission is process-wide and
    // asking again is harmless.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    if r != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "the CPU has AMX but the kernel refused tile data to this process; bf16 runs on AVX512_BF16 or in emulation"
        );
    }
    r == 0
}

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_permission() -> bool {
    false
}

/// `lscpu`-style summary for benchmark output and logs.
pub fn describe() -> String {
    let f = features();
    let flag = |b: bool, name: &str| {
        if b {
            name.to_owned()
        } else {
            format!("no {name}")
        }
    };
    format!(
        "{}, {}, {}",
        flag(f.avx512f, "avx512f"),
        flag(f.avx512_bf16, "avx512_bf16"),
        flag(f.amx_bf16, "amx_bf16")
    )
}
