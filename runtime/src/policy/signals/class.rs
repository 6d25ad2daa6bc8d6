//! Class triggers: a detection of a class the field wants more labels of (`classes`, by
//! the model's class names), or of a class this camera rarely reports — a product the
//! store barely stocks, or a class the model confuses others with.
//!
//! Value: 1 when a reported detection is of a listed class; else, once the camera has
//! reported `warm_up` detections, 1 − share ÷ `rare_share` for its rarest reported class
//! whose share of the camera's detections is below `rare_share` (0 turns rarity off).

use serde::{Deserialize, Serialize};

use super::{FrameFacts, Signal};
use crate::config::Checker;

/// Classes counted per camera; ids above are not counted for rarity.
const MAX_CLASSES: usize = 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Raw {
    classes: Vec<String>,
    rare_share: f64,
    warm_up: i64,
    weight: f64,
}

impl Default for Raw {
    fn default() -> Self {
        Raw {
            classes: Vec::new(),
            rare_share: 0.02,
            warm_up: 1000,
            weight: 1.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    classes: Vec<String>,
    rare_share: f32,
    warm_up: u64,
    weight: f32,
}

pub(crate) struct Class {
    settings: Settings,
    /// Whether each model class id is listed, resolved from the names on first use.
    listed: Vec<bool>,
    resolved: bool,
    counts: Vec<u64>,
    total: u64,
}

impl Signal for Class {
    const REASON: &'static str = "class";
    type Raw = Raw;
    type Settings = Settings;

    fn validate(raw: &Raw, c: &mut Checker) -> Settings {
        Settings {
            classes: raw.classes.clone(),
            rare_share: c.float(
                "rare_share",
                raw.rare_share,
                |v| (0.0..1.0).contains(&v),
                "from 0 (off) up to 1, e.g. 0.02",
            ) as f32,
            warm_up: c.int("warm_up", raw.warm_up, 1, i64::MAX) as u64,
            weight: super::weight(c, raw.weight, "1.0"),
        }
    }

    fn weight(settings: &Settings) -> f32 {
        settings.weight
    }

    fn new(settings: &Settings) -> Self {
        Class {
            settings: settings.clone(),
            listed: Vec::new(),
            resolved: false,
            counts: Vec::new(),
            total: 0,
        }
    }

    fn reconfigure(&mut self, settings: &Settings) {
        self.settings = settings.clone();
        self.resolved = false;
    }

    fn value(&mut self, frame: &FrameFacts<'_>) -> f32 {
        if !self.resolved {
            // Once per camera and per reload, not per frame.
            let n = frame.class_names.len().min(MAX_CLASSES);
            self.listed = frame.class_names[..n]
                .iter()
                .map(|name| self.settings.classes.contains(name))
                .collect();
            self.counts.resize(n, 0);
            self.resolved = true;
            // A name the model does not have (a typo, another model's list) can never
            // fire: said once per camera and reload, on this thread but not per frame.
            for name in &self.settings.classes {
                if !frame.class_names.contains(name) {
                    tracing::warn!(
                        class = %name,
                        model_classes = %frame.class_names.join(", "),
                        "[signals.class] classes names a class the model does not have; it never fires"
                    );
                }
            }
        }
        let warm = self.settings.rare_share > 0.0 && self.total >= self.settings.warm_up;
        let mut value = 0.0f32;
        for d in frame.reported() {
            let id = usize::from(d.class_id);
            if self.listed.get(id).copied().unwrap_or(false) {
                value = 1.0;
            } else if warm && let Some(&count) = self.counts.get(id) {
                let share = count as f32 / self.total as f32;
                value = value.max(1.0 - share / self.settings.rare_share);
            }
        }
        for d in frame.reported() {
            if let Some(count) = self.counts.get_mut(usize::from(d.class_id)) {
                *count += 1;
                self.total += 1;
            }
        }
        value.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{infer::Detection, policy::FrameFacts, policy::tests::sharp};

    fn of(class_id: u16) -> Detection {
        Detection {
            class_id,
            score: 0.9,
            ..crate::policy::tests::det(0.9, 0.0)
        }
    }

    #[test]
    fn listed_classes_fire_at_once_and_rare_ones_after_warm_up() {
        let names: Vec<String> = ["can", "box", "banana"].map(String::from).to_vec();
        let raw = Raw {
            classes: vec!["banana".into()],
            warm_up: 100,
            ..Raw::default()
        };
        let mut c = Class::new(&Class::validate(&raw, &mut Checker::default()));
        let stats = sharp();
        let at = |c: &mut Class, dets: &[Detection]| {
            c.value(&FrameFacts {
                detections: dets,
                stats: &stats,
                confidence: 0.25,
                class_names: &names,
                features: &[],
            })
        };
        assert_eq!(at(&mut c, &[of(2)]), 1.0, "listed");
        // A box before warm-up is nothing; after 990 cans it is rare.
        assert_eq!(at(&mut c, &[of(1)]), 0.0);
        for _ in 0..990 {
            at(&mut c, &[of(0)]);
        }
        let rare = at(&mut c, &[of(1)]);
        assert!(rare > 0.9, "{rare}");
        assert_eq!(at(&mut c, &[of(0)]), 0.0, "the usual class");
        // Not reported, not counted.
        let faint = Detection { score: 0.1, ..of(2) };
        assert_eq!(at(&mut c, &[faint]), 0.0);
    }
}
