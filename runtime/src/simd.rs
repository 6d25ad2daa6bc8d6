//! Run-time choice of vector width for the few loops that touch every pixel.
//!
//! Those loops are plain Rust written to vectorise (contiguous slices, no branches).
//! Built for the baseline x86-64 target they get SSE2 (8 × u16 or 4 × f32 a vector);
//! [`kernel!`] compiles each such function a second time with AVX2 enabled and calls
//! that copy when the CPU has it, so one binary runs everywhere and uses the wide
//! vectors where they exist. On aarch64, NEON is part of the baseline and nothing is
//! chosen at run time. Both copies compute the same thing in the same order (no fused
//! multiply-add is enabled), so results do not depend on the CPU.

/// Define `fn name(args) -> ret { body }` so that the body runs as AVX2 code on x86-64
/// CPUs that have AVX2, and as baseline code elsewhere. Arguments must be plain names.
macro_rules! kernel {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2, the only feature `avx2` is compiled for.
                    #[allow(unsafe_code)]
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use kernel;

/// The CPU's vector extensions that matter for inference speed (ONNX Runtime picks its
/// kernels by them) and whether [`kernel!`] functions run their AVX2 copy: the board
/// facts `framesift bench` prints.
pub fn cpu_features() -> Vec<&'static str> {
    #[cfg(target_arch = "x86_64")]
    let candidates = {
        use std::arch::is_x86_feature_detected as has;
        [
            ("avx2", has!("avx2")),
            ("fma", has!("fma")),
            ("avx512f", has!("avx512f")),
            ("avx512vnni", has!("avx512vnni")),
        ]
    };
    #[cfg(target_arch = "aarch64")]
    let candidates = {
        use std::arch::is_aarch64_feature_detected as has;
        [
            ("neon", has!("neon")),
            ("dotprod", has!("dotprod")),
            ("fp16", has!("fp16")),
            ("i8mm", has!("i8mm")),
        ]
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let candidates: [(&'static str, bool); 0] = [];
    candidates
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| name)
        .collect()
}
