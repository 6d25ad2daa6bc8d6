//! Labelling a frame's errors against the synthetic ground truth.
//!
//! - A **miss** is a ground-truth box with no reported detection of its class at IoU ≥
//!   [`MATCH_IOU`]. A product type the model has no class for is always a miss: it needs a
//!   new label.
//! - A **false positive** is a reported detection matching no ground-truth box of its
//!   class at IoU ≥ [`MATCH_IOU`].
//!
//! Classes are matched by name, so a model whose classes are named differently from the
//! labels' classes (the synthetic catalogue, [`PRODUCT_NAMES`], or a labeller's
//! `classes.txt`) only scores where the names agree.

use crate::{
    capture::synthetic::PRODUCT_NAMES,
    frame::{GroundTruth, TruthBox},
    infer::Detection,
};

/// The IoU at which a detection counts as finding a box.
pub(crate) const MATCH_IOU: f32 = 0.5;

/// What the model got wrong on one frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Errors {
    pub misses: u32,
    pub false_positives: u32,
}

impl Errors {
    pub(crate) fn total(self) -> u32 {
        self.misses + self.false_positives
    }
}

/// Maps the model's class ids to label class ids (a [`TruthBox::class_id`]) by name.
#[derive(Debug, Clone)]
pub(crate) struct ClassMap {
    /// Label id of each model class, `None` when the labels have no such class.
    product_of: Vec<Option<u16>>,
}

impl ClassMap {
    /// Against the synthetic catalogue, whose ids the synthetic ground truth uses.
    pub(crate) fn new(model_names: &[String]) -> ClassMap {
        ClassMap::between(model_names, PRODUCT_NAMES)
    }

    /// Against any list of label class names, in label-id order.
    pub(crate) fn between<S: AsRef<str>>(model_names: &[String], labels: &[S]) -> ClassMap {
        ClassMap {
            product_of: model_names
                .iter()
                .map(|n| {
                    labels
                        .iter()
                        .position(|l| l.as_ref() == n)
                        .map(|i| i as u16)
                })
                .collect(),
        }
    }

    fn product(&self, class_id: u16) -> Option<u16> {
        self.product_of
            .get(usize::from(class_id))
            .copied()
            .flatten()
    }

    /// Whether the model has a class for catalogue product `product`.
    fn knows(&self, product: u16) -> bool {
        self.product_of.contains(&Some(product))
    }
}

fn iou(d: &Detection, t: &TruthBox) -> f32 {
    let w = (d.x2.min(t.x2) - d.x1.max(t.x1)).max(0.0);
    let h = (d.y2.min(t.y2) - d.y1.max(t.y1)).max(0.0);
    let inter = w * h;
    let area = |x1: f32, y1: f32, x2: f32, y2: f32| (x2 - x1).max(0.0) * (y2 - y1).max(0.0);
    let union = area(d.x1, d.y1, d.x2, d.y2) + area(t.x1, t.y1, t.x2, t.y2) - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

/// The errors of `detections` (those scoring at least `confidence` are reported) on a
/// frame whose truth is `truth`.
pub(crate) fn label(
    truth: &GroundTruth,
    detections: &[Detection],
    confidence: f32,
    classes: &ClassMap,
) -> Errors {
    let reported = || detections.iter().filter(|d| d.score >= confidence);
    let matches = |d: &Detection, t: &TruthBox| {
        classes.product(d.class_id) == Some(t.class_id) && iou(d, t) >= MATCH_IOU
    };
    let misses = truth
        .boxes
        .iter()
        .filter(|t| !classes.knows(t.class_id) || !reported().any(|d| matches(d, t)))
        .count();
    let false_positives = reported()
        .filter(|d| !truth.boxes.iter().any(|t| matches(d, t)))
        .count();
    Errors {
        misses: misses as u32,
        false_positives: false_positives as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn truth(boxes: &[(u16, [f32; 4])]) -> GroundTruth {
        GroundTruth {
            boxes: boxes
                .iter()
                .map(|&(class_id, [x1, y1, x2, y2])| TruthBox {
                    class_id,
                    x1,
                    y1,
                    x2,
                    y2,
                    occluded: false,
                })
                .collect(),
            ..GroundTruth::default()
        }
    }

    fn det(class_id: u16, score: f32, [x1, y1, x2, y2]: [f32; 4]) -> Detection {
        Detection {
            class_id,
            score,
            second_score: 0.0,
            x1,
            y1,
            x2,
            y2,
        }
    }

    #[test]
    fn hand_made_frames_are_labelled_as_a_labeller_would() {
        let map = ClassMap::new(&names(&PRODUCT_NAMES[..6]));
        let t = truth(&[
            (0, [0.0, 0.0, 100.0, 100.0]),
            (1, [200.0, 200.0, 250.0, 260.0]),
        ]);
        // Both found.
        let both = [
            det(0, 0.9, [2.0, 2.0, 98.0, 101.0]),
            det(1, 0.8, [200.0, 202.0, 250.0, 258.0]),
        ];
        assert_eq!(label(&t, &both, 0.25, &map), Errors::default());
        // The can found as a cereal box: a miss and a false positive.
        let wrong_class = [
            det(0, 0.9, [2.0, 2.0, 98.0, 101.0]),
            det(0, 0.8, [200.0, 202.0, 250.0, 258.0]),
        ];
        assert_eq!(
            label(&t, &wrong_class, 0.25, &map),
            Errors {
                misses: 1,
                false_positives: 1
            }
        );
        // A box off by more than IoU 0.5 (here 0.33): a miss and a false positive.
        let shifted = [det(0, 0.9, [50.0, 0.0, 150.0, 100.0]), both[1]];
        assert_eq!(
            label(&t, &shifted, 0.25, &map),
            Errors {
                misses: 1,
                false_positives: 1
            }
        );
        // Below the confidence threshold it is not reported: a miss only.
        let faint = [det(0, 0.2, [2.0, 2.0, 98.0, 101.0]), both[1]];
        assert_eq!(
            label(&t, &faint, 0.25, &map),
            Errors {
                misses: 1,
                false_positives: 0
            }
        );
        // Nothing detected on an empty frame: no error; a detection there: one.
        assert_eq!(label(&truth(&[]), &[], 0.25, &map), Errors::default());
        assert_eq!(
            label(&truth(&[]), &both[..1], 0.25, &map),
            Errors {
                misses: 0,
                false_positives: 1
            }
        );
    }

    #[test]
    fn a_product_the_model_has_no_class_for_is_always_a_miss() {
        let map = ClassMap::new(&names(&PRODUCT_NAMES[..6]));
        let banana = truth(&[(6, [0.0, 0.0, 100.0, 100.0])]);
        assert_eq!(
            label(&banana, &[], 0.25, &map),
            Errors {
                misses: 1,
                false_positives: 0
            }
        );
        // Called an apple: the miss stands and the apple is a false positive.
        assert_eq!(
            label(
                &banana,
                &[det(4, 0.7, [0.0, 0.0, 100.0, 100.0])],
                0.25,
                &map
            ),
            Errors {
                misses: 1,
                false_positives: 1
            }
        );
        // A model that does have the class can find it.
        let all = ClassMap::new(&names(PRODUCT_NAMES));
        assert_eq!(
            label(
                &banana,
                &[det(6, 0.7, [0.0, 0.0, 100.0, 100.0])],
                0.25,
                &all
            ),
            Errors::default()
        );
    }

    #[test]
    fn classes_are_matched_by_name_not_id() {
        // A model whose class 0 is the catalogue's soda can.
        let map = ClassMap::new(&names(&["soda_can", "person"]));
        let can = truth(&[(1, [0.0, 0.0, 50.0, 60.0])]);
        assert_eq!(
            label(&can, &[det(0, 0.9, [0.0, 0.0, 50.0, 60.0])], 0.25, &map),
            Errors::default()
        );
        // Its `person` class has no catalogue product: every such detection is wrong.
        assert_eq!(
            label(
                &can,
                &[
                    det(0, 0.9, [0.0, 0.0, 50.0, 60.0]),
                    det(1, 0.9, [0.0, 0.0, 50.0, 60.0])
                ],
                0.25,
                &map
            ),
            Errors {
                misses: 0,
                false_positives: 1
            }
        );
    }
}
