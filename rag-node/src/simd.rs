//! Run-time CPU feature dispatch. The release build targets baseline x86-64 (SSE2) so it runs
//! anywhere; hot loops are compiled again for AVX-512 and AVX2+FMA and chosen on first use.

/// Defines `fn $name(args)` that calls `$inner(args)` compiled for the best available x86 level.
/// `$inner` must be `#[inline(always)]` so it is re-optimised inside each variant.
macro_rules! dispatch {
    ($vis:vis fn $name:ident => $inner:ident ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? { $inner($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? { $inner($($arg),*) }
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the feature was detected on this CPU.
                    return unsafe { v4($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the features were detected on this CPU.
                    return unsafe { v3($($arg),*) };
                }
            }
            $inner($($arg),*)
        }
    };
}

pub(crate) use dispatch;
