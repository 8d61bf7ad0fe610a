use super::*;

fn data(len: usize, seed: u32) -> Vec<f32> {
    // Deterministic values in about [-2, 2] with varied mantissas.
    (0..len)
        .map(|i| {
            let x = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(40_503));
            (x >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
        })
        .collect()
}

/// `x·Wᵀ + b` in f64, with the inputs rounded to bf16 first when `bf16`.
fn reference(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    bf16: bool,
) -> Vec<f64> {
    let r = |v: f32| if bf16 { bf16_round(v) as f64 } else { v as f64 };
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = b[j] as f64;
            for p in 0..k {
                s += r(x[i * k + p]) * r(w[j * k + p]);
            }
            out[i * n + j] = s;
        }
    }
    out
}

fn check(kernel: Kernel, m: usize, n: usize, k: usize) {
    let (x, w, b) = (data(m * k, 1), data(n * k, 2), data(n, 3));
    let packed = Packed::new(&w, &b, n, k, kernel);
    assert_eq!(packed.kernel(), kernel);
    let got = packed.forward(&x, m, Epilogue::None);
    let want = reference(&x, &w, &b, m, n, k, kernel.precision() == Precision::Bf16);
    assert_eq!(got.len(), want.len());
    // fp32 accumulation of k products of magnitude ≤ 4: a few ulps of the sum's scale.
    let tol = 1e-5 * (k as f64).sqrt() * 4.0 + 1e-5;
    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
        assert!(
            (*g as f64 - e).abs() <= tol * (1.0 + e.abs()),
            "{kernel:?} m={m} n={n} k={k}: element {i} is {g}, expected {e}"
        );
    }
}

const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (3, 17, 7),
    (9, 40, 33),
    (33, 32, 64),
    (70, 100, 130),
    (130, 384, 384),
    (65, 1536, 384),
    (40, 384, 1536),
];

#[test]
fn every_fp32_kernel_matches_the_reference() {
    for kernel in Kernel::available(Precision::Fp32) {
        for &(m, n, k) in SHAPES {
            check(kernel, m, n, k);
        }
    }
}

#[test]
fn every_bf16_kernel_multiplies_the_rounded_inputs_exactly_and_sums_in_fp32() {
    let kernels = Kernel::available(Precision::Bf16);
    assert_eq!(kernels.last(), Some(&Kernel::Bf16Emulated));
    for kernel in kernels {
        for &(m, n, k) in SHAPES {
            check(kernel, m, n, k);
        }
    }
}

#[test]
fn the_kernels_this_cpu_offers_are_the_ones_it_has() {
    let f = cpu::features();
    let bf16 = Kernel::available(Precision::Bf16);
    assert_eq!(bf16.contains(&Kernel::Amx), f.amx_bf16);
    assert_eq!(bf16.contains(&Kernel::Avx512Bf16), f.avx512_bf16);
    assert_eq!(
        Kernel::available(Precision::Fp32).contains(&Kernel::Avx512),
        f.avx512f
    );
    assert_eq!(
        Precision::auto() == Precision::Bf16,
        f.amx_bf16 || f.avx512_bf16
    );
    // bf16 weights take half the memory of fp32 ones.
    let w = data(384 * 384, 4);
    let b = data(384, 5);
    let fp32 = Packed::new(&w, &b, 384, 384, Kernel::best(Precision::Fp32)).weight_bytes();
    if f.avx512_bf16 {
        let bf = Packed::new(&w, &b, 384, 384, Kernel::Avx512Bf16).weight_bytes();
        assert_eq!(bf * 2, fp32);
    }
}

#[test]
fn epilogues_apply_gelu_and_the_residual() {
    let (m, n, k) = (37, 64, 48);
    let (x, w, b, res) = (data(m * k, 6), data(n * k, 7), data(n, 8), data(m * n, 9));
    for precision in [Precision::Fp32, Precision::Bf16] {
        for kernel in Kernel::available(precision) {
            let p = Packed::new(&w, &b, n, k, kernel);
            let plain = p.forward(&x, m, Epilogue::None);
            let gelu = p.forward(&x, m, Epilogue::Gelu);
            let added = p.forward(&x, m, Epilogue::Residual(&res));
            for i in 0..m * n {
                let v = plain[i] as f64;
                let want = 0.5 * v * (1.0 + libm_erf(v / std::f64::consts::SQRT_2));
                assert!(
                    (gelu[i] as f64 - want).abs() < 1e-5 * (1.0 + v.abs()),
                    "{kernel:?} gelu"
                );
                assert!(
                    (added[i] - (plain[i] + res[i])).abs() < 1e-6,
                    "{kernel:?} residual"
                );
            }
        }
    }
}

fn libm_erf(x: f64) -> f64 {
    // Abramowitz & Stegun 7.1.26 is what the kernel uses (≤ 1.5e-7); a series is independent.
    let a = x.abs();
    if a > 5.0 {
        // 1 - erf(5) < 2e-12; the series below loses all precision out there.
        return 1f64.copysign(x);
    }
    let mut sum = 0.0;
    let mut term = a;
    let mut n = 0.0;
    while n < 200.0 && (term.abs() > 1e-17 || n < 5.0) {
        sum += term / (2.0 * n + 1.0);
        n += 1.0;
        term *= -a * a / n;
    }
    (sum * 2.0 / std::f64::consts::PI.sqrt()).copysign(x)
}

#[test]
fn bf16_rounding_is_round_to_nearest_even() {
    assert_eq!(to_bf16(1.0), 0x3f80);
    // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
    assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
    // 1 + 3·2^-8 ties up to the even 1 + 2^-6.
    assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
    assert_eq!(to_bf16(-2.0), 0xc000);
    assert!(f32::from_bits((to_bf16(f32::NAN) as u32) << 16).is_nan());
    assert_eq!(
        to_bf16(f32::MAX),
        0x7f80,
        "overflows to infinity as the hardware does"
    );
}

#[test]
fn a_precision_is_resolved_once_and_never_changed() {
    use PrecisionChoice::*;
    assert_eq!(Fp32.resolve(None).unwrap(), Precision::Fp32);
    assert_eq!(Bf16.resolve(None).unwrap(), Precision::Bf16);
    assert_eq!(Auto.resolve(None).unwrap(), Precision::auto());
    // An existing index keeps its precision: `auto` follows it, another explicit one is refused.
    assert_eq!(
        Auto.resolve(Some(Precision::Bf16)).unwrap(),
        Precision::Bf16
    );
    assert_eq!(
        Auto.resolve(Some(Precision::Fp32)).unwrap(),
        Precision::Fp32
    );
    let err = Fp32.resolve(Some(Precision::Bf16)).unwrap_err().to_string();
    assert!(
        err.contains("built with bf16") && err.contains("configured for fp32"),
        "{err}"
    );
    assert_eq!("auto".parse::<PrecisionChoice>(), Ok(Auto));
    assert!("fp16".parse::<PrecisionChoice>().is_err());
}
