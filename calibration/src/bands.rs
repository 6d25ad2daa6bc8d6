//! Drift bands: how far from the reference counts as moderate or significant drift.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Bins;
use crate::divergence::{js_distance, js_matching_psi};
use crate::histogram::Histogram;
use crate::rng::Rng;

/// Where moderate and significant drift start, in PSI and in JS distance. Alerts use JS
/// (bounded and symmetric); PSI is reported beside it because it is the figure people
/// know.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bands {
    /// PSI at which drift is moderate.
    pub psi_moderate: f64,
    /// PSI at which drift is significant.
    pub psi_significant: f64,
    /// JS distance (bits) at which drift is moderate.
    pub js_moderate: f64,
    /// JS distance (bits) at which drift is significant.
    pub js_significant: f64,
}

impl Default for Bands {
    /// The customary PSI bands, 0.1 and 0.25, and the JS distances that match them.
    fn default() -> Self {
        let (psi_moderate, psi_significant) = (0.1, 0.25);
        Self {
            psi_moderate,
            psi_significant,
            js_moderate: js_matching_psi(psi_moderate),
            js_significant: js_matching_psi(psi_significant),
        }
    }
}

impl Bands {
    /// The band a JS distance falls in; each band starts at its bound.
    pub fn band_for_js(&self, js: f64) -> Band {
        band(js, self.js_moderate, self.js_significant)
    }

    /// The band a PSI value falls in; each band starts at its bound.
    pub fn band_for_psi(&self, psi: f64) -> Band {
        band(psi, self.psi_moderate, self.psi_significant)
    }
}

fn band(value: f64, moderate: f64, significant: f64) -> Band {
    if value >= significant {
        Band::Significant
    } else if value >= moderate {
        Band::Moderate
    } else {
        Band::Stable
    }
}

/// How much a statistic has drifted, ordered so that the worst of several is their max.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Band {
    Stable,
    Moderate,
    Significant,
}

impl fmt::Display for Band {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Band::Stable => "stable",
            Band::Moderate => "moderate",
            Band::Significant => "significant",
        })
    }
}

/// Bands derived from a reference sample, with the noise they were raised for.
#[derive(Debug, Clone, PartialEq)]
pub struct DerivedBands {
    pub bands: Bands,
    /// The largest JS distance between a window of the reference and the rest of it;
    /// `None` when the sample was too short for two windows of any statistic.
    pub reference_noise: Option<f64>,
    /// How many sliding windows the noise was measured over, across all statistics
    /// (besides [`RESAMPLES`] pseudo-windows per statistic).
    pub windows: usize,
    /// Each statistic's own noise, in the order given (`None`: shorter than two
    /// windows).
    pub noise: Vec<Option<f64>>,
}

/// The margin over the reference's own noise an alert threshold keeps.
const MARGIN: f64 = 1.5;

/// Bands for windows whose JS distance from the reference reaches `noise` by chance:
/// `js_moderate = max(js_matching_psi(psi_moderate), 1.5 × noise)` and
/// `js_significant = max(js_matching_psi(psi_significant), 1.5 × js_moderate)`.
pub fn bands_for_noise(noise: Option<f64>, psi_moderate: f64, psi_significant: f64) -> Bands {
    let js_moderate = js_matching_psi(psi_moderate).max(noise.map_or(0.0, |n| MARGIN * n));
    Bands {
        psi_moderate,
        psi_significant,
        js_moderate,
        js_significant: js_matching_psi(psi_significant).max(MARGIN * js_moderate),
    }
}

/// Drift bands for windows of `window` samples, from the reference sample itself.
///
/// Each entry of `samples` is one statistic: its bins and the bin index of each of its
/// values in capture order. A statistic's noise is the largest JS distance between a
/// window of it and the rest of its sample — the whole minus the window, so that, like a
/// camera's window, it is compared with values it is not part of (against the whole it
/// would partly be compared with itself and look closer than a camera ever does) — over
/// two kinds of window:
/// - windows of `window` values sliding over the sequence with a stride of a tenth of a
///   window ([`sliding_noise`]);
/// - [`RESAMPLES`] pseudo-windows, each ten blocks of a tenth of a window drawn at
///   random from the sample ([`resampled_noise`]). A sample a few windows long holds
///   only a few distinct windows in capture order; a camera sees thousands over a long
///   run, and the most extreme of those is what an alarm threshold must clear.
///
/// Statistics with fewer than two full windows are left out. The JS distances matching
/// `psi_moderate` and `psi_significant` are the floor; a statistic's noise, with a 1.5×
/// margin, raises them when the sample is noisier than that (short windows, many bins,
/// values correlated in time), so that a stationary stream like the reference does not
/// alarm ([`bands_for_noise`]). `noise` holds each statistic's own, for its own bands;
/// `bands` is for the noisiest statistic.
///
/// # Panics
/// If an index is not a bin of its statistic.
pub fn derive_bands(
    samples: &[(Bins, &[u32])],
    window: usize,
    psi_moderate: f64,
    psi_significant: f64,
) -> DerivedBands {
    let stride = (window / 10).max(1);
    let mut windows = 0;
    let mut per_stat = Vec::with_capacity(samples.len());
    for &(bins, indices) in samples {
        if window == 0 || indices.len() < 2 * window {
            per_stat.push(None);
            continue;
        }
        let (sliding, slid) = sliding_noise(bins, indices, window, stride);
        windows += slid;
        let resampled = resampled_noise(bins, indices, window, stride);
        per_stat.push(Some(resampled.map_or(sliding, |r| r.max(sliding))));
    }
    let noise = per_stat.iter().flatten().copied().reduce(f64::max);
    DerivedBands {
        bands: bands_for_noise(noise, psi_moderate, psi_significant),
        reference_noise: noise,
        windows,
        noise: per_stat,
    }
}

/// The largest JS distance between a window of `window` values, sliding by `stride`,
/// and the rest of the sample; and how many windows that was. The sample holds at least
/// one window.
fn sliding_noise(bins: Bins, indices: &[u32], window: usize, stride: usize) -> (f64, usize) {
    let mut whole = Histogram::new(bins);
    for &i in indices {
        whole.add_index(i as usize);
    }
    let mut current = Histogram::new(bins);
    for &i in &indices[..window] {
        current.add_index(i as usize);
    }
    let mut rest = vec![0; bins.count];
    let (mut noise, mut windows, mut start) = (0.0f64, 0, 0);
    loop {
        for ((r, &w), &c) in rest.iter_mut().zip(&whole.counts).zip(&current.counts) {
            *r = w - c;
        }
        noise = noise.max(js_distance(&rest, &current.counts));
        windows += 1;
        let next = start + stride;
        if next + window > indices.len() {
            break;
        }
        for &i in &indices[start..next] {
            current.remove_index(i as usize);
        }
        for &i in &indices[start + window..next + window] {
            current.add_index(i as usize);
        }
        start = next;
    }
    (noise, windows)
}

/// Pseudo-windows drawn per statistic by [`resampled_noise`].
pub const RESAMPLES: usize = 1000;

/// The largest JS distance between a pseudo-window — `window / block` distinct blocks of
/// `block` consecutive values, drawn at random — and the rest of the sample, over
/// [`RESAMPLES`] draws. Blocks keep the values' correlation in time (the frames of one
/// scene), as a camera's window does. `None` below two windows' worth of blocks. The
/// draws are seeded by the sample's length, so the same sample gives the same noise.
fn resampled_noise(bins: Bins, indices: &[u32], window: usize, block: usize) -> Option<f64> {
    let per_window = (window / block).max(1);
    let counts: Vec<Vec<u64>> = indices
        .chunks_exact(block)
        .map(|chunk| {
            let mut h = Histogram::new(bins);
            for &i in chunk {
                h.add_index(i as usize);
            }
            h.counts
        })
        .collect();
    if counts.len() < 2 * per_window {
        return None;
    }
    let mut whole = vec![0; bins.count];
    for c in &counts {
        for (w, &v) in whole.iter_mut().zip(c) {
            *w += v;
        }
    }
    let mut rng = Rng::new(0x6472_6966_7473 ^ indices.len() as u64);
    let mut order: Vec<usize> = (0..counts.len()).collect();
    let (mut current, mut rest) = (vec![0; bins.count], vec![0; bins.count]);
    let mut noise = 0.0f64;
    for _ in 0..RESAMPLES {
        current.fill(0);
        // A partial Fisher–Yates shuffle: the first `per_window` blocks are a uniform
        // draw without replacement.
        for k in 0..per_window {
            let j = k + rng.below((order.len() - k) as u64) as usize;
            order.swap(k, j);
            for (c, &v) in current.iter_mut().zip(&counts[order[k]]) {
                *c += v;
            }
        }
        for ((r, &w), &c) in rest.iter_mut().zip(&whole).zip(&current) {
            *r = w - c;
        }
        noise = noise.max(js_distance(&rest, &current));
    }
    Some(noise)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Scale;

    fn bins(count: usize) -> Bins {
        Bins {
            lo: 0.0,
            hi: 1.0,
            count,
            scale: Scale::Linear,
        }
    }

    #[test]
    fn default_bands_match_the_customary_psi() {
        let b = Bands::default();
        assert_eq!((b.psi_moderate, b.psi_significant), (0.1, 0.25));
        assert_eq!(b.js_moderate, js_matching_psi(0.1));
        assert_eq!(b.js_significant, js_matching_psi(0.25));
    }

    #[test]
    fn bands_start_at_their_bounds() {
        let b = Bands {
            psi_moderate: 0.1,
            psi_significant: 0.25,
            js_moderate: 0.2,
            js_significant: 0.4,
        };
        let js = [
            (0.0, Band::Stable),
            (0.199, Band::Stable),
            (0.2, Band::Moderate),
            (0.399, Band::Moderate),
            (0.4, Band::Significant),
            (1.0, Band::Significant),
        ];
        for (value, want) in js {
            assert_eq!(b.band_for_js(value), want, "js {value}");
        }
        let psi = [
            (0.05, Band::Stable),
            (0.1, Band::Moderate),
            (0.25, Band::Significant),
            (7.0, Band::Significant),
        ];
        for (value, want) in psi {
            assert_eq!(b.band_for_psi(value), want, "psi {value}");
        }
    }

    #[test]
    fn worst_band_is_the_max() {
        let worst = [
            Band::Moderate,
            Band::Stable,
            Band::Significant,
            Band::Stable,
        ]
        .into_iter()
        .max();
        assert_eq!(worst, Some(Band::Significant));
        assert!(Band::Stable < Band::Moderate);
    }

    #[test]
    fn band_is_lowercase_in_text_and_toml() {
        #[derive(Serialize, Deserialize)]
        struct Wrap {
            band: Band,
        }
        for band in [Band::Stable, Band::Moderate, Band::Significant] {
            let text = band.to_string();
            assert_eq!(text, format!("{band:?}").to_lowercase());
            let toml = toml::to_string(&Wrap { band }).expect("serialise a unit enum");
            assert_eq!(toml.trim(), format!("band = \"{text}\""));
            let back: Wrap = toml::from_str(&toml).expect("parse what was written");
            assert_eq!(back.band, band);
        }
    }

    fn uniform_indices(n: usize, bins: u32, seed: u64) -> Vec<u32> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| rng.below(bins as u64) as u32).collect()
    }

    #[test]
    fn iid_sample_with_big_windows_keeps_the_psi_floor() {
        let a = uniform_indices(20_000, 10, 1);
        let b = uniform_indices(20_000, 16, 2);
        let samples = [(bins(10), &a[..]), (bins(16), &b[..])];
        let derived = derive_bands(&samples, 2000, 0.1, 0.25);
        let noise = derived.reference_noise.expect("enough windows");
        assert!(
            noise > 0.0 && 1.5 * noise < js_matching_psi(0.1),
            "noise {noise}"
        );
        assert_eq!(derived.bands, Bands::default());
    }

    #[test]
    fn correlated_sample_raises_the_bands() {
        // Runs of 400 equal values: a window of 1000 sees two or three bins, while the
        // whole sample sees all of them.
        let mut rng = Rng::new(3);
        let indices: Vec<u32> = (0..50)
            .flat_map(|_| std::iter::repeat_n(rng.below(8) as u32, 400))
            .collect();
        let derived = derive_bands(&[(bins(8), &indices[..])], 1000, 0.1, 0.25);
        let noise = derived.reference_noise.expect("enough windows");
        let b = derived.bands;
        assert!(b.js_moderate > js_matching_psi(0.1), "{b:?}");
        assert_eq!(b.js_moderate, 1.5 * noise);
        assert_eq!(b.js_significant, 1.5 * b.js_moderate);
        assert_eq!((b.psi_moderate, b.psi_significant), (0.1, 0.25));
    }

    #[test]
    fn each_statistic_keeps_its_own_noise() {
        // One iid statistic, one in long runs: the bands are the noisy one's, and each
        // statistic's own noise is reported for bands per statistic.
        let quiet = uniform_indices(20_000, 8, 4);
        let mut rng = Rng::new(5);
        let noisy: Vec<u32> = (0..50)
            .flat_map(|_| std::iter::repeat_n(rng.below(8) as u32, 400))
            .collect();
        let derived = derive_bands(
            &[(bins(8), &quiet[..]), (bins(8), &noisy[..])],
            1000,
            0.1,
            0.25,
        );
        let (q, n) = (
            derived.noise[0].expect("quiet"),
            derived.noise[1].expect("noisy"),
        );
        assert!(q * 3.0 < n, "quiet {q}, noisy {n}");
        assert_eq!(derived.reference_noise, Some(n));
        assert_eq!(derived.bands, bands_for_noise(Some(n), 0.1, 0.25));
        let own = bands_for_noise(Some(q), 0.1, 0.25);
        assert_eq!(
            own.js_moderate,
            js_matching_psi(0.1),
            "the quiet one keeps the floor"
        );
    }

    #[test]
    fn significant_band_keeps_its_own_floor() {
        // Short windows over many bins lift js_moderate above its floor; with a high
        // psi_significant, 1.5 × js_moderate is still below the significant floor.
        let a = uniform_indices(20_000, 16, 4);
        let derived = derive_bands(&[(bins(16), &a[..])], 100, 0.1, 2.0);
        let b = derived.bands;
        assert!(b.js_moderate > js_matching_psi(0.1), "{b:?}");
        assert!(1.5 * b.js_moderate < js_matching_psi(2.0), "{b:?}");
        assert_eq!(b.js_significant, js_matching_psi(2.0));
    }

    #[test]
    fn windows_slide_by_a_tenth() {
        let a = uniform_indices(1000, 4, 5);
        // Starts 0, 10, …, 900: 91 windows of 100.
        assert_eq!(
            derive_bands(&[(bins(4), &a[..])], 100, 0.1, 0.25).windows,
            91
        );
        // A window below 10 still moves by 1: starts 0..=995.
        assert_eq!(
            derive_bands(&[(bins(4), &a[..])], 5, 0.1, 0.25).windows,
            996
        );
        // Two statistics add up.
        let two = [(bins(4), &a[..]), (bins(4), &a[..500])];
        assert_eq!(derive_bands(&two, 100, 0.1, 0.25).windows, 91 + 41);
    }

    #[test]
    fn rolling_counts_match_a_fresh_count() {
        // The noise from the rolling window equals the max over windows counted afresh,
        // each against the rest of the sample.
        let a = uniform_indices(3000, 6, 6);
        let window = 250;
        let mut whole = Histogram::new(bins(6));
        a.iter().for_each(|&i| whole.add_index(i as usize));
        let mut want: f64 = 0.0;
        for start in (0..=a.len() - window).step_by(25) {
            let mut h = Histogram::new(bins(6));
            a[start..start + window]
                .iter()
                .for_each(|&i| h.add_index(i as usize));
            let rest: Vec<u64> = whole
                .counts
                .iter()
                .zip(&h.counts)
                .map(|(w, c)| w - c)
                .collect();
            want = want.max(js_distance(&rest, &h.counts));
        }
        let (got, windows) = sliding_noise(bins(6), &a, window, 25);
        assert_eq!(windows, 111);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // The resampled pseudo-windows can only raise it.
        let derived = derive_bands(&[(bins(6), &a[..])], window, 0.1, 0.25);
        assert!(derived.reference_noise.expect("enough windows") >= got);
        assert_eq!(
            derive_bands(&[(bins(6), &a[..])], window, 0.1, 0.25),
            derived
        );
    }

    /// A stationary statistic whose values come in scenes of 8 alike values (the frames
    /// of one scene): each scene draws one of 12 bins, its frames that bin or the next.
    fn scenes(n: usize, seed: u64) -> Vec<u32> {
        let mut rng = Rng::new(seed);
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let bin = rng.below(12) as u32;
            for _ in 0..8 {
                out.push(bin + u32::from(rng.below(4) == 0));
            }
        }
        out.truncate(n);
        out
    }

    #[test]
    fn resampled_windows_bound_a_long_stationary_run() {
        // Bands from a 2000-value sample, judged on 100,000 fresh values of the same
        // process, a verdict every 50 as a camera gets them, for five reference samples:
        // none of the run's windows reaches the moderate band. Windows sliding over the
        // sample in capture order alone see too few distinct windows to bound the run's
        // tail: on one of the five, the run crosses the band they would set.
        let (window, stride) = (500, 50);
        let mut crossed_sliding = 0;
        for seed in 1..=5 {
            let reference = scenes(2000, seed);
            let mut hist = Histogram::new(bins(13));
            reference.iter().for_each(|&i| hist.add_index(i as usize));
            let run = scenes(100_000, 100 + seed);
            let mut worst: f64 = 0.0;
            for start in (0..=run.len() - window).step_by(stride) {
                let mut h = Histogram::new(bins(13));
                run[start..start + window]
                    .iter()
                    .for_each(|&i| h.add_index(i as usize));
                worst = worst.max(js_distance(&hist.counts, &h.counts));
            }
            let derived = derive_bands(&[(bins(13), &reference[..])], window, 0.1, 0.25);
            assert!(
                worst < derived.bands.js_moderate,
                "reference {seed}: {worst} >= {}",
                derived.bands.js_moderate
            );
            let (sliding, _) = sliding_noise(bins(13), &reference, window, stride);
            crossed_sliding +=
                usize::from(worst >= bands_for_noise(Some(sliding), 0.1, 0.25).js_moderate);
        }
        assert_eq!(crossed_sliding, 1);
    }

    #[test]
    fn too_short_a_sample_has_no_noise() {
        let a = uniform_indices(1999, 4, 7);
        // Windows of 1000 need 2000 values: a window and a rest as large.
        let derived = derive_bands(&[(bins(4), &a[..])], 1000, 0.1, 0.25);
        assert_eq!(derived.reference_noise, None);
        assert_eq!(derived.windows, 0);
        assert_eq!(derived.bands, Bands::default());
        assert_eq!(derive_bands(&[], 10, 0.1, 0.25).reference_noise, None);
        assert_eq!(
            derive_bands(&[(bins(4), &a[..])], 0, 0.1, 0.25).reference_noise,
            None
        );
    }
}
