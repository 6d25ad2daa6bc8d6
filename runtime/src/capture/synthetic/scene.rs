//! Scene layout: the product catalogue (names, classes, shapes), the products and
//! perturbations a scene holds, and the planning that picks them from the scene's random
//! stream.

use super::Split;
use super::perturb::{
    Blur, Damage, Hand, Lighting, plan_blur, plan_damage, plan_hand, plan_lighting,
};
use super::rng::{Rng, SCENE_SALT, mix, sin_cos_deg};

/// Product type names, indexed by [`TruthBox::class_id`]. The first [`KNOWN_PRODUCTS`]
/// appear in studio data; the rest only in store data ("never seen in training").
///
/// [`TruthBox::class_id`]: crate::frame::TruthBox::class_id
pub const PRODUCT_NAMES: &[&str] = &[
    "cereal_box",
    "soda_can",
    "milk_carton",
    "water_bottle",
    "apple",
    "chip_bag",
    "banana",
    "detergent_jug",
];

/// Number of product types shown in studio data (the first entries of [`PRODUCT_NAMES`]).
pub const KNOWN_PRODUCTS: usize = 6;

pub(super) const CEREAL_BOX: u8 = 0;
pub(super) const SODA_CAN: u8 = 1;
pub(super) const MILK_CARTON: u8 = 2;
pub(super) const WATER_BOTTLE: u8 = 3;
pub(super) const APPLE: u8 = 4;
pub(super) const CHIP_BAG: u8 = 5;
pub(super) const BANANA: u8 = 6;
pub(super) const DETERGENT_JUG: u8 = 7;

/// Most products in one scene (object ids 1..=MAX_OBJECTS live in the id buffer).
pub(super) const MAX_OBJECTS: usize = 6;

/// Probability that a store scene gets each perturbation.
const STORE_PERTURBATION_P: f32 = 0.3;

/// Shape of each product type: width / height of its upright box and the range of its
/// height as a fraction of the frame height.
pub(super) struct ClassGeom {
    aspect: f32,
    min_h: f32,
    max_h: f32,
}

pub(super) const GEOM: [ClassGeom; 8] = [
    // cereal_box
    ClassGeom {
        aspect: 0.68,
        min_h: 0.20,
        max_h: 0.30,
    },
    // soda_can
    ClassGeom {
        aspect: 0.52,
        min_h: 0.10,
        max_h: 0.17,
    },
    // milk_carton
    ClassGeom {
        aspect: 0.52,
        min_h: 0.16,
        max_h: 0.26,
    },
    // water_bottle
    ClassGeom {
        aspect: 0.34,
        min_h: 0.17,
        max_h: 0.28,
    },
    // apple
    ClassGeom {
        aspect: 0.95,
        min_h: 0.07,
        max_h: 0.12,
    },
    // chip_bag
    ClassGeom {
        aspect: 1.35,
        min_h: 0.12,
        max_h: 0.20,
    },
    // banana
    ClassGeom {
        aspect: 1.75,
        min_h: 0.07,
        max_h: 0.12,
    },
    // detergent_jug
    ClassGeom {
        aspect: 0.82,
        min_h: 0.20,
        max_h: 0.30,
    },
];

/// One product placed in a scene (frame coordinates, before the per-frame jitter).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Obj {
    pub(super) class: u8,
    pub(super) variant: u8,
    pub(super) cx: f32,
    pub(super) cy: f32,
    /// Half width / half height of the upright product in pixels.
    pub(super) hw: f32,
    pub(super) hh: f32,
    pub(super) cos: f32,
    pub(super) sin: f32,
    /// Perspective taper: the width at local `v` is `hw * (1 + taper * v)`.
    pub(super) taper: f32,
    /// Brightness of this instance (print and exposure variation).
    pub(super) tint: f32,
    pub(super) angled: bool,
    pub(super) damage: Damage,
}

impl Obj {
    /// Half extents of the axis-aligned box around the rotated, tapered product.
    pub(super) fn extents(&self) -> (f32, f32) {
        let hw = self.hw * (1.0 + self.taper.abs());
        let ex = self.cos.abs() * hw + self.sin.abs() * self.hh;
        let ey = self.sin.abs() * hw + self.cos.abs() * self.hh;
        (ex, ey)
    }
}

/// What a scene shows: its products, its perturbations and where the basket sits.
#[derive(Debug, Default)]
pub(super) struct Scene {
    pub(super) objects: Vec<Obj>,
    pub(super) hand: Option<Hand>,
    pub(super) lighting: Option<Lighting>,
    pub(super) blur: Option<Blur>,
    /// Shift of the basket for this scene, pixels.
    pub(super) bg_shift: (i32, i32),
    /// Basket brightness for this scene, 8.8 fixed point (<= 256).
    pub(super) bg_gain: u16,
}

impl Scene {
    /// Choose the contents of scene `scene_id` (pure function of the stream key and the
    /// frame geometry): `size` is the frame's (width, height), `scale` its height / 720
    /// and `jitter` the camera's largest jitter in pixels. The object list keeps its
    /// allocation.
    pub(super) fn plan(
        &mut self,
        stream_key: u64,
        scene_id: u64,
        split: Split,
        size: (usize, usize),
        scale: f32,
        jitter: f32,
    ) {
        let mut rng = Rng::new(mix(mix(stream_key, SCENE_SALT), scene_id));
        let (wf, hf) = (size.0 as f32, size.1 as f32);
        let store = split == Split::Store;
        self.objects.clear();
        self.hand = None;
        self.lighting = None;
        self.blur = None;

        let mut want = [false; 6];
        if store {
            for flag in &mut want {
                *flag = rng.chance(STORE_PERTURBATION_P);
            }
        }
        let [lighting, blur, hand, damaged, angle, unseen] = want;

        let shift = 8.0 * scale;
        self.bg_shift = (
            rng.range(-shift, shift).round() as i32,
            rng.range(-shift, shift).round() as i32,
        );
        self.bg_gain = if store {
            rng.range(222.0, 256.0) as u16
        } else {
            rng.range(240.0, 256.0) as u16
        };

        // Products.
        let count = 2 + rng.below(5) as usize; // 2..=6
        let mut placed_boxes: [(f32, f32, f32, f32); MAX_OBJECTS] =
            [(0.0, 0.0, 0.0, 0.0); MAX_OBJECTS];
        for k in 0..count {
            let class = if unseen && k == 0 {
                (KNOWN_PRODUCTS + rng.below((PRODUCT_NAMES.len() - KNOWN_PRODUCTS) as u32) as usize)
                    as u8
            } else {
                rng.below(KNOWN_PRODUCTS as u32) as u8
            };
            let geom = &GEOM[usize::from(class)];
            let mut hh = rng.range(geom.min_h, geom.max_h) * hf * 0.5;
            let mut hw = hh * geom.aspect;
            let variant = rng.below(3) as u8;
            let tint = if store {
                rng.range(0.85, 1.08)
            } else {
                rng.range(0.95, 1.03)
            };

            // Orientation: upright in the studio, a little askew in store, far off for
            // the unusual-angle perturbation.
            let mut taper = 0.0;
            let mut angled = false;
            let deg = if !store {
                0.0
            } else if angle && (k == 0 || rng.chance(0.6)) {
                angled = true;
                if rng.chance(0.3) {
                    // Foreshortened: squashed along its length, tapering away.
                    hh *= rng.range(0.5, 0.7);
                    hw *= rng.range(0.95, 1.1);
                    taper = rng.sign() * rng.range(0.18, 0.35);
                    rng.range(-15.0, 15.0)
                } else {
                    rng.sign() * rng.range(30.0, 90.0)
                }
            } else {
                rng.range(-10.0, 10.0)
            };
            let (sin, cos) = sin_cos_deg(deg);
            let mut obj = Obj {
                class,
                variant,
                cx: 0.0,
                cy: 0.0,
                hw,
                hh,
                cos,
                sin,
                taper,
                tint,
                angled,
                damage: Damage::default(),
            };
            let (ex, ey) = obj.extents();

            // Position: fully inside (even with the camera jitter) in the studio and for
            // the unseen product; other store products may hang over the frame edge.
            let inside = !store || (unseen && k == 0);
            let edge = jitter + 2.0;
            let (lo_x, hi_x, lo_y, hi_y) = if inside {
                (ex + edge, wf - ex - edge, ey + edge, hf - ey - edge)
            } else {
                (ex * 0.3, wf - ex * 0.3, ey * 0.3, hf - ey * 0.3)
            };
            if lo_x >= hi_x || lo_y >= hi_y {
                continue;
            }
            let n = self.objects.len();
            let mut found = false;
            for _ in 0..16 {
                let cx = rng.range(lo_x, hi_x);
                let cy = rng.range(lo_y, hi_y);
                let b = (cx - ex, cy - ey, cx + ex, cy + ey);
                let ok = placed_boxes[..n].iter().all(|p| {
                    if store {
                        // Store products may overlap a little.
                        let iw = (b.2.min(p.2) - b.0.max(p.0)).max(0.0);
                        let ih = (b.3.min(p.3) - b.1.max(p.1)).max(0.0);
                        let smaller = ((b.2 - b.0) * (b.3 - b.1)).min((p.2 - p.0) * (p.3 - p.1));
                        iw * ih <= 0.2 * smaller
                    } else {
                        // Studio products keep a gap.
                        const GAP: f32 = 4.0;
                        b.0 >= p.2 + GAP || p.0 >= b.2 + GAP || b.1 >= p.3 + GAP || p.1 >= b.3 + GAP
                    }
                });
                if ok {
                    obj.cx = cx;
                    obj.cy = cy;
                    placed_boxes[n] = b;
                    found = true;
                    break;
                }
            }
            if found {
                self.objects.push(obj);
            }
        }

        if damaged && !self.objects.is_empty() {
            // Damage one or two products in full view, packaged ones first (fruit does
            // not tear).
            let n = self.objects.len();
            let victims = 1 + usize::from(n > 2 && rng.chance(0.4));
            let start = rng.below(n as u32) as usize;
            let margin = jitter + 1.0;
            let mut done = 0;
            for pass in 0..2 {
                for j in 0..n {
                    if done >= victims {
                        break;
                    }
                    let obj = &mut self.objects[(start + j) % n];
                    let (ex, ey) = obj.extents();
                    let in_view = obj.cx - ex >= margin
                        && obj.cy - ey >= margin
                        && obj.cx + ex <= wf - margin
                        && obj.cy + ey <= hf - margin;
                    let packaged = !matches!(obj.class, APPLE | BANANA);
                    if obj.damage.active || !in_view || (pass == 0 && !packaged) {
                        continue;
                    }
                    obj.damage = plan_damage(&mut rng);
                    done += 1;
                }
            }
        }

        if hand && !self.objects.is_empty() {
            let target = self.objects[rng.below(self.objects.len() as u32) as usize];
            self.hand = Some(plan_hand(&mut rng, &target, wf, hf));
        }

        if lighting {
            self.lighting = Some(plan_lighting(&mut rng));
        }

        if blur {
            self.blur = Some(plan_blur(&mut rng));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::synthetic::tests::{config, render};
    use crate::capture::synthetic::{SyntheticConfig, SyntheticSource};
    use crate::frame::Perturbations;

    #[test]
    fn studio_is_clean_and_known() {
        let mut src = SyntheticSource::new(config(Split::Studio, 11, 256, 192));
        for i in 0..200 {
            let (_, truth) = render(&mut src, i);
            assert!(
                truth.perturbations.is_empty(),
                "frame {i}: {:?}",
                truth.perturbations
            );
            assert!(
                truth.boxes.len() >= 2,
                "frame {i}: {} boxes",
                truth.boxes.len()
            );
            for b in &truth.boxes {
                assert!(usize::from(b.class_id) < KNOWN_PRODUCTS, "frame {i}: {b:?}");
                assert!(!b.occluded, "frame {i}: {b:?}");
            }
        }
    }

    #[test]
    fn store_has_every_perturbation_and_clean_frames() {
        let mut src = SyntheticSource::new(SyntheticConfig {
            frames_per_scene: 2,
            ..config(Split::Store, 5, 256, 192)
        });
        let mut seen = Perturbations::NONE;
        let mut clean = 0;
        let mut several = 0;
        let mut occluded = 0;
        for i in 0..200 {
            let (_, truth) = render(&mut src, i);
            seen.insert(truth.perturbations);
            clean += usize::from(truth.perturbations.is_empty());
            several += usize::from(truth.perturbations.0.count_ones() >= 2);
            occluded += truth.boxes.iter().filter(|b| b.occluded).count();
            let unseen = truth
                .boxes
                .iter()
                .any(|b| usize::from(b.class_id) >= KNOWN_PRODUCTS);
            assert_eq!(
                unseen,
                truth.perturbations.contains(Perturbations::UNSEEN_PRODUCT),
                "frame {i}"
            );
            for b in &truth.boxes {
                assert!(usize::from(b.class_id) < PRODUCT_NAMES.len());
            }
        }
        for (tag, name) in Perturbations::ALL {
            assert!(seen.contains(tag), "{name} never appeared");
        }
        assert!(clean >= 5, "only {clean} clean frames");
        assert!(
            several >= 5,
            "only {several} frames with several perturbations"
        );
        assert!(occluded >= 1, "no occluded boxes");
    }
}
