//! Decoding detector outputs into boxes, and non-maximum suppression. Pure: a function
//! of the output tensor, the letterbox and the thresholds; scratch buffers are reused so
//! decoding allocates nothing in steady state.
//!
//! Layouts (see DESIGN.md, "Output formats a user's model may have"):
//! - [`Layout::YoloV8`]: `[1, 4+nc, N]`, rows cx, cy, w, h then class scores; NMS.
//! - [`Layout::YoloV5`]: `[1, N, 5+nc]`, cx, cy, w, h, objectness, class scores; NMS.
//! - [`Layout::EndToEnd`]: `[1, N, 6]`, x1, y1, x2, y2, score, class; no NMS.

use crate::{capture::Letterbox, simd};

/// The output layout of a detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    #[serde(rename = "yolov8")]
    YoloV8,
    #[serde(rename = "yolov5")]
    YoloV5,
    EndToEnd,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::YoloV8 => "yolov8",
            Layout::YoloV5 => "yolov5",
            Layout::EndToEnd => "end_to_end",
        }
    }
}

/// One detection in frame pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Detection {
    pub class_id: u16,
    /// Best class score (× objectness for YOLOv5).
    pub score: f32,
    /// Second-best class score, for the top-2 margin. 0 when unknown (end-to-end).
    pub second_score: f32,
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl Detection {
    fn area(&self) -> f32 {
        (self.x2 - self.x1).max(0.0) * (self.y2 - self.y1).max(0.0)
    }

    pub fn iou(&self, other: &Detection) -> f32 {
        let w = (self.x2.min(other.x2) - self.x1.max(other.x1)).max(0.0);
        let h = (self.y2.min(other.y2) - self.y1.max(other.y1)).max(0.0);
        let inter = w * h;
        let union = self.area() + other.area() - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }
}

/// Thresholds for decoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeParams {
    /// Detections at or above this score are reported.
    pub confidence: f32,
    /// Candidates down to this score are kept too (flagged as below threshold), so the
    /// scorer can see detections that almost made it. `<= confidence`.
    pub keep_down_to: f32,
    pub iou: f32,
    pub max_detections: usize,
}

/// Upper bound on boxes entering NMS (as Ultralytics' `max_nms`).
const MAX_NMS: usize = 30_000;

/// Decodes one layout, reusing its scratch buffers.
pub struct Decoder {
    layout: Layout,
    classes: usize,
    params: DecodeParams,
    candidates: Vec<Detection>,
    /// Per-anchor running top-2 for the class-major YOLOv8 scan.
    best: Vec<f32>,
    second: Vec<f32>,
    best_class: Vec<u32>,
    /// Whether unusable boxes were warned about (once per decoder).
    warned_unusable: bool,
}

/// An output tensor whose shape does not fit the decoder's layout.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ShapeError {
    #[error("output has shape {shape:?}, expected {expected}")]
    Shape { shape: Vec<usize>, expected: String },
}

impl Decoder {
    pub fn new(layout: Layout, classes: usize, params: DecodeParams) -> Self {
        Self {
            layout,
            classes,
            params,
            candidates: Vec::new(),
            best: Vec::new(),
            second: Vec::new(),
            best_class: Vec::new(),
            warned_unusable: false,
        }
    }

    /// New thresholds (a config reload); buffers are kept.
    pub fn set_params(&mut self, params: DecodeParams) {
        self.params = params;
    }

    /// Check that an output shape fits this decoder's layout and class count.
    pub fn check_shape(&self, shape: &[usize]) -> Result<(), ShapeError> {
        let nc = self.classes;
        let rank3 = shape.len() == 3 && shape[0] == 1;
        let ok = match self.layout {
            Layout::YoloV8 => rank3 && shape[1] == 4 + nc,
            Layout::YoloV5 => rank3 && shape[2] == 5 + nc,
            Layout::EndToEnd => rank3 && shape[2] == 6,
        };
        if ok {
            return Ok(());
        }
        // Called on every frame: build the message only on failure.
        let expected = match self.layout {
            Layout::YoloV8 => format!("[1, {}, N] (yolov8, {nc} classes)", 4 + nc),
            Layout::YoloV5 => format!("[1, N, {}] (yolov5, {nc} classes)", 5 + nc),
            Layout::EndToEnd => "[1, N, 6] (end-to-end)".to_string(),
        };
        Err(ShapeError::Shape {
            shape: shape.to_vec(),
            expected,
        })
    }

    /// Decode `output` (row-major, `shape`) into `out`, sorted by score, best first.
    /// Boxes are mapped to frame coordinates through `letterbox`.
    pub fn decode(
        &mut self,
        output: &[f32],
        shape: &[usize],
        letterbox: &Letterbox,
        out: &mut Vec<Detection>,
    ) -> Result<(), ShapeError> {
        self.check_shape(shape)?;
        out.clear();
        self.candidates.clear();
        let floor = self.params.keep_down_to.min(self.params.confidence);
        let nc = self.classes;
        match self.layout {
            Layout::YoloV8 => {
                let n = shape[2];
                self.top2_by_anchor(output, n);
                let row = |r: usize| &output[r * n..(r + 1) * n];
                let (cx, cy, w, h) = (row(0), row(1), row(2), row(3));
                for i in 0..n {
                    let best = self.best[i];
                    if best >= floor {
                        self.candidates.push(make_box(
                            cx[i],
                            cy[i],
                            w[i],
                            h[i],
                            self.best_class[i] as usize,
                            best,
                            self.second[i].max(0.0),
                            letterbox,
                        ));
                    }
                }
            }
            Layout::YoloV5 => {
                let stride = 5 + nc;
                for rec in output.chunks_exact(stride).take(shape[1]) {
                    let obj = rec[4];
                    if obj < floor {
                        continue;
                    }
                    let (best, best_c, second) = top2(rec[5..].iter().copied());
                    let score = obj * best;
                    if score >= floor {
                        self.candidates.push(make_box(
                            rec[0],
                            rec[1],
                            rec[2],
                            rec[3],
                            best_c,
                            score,
                            obj * second.max(0.0),
                            letterbox,
                        ));
                    }
                }
            }
            Layout::EndToEnd => {
                for rec in output.chunks_exact(6).take(shape[1]) {
                    let score = rec[4];
                    if score < floor || !rec[5].is_finite() || rec[5] < 0.0 {
                        continue;
                    }
                    let (mut x1, y1) = letterbox.to_frame(rec[0], rec[1]);
                    let (x2, y2) = letterbox.to_frame(rec[2], rec[3]);
                    if !rec[..4].iter().all(|v| v.is_finite()) {
                        x1 = f32::NAN; // dropped below, as make_box's
                    }
                    self.candidates.push(Detection {
                        class_id: rec[5] as u16,
                        score,
                        second_score: 0.0,
                        x1,
                        y1,
                        x2,
                        y2,
                    });
                }
            }
        }
        // A NaN or infinite number (an overflowing half-precision export) or a class id
        // beyond the names would reach the sidecars as null or "unknown".
        let before = self.candidates.len();
        self.candidates.retain(|d| {
            [d.score, d.second_score, d.x1, d.y1, d.x2, d.y2]
                .iter()
                .all(|v| v.is_finite())
                && usize::from(d.class_id) < nc
        });
        if self.candidates.len() < before && !self.warned_unusable {
            self.warned_unusable = true;
            tracing::warn!(
                dropped = before - self.candidates.len(),
                classes = nc,
                "the model's output holds boxes with a NaN or infinite number, or a class id beyond its {nc} class names; they are dropped (check the export, e.g. a float16 overflow, and the manifest's names)"
            );
        }
        sort_by_score(&mut self.candidates);
        self.candidates.truncate(MAX_NMS);
        if self.layout == Layout::EndToEnd {
            out.extend(self.candidates.iter().take(self.params.max_detections));
        } else {
            nms(
                &self.candidates,
                self.params.iou,
                self.params.max_detections,
                out,
            );
        }
        Ok(())
    }

    /// [`top2`] of every anchor of a YOLOv8 output (`[1, 4+nc, n]`), into `best`,
    /// `best_class` and `second`. Class-major: each class row is read once, contiguously,
    /// and the update is branch-free so it vectorises — reading per anchor instead strides
    /// across 80 rows and costs several times more.
    fn top2_by_anchor(&mut self, output: &[f32], n: usize) {
        self.best.clear();
        self.best.resize(n, f32::MIN);
        self.second.clear();
        self.second.resize(n, 0.0);
        self.best_class.clear();
        self.best_class.resize(n, 0);
        let (best, second, class) = (
            &mut self.best[..n],
            &mut self.second[..n],
            &mut self.best_class[..n],
        );
        top2_rows(output, n, self.classes, best, second, class);
    }
}

simd::kernel! {
    /// For each of `n` anchors, the best of `classes` score rows (class-major from row 4
    /// of `output`), its class, and the second best: [`top2`]'s update as selects, over
    /// whole rows so it vectorises. A NaN score counts as f32::MIN, which top2 also never
    /// keeps (its second starts at 0).
    fn top2_rows(
        output: &[f32],
        n: usize,
        classes: usize,
        best: &mut [f32],
        second: &mut [f32],
        class: &mut [u32],
    ) {
        let (best, second, class) = (&mut best[..n], &mut second[..n], &mut class[..n]);
        for c in 0..classes {
            let row = &output[(4 + c) * n..(5 + c) * n];
            for i in 0..n {
                let s = if row[i].is_nan() { f32::MIN } else { row[i] };
                let b = best[i];
                let above = s > b;
                let loser = if above { b } else { s };
                second[i] = if loser > second[i] { loser } else { second[i] };
                class[i] = if above { c as u32 } else { class[i] };
                best[i] = if above { s } else { b };
            }
        }
    }
}

/// Best score, its class, and the second-best score (0 with a single class).
fn top2(scores: impl Iterator<Item = f32>) -> (f32, usize, f32) {
    let (mut best, mut best_c, mut second) = (f32::MIN, 0usize, 0.0f32);
    for (c, s) in scores.enumerate() {
        if s > best {
            second = best.max(second);
            best = s;
            best_c = c;
        } else if s > second {
            second = s;
        }
    }
    (best, best_c, second)
}

#[allow(clippy::too_many_arguments)]
fn make_box(
    cx: f32,
    cy: f32,
    w: f32,
    h: f32,
    class: usize,
    score: f32,
    second: f32,
    lb: &Letterbox,
) -> Detection {
    let (mut x1, y1) = lb.to_frame(cx - w / 2.0, cy - h / 2.0);
    let (x2, y2) = lb.to_frame(cx + w / 2.0, cy + h / 2.0);
    if ![cx, cy, w, h].iter().all(|v| v.is_finite()) {
        // The frame clamp would make it finite; NaN has decode drop it.
        x1 = f32::NAN;
    }
    Detection {
        class_id: class as u16,
        score,
        second_score: second,
        x1,
        y1,
        x2,
        y2,
    }
}

fn sort_by_score(dets: &mut [Detection]) {
    dets.sort_unstable_by(|a, b| b.score.total_cmp(&a.score));
}

/// Greedy class-aware NMS over `sorted` (best first): a box is dropped when it overlaps
/// a kept box of the same class by more than `iou`. Appends at most `max` boxes to `out`.
pub fn nms(sorted: &[Detection], iou: f32, max: usize, out: &mut Vec<Detection>) {
    for det in sorted {
        if out.len() >= max {
            break;
        }
        if out
            .iter()
            .all(|kept| kept.class_id != det.class_id || kept.iou(det) <= iou)
        {
            out.push(*det);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDENTITY: Letterbox = Letterbox {
        scale: 1.0,
        pad_x: 0.0,
        pad_y: 0.0,
        frame_width: 640,
        frame_height: 640,
        to_source: [1.0, 1.0],
    };

    fn params() -> DecodeParams {
        DecodeParams {
            confidence: 0.25,
            keep_down_to: 0.25,
            iou: 0.45,
            max_detections: 100,
        }
    }

    /// Build a YOLOv8 output `[1, 4+nc, n]` from per-anchor (cx, cy, w, h, scores).
    fn v8_output(anchors: &[([f32; 4], Vec<f32>)], nc: usize) -> (Vec<f32>, Vec<usize>) {
        let n = anchors.len();
        let mut out = vec![0.0; (4 + nc) * n];
        for (i, (b, scores)) in anchors.iter().enumerate() {
            for r in 0..4 {
                out[r * n + i] = b[r];
            }
            for (c, s) in scores.iter().enumerate() {
                out[(4 + c) * n + i] = *s;
            }
        }
        (out, vec![1, 4 + nc, n])
    }

    #[test]
    fn yolov8_decode_and_class_aware_nms() {
        // Anchor 0: class 0 at (100,100) 40×20, score 0.9.
        // Anchor 1: same place, class 0, 0.8 → IoU 1 with anchor 0: suppressed.
        // Anchor 2: same place, class 1, 0.7 → other class: kept.
        // Anchor 3: far away, class 0, 0.3: kept. Anchor 4: 0.2 < 0.25: dropped.
        let (out, shape) = v8_output(
            &[
                ([100.0, 100.0, 40.0, 20.0], vec![0.9, 0.1]),
                ([101.0, 100.0, 40.0, 20.0], vec![0.8, 0.0]),
                ([100.0, 100.0, 40.0, 20.0], vec![0.05, 0.7]),
                ([300.0, 300.0, 10.0, 10.0], vec![0.3, 0.0]),
                ([500.0, 500.0, 10.0, 10.0], vec![0.2, 0.0]),
            ],
            2,
        );
        let mut decoder = Decoder::new(Layout::YoloV8, 2, params());
        let mut dets = Vec::new();
        decoder
            .decode(&out, &shape, &IDENTITY, &mut dets)
            .expect("decode");
        assert_eq!(dets.len(), 3);
        assert_eq!(
            dets[0],
            Detection {
                class_id: 0,
                score: 0.9,
                second_score: 0.1,
                x1: 80.0,
                y1: 90.0,
                x2: 120.0,
                y2: 110.0
            }
        );
        assert_eq!(
            (dets[1].class_id, dets[1].score, dets[1].second_score),
            (1, 0.7, 0.05)
        );
        assert_eq!(
            (dets[2].x1, dets[2].y1, dets[2].x2, dets[2].y2),
            (295.0, 295.0, 305.0, 305.0)
        );
    }

    #[test]
    fn class_major_scan_equals_per_anchor_top2() {
        // Pseudo-random scores with ties and a NaN: the vectorised scan must pick the same
        // best class, best and second score as the per-anchor reference.
        let (nc, n) = (7, 53);
        let mut x = 0x2545_f491_u32;
        let mut output: Vec<f32> = (0..(4 + nc) * n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 8) as f32 / 8.0
            })
            .collect();
        output[6 * n + 5] = f32::NAN;
        let mut d = Decoder::new(Layout::YoloV8, nc, params());
        d.top2_by_anchor(&output, n);
        for i in 0..n {
            let (best, class, second) = top2((0..nc).map(|c| output[(4 + c) * n + i]));
            assert_eq!(
                (d.best[i], d.best_class[i] as usize, d.second[i]),
                (best, class, second),
                "anchor {i}"
            );
        }
    }

    #[test]
    fn boxes_map_back_through_the_letterbox() {
        // 1280×720 frame in 320×320: scale 0.25, pad_y 70.
        let lb = Letterbox::fit(1280, 720, 320, 320);
        let (out, shape) = v8_output(&[([160.0, 160.0, 80.0, 40.0], vec![0.9])], 1);
        let mut decoder = Decoder::new(Layout::YoloV8, 1, params());
        let mut dets = Vec::new();
        decoder
            .decode(&out, &shape, &lb, &mut dets)
            .expect("decode");
        let d = dets[0];
        assert_eq!((d.x1, d.y1, d.x2, d.y2), (480.0, 280.0, 800.0, 440.0));
    }

    #[test]
    fn keeps_weak_candidates_for_scoring_when_asked() {
        let (out, shape) = v8_output(
            &[
                ([100.0, 100.0, 10.0, 10.0], vec![0.15]),
                ([200.0, 200.0, 10.0, 10.0], vec![0.05]),
            ],
            1,
        );
        let mut decoder = Decoder::new(
            Layout::YoloV8,
            1,
            DecodeParams {
                keep_down_to: 0.10,
                ..params()
            },
        );
        let mut dets = Vec::new();
        decoder
            .decode(&out, &shape, &IDENTITY, &mut dets)
            .expect("decode");
        assert_eq!(dets.len(), 1);
        assert_eq!(dets[0].score, 0.15);
    }

    #[test]
    fn nms_threshold_is_inclusive_of_lower_overlap() {
        // Two class-0 boxes 100×100, offset by 50 px: IoU = 5000 / 15000 = 1/3.
        let a = Detection {
            class_id: 0,
            score: 0.9,
            second_score: 0.0,
            x1: 0.0,
            y1: 0.0,
            x2: 100.0,
            y2: 100.0,
        };
        let b = Detection {
            score: 0.8,
            x1: 50.0,
            x2: 150.0,
            ..a
        };
        assert!((a.iou(&b) - 1.0 / 3.0).abs() < 1e-6);
        let mut out = Vec::new();
        nms(&[a, b], 0.3, 10, &mut out);
        assert_eq!(out.len(), 1);
        out.clear();
        nms(&[a, b], 0.4, 10, &mut out);
        assert_eq!(out.len(), 2);
        out.clear();
        nms(&[a, b], 0.4, 1, &mut out);
        assert_eq!(out.len(), 1, "max_detections caps the output");
    }

    #[test]
    fn yolov5_multiplies_objectness() {
        // [1, 2, 5+2]: anchor 0 obj 0.5 × class1 0.8 = 0.4; anchor 1 obj 0.9 × 0.2 = 0.18 < 0.25.
        let out = vec![
            50.0, 50.0, 20.0, 20.0, 0.5, 0.1, 0.8, 10.0, 10.0, 4.0, 4.0, 0.9, 0.2, 0.1,
        ];
        let mut decoder = Decoder::new(Layout::YoloV5, 2, params());
        let mut dets = Vec::new();
        decoder
            .decode(&out, &[1, 2, 7], &IDENTITY, &mut dets)
            .expect("decode");
        assert_eq!(dets.len(), 1);
        assert_eq!(dets[0].class_id, 1);
        assert!((dets[0].score - 0.4).abs() < 1e-6);
        assert!((dets[0].second_score - 0.05).abs() < 1e-6);
        assert_eq!(
            (dets[0].x1, dets[0].y1, dets[0].x2, dets[0].y2),
            (40.0, 40.0, 60.0, 60.0)
        );
    }

    #[test]
    fn end_to_end_skips_nms() {
        // Two overlapping same-class boxes both survive: the model already did NMS.
        let out = vec![
            10.0, 10.0, 50.0, 50.0, 0.9, 2.0, 12.0, 12.0, 52.0, 52.0, 0.8, 2.0, 0.0, 0.0, 1.0, 1.0,
            0.1, 0.0,
        ];
        let mut decoder = Decoder::new(Layout::EndToEnd, 3, params());
        let mut dets = Vec::new();
        decoder
            .decode(&out, &[1, 3, 6], &IDENTITY, &mut dets)
            .expect("decode");
        assert_eq!(dets.len(), 2);
        assert_eq!((dets[0].class_id, dets[0].x1, dets[0].y2), (2, 10.0, 50.0));
    }

    #[test]
    fn boxes_with_nan_or_infinite_numbers_or_unnamed_classes_are_dropped() {
        let out = vec![
            10.0,
            10.0,
            50.0,
            50.0,
            0.9,
            2.0, // kept
            f32::NAN,
            10.0,
            50.0,
            50.0,
            0.9,
            1.0, // NaN corner
            10.0,
            10.0,
            50.0,
            50.0,
            f32::INFINITY,
            1.0, // infinite score
            10.0,
            10.0,
            50.0,
            50.0,
            0.9,
            7.0, // class 7 of 3
            10.0,
            10.0,
            50.0,
            50.0,
            0.9,
            1e9, // a class id no u16 holds
        ];
        let mut decoder = Decoder::new(Layout::EndToEnd, 3, params());
        let mut dets = Vec::new();
        decoder
            .decode(&out, &[1, 5, 6], &IDENTITY, &mut dets)
            .expect("decode");
        assert_eq!(dets.len(), 1, "{dets:?}");
        assert_eq!(dets[0].class_id, 2);
        // YOLOv8: an anchor with an infinite box or score is dropped too.
        let n = 3;
        let mut out = vec![0.0f32; (4 + 2) * n];
        for i in 0..n {
            out[i] = 30.0; // cx
            out[n + i] = 30.0 + 60.0 * i as f32; // cy: apart, so NMS keeps each
            out[2 * n + i] = 20.0;
            out[3 * n + i] = 20.0;
            out[4 * n + i] = 0.9;
        }
        out[2 * n] = f32::INFINITY; // anchor 0's width
        out[4 * n + 1] = f32::INFINITY; // anchor 1's class-0 score
        let mut decoder = Decoder::new(Layout::YoloV8, 2, params());
        decoder
            .decode(&out, &[1, 6, n], &IDENTITY, &mut dets)
            .expect("decode");
        assert_eq!(dets.len(), 1, "{dets:?}");
        assert_eq!(dets[0].y1, 140.0, "anchor 2");
    }

    #[test]
    fn wrong_shape_is_an_error_naming_it() {
        let decoder = Decoder::new(Layout::YoloV8, 80, params());
        let err = decoder.check_shape(&[1, 85, 2100]).expect_err("shape");
        assert_eq!(
            err.to_string(),
            "output has shape [1, 85, 2100], expected [1, 84, N] (yolov8, 80 classes)"
        );
    }
}
