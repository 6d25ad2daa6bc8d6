//! Reference statistics for framesift: the histograms a calibration measures on a sample
//! of frames, the divergences (PSI, Jensen–Shannon distance) that score a window's drift
//! from them, the drift bands derived from the sample's own noise, threshold selection
//! for a target keep rate, and the reference file that carries all of it.
//!
//! A pure library: no I/O except reading the reference file ([`Reference::load`]);
//! [`Reference::to_toml`] gives the text for the caller to write. It does not depend on
//! the runtime; the runtime depends on it.

mod bands;
mod divergence;
mod histogram;
mod reference;
mod threshold;

pub use bands::{Band, Bands, DerivedBands, RESAMPLES, bands_for_noise, derive_bands};
pub use divergence::{PSEUDO_COUNT, js_distance, js_matching_psi, psi};
pub use histogram::{Bins, BinsError, Histogram, Scale};
pub use reference::{
    FORMAT, ModelStamp, NoveltyReference, OLDEST_FORMAT, Problem, Reference, ReferenceError,
    StatReference,
};
pub use threshold::threshold_for_rate;

/// SplitMix64: a small deterministic generator, the same on every platform (the
/// resampled drift windows, and test samples).
mod rng {
    pub(crate) struct Rng(u64);

    impl Rng {
        pub(crate) fn new(seed: u64) -> Self {
            Self(seed)
        }

        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in 0..n (the modulo bias is negligible for small n).
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next_u64() % n
        }
    }
}
