//! Temporal flicker: while a camera keeps looking at the same view, detections that
//! appear, vanish or switch class from one frame to the next. A stable scene that the
//! model reads differently frame by frame is one it does not understand.
//!
//! Each reported detection is linked to the previous frame's by IoU ≥ `link_iou` (same
//! class or not). An event is a detection with no link (appeared), a previous one with
//! no link (vanished) or a link whose class differs (switched). Value: events ÷
//! `saturate`, at most 1 — and 0 when the view changed (the frames' thumbnails differ
//! by more than `same_view` luma levels: a new scene, not flicker).

use serde::{Deserialize, Serialize};

use super::{FrameFacts, Signal};
use crate::{capture::Thumbnail, config::Checker, infer::Detection};

/// Detections remembered from the previous frame; more are ignored.
const MAX_REMEMBERED: usize = 64;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Raw {
    link_iou: f64,
    same_view: f64,
    saturate: f64,
    weight: f64,
}

impl Default for Raw {
    fn default() -> Self {
        Raw {
            link_iou: 0.3,
            same_view: 4.0,
            saturate: 2.0,
            weight: 0.15,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    link_iou: f32,
    same_view: f32,
    saturate: f32,
    weight: f32,
}

pub(crate) struct Flicker {
    settings: Settings,
    previous: Vec<Detection>,
    previous_view: Option<Thumbnail>,
}

impl Signal for Flicker {
    const REASON: &'static str = "flicker";
    type Raw = Raw;
    type Settings = Settings;

    fn validate(raw: &Raw, c: &mut Checker) -> Settings {
        Settings {
            link_iou: c.float(
                "link_iou",
                raw.link_iou,
                |v| v > 0.0 && v < 1.0,
                "between 0 and 1, e.g. 0.3",
            ) as f32,
            same_view: c.float(
                "same_view",
                raw.same_view,
                |v| v > 0.0,
                "greater than 0 (luma levels per thumbnail cell), e.g. 4.0",
            ) as f32,
            saturate: c.float("saturate", raw.saturate, |v| v >= 1.0, "1 or more, e.g. 2.0")
                as f32,
            weight: super::weight(c, raw.weight, "0.5"),
        }
    }

    fn weight(settings: &Settings) -> f32 {
        settings.weight
    }

    fn new(settings: &Settings) -> Self {
        Flicker {
            settings: settings.clone(),
            previous: Vec::with_capacity(MAX_REMEMBERED),
            previous_view: None,
        }
    }

    fn reconfigure(&mut self, settings: &Settings) {
        self.settings = settings.clone();
    }

    fn value(&mut self, frame: &FrameFacts<'_>) -> f32 {
        let s = &self.settings;
        let view = frame.stats.thumbnail;
        let same_view = self
            .previous_view
            .is_some_and(|p| p.distance(&view) <= s.same_view);
        let mut events = 0u32;
        if same_view {
            let mut linked = 0u64; // a bit per previous detection that found a partner
            for d in frame.reported() {
                let best = self
                    .previous
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (i, p.iou(d)))
                    .filter(|&(_, iou)| iou >= s.link_iou)
                    .max_by(|a, b| a.1.total_cmp(&b.1));
                match best {
                    Some((i, _)) => {
                        linked |= 1 << i;
                        events += u32::from(self.previous[i].class_id != d.class_id);
                    }
                    None => events += 1,
                }
            }
            events += self.previous.len() as u32 - linked.count_ones();
        }
        self.previous.clear();
        let room = MAX_REMEMBERED;
        self.previous.extend(frame.reported().take(room).copied());
        self.previous_view = Some(view);
        (events as f32 / s.saturate).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{capture::FrameStats, policy::tests::facts};

    fn boxed(class_id: u16, x: f32) -> Detection {
        Detection {
            class_id,
            score: 0.9,
            second_score: 0.0,
            x1: x,
            y1: 0.0,
            x2: x + 50.0,
            y2: 50.0,
        }
    }

    fn view(level: u8) -> FrameStats {
        FrameStats {
            thumbnail: Thumbnail([level; Thumbnail::LEN]),
            ..FrameStats::default()
        }
    }

    fn flicker() -> Flicker {
        Flicker::new(&Flicker::validate(&Raw::default(), &mut Checker::default()))
    }

    #[test]
    fn a_known_flicker_sequence_scores_its_events() {
        let mut f = flicker();
        let still = view(100);
        let (a, b, c) = (boxed(0, 0.0), boxed(1, 100.0), boxed(2, 200.0));
        assert_eq!(f.value(&facts(&[a, b], &still)), 0.0, "the first frame");
        assert_eq!(f.value(&facts(&[a, b], &still)), 0.0, "steady");
        // b vanishes: one event.
        assert_eq!(f.value(&facts(&[a], &still)), 0.5);
        // b comes back and c appears: two.
        assert_eq!(f.value(&facts(&[a, b, c], &still)), 1.0);
        // a switches class: one.
        let a_as_can = boxed(1, 2.0);
        assert_eq!(f.value(&facts(&[a_as_can, b, c], &still)), 0.5);
        assert_eq!(f.value(&facts(&[a_as_can, b, c], &still)), 0.0);
    }

    #[test]
    fn a_new_view_is_not_flicker() {
        let mut f = flicker();
        f.value(&facts(&[boxed(0, 0.0)], &view(100)));
        // Everything changed, but so did the view: a new scene.
        let mut moved = view(100);
        moved.thumbnail.0[..Thumbnail::LEN / 2].fill(10);
        assert_eq!(f.value(&facts(&[boxed(1, 300.0)], &moved)), 0.0);
        // A global brightness step alone is the same view.
        assert_eq!(f.value(&facts(&[], &{
            let mut darker = moved;
            darker.thumbnail.0.iter_mut().for_each(|v| *v = v.saturating_sub(5));
            darker
        })), 0.5);
    }

    #[test]
    fn faint_detections_do_not_flicker() {
        let mut f = flicker();
        let still = view(50);
        let faint = Detection {
            score: 0.1,
            ..boxed(0, 0.0)
        };
        f.value(&facts(&[], &still));
        assert_eq!(f.value(&facts(&[faint], &still)), 0.0);
    }
}
