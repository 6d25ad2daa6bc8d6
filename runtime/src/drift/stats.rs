//! The statistics drift is measured on: one list, used by `framesift calibrate` to build
//! the reference and by the monitor to fill its windows, so both bin a frame the same.

use calibration::{Bins, Scale};

use crate::{capture::FrameStats, infer::Detection};

/// At most this many detection confidences of a frame (its best ones) are counted.
pub(crate) const MAX_CONFIDENCES: usize = 8;

/// One drift statistic and its fixed bins.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stat {
    pub name: &'static str,
    pub bins: Bins,
    /// What a value counts: a frame, or each of a frame's detections.
    pub per_detection: bool,
}

const fn linear(lo: f64, hi: f64, count: usize) -> Bins {
    Bins {
        lo,
        hi,
        count,
        scale: Scale::Linear,
    }
}

/// Every statistic, in the order of [`Sample::values`]. Bins are fixed (not fitted to
/// the reference) so that a shifted stream lands in bins the reference left empty.
pub(crate) const STATS: [Stat; 10] = [
    frame("luma_mean", linear(0.0, 255.0, 32)),
    frame("luma_std", linear(0.0, 128.0, 32)),
    frame("dark_clip", linear(0.0, 1.0, 20)),
    frame("bright_clip", linear(0.0, 1.0, 20)),
    frame("mean_red", linear(0.0, 255.0, 32)),
    frame("mean_green", linear(0.0, 255.0, 32)),
    frame("mean_blue", linear(0.0, 255.0, 32)),
    // Variance of the Laplacian spans 0..~10^5 (sharp synthetic edges pass 6·10^4):
    // bin its log, a fifth of a decade a bin.
    frame(
        "blur",
        Bins {
            lo: 0.0,
            hi: 6.0,
            count: 30,
            scale: Scale::Log10p1,
        },
    ),
    // 0..=31 detections, one bin each (32 and more share the last).
    frame("detections", linear(-0.5, 31.5, 32)),
    Stat {
        name: "confidence",
        bins: linear(0.0, 1.0, 20),
        per_detection: true,
    },
];

const fn frame(name: &'static str, bins: Bins) -> Stat {
    Stat {
        name,
        bins,
        per_detection: false,
    }
}

/// The per-frame statistics in [`STATS`] order; the last is per detection.
const FRAME_STATS: usize = STATS.len() - 1;

/// What the monitor needs of one frame: `Copy` and fixed-size, so handing it over from
/// the inference thread allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    pub camera: u16,
    frame: [f32; FRAME_STATS],
    confidences: [f32; MAX_CONFIDENCES],
    confidence_count: u8,
}

impl Sample {
    /// A frame's sample from its statistics and detections (best first); detections
    /// below `confidence` (kept for a signal) are not reported, so not counted.
    pub(crate) fn new(
        camera: u16,
        stats: &FrameStats,
        detections: &[Detection],
        confidence: f32,
    ) -> Sample {
        let reported = detections.iter().filter(|d| d.score >= confidence);
        let mut confidences = [0.0; MAX_CONFIDENCES];
        let mut confidence_count = 0u8;
        let mut count = 0u32;
        for d in reported {
            if let Some(slot) = confidences.get_mut(count as usize) {
                *slot = d.score;
                confidence_count += 1;
            }
            count += 1;
        }
        Sample {
            camera,
            frame: [
                stats.luma_mean,
                stats.luma_std,
                stats.dark_clip,
                stats.bright_clip,
                stats.mean_rgb[0],
                stats.mean_rgb[1],
                stats.mean_rgb[2],
                stats.blur,
                count as f32,
            ],
            confidences,
            confidence_count,
        }
    }

    /// Add `delta` to frame statistic `index` (tests build shifted streams with it).
    #[cfg(test)]
    pub(crate) fn shift_frame_stat(&mut self, index: usize, delta: f32) {
        self.frame[index] += delta;
    }

    /// `(statistic index in STATS, value)` for every value this frame contributes.
    pub(crate) fn values(&self) -> impl Iterator<Item = (usize, f64)> + '_ {
        let frame = self.frame.iter().map(|&v| f64::from(v)).enumerate();
        let per_detection = self.confidences[..usize::from(self.confidence_count)]
            .iter()
            .map(|&v| (FRAME_STATS, f64::from(v)));
        frame.chain(per_detection)
    }
}

/// A detection with only a score, for tests.
#[cfg(test)]
pub(crate) fn detection(score: f32) -> Detection {
    Detection {
        class_id: 0,
        score,
        second_score: 0.0,
        x1: 0.0,
        y1: 0.0,
        x2: 1.0,
        y2: 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bins_spec_is_valid_and_names_are_unique() {
        for (i, stat) in STATS.iter().enumerate() {
            stat.bins.validate().expect("valid bins");
            assert!(
                STATS[..i].iter().all(|s| s.name != stat.name),
                "{} twice",
                stat.name
            );
        }
        assert!(STATS[FRAME_STATS].per_detection);
        assert!(STATS[..FRAME_STATS].iter().all(|s| !s.per_detection));
    }

    #[test]
    fn a_sample_counts_reported_detections_and_their_best_confidences() {
        let stats = FrameStats {
            luma_mean: 120.0,
            blur: 300.0,
            ..FrameStats::default()
        };
        let dets: Vec<_> = [0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.45, 0.4, 0.35, 0.3, 0.1]
            .into_iter()
            .map(detection)
            .collect();
        let sample = Sample::new(3, &stats, &dets, 0.25);
        let values: Vec<_> = sample.values().collect();
        assert_eq!(values[0], (0, 120.0));
        assert_eq!(values[7], (7, 300.0));
        assert_eq!(values[8], (8, 10.0), "ten reported, the 0.1 one is not");
        let confidences: Vec<_> = values[FRAME_STATS..].iter().map(|v| v.1 as f32).collect();
        assert_eq!(confidences, [0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.45, 0.4]);
        assert!(values[FRAME_STATS..].iter().all(|v| v.0 == FRAME_STATS));
        assert_eq!(sample.camera, 3);
    }
}
