//! Ground truth: the box around each product's visible pixels, read from the per-pixel
//! owner map the drawing leaves behind, and the perturbation tags its products carry.

use super::render::Rect;
use super::scene::{KNOWN_PRODUCTS, Obj};
use crate::frame::{Perturbations, TruthBox};

/// Push onto `boxes` the visible extent of each product of `objects`, read from `ids`
/// (the `w`-wide owner map, product `i` marked `i + 1`), and return the tags of the
/// products kept. `totals[i]` is how many pixels product `i` covers including those
/// outside the frame and `rects[i]` its box clipped to the frame, as drawn.
pub(super) fn visible_boxes(
    objects: &[Obj],
    totals: &[u32],
    rects: &[Rect],
    ids: &[u8],
    w: usize,
    boxes: &mut Vec<TruthBox>,
) -> Perturbations {
    let mut perturbations = Perturbations::NONE;
    for (i, obj) in objects.iter().enumerate() {
        let total = totals[i];
        if total == 0 {
            continue;
        }
        let id = (i + 1) as u8;
        let r = rects[i];
        let mut visible = 0u32;
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        for y in r.y0..r.y1 {
            let row = &ids[y * w + r.x0..y * w + r.x1];
            for (dx, _) in row.iter().enumerate().filter(|(_, o)| **o == id) {
                let x = r.x0 + dx;
                visible += 1;
                x0 = x0.min(x);
                x1 = x1.max(x);
                y0 = y0.min(y);
                y1 = y1.max(y);
            }
        }
        // Drop products less than a quarter visible.
        if visible == 0 || visible * 4 < total {
            continue;
        }
        boxes.push(TruthBox {
            class_id: u16::from(obj.class),
            x1: x0 as f32,
            y1: y0 as f32,
            x2: (x1 + 1) as f32,
            y2: (y1 + 1) as f32,
            occluded: visible * 3 < total * 2,
        });
        if usize::from(obj.class) >= KNOWN_PRODUCTS {
            perturbations.insert(Perturbations::UNSEEN_PRODUCT);
        }
        if obj.damage.active {
            perturbations.insert(Perturbations::DAMAGED_PACKAGING);
        }
        if obj.angled {
            perturbations.insert(Perturbations::UNUSUAL_ANGLE);
        }
    }
    perturbations
}

#[cfg(test)]
mod tests {
    use crate::capture::synthetic::render::Layers;
    use crate::capture::synthetic::tests::{config, render_layers};
    use crate::capture::synthetic::{Split, SyntheticSource};

    #[test]
    fn boxes_are_inside_and_cover_products() {
        let (w, h) = (320usize, 240usize);
        // Products (and hands) on, against the same frame without them; lighting and
        // blur off in both so the comparison is about the products alone.
        let with = Layers {
            lighting: false,
            blur: false,
            ..Layers::ALL
        };
        let without = Layers {
            objects: false,
            hand: false,
            ..with
        };
        let mut diffs = Vec::new();
        for split in [Split::Studio, Split::Store] {
            let mut src = SyntheticSource::new(config(split, 21, w as u32, h as u32));
            for i in (0..240).step_by(3) {
                let (rgb, truth) = render_layers(&mut src, i, with);
                let (empty, empty_truth) = render_layers(&mut src, i, without);
                assert!(empty_truth.boxes.is_empty());
                for b in &truth.boxes {
                    assert!(b.x1 >= 0.0 && b.y1 >= 0.0, "{b:?}");
                    assert!(b.x2 <= w as f32 && b.y2 <= h as f32, "{b:?}");
                    assert!(b.x2 - b.x1 >= 2.0 && b.y2 - b.y1 >= 2.0, "degenerate {b:?}");
                    assert_eq!(
                        b.x1.fract() + b.y1.fract() + b.x2.fract() + b.y2.fract(),
                        0.0
                    );
                    let mut sum = 0u64;
                    let mut n = 0u64;
                    for y in b.y1 as usize..b.y2 as usize {
                        for x in b.x1 as usize..b.x2 as usize {
                            for c in 0..3 {
                                let i = (y * w + x) * 3 + c;
                                sum += u64::from(rgb[i].abs_diff(empty[i]));
                                n += 1;
                            }
                        }
                    }
                    let mean = sum as f64 / n as f64;
                    assert!(
                        mean > 15.0,
                        "{split:?} frame {i}: box {b:?} mean diff {mean:.1}"
                    );
                    diffs.push(mean);
                }
            }
        }
        assert!(diffs.len() > 200, "{} boxes", diffs.len());
        diffs.sort_by(f64::total_cmp);
        let median = diffs[diffs.len() / 2];
        assert!(median > 40.0, "median box difference {median:.1}");
    }
}
