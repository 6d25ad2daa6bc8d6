//! Novelty: a view unlike what the camera has been seeing — a product, a hand, a shelf
//! or a light the model has not met.
//!
//! Each camera keeps a memory of `memory` thumbnails (the luma grid in
//! [`crate::capture::Thumbnail`]), a uniform sample of its past frames (reservoir
//! sampling of every `every`-th frame), and measures each frame's distance to the
//! nearest one — and, with a calibration reference (`[drift] reference`, written by
//! `framesift calibrate`), to the nearest of the reference's sample of views, so a view
//! is novel only if it is unlike both the known-good sample and the camera's own recent
//! past. Value: distance ÷ the typical nearest distance − 1, so a frame twice as far
//! from everything seen as frames usually are scores 1. The typical distance starts
//! from the reference's own spread (each view to its nearest other); without a
//! reference the value is 0 until the memory holds a quarter of its size. Cost: one
//! distance per remembered or reference thumbnail (192 bytes each), about 7 µs for the
//! default 64, about 19 µs with a 128-view reference.
//!
//! A model whose manifest names a `features_output` (the shipped detector's pooled neck
//! features) replaces the thumbnail, unless `use_features = false`: the memory holds unit-length feature vectors and
//! the distance is between them, so a frame is novel when the model sees something
//! unlike what it usually sees there — an unseen product, a hand — rather than when the
//! light or the framing changes. The calibration reference's views are thumbnails and
//! do not apply then.

use serde::{Deserialize, Serialize};

use super::{FrameFacts, Signal};
use crate::{capture::Thumbnail, config::Checker};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Raw {
    memory: i64,
    every: i64,
    use_features: bool,
    weight: f64,
}

impl Default for Raw {
    fn default() -> Self {
        Raw {
            memory: 64,
            every: 10,
            use_features: true,
            weight: 0.5,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    memory: usize,
    every: u64,
    use_features: bool,
    weight: f32,
}

pub(crate) struct Novelty {
    settings: Settings,
    memory: Vec<Thumbnail>,
    /// With a model that has pooled features: the remembered ones, unit length, `dim`
    /// floats each, `held` of them (made on the first frame, when `dim` is known).
    embeddings: Vec<f32>,
    dim: usize,
    held: usize,
    /// The calibration reference's views (empty: none).
    reference: std::sync::Arc<[Thumbnail]>,
    /// Frames seen, and frames offered to the reservoir.
    frames: u64,
    offered: u64,
    /// Running mean of the nearest distance.
    typical: f32,
    rng: crate::capture::synthetic::Rng,
}

impl Signal for Novelty {
    const REASON: &'static str = "novel";
    type Raw = Raw;
    type Settings = Settings;

    fn validate(raw: &Raw, c: &mut Checker) -> Settings {
        Settings {
            memory: c.int("memory", raw.memory, 4, 1024) as usize,
            every: c.int("every", raw.every, 1, 100_000) as u64,
            use_features: raw.use_features,
            weight: super::weight(c, raw.weight, "0.5"),
        }
    }

    fn weight(settings: &Settings) -> f32 {
        settings.weight
    }

    fn new(settings: &Settings) -> Self {
        Novelty {
            settings: settings.clone(),
            memory: Vec::with_capacity(settings.memory),
            embeddings: Vec::new(),
            dim: 0,
            held: 0,
            reference: std::sync::Arc::new([]),
            frames: 0,
            offered: 0,
            typical: 0.0,
            rng: crate::capture::synthetic::Rng::new(0x6e6f_7665_6c74),
        }
    }

    fn reconfigure(&mut self, settings: &Settings) {
        // A smaller memory forgets its newest entries; a larger one grows once, here,
        // on the reload rather than per frame.
        self.memory.truncate(settings.memory);
        self.memory
            .reserve(settings.memory.saturating_sub(self.memory.len()));
        if self.dim > 0 {
            self.embeddings.resize(settings.memory * self.dim, 0.0);
            self.held = self.held.min(settings.memory);
        }
        self.settings = settings.clone();
    }

    fn value(&mut self, frame: &FrameFacts<'_>) -> f32 {
        if self.settings.use_features && !frame.features.is_empty() {
            return self.value_of_features(frame.features);
        }
        let view = frame.stats.thumbnail;
        let nearest = self
            .memory
            .iter()
            .chain(self.reference.iter())
            .map(|m| m.distance(&view))
            .fold(f32::INFINITY, f32::min);
        let warm = !self.reference.is_empty() || self.memory.len() * 4 >= self.settings.memory;
        let (value, slot) = self.judge(nearest, warm, self.memory.len());
        match slot {
            Some(j) if j == self.memory.len() => self.memory.push(view),
            Some(j) => self.memory[j] = view,
            None => {}
        }
        value
    }
}

impl Novelty {
    /// The value by the model's pooled features: the same rule as for thumbnails, with
    /// the distance between unit-length feature vectors (0 to 2) and no reference.
    fn value_of_features(&mut self, features: &[f32]) -> f32 {
        if self.dim != features.len() {
            // The first frame (or another model): one allocation, then none.
            self.dim = features.len();
            self.embeddings = vec![0.0; self.settings.memory * self.dim];
            self.held = 0;
        }
        let norm = features.iter().map(|v| v * v).sum::<f32>().sqrt();
        if !(norm > 0.0 && norm.is_finite()) {
            return 0.0;
        }
        // |a/|a| - b|² = 2 - 2 a·b / |a| for a unit b: no normalised copy of a needed.
        let nearest = self.embeddings[..self.held * self.dim]
            .chunks_exact(self.dim)
            .map(|b| {
                let dot: f32 = features.iter().zip(b).map(|(a, b)| a * b).sum();
                (2.0 - 2.0 * dot / norm).max(0.0).sqrt()
            })
            .fold(f32::INFINITY, f32::min);
        let warm = self.held * 4 >= self.settings.memory;
        let (value, slot) = self.judge(nearest, warm, self.held);
        if let Some(j) = slot {
            self.held = self.held.max(j + 1);
            for (m, a) in self.embeddings[j * self.dim..(j + 1) * self.dim]
                .iter_mut()
                .zip(features)
            {
                *m = a / norm;
            }
        }
        value
    }

    /// The rule both embeddings share: the value of a frame `nearest` to the memory (0
    /// until `warm`), the typical distance updated, and the memory slot the frame fills
    /// (`held`: a new one) or replaces, when it is sampled (reservoir sampling of every
    /// `every`-th frame).
    fn judge(&mut self, nearest: f32, warm: bool, held: usize) -> (f32, Option<usize>) {
        let value = if warm && self.typical > 0.0 {
            (nearest / self.typical - 1.0).clamp(0.0, 1.0)
        } else {
            0.0
        };
        if nearest.is_finite() {
            // The mean of the first distances, then an exponential mean over ~1000 frames.
            let n = self.frames.min(1000) as f32 + 1.0;
            self.typical += (nearest - self.typical) / n;
        }
        let mut slot = None;
        if self.frames.is_multiple_of(self.settings.every) {
            self.offered += 1;
            slot = if held < self.settings.memory {
                Some(held)
            } else {
                let j = self.rng.below(self.offered.min(u64::from(u32::MAX)) as u32) as usize;
                (j < held).then_some(j)
            };
        }
        self.frames += 1;
        (value, slot)
    }

    /// Measure novelty against a calibration reference's `views` too. The typical
    /// distance starts from their spread: the mean distance of each to its nearest other.
    pub(crate) fn use_reference(&mut self, views: &std::sync::Arc<[Thumbnail]>) {
        self.reference = views.clone();
        if views.len() >= 2 && self.frames == 0 {
            let spread: f32 = views
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    views
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, b)| a.distance(b))
                        .fold(f32::INFINITY, f32::min)
                })
                .sum();
            self.typical = spread / views.len() as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{capture::FrameStats, policy::tests::facts};

    fn view(seed: u64, novel: bool) -> FrameStats {
        let mut rng = crate::capture::synthetic::Rng::new(seed);
        let mut t = [0u8; Thumbnail::LEN];
        for (i, v) in t.iter_mut().enumerate() {
            // The usual views: a fixed layout plus a little noise; a novel one has a
            // bright object over a third of the frame.
            let base = if novel && i % 3 == 0 { 220 } else { 60 + (i % 7) as u32 * 10 };
            *v = (base + rng.below(6)) as u8;
        }
        FrameStats {
            thumbnail: Thumbnail(t),
            ..FrameStats::default()
        }
    }

    #[test]
    fn a_novel_frame_among_the_usual_views_scores_high() {
        let mut n = Novelty::new(&Novelty::validate(&Raw::default(), &mut Checker::default()));
        let mut usual = 0.0f32;
        for i in 0..2000 {
            usual = usual.max(n.value(&facts(&[], &view(i, false))));
        }
        assert!(usual < 1.0, "usual views stay below 1, at most {usual}");
        let novel = n.value(&facts(&[], &view(99_999, true)));
        assert_eq!(novel, 1.0);
        let again = n.value(&facts(&[], &view(100_000, false)));
        assert!(again < 0.5, "{again}");
    }

    /// With a reference of the usual views, a novel frame scores from the first frame,
    /// and a usual one does not.
    #[test]
    fn a_novel_frame_among_references_scores_high_from_the_start() {
        let settings = Novelty::validate(&Raw::default(), &mut Checker::default());
        let views: std::sync::Arc<[Thumbnail]> =
            (0..128).map(|i| view(1000 + i, false).thumbnail).collect();
        let mut n = Novelty::new(&settings);
        n.use_reference(&views);
        assert!(n.typical > 0.0);
        assert_eq!(n.value(&facts(&[], &view(5, true))), 1.0);
        let usual = n.value(&facts(&[], &view(6, false)));
        assert!(usual < 0.5, "{usual}");
        // Without the reference the same first frames score nothing.
        let mut cold = Novelty::new(&settings);
        assert_eq!(cold.value(&facts(&[], &view(5, true))), 0.0);
    }

    /// With the model's pooled features, novelty is measured on them: a frame whose
    /// features point elsewhere scores high, the usual ones low, whatever the thumbnail.
    #[test]
    fn pooled_features_replace_the_thumbnail_when_the_model_has_them() {
        let settings = Novelty::validate(&Raw::default(), &mut Checker::default());
        let mut n = Novelty::new(&settings);
        let stats = view(1, false);
        let usual = |i: u64| -> Vec<f32> {
            let mut rng = crate::capture::synthetic::Rng::new(i);
            (0..160)
                .map(|k| if k < 80 { 1.0 } else { 0.0 } + rng.unit() * 0.05)
                .collect()
        };
        fn with<'a>(features: &'a [f32], stats: &'a FrameStats) -> FrameFacts<'a> {
            FrameFacts {
                features,
                ..facts(&[], stats)
            }
        }
        let mut most = 0.0f32;
        for i in 0..2000 {
            most = most.max(n.value(&with(&usual(i), &stats)));
        }
        assert!(most < 1.0, "usual features stay below 1, at most {most}");
        assert!(n.memory.is_empty(), "no thumbnails remembered");
        assert_eq!(n.embeddings.len(), 64 * 160);
        let novel: Vec<f32> = (0..160).map(|k| if k >= 80 { 1.0 } else { 0.0 }).collect();
        assert_eq!(n.value(&with(&novel, &stats)), 1.0);
        assert!(n.value(&with(&usual(9999), &stats)) < 0.5);
        // Zero features (a blank frame) say nothing.
        assert_eq!(n.value(&with(&[0.0; 160], &stats)), 0.0);
    }

    #[test]
    fn the_memory_is_bounded_and_nothing_scores_before_it_is_warm() {
        let settings = Novelty::validate(&Raw::default(), &mut Checker::default());
        let mut n = Novelty::new(&settings);
        for i in 0..100 {
            assert_eq!(n.value(&facts(&[], &view(i, i % 2 == 0))), 0.0, "frame {i}");
        }
        for i in 0..10_000 {
            n.value(&facts(&[], &view(i, false)));
        }
        assert_eq!(n.memory.len(), 64);
        assert_eq!(n.memory.capacity(), 64);
    }
}
