//! One camera's rolling windows and verdicts. No threads, no I/O: the drift stage feeds
//! it samples, and tests feed it constructed streams.

use calibration::{Band, Bands, js_distance, psi};

use super::stats::{MAX_CONFIDENCES, STATS, Sample};

/// Bin indices a frame holds in the window: one per frame statistic, then up to
/// [`MAX_CONFIDENCES`] confidences. [`EMPTY`] marks an unused slot.
const SLOTS: usize = STATS.len() - 1 + MAX_CONFIDENCES;
const EMPTY: u16 = u16::MAX;

/// A band is left for a lower one only once JS falls this far below the lower band's
/// upper threshold, so a window hovering at a threshold changes band once, not on
/// every evaluation.
const HYSTERESIS: f64 = 0.8;

/// What a window of one statistic is judged against: the reference's counts, and the
/// bands for this statistic (its own noise raises them, [`calibration::bands_for_noise`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Baseline {
    pub counts: Vec<u64>,
    pub bands: Bands,
}

/// A baseline per statistic, in [`STATS`] order (`None`: the reference file has no
/// such statistic, so it is not monitored).
pub(crate) type Baselines = Vec<Option<Baseline>>;

/// The latest verdict on a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Verdict {
    pub band: Band,
    /// The statistic furthest from the reference (the largest JS distance for its
    /// moderate threshold), its JS, PSI and that threshold.
    pub worst: &'static str,
    pub js: f64,
    pub psi: f64,
    pub js_moderate: f64,
    /// The largest PSI of any statistic.
    pub max_psi: f64,
}

/// A camera's rolling window over the last `window` frames.
pub(crate) struct Monitor {
    window: usize,
    min_frames: usize,
    /// Evaluate every this many frames.
    every: usize,
    ring: Vec<[u16; SLOTS]>,
    head: usize,
    counts: Vec<Vec<u64>>,
    since_verdict: usize,
    pub(crate) frames: u64,
    pub(crate) verdict: Option<Verdict>,
    /// A verdict was made since the last [`Monitor::take_fresh`].
    fresh: bool,
    pub(crate) band: Band,
}

impl Monitor {
    /// A monitor of `window` frames that gives no verdict before `min_frames`.
    pub(crate) fn new(window: usize, min_frames: usize) -> Monitor {
        Monitor {
            window,
            min_frames: min_frames.clamp(1, window),
            every: (window / 10).max(1),
            ring: Vec::with_capacity(window),
            head: 0,
            counts: STATS.iter().map(|s| vec![0; s.bins.count]).collect(),
            since_verdict: 0,
            frames: 0,
            verdict: None,
            fresh: false,
            band: Band::Stable,
        }
    }

    /// Whether a verdict was made since the last call.
    pub(crate) fn take_fresh(&mut self) -> bool {
        std::mem::take(&mut self.fresh)
    }

    /// Add a frame; returns `(from, to)` when the camera's band changed.
    pub(crate) fn push(&mut self, sample: &Sample, reference: &Baselines) -> Option<(Band, Band)> {
        let mut slots = [EMPTY; SLOTS];
        let mut next_confidence = STATS.len() - 1;
        for (stat, value) in sample.values() {
            let slot = if STATS[stat].per_detection {
                next_confidence += 1;
                next_confidence - 1
            } else {
                stat
            };
            if let (Some(s), Some(bin)) = (slots.get_mut(slot), STATS[stat].bins.index(value)) {
                *s = bin as u16;
            }
        }
        if self.ring.len() < self.window {
            self.ring.push(slots);
        } else {
            let old = std::mem::replace(&mut self.ring[self.head], slots);
            self.head = (self.head + 1) % self.window;
            self.count(&old, false);
        }
        self.count(&slots, true);
        self.frames += 1;
        self.since_verdict += 1;
        if self.ring.len() < self.min_frames || self.since_verdict < self.every {
            return None;
        }
        self.since_verdict = 0;
        let verdict = self.judge(reference)?;
        self.verdict = Some(verdict);
        self.fresh = true;
        let before = self.band;
        self.band = verdict.band;
        (before != self.band).then_some((before, self.band))
    }

    fn count(&mut self, slots: &[u16; SLOTS], add: bool) {
        for (slot, &bin) in slots.iter().enumerate() {
            if bin == EMPTY {
                continue;
            }
            let stat = slot.min(STATS.len() - 1);
            let n = &mut self.counts[stat][usize::from(bin)];
            *n = if add { *n + 1 } else { n.saturating_sub(1) };
        }
    }

    /// The window against the reference: each statistic is banded by its own
    /// thresholds, the worst band is the camera's.
    fn judge(&self, reference: &Baselines) -> Option<Verdict> {
        let mut verdict: Option<Verdict> = None;
        let (mut max_psi, mut raw, mut held) = (0.0f64, Band::Stable, Band::Stable);
        for ((stat, counts), baseline) in STATS.iter().zip(&self.counts).zip(reference) {
            let Some(baseline) = baseline else { continue };
            if counts.iter().sum::<u64>() == 0 {
                // No detections in the whole window: nothing to compare confidences on.
                continue;
            }
            let (js, psi) = (
                js_distance(&baseline.counts, counts),
                psi(&baseline.counts, counts),
            );
            let bands = &baseline.bands;
            max_psi = max_psi.max(psi);
            raw = raw.max(bands.band_for_js(js));
            held = held.max(bands.band_for_js(js / HYSTERESIS));
            let ratio = js / bands.js_moderate;
            if verdict.is_none_or(|v| ratio > v.js / v.js_moderate) {
                verdict = Some(Verdict {
                    band: Band::Stable,
                    worst: stat.name,
                    js,
                    psi,
                    js_moderate: bands.js_moderate,
                    max_psi: 0.0,
                });
            }
        }
        let mut verdict = verdict?;
        verdict.max_psi = max_psi;
        verdict.band = banded(self.band, raw, held);
        Some(verdict)
    }
}

/// The camera's next band, coming from `now`: up as soon as any statistic reaches a
/// threshold (`raw`, the worst band by the thresholds), down only as far as every
/// statistic is below [`HYSTERESIS`] × its threshold allows (`held`, the worst band by
/// the thresholds scaled by it).
fn banded(now: Band, raw: Band, held: Band) -> Band {
    if raw >= now { raw } else { held.min(now) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{capture::FrameStats, capture::synthetic::Rng, drift::stats::detection};

    fn unit(rng: &mut Rng) -> f32 {
        rng.below(1_000_000) as f32 / 1_000_000.0
    }

    /// A frame of a stationary world whose light has mean `light`.
    fn frame(rng: &mut Rng, light: f32) -> Sample {
        let stats = FrameStats {
            luma_mean: light + 20.0 * (unit(rng) - 0.5),
            luma_std: 40.0 + 10.0 * unit(rng),
            blur: 200.0 + 300.0 * unit(rng),
            dark_clip: 0.01 * unit(rng),
            bright_clip: 0.01 * unit(rng),
            mean_rgb: [light, light, light],
            ..FrameStats::default()
        };
        let dets = [
            detection(0.5 + 0.4 * unit(rng)),
            detection(0.3 + 0.3 * unit(rng)),
        ];
        Sample::new(0, &stats, &dets[..1 + rng.below(2) as usize], 0.25)
    }

    fn reference(light: f32, frames: usize, seed: u64) -> Baselines {
        let mut rng = Rng::new(seed);
        let mut counts: Vec<Vec<u64>> = STATS.iter().map(|s| vec![0; s.bins.count]).collect();
        for _ in 0..frames {
            for (stat, v) in frame(&mut rng, light).values() {
                if let Some(bin) = STATS[stat].bins.index(v) {
                    counts[stat][bin] += 1;
                }
            }
        }
        counts
            .into_iter()
            .map(|counts| {
                Some(Baseline {
                    counts,
                    bands: Bands::default(),
                })
            })
            .collect()
    }

    #[test]
    fn a_stationary_stream_stays_stable() {
        let reference = reference(120.0, 5000, 1);
        let bands = Bands::default();
        let mut monitor = Monitor::new(500, 250);
        let mut rng = Rng::new(2);
        for _ in 0..20_000 {
            let change = monitor.push(&frame(&mut rng, 120.0), &reference);
            assert_eq!(change, None, "{:?}", monitor.verdict);
        }
        let verdict = monitor.verdict.expect("a verdict after the minimum window");
        assert_eq!(verdict.band, Band::Stable);
        assert!(verdict.js < bands.js_moderate / 2.0, "{verdict:?}");
    }

    #[test]
    fn a_lighting_shift_changes_band_once_and_back_after_recovery() {
        let reference = reference(120.0, 5000, 1);
        let mut monitor = Monitor::new(500, 250);
        let mut rng = Rng::new(3);
        for _ in 0..1000 {
            assert_eq!(monitor.push(&frame(&mut rng, 120.0), &reference), None);
        }
        let mut changes = Vec::new();
        let mut detected_after = None;
        for i in 0..2000 {
            if let Some(change) = monitor.push(&frame(&mut rng, 60.0), &reference) {
                detected_after.get_or_insert(i);
                changes.push(change);
            }
        }
        assert_eq!(monitor.band, Band::Significant, "{:?}", monitor.verdict);
        let worst = monitor.verdict.expect("verdict").worst;
        assert!(
            ["luma_mean", "mean_red", "mean_green", "mean_blue"].contains(&worst),
            "{worst}"
        );
        // Evaluated every 50 frames: half a window of dim frames is already significant.
        let after = detected_after.expect("detected");
        assert!(after < 300, "detected after {after} frames");
        assert!(changes.len() <= 2, "{changes:?}");
        for _ in 0..2000 {
            monitor.push(&frame(&mut rng, 120.0), &reference);
        }
        assert_eq!(monitor.band, Band::Stable, "{:?}", monitor.verdict);
    }

    #[test]
    fn no_verdict_before_the_minimum_window() {
        let reference = reference(120.0, 1000, 1);
        let mut monitor = Monitor::new(500, 250);
        let mut rng = Rng::new(4);
        for _ in 0..249 {
            assert_eq!(monitor.push(&frame(&mut rng, 20.0), &reference), None);
        }
        assert_eq!(monitor.verdict, None);
        let change = monitor.push(&frame(&mut rng, 20.0), &reference);
        assert_eq!(change, Some((Band::Stable, Band::Significant)));
    }

    #[test]
    fn hysteresis_holds_a_band_near_its_threshold() {
        let bands = Bands::default();
        let next = |now, js: f64| {
            banded(
                now,
                bands.band_for_js(js),
                bands.band_for_js(js / HYSTERESIS),
            )
        };
        let at = bands.js_moderate;
        assert_eq!(next(Band::Stable, at), Band::Moderate);
        assert_eq!(next(Band::Moderate, at * 0.9), Band::Moderate);
        assert_eq!(next(Band::Moderate, at * 0.7), Band::Stable);
        let sig = bands.js_significant;
        assert_eq!(next(Band::Significant, sig * 0.9), Band::Significant);
        assert_eq!(next(Band::Significant, sig * 0.7), Band::Moderate);
        assert_eq!(next(Band::Significant, 0.0), Band::Stable);
    }

    #[test]
    fn each_statistic_is_judged_by_its_own_bands() {
        // A noisy statistic's raised bands do not hide a shift of a quiet one.
        let mut reference = reference(120.0, 5000, 1);
        for baseline in reference.iter_mut().flatten().skip(1) {
            baseline.bands = calibration::bands_for_noise(Some(0.9), 0.1, 0.25);
        }
        let mut monitor = Monitor::new(500, 250);
        let mut rng = Rng::new(6);
        for _ in 0..1000 {
            let mut sample = frame(&mut rng, 120.0);
            sample.shift_frame_stat(0, 40.0);
            monitor.push(&sample, &reference);
        }
        let verdict = monitor.verdict.expect("verdict");
        assert_eq!(verdict.worst, "luma_mean");
        assert_eq!(monitor.band, Band::Significant, "{verdict:?}");
        // The same shift judged by the raised bands alone would be missed.
        for baseline in reference.iter_mut().flatten() {
            baseline.bands = calibration::bands_for_noise(Some(0.9), 0.1, 0.25);
        }
        let mut monitor = Monitor::new(500, 250);
        for _ in 0..1000 {
            let mut sample = frame(&mut rng, 120.0);
            sample.shift_frame_stat(0, 40.0);
            monitor.push(&sample, &reference);
        }
        assert_eq!(monitor.band, Band::Stable, "{:?}", monitor.verdict);
    }
}
