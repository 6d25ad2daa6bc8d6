//! Drawing: the canvas a frame is drawn on, the basket background (rendered once per
//! source, copied per frame) and the products with their per-class textures and damage.

use super::rng::{BACKGROUND_SALT, Rng, mix, mix3, pixel_noise, scale3, to_u8, tri};
use super::scene::{
    APPLE, BANANA, CEREAL_BOX, CHIP_BAG, DETERGENT_JUG, MILK_CARTON, Obj, SODA_CAN, WATER_BOTTLE,
};

/// Id-buffer value of pixels that show no product (background, hands).
pub(super) const NO_OBJECT: u8 = 0;

/// Side of the tile of grain added to drawn pixels (a power of two).
const NOISE_TILE: usize = 64;

/// Which layers a render draws; the public render draws all of them. Tests switch layers
/// off to compare a frame with its object-free or unblurred twin.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layers {
    pub(super) objects: bool,
    pub(super) hand: bool,
    pub(super) lighting: bool,
    pub(super) blur: bool,
}

impl Layers {
    pub(super) const ALL: Self = Self {
        objects: true,
        hand: true,
        lighting: true,
        blur: true,
    };
}

/// The frame being drawn: pixels, the product owning each pixel, and the grain tile.
pub(super) struct Canvas<'a> {
    pub(super) rgb: &'a mut [u8],
    pub(super) ids: &'a mut [u8],
    pub(super) w: usize,
    pub(super) h: usize,
    pub(super) noise: &'a [f32],
}

impl Canvas<'_> {
    /// Grain at pixel (`x`, `y`), in -8..=7 grey levels.
    #[inline]
    pub(super) fn grain(&self, x: usize, y: usize) -> f32 {
        self.noise[(y % NOISE_TILE) * NOISE_TILE + x % NOISE_TILE]
    }
}

/// Pixel rectangle, inclusive-exclusive, already clipped to the frame.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Rect {
    pub(super) x0: usize,
    pub(super) y0: usize,
    pub(super) x1: usize,
    pub(super) y1: usize,
}

/// The grain tile: `NOISE_TILE`² values of [`pixel_noise`] in -8..=7, row by row.
pub(super) fn grain_tile() -> Vec<f32> {
    (0..NOISE_TILE * NOISE_TILE)
        .map(|i| pixel_noise((i % NOISE_TILE) as u32, (i / NOISE_TILE) as u32, 0x5eed) as f32)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Background
// ---------------------------------------------------------------------------------------

const FLOORS: [[f32; 3]; 3] = [
    [150.0, 146.0, 136.0],
    [126.0, 131.0, 138.0],
    [162.0, 150.0, 128.0],
];
const SEATS: [[f32; 3]; 3] = [[170.0, 36.0, 40.0], [36.0, 70.0, 150.0], [70.0, 72.0, 78.0]];

/// Render the basket seen from the handle, `margin` pixels bigger than the frame on each
/// side (so scenes can shift it and frames jitter it by copying a window).
pub(super) fn render_background(
    seed: u64,
    w: usize,
    h: usize,
    margin: usize,
    bg_w: usize,
    bg_h: usize,
) -> Vec<u8> {
    let mut rng = Rng::new(mix(seed, BACKGROUND_SALT));
    let (wf, hf) = (w as f32, h as f32);
    let scale = hf / 720.0;
    let spacing = rng.range(0.062, 0.082) * hf;
    let phase_x = rng.unit();
    let phase_y = rng.unit();
    let floor = FLOORS[rng.below(FLOORS.len() as u32) as usize];
    let floor_alt = scale3(floor, rng.range(0.8, 0.9));
    let tile = rng.range(0.33, 0.5) * hf;
    let seat = SEATS[rng.below(SEATS.len() as u32) as usize];
    let seat_h = rng.range(0.06, 0.09) * hf;
    let wire = [
        rng.range(190.0, 210.0),
        rng.range(195.0, 212.0),
        rng.range(200.0, 218.0),
    ];
    let wire_half = (1.6 * scale).max(0.7);
    let (shadow_dx, shadow_dy) = (3.0 * scale + 1.0, 4.0 * scale + 1.0);
    let salt = seed as u32 ^ (seed >> 32) as u32;

    // Horizontal wires: the floor coordinate of each row, integrated so that spacing
    // shrinks toward the top (further from the camera).
    let persp = |fy: f32| 0.74 + 0.26 * (fy / hf).clamp(-0.1, 1.1);
    let mut qrow = vec![0.0f32; bg_h];
    let mut q = phase_y;
    for (by, slot) in qrow.iter_mut().enumerate() {
        let fy = by as f32 - margin as f32 + 0.5;
        *slot = q;
        q += 1.0 / (spacing * persp(fy));
    }
    let wire_dist = |fx: f32, by: usize| -> (f32, f32) {
        let fy = by as f32 - margin as f32 + 0.5;
        let p = persp(fy);
        let s = (fx - wf * 0.5) / (p * spacing) + phase_x;
        let dv = (s - s.round()).abs() * spacing * p;
        let qv = qrow[by.min(bg_h - 1)];
        let dh = (qv - qv.round()).abs() * spacing * p;
        (dv, dh)
    };

    let mut bg = vec![0u8; bg_w * bg_h * 3];
    for (by, q) in qrow.iter().enumerate() {
        let fy = by as f32 - margin as f32 + 0.5;
        let yn = fy / hf;
        let p = persp(fy);
        for bx in 0..bg_w {
            let fx = bx as f32 - margin as f32 + 0.5;
            let xn = fx / wf;

            // Store floor seen through the basket bottom: big tiles, in shade.
            let tx = (fx - wf * 0.5) / p;
            let ty = q * spacing;
            let ti = (tx / tile).floor() as i32 + (ty / tile).floor() as i32;
            let mut c = if ti & 1 == 0 { floor } else { floor_alt };
            let gx = (tx / tile - (tx / tile).round()).abs() * tile;
            let gy = (ty / tile - (ty / tile).round()).abs() * tile;
            if gx.min(gy) < 1.5 * scale + 0.5 {
                c = scale3(c, 0.8);
            }
            // Basket floor plate between floor and wires: darker, with a soft gradient.
            let shade = 0.42 + 0.12 * yn.clamp(0.0, 1.0);
            c = scale3(c, shade);

            // Wire shadows on the floor, then the wires.
            let (sdv, sdh) = wire_dist(fx - shadow_dx, by.saturating_sub(shadow_dy as usize));
            if sdv.min(sdh) < wire_half * 1.6 {
                c = scale3(c, 0.6);
            }
            let (dv, dh) = wire_dist(fx, by);
            let d = dv.min(dh);
            let alpha = (wire_half + 0.5 - d).clamp(0.0, 1.0);
            if alpha > 0.0 {
                let core = (1.0 - (d / wire_half).min(1.0)).max(0.0);
                let lit = scale3(
                    wire,
                    (0.62 + 0.42 * core) * (0.85 + 0.15 * (1.0 - yn.clamp(0.0, 1.0))),
                );
                c = mix3(c, lit, alpha);
            }

            // Side walls: denser diagonal mesh behind a thick rail, wider toward the camera.
            let wall = wf * (0.035 + 0.05 * yn.clamp(0.0, 1.0));
            let side_d = fx.min(wf - fx);
            if side_d < wall {
                let mesh = spacing * 0.42;
                let a = (fx + fy) / mesh;
                let b = (fx - fy) / mesh;
                let md = (a - a.round()).abs().min((b - b.round()).abs()) * mesh;
                let mut wc = scale3(floor, 0.3);
                if md < wire_half * 0.9 + 0.3 {
                    wc = scale3(wire, 0.75);
                }
                c = wc;
            }
            let rail = (side_d - wall).abs();
            let rail_half = 0.007 * wf + 1.0;
            if rail < rail_half {
                let t = 1.0 - rail / rail_half;
                c = scale3(wire, 0.65 + 0.45 * t);
            }

            // Kid-seat edge across the top: moulded plastic with a lit lip.
            let cn = (xn - 0.5) * 2.0;
            let edge = seat_h * (1.0 - 0.25 * cn * cn);
            if fy < edge {
                let t = (fy / edge).clamp(0.0, 1.0);
                c = scale3(seat, 0.7 + 0.35 * t);
                if edge - fy < 0.014 * hf + 1.0 {
                    c = scale3(mix3(seat, [235.0, 235.0, 235.0], 0.35), 1.05);
                }
            } else if fy < edge + 0.035 * hf {
                // Its shadow on the basket.
                let t = (fy - edge) / (0.035 * hf);
                c = scale3(c, 0.55 + 0.45 * t);
            }

            // Vignette and grain.
            let vx = xn - 0.5;
            let vy = yn - 0.5;
            c = scale3(c, 1.0 - 0.35 * (vx * vx + vy * vy));
            let n = pixel_noise(bx as u32, by as u32, salt) as f32 * 0.6;
            let i = (by * bg_w + bx) * 3;
            bg[i] = to_u8(c[0] + n);
            bg[i + 1] = to_u8(c[1] + n);
            bg[i + 2] = to_u8(c[2] + n);
        }
    }
    bg
}

/// Copy the `w × h` window at (`sx`, `sy`) of the background into `rgb`, scaled by
/// `gain` (8.8 fixed point, at most 256).
#[allow(clippy::too_many_arguments)]
pub(super) fn copy_background(
    rgb: &mut [u8],
    bg: &[u8],
    bg_w: usize,
    w: usize,
    h: usize,
    sx: usize,
    sy: usize,
    gain: u16,
) {
    let row_bytes = w * 3;
    for y in 0..h {
        let src = &bg[((sy + y) * bg_w + sx) * 3..][..row_bytes];
        let dst = &mut rgb[y * row_bytes..][..row_bytes];
        if gain >= 256 {
            dst.copy_from_slice(src);
        } else {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = ((u16::from(*s) * gain) >> 8) as u8;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Products
// ---------------------------------------------------------------------------------------

/// One shaded sample of a product: colour and opacity.
#[derive(Clone, Copy)]
struct Sample {
    c: [f32; 3],
    a: f32,
}

#[inline]
fn solid(c: [f32; 3], shade: f32) -> Option<Sample> {
    Some(Sample {
        c: scale3(c, shade),
        a: 1.0,
    })
}

/// Draw `obj` shifted by (`ox`, `oy`); mark its pixels `id` in `ids`. Returns how many
/// pixels the product covers including those outside the frame, and its box clipped to
/// the frame.
pub(super) fn draw_object(
    canvas: &mut Canvas<'_>,
    obj: &Obj,
    ox: f32,
    oy: f32,
    id: u8,
) -> (u32, Rect) {
    let (w, h) = (canvas.w, canvas.h);
    let cx = obj.cx + ox;
    let cy = obj.cy + oy;
    let (ex, ey) = obj.extents();
    let x0 = (cx - ex).floor() as i64 - 1;
    let x1 = (cx + ex).ceil() as i64 + 1;
    let y0 = (cy - ey).floor() as i64 - 1;
    let y1 = (cy + ey).ceil() as i64 + 1;
    let (wi, hi) = (w as i64, h as i64);
    let rect = Rect {
        x0: x0.clamp(0, wi) as usize,
        y0: y0.clamp(0, hi) as usize,
        x1: x1.clamp(0, wi) as usize,
        y1: y1.clamp(0, hi) as usize,
    };
    let a = obj.cos / obj.hw;
    let b = obj.sin / obj.hw;
    let c = -obj.sin / obj.hh;
    let d = obj.cos / obj.hh;
    let mut total = 0u32;
    for y in y0..y1 {
        let dy = y as f32 + 0.5 - cy;
        let ub = dy * b;
        let vb = dy * d;
        let row_in = (0..hi).contains(&y);
        for x in x0..x1 {
            let dx = x as f32 + 0.5 - cx;
            let v = dx * c + vb;
            if v.abs() > 1.0 {
                continue;
            }
            let mut u = dx * a + ub;
            if obj.taper != 0.0 {
                u /= 1.0 + obj.taper * v;
            }
            if u.abs() > 1.0 {
                continue;
            }
            let Some(s) = sample(obj, u, v) else {
                continue;
            };
            total += 1;
            if !row_in || !(0..wi).contains(&x) {
                continue;
            }
            let (xu, yu) = (x as usize, y as usize);
            let p = yu * w + xu;
            canvas.ids[p] = id;
            let n = canvas.grain(xu, yu);
            let px = &mut canvas.rgb[p * 3..p * 3 + 3];
            if s.a >= 1.0 {
                px[0] = to_u8(s.c[0] + n);
                px[1] = to_u8(s.c[1] + n);
                px[2] = to_u8(s.c[2] + n);
            } else {
                let k = 1.0 - s.a;
                px[0] = to_u8(f32::from(px[0]) * k + s.c[0] * s.a + n);
                px[1] = to_u8(f32::from(px[1]) * k + s.c[1] * s.a + n);
                px[2] = to_u8(f32::from(px[2]) * k + s.c[2] * s.a + n);
            }
        }
    }
    (total, rect)
}

/// Shade `obj` at local coordinates (`u`, `v`) in [-1, 1]² (u right, v down), with its
/// damage applied; `None` outside the product.
fn sample(obj: &Obj, u: f32, v: f32) -> Option<Sample> {
    let dmg = &obj.damage;
    let mut crease = 1.0;
    if dmg.active {
        if dmg.wedge && dmg.su * u + dmg.sv * v > dmg.cut + 0.06 * tri(4.0 * (u - v)) {
            return None;
        }
        if dmg.dent {
            let du = (u - dmg.du) / dmg.dr;
            let dv = (v - dmg.dv) / dmg.dr;
            let q = du * du + dv * dv;
            if q < 1.0 {
                return None;
            }
            if q < 2.6 {
                // Crushed rim: dark creases around the dent.
                crease = 0.55 + 0.25 * (q - 1.0) / 1.6 + 0.2 * tri(q * 2.5);
            }
        }
    }
    let mut s = class_sample(obj.class, obj.variant, u, v)?;
    if dmg.active && dmg.fade {
        let fu = (u - dmg.fu) / dmg.fru;
        let fv = (v - dmg.fv) / dmg.frv;
        let q = fu * fu + fv * fv;
        if q < 1.0 {
            let scuff = 0.55 + 0.2 * tri(5.0 * u + 9.0 * v);
            s.c = mix3(s.c, [214.0, 208.0, 196.0], scuff * (1.0 - 0.4 * q));
            s.a = s.a.max(0.9);
        }
    }
    s.c = scale3(s.c, crease * obj.tint);
    Some(s)
}

fn class_sample(class: u8, variant: u8, u: f32, v: f32) -> Option<Sample> {
    match class {
        CEREAL_BOX => cereal_box(variant, u, v),
        SODA_CAN => soda_can(variant, u, v),
        MILK_CARTON => milk_carton(variant, u, v),
        WATER_BOTTLE => water_bottle(variant, u, v),
        APPLE => apple(variant, u, v),
        CHIP_BAG => chip_bag(variant, u, v),
        BANANA => banana(u, v),
        DETERGENT_JUG => detergent_jug(variant, u, v),
        _ => None,
    }
}

/// Tall red box, yellow bands with lettering, a white bowl of flakes.
fn cereal_box(variant: u8, u: f32, v: f32) -> Option<Sample> {
    const YELLOW: [f32; 3] = [246.0, 202.0, 36.0];
    const LETTER: [f32; 3] = [168.0, 18.0, 24.0];
    let body = match variant {
        0 => [204.0, 34.0, 40.0],
        1 => [222.0, 70.0, 28.0],
        _ => [186.0, 28.0, 60.0],
    };
    let side = if u.abs() > 0.86 { 0.7 } else { 1.0 };
    let top_light = 1.0 - 0.08 * (v + 1.0);
    let c = if v < -0.56 {
        let letters = v > -0.9 && v < -0.66 && u.abs() < 0.76 && tri(u * 6.5) > 0.3;
        if letters { LETTER } else { YELLOW }
    } else if v > 0.82 {
        YELLOW
    } else {
        let bx = u / 0.64;
        let by = (v - 0.3) / 0.36;
        let e = bx * bx + by * by;
        if e < 1.0 {
            if by < -0.05 {
                if tri(u * 9.0 + 0.3) * tri(v * 11.0) > 0.28 {
                    [228.0, 168.0, 58.0]
                } else {
                    [196.0, 122.0, 36.0]
                }
            } else if e > 0.8 {
                [150.0, 150.0, 160.0]
            } else {
                [240.0, 238.0, 230.0]
            }
        } else if (v + 0.38).abs() < 0.05 {
            [250.0, 250.0, 240.0]
        } else {
            body
        }
    };
    solid(c, side * top_light)
}

/// Narrow silver cylinder with a coloured stripe and a white wave.
fn soda_can(variant: u8, u: f32, v: f32) -> Option<Sample> {
    let av = v.abs();
    if av > 0.86 {
        // Rounded shoulders.
        let t = (av - 0.86) / 0.14;
        let k = (u.abs() - 0.82) / 0.18;
        if k > 0.0 && k * k + t * t > 1.0 {
            return None;
        }
    }
    let cyl = 0.55 + 0.45 * (1.0 - u * u);
    let hl = (1.0 - ((u + 0.45) / 0.14) * ((u + 0.45) / 0.14)).max(0.0);
    let stripe = match variant {
        0 => [206.0, 24.0, 34.0],
        1 => [28.0, 72.0, 192.0],
        _ => [30.0, 150.0, 62.0],
    };
    let c = if av > 0.88 {
        scale3([128.0, 130.0, 136.0], 0.8 + 0.3 * tri(v * 18.0))
    } else if (v - 0.05).abs() < 0.34 {
        let wave = v - 0.05 - 0.12 * (tri(u * 1.3) - 0.5);
        if wave.abs() < 0.05 {
            [245.0, 245.0, 245.0]
        } else {
            stripe
        }
    } else {
        [178.0, 182.0, 190.0]
    };
    Some(Sample {
        c: mix3(scale3(c, cyl), [255.0, 255.0, 255.0], hl * 0.55),
        a: 1.0,
    })
}

/// White carton, blue gable top, blue band and a blue drop.
fn milk_carton(variant: u8, u: f32, v: f32) -> Option<Sample> {
    let blue = match variant {
        0 => [40.0, 96.0, 206.0],
        1 => [30.0, 70.0, 170.0],
        _ => [60.0, 120.0, 220.0],
    };
    if v < -0.5 {
        // Gable: a triangle from the shoulder to the ridge, with a fin on top.
        let width = (v + 1.0) / 0.5;
        if v < -0.9 {
            return if u.abs() < 0.12 {
                solid([230.0, 232.0, 236.0], 1.0)
            } else {
                None
            };
        }
        if u.abs() > width {
            return None;
        }
        let facet = if u < 0.0 { 0.86 } else { 1.0 };
        return solid(blue, facet);
    }
    let side = if u.abs() > 0.88 { 0.82 } else { 1.0 };
    let c = if (v - 0.55).abs() < 0.09 || v > 0.9 {
        blue
    } else {
        let du = u / 0.36;
        let dv = (v - 0.05) / 0.22;
        if du * du + dv * dv < 1.0 {
            [118.0, 168.0, 236.0]
        } else if (v + 0.3).abs() < 0.04 && u.abs() < 0.6 {
            [90.0, 96.0, 110.0]
        } else {
            [242.0, 242.0, 236.0]
        }
    };
    solid(c, side)
}

/// Translucent light-blue bottle with a cap, ridges and a label.
fn water_bottle(variant: u8, u: f32, v: f32) -> Option<Sample> {
    let au = u.abs();
    if v < -0.84 {
        if au > 0.38 {
            return None;
        }
        let cap = if variant == 1 {
            [235.0, 238.0, 242.0]
        } else {
            [30.0, 90.0, 200.0]
        };
        return solid(cap, 0.8 + 0.25 * tri(u * 8.0));
    }
    let half_width = if v < -0.62 {
        0.42
    } else if v < -0.3 {
        let t = (v + 0.62) / 0.32;
        0.42 + 0.58 * t * (2.0 - t)
    } else if v > 0.9 {
        let t = (v - 0.9) / 0.1;
        0.8 + 0.2 * (1.0 - t * t).max(0.0).sqrt()
    } else {
        1.0
    };
    if au > half_width {
        return None;
    }
    if (0.02..0.36).contains(&v) {
        // Label, opaque, with a blue wave.
        let wave = v - 0.19 - 0.08 * (tri(u * 1.5) - 0.5);
        let c = if wave.abs() < 0.05 {
            [40.0, 110.0, 210.0]
        } else {
            [238.0, 244.0, 250.0]
        };
        return solid(c, 0.8 + 0.2 * (1.0 - u * u));
    }
    let ridge = if v > -0.3 && tri(v * 7.0) > 0.85 {
        0.82
    } else {
        1.0
    };
    let rel = u / half_width;
    let glint = (1.0 - ((rel + 0.55) / 0.12) * ((rel + 0.55) / 0.12)).max(0.0);
    let c = mix3(
        scale3([168.0, 214.0, 242.0], ridge),
        [255.0, 255.0, 255.0],
        glint,
    );
    Some(Sample {
        c,
        a: 0.62 + 0.3 * glint,
    })
}

/// Red or green disc with a dimple, stem, leaf and highlight.
fn apple(variant: u8, u: f32, v: f32) -> Option<Sample> {
    if (u - 0.04).abs() < 0.06 && v < -0.68 {
        return solid([92.0, 60.0, 30.0], 1.0);
    }
    let lu = (u - 0.24) / 0.2;
    let lv = (v + 0.8) / 0.09;
    if lu * lu + lv * lv < 1.0 {
        return solid([64.0, 142.0, 44.0], 1.0);
    }
    let pu = u / 0.96;
    let mut pv = (v - 0.06) / 0.92;
    if pv < 0.0 {
        pv += 0.14 * (1.0 - (u / 0.35) * (u / 0.35)).max(0.0);
    }
    let r2 = pu * pu + pv * pv;
    if r2 > 1.0 {
        return None;
    }
    let skin = match variant {
        0 => [188.0, 26.0, 34.0],
        1 => [132.0, 192.0, 56.0],
        _ => [206.0, 60.0, 36.0],
    };
    let streak = 0.92 + 0.08 * tri(u * 5.0 + v * 0.5);
    let hu = (u + 0.36) / 0.2;
    let hv = (v + 0.3) / 0.16;
    let hl = (1.0 - (hu * hu + hv * hv)).max(0.0);
    Some(Sample {
        c: mix3(
            scale3(skin, (1.0 - 0.38 * r2) * streak),
            [255.0, 250.0, 240.0],
            hl * 0.7,
        ),
        a: 1.0,
    })
}

/// Wide pillow-shaped bag, crimped ends, crinkle stripes and a yellow logo.
fn chip_bag(variant: u8, u: f32, v: f32) -> Option<Sample> {
    let au = u.abs();
    let av = v.abs();
    if au > 0.93 + 0.07 * (1.0 - v * v) {
        return None;
    }
    let edge = 0.9 - 0.06 * u * u;
    let crimp_edge = edge + 0.08 * tri(u * 14.0);
    if av > crimp_edge {
        return None;
    }
    let body = match variant {
        0 => [242.0, 134.0, 24.0],
        1 => [116.0, 44.0, 162.0],
        _ => [230.0, 96.0, 20.0],
    };
    if av > edge - 0.12 {
        // Crimped seal: lighter with vertical crinkles.
        return solid(body, 1.1 - 0.3 * tri(u * 14.0));
    }
    let pillow = 1.0 - 0.22 * u * u - 0.18 * v * v;
    let crinkle = if tri((u * 0.7 + v) * 5.0) > 0.86 {
        1.25
    } else {
        1.0
    };
    let lu = u / 0.5;
    let lv = (v + 0.05) / 0.4;
    let c = if lu * lu + lv * lv < 1.0 {
        if (v + 0.05).abs() < 0.1 && au < 0.38 {
            [200.0, 28.0, 28.0]
        } else {
            [250.0, 216.0, 40.0]
        }
    } else {
        body
    };
    solid(c, pillow * crinkle)
}

/// Yellow crescent with brown tips.
fn banana(u: f32, v: f32) -> Option<Sample> {
    // Outer circle through (±1, -1) and (0, 1); the inner circle, through (±0.75, -1)
    // and (0, 0.3), is cut out of it.
    const INNER_V: f32 = 0.5663;
    const INNER_R: f32 = 0.8663;
    const OUTER_R: f32 = 1.25;
    let ov = v + 0.25;
    if u * u + ov * ov > OUTER_R * OUTER_R {
        return None;
    }
    let iv = v + INNER_V;
    let inner = (u * u + iv * iv).sqrt();
    if inner < INNER_R {
        return None;
    }
    let au = u.abs();
    if v < -0.9 {
        return None;
    }
    if au > 0.88 && v < -0.55 {
        // Stem and blossom ends.
        return solid([104.0, 78.0, 32.0], 1.0);
    }
    // Across the band: 0 at the inner edge, about 1 at the outer edge.
    let across = ((inner - INNER_R) / (OUTER_R + 0.32 - INNER_R)).clamp(0.0, 1.0);
    let ridge = 0.76 + 0.34 * (1.0 - (2.0 * across - 0.8).abs());
    let green = ((au - 0.5) / 0.3).clamp(0.0, 1.0) * 0.35;
    let c = mix3([242.0, 212.0, 58.0], [150.0, 170.0, 50.0], green);
    solid(c, ridge)
}

/// Big teal jug with a handle (see-through hole), a white cap and a label.
fn detergent_jug(variant: u8, u: f32, v: f32) -> Option<Sample> {
    let teal = match variant {
        0 => [20.0, 150.0, 150.0],
        1 => [18.0, 128.0, 160.0],
        _ => [28.0, 160.0, 130.0],
    };
    let gloss = 0.75 + 0.25 * (1.0 - u * u) + 0.25 * (1.0 - ((u + 0.55) / 0.1).abs()).max(0.0);
    if v < -0.45 {
        // Cap and neck on the left, handle on the right.
        if (-0.82..-0.38).contains(&u) {
            if v < -0.72 {
                return solid([236.0, 236.0, 232.0], 0.8 + 0.25 * tri(u * 12.0));
            }
            return solid(teal, gloss);
        }
        if u > 0.02 && v > -0.97 {
            let hu = (u - 0.52) / 0.3;
            let hv = (v + 0.66) / 0.12;
            if hu * hu + hv * hv < 1.0 {
                return None;
            }
            let ou = (u - 0.52) / 0.5;
            let ov = (v + 0.66) / 0.32;
            if ou * ou + ov * ov > 1.0 && v < -0.66 {
                return None;
            }
            return solid(teal, gloss * 0.92);
        }
        return None;
    }
    if v > 0.86 {
        let t = (v - 0.86) / 0.14;
        let k = (u.abs() - 0.8) / 0.2;
        if k > 0.0 && k * k + t * t > 1.0 {
            return None;
        }
    }
    if (-0.7..0.7).contains(&u) && (0.0..0.7).contains(&v) {
        let swoosh = v - 0.35 - 0.15 * u;
        let c = if swoosh.abs() < 0.08 {
            [244.0, 122.0, 30.0]
        } else {
            [240.0, 242.0, 244.0]
        };
        return solid(c, 1.0);
    }
    solid(teal, gloss)
}
