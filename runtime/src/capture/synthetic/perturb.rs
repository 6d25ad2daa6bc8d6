//! Perturbations of store scenes: damaged packaging, a shopper's hand, a lighting change
//! and motion blur. What each one looks like is planned once per scene from the scene's
//! random stream; hands, lighting and blur are then applied to every frame of it.

use super::render::{Canvas, NO_OBJECT};
use super::rng::{Rng, sin_cos_deg, to_u8};
use super::scene::Obj;

/// Damage applied to one product, in its normalised local coordinates.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Damage {
    pub(super) active: bool,
    /// A torn-off corner: points with `su*u + sv*v > cut` are missing.
    pub(super) wedge: bool,
    pub(super) su: f32,
    pub(super) sv: f32,
    pub(super) cut: f32,
    /// A crushed dent: an elliptical bite out of one edge with a crease around it.
    pub(super) dent: bool,
    pub(super) du: f32,
    pub(super) dv: f32,
    pub(super) dr: f32,
    /// A faded, scuffed patch.
    pub(super) fade: bool,
    pub(super) fu: f32,
    pub(super) fv: f32,
    pub(super) fru: f32,
    pub(super) frv: f32,
}

/// A capsule (thick segment) of a hand or arm.
#[derive(Debug, Clone, Copy, Default)]
struct Capsule {
    ax: f32,
    ay: f32,
    bx: f32,
    by: f32,
    r: f32,
    /// Sleeve fabric rather than skin.
    sleeve: bool,
}

const HAND_CAPSULES: usize = 8;

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Hand {
    caps: [Capsule; HAND_CAPSULES],
    skin: [f32; 3],
    sleeve: [f32; 3],
}

/// A global lighting change: per-channel gain times a clamped linear ramp.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Lighting {
    /// Per-channel gain in 1/128 units, at most 256 (x2).
    gain: [u16; 3],
    /// Ramp `c0 + gx * x/W + gy * y/H`, clamped to `[lo, hi]`.
    c0: f32,
    gx: f32,
    gy: f32,
    lo: f32,
    hi: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BlurDir {
    Horizontal,
    /// Down-right diagonal.
    Diagonal,
    /// Down-left diagonal.
    AntiDiagonal,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Blur {
    pub(super) dir: BlurDir,
    /// Blur length in pixels at 720 lines, 9..=25.
    base_len: f32,
}

impl Blur {
    /// Blur length of one frame: the scene's length moved by the frame's `wobble`,
    /// shortened along diagonals and scaled to the frame (`scale` = height / 720); odd,
    /// at least 3.
    pub(super) fn frame_len(&self, wobble: f32, scale: f32) -> usize {
        let base = (self.base_len + wobble).clamp(9.0, 25.0);
        let len = match self.dir {
            BlurDir::Horizontal => base,
            // Diagonal steps are sqrt(2) pixels long.
            BlurDir::Diagonal | BlurDir::AntiDiagonal => base * std::f32::consts::FRAC_1_SQRT_2,
        } * scale;
        ((len.round() as usize).max(3)) | 1
    }
}

// ---------------------------------------------------------------------------------------
// Planning (once per scene)
// ---------------------------------------------------------------------------------------

pub(super) fn plan_damage(rng: &mut Rng) -> Damage {
    let mut d = Damage {
        active: true,
        ..Damage::default()
    };
    match rng.below(3) {
        0 => d.wedge = true,
        1 => d.dent = true,
        _ => {
            d.wedge = true;
            d.dent = true;
        }
    }
    d.su = rng.sign();
    d.sv = rng.sign();
    d.cut = rng.range(1.0, 1.3);
    if rng.chance(0.5) {
        d.du = rng.sign();
        d.dv = rng.range(-0.5, 0.5);
    } else {
        d.du = rng.range(-0.5, 0.5);
        d.dv = rng.sign();
    }
    d.dr = rng.range(0.25, 0.4);
    d.fade = rng.chance(0.7);
    d.fu = rng.range(-0.5, 0.5);
    d.fv = rng.range(-0.5, 0.5);
    d.fru = rng.range(0.35, 0.6);
    d.frv = rng.range(0.25, 0.45);
    d
}

const SKIN: [[f32; 3]; 5] = [
    [236.0, 196.0, 166.0],
    [222.0, 170.0, 128.0],
    [196.0, 136.0, 98.0],
    [146.0, 92.0, 60.0],
    [98.0, 62.0, 42.0],
];

const SLEEVES: [[f32; 3]; 5] = [
    [40.0, 60.0, 125.0],
    [150.0, 32.0, 42.0],
    [58.0, 60.0, 66.0],
    [205.0, 205.0, 210.0],
    [52.0, 112.0, 64.0],
];

/// A shopper's arm reaching in from the handle (bottom) or a side, its hand over `target`.
pub(super) fn plan_hand(rng: &mut Rng, target: &Obj, wf: f32, hf: f32) -> Hand {
    let (ex, ey) = target.extents();
    let px = target.cx + rng.range(-0.5, 0.5) * ex;
    let py = target.cy + rng.range(-0.5, 0.5) * ey;
    let (ax, ay) = match rng.below(5) {
        0 => (-0.08 * hf, py + rng.range(-0.3, 0.3) * hf),
        1 => (wf + 0.08 * hf, py + rng.range(-0.3, 0.3) * hf),
        _ => (px + rng.range(-0.35, 0.35) * wf, hf * 1.1),
    };
    let (mut dx, mut dy) = (px - ax, py - ay);
    let len = (dx * dx + dy * dy).sqrt().max(1.0);
    dx /= len;
    dy /= len;
    let (nx, ny) = (-dy, dx);
    let size = rng.range(0.85, 1.15) * hf;
    let ra = 0.042 * size;
    let rp = 0.055 * size;
    let rf = 0.015 * size;
    // Wrist just before the palm centre; palm from wrist to knuckles.
    let (wx, wy) = (px - dx * 0.045 * size, py - dy * 0.045 * size);
    let (kx, ky) = (px + dx * 0.03 * size, py + dy * 0.03 * size);
    let (sx, sy) = (ax + (wx - ax) * 0.55, ay + (wy - ay) * 0.55);

    let mut caps = [Capsule::default(); HAND_CAPSULES];
    caps[0] = Capsule {
        ax: sx,
        ay: sy,
        bx: wx,
        by: wy,
        r: ra,
        sleeve: false,
    };
    caps[1] = Capsule {
        ax: ax - dx * ra,
        ay: ay - dy * ra,
        bx: sx,
        by: sy,
        r: ra * 1.25,
        sleeve: true,
    };
    caps[2] = Capsule {
        ax: wx,
        ay: wy,
        bx: kx,
        by: ky,
        r: rp,
        sleeve: false,
    };
    // Four fingers fanning out from the knuckles, and a thumb to one side.
    let curl = rng.range(-8.0, 8.0);
    let lens = [0.06, 0.07, 0.068, 0.055];
    for (f, flen) in lens.iter().enumerate() {
        let off = (f as f32 - 1.5) * 2.1 * rf;
        let (s, c) = sin_cos_deg(curl + (f as f32 - 1.5) * 7.0);
        let (fdx, fdy) = (dx * c - dy * s, dx * s + dy * c);
        let (bx, by) = (kx + nx * off, ky + ny * off);
        caps[3 + f] = Capsule {
            ax: bx,
            ay: by,
            bx: bx + fdx * flen * size,
            by: by + fdy * flen * size,
            r: rf,
            sleeve: false,
        };
    }
    let side = rng.sign();
    let (s, c) = sin_cos_deg(side * 55.0);
    let (tdx, tdy) = (dx * c - dy * s, dx * s + dy * c);
    let (tbx, tby) = (wx + nx * side * rp * 0.6, wy + ny * side * rp * 0.6);
    caps[7] = Capsule {
        ax: tbx,
        ay: tby,
        bx: tbx + tdx * 0.06 * size,
        by: tby + tdy * 0.06 * size,
        r: rf * 1.2,
        sleeve: false,
    };

    Hand {
        caps,
        skin: SKIN[rng.below(SKIN.len() as u32) as usize],
        sleeve: SLEEVES[rng.below(SLEEVES.len() as u32) as usize],
    }
}

pub(super) fn plan_lighting(rng: &mut Rng) -> Lighting {
    let mode = rng.below(3);
    // Global exposure: dim aisle or blown-out window light.
    let gain = if mode != 1 || rng.chance(0.4) {
        if rng.chance(0.6) {
            rng.range(0.42, 0.68)
        } else {
            rng.range(1.3, 1.65)
        }
    } else {
        1.0
    };
    // Colour cast: warm tungsten, cool daylight, green fluorescent, or none.
    let cast = match rng.below(4) {
        0 => [1.18, 1.0, 0.78],
        1 => [0.82, 0.96, 1.2],
        2 => [0.92, 1.12, 0.88],
        _ => [1.0, 1.0, 1.0],
    };
    let g = cast.map(|c| (gain * c * 128.0).min(256.0) as u16);
    if mode == 0 {
        return Lighting {
            gain: g,
            c0: 1.0,
            gx: 0.0,
            gy: 0.0,
            lo: 1.0,
            hi: 1.0,
        };
    }
    // A gradient (soft) or a cast shadow (hard edge) across the frame.
    let (s, c) = sin_cos_deg(rng.range(-180.0, 180.0));
    let hard = rng.chance(0.5);
    let k = if hard {
        rng.range(10.0, 20.0)
    } else {
        rng.range(1.2, 2.0)
    };
    let p0 = rng.range(-0.25, 0.25);
    // f = 0.65 + k * (c*(x-0.5) + s*(y-0.5) - p0)
    let c0 = 0.65 + k * (-0.5 * c - 0.5 * s - p0);
    Lighting {
        gain: g,
        c0,
        gx: k * c,
        gy: k * s,
        lo: if hard { 0.35 } else { 0.3 },
        hi: if hard { 1.0 } else { 1.15 },
    }
}

/// A motion blur: its direction and its length at 720 lines.
pub(super) fn plan_blur(rng: &mut Rng) -> Blur {
    let dir = match rng.below(3) {
        0 => BlurDir::Horizontal,
        1 => BlurDir::Diagonal,
        _ => BlurDir::AntiDiagonal,
    };
    Blur {
        dir,
        base_len: rng.range(11.0, 23.0),
    }
}

// ---------------------------------------------------------------------------------------
// Application (every frame)
// ---------------------------------------------------------------------------------------

/// Draw `hand` shifted by (`ox`, `oy`), capsule by capsule, each in skin or sleeve colour.
pub(super) fn draw_hand(canvas: &mut Canvas<'_>, hand: &Hand, ox: f32, oy: f32) {
    for cap in &hand.caps {
        let color = if cap.sleeve { hand.sleeve } else { hand.skin };
        draw_capsule(canvas, cap, ox, oy, color);
    }
}

/// Draw a shaded capsule shifted by (`ox`, `oy`); its pixels stop belonging to any
/// product. Each row visits only the span the capsule can reach.
fn draw_capsule(canvas: &mut Canvas<'_>, cap: &Capsule, ox: f32, oy: f32, color: [f32; 3]) {
    let (w, h) = (canvas.w, canvas.h);
    let (ax, ay) = (cap.ax + ox, cap.ay + oy);
    let (bx, by) = (cap.bx + ox, cap.by + oy);
    let (dx, dy) = (bx - ax, by - ay);
    let len2 = (dx * dx + dy * dy).max(1e-6);
    let r = cap.r.max(0.5);
    let r2 = r * r;
    let y_lo = (ay.min(by) - r).floor().max(0.0) as usize;
    let y_hi = ((ay.max(by) + r).ceil().max(0.0) as usize).min(h);
    for y in y_lo..y_hi {
        let py = y as f32 + 0.5;
        // x-span of the segment points within r of this row, widened by r.
        let (xa, xb) = if dy.abs() < 1e-3 {
            (ax.min(bx), ax.max(bx))
        } else {
            let t0 = ((py - r - ay) / dy).clamp(0.0, 1.0);
            let t1 = ((py + r - ay) / dy).clamp(0.0, 1.0);
            let (xa, xb) = (ax + dx * t0, ax + dx * t1);
            (xa.min(xb), xa.max(xb))
        };
        let x_lo = (xa - r).floor().max(0.0) as usize;
        let x_hi = ((xb + r).ceil().max(0.0) as usize).min(w);
        for x in x_lo..x_hi {
            let px = x as f32 + 0.5;
            let t = (((px - ax) * dx + (py - ay) * dy) / len2).clamp(0.0, 1.0);
            let ex = px - ax - dx * t;
            let ey = py - ay - dy * t;
            let d2 = ex * ex + ey * ey;
            if d2 > r2 {
                continue;
            }
            let shade = 0.68 + 0.32 * (1.0 - d2 / r2);
            let p = y * w + x;
            canvas.ids[p] = NO_OBJECT;
            let n = canvas.grain(x, y) * 0.5;
            let px = &mut canvas.rgb[p * 3..p * 3 + 3];
            px[0] = to_u8(color[0] * shade + n);
            px[1] = to_u8(color[1] * shade + n);
            px[2] = to_u8(color[2] * shade + n);
        }
    }
}

/// Multiply every pixel by the per-channel gain and the clamped ramp. All in 1/128 fixed
/// point on 16-bit lanes over flat per-byte arrays, so the inner loop vectorises even on
/// baseline SSE2 / NEON.
pub(super) fn apply_lighting(
    rgb: &mut [u8],
    w: usize,
    h: usize,
    light: &Lighting,
    ramp: &mut Vec<i16>,
) {
    const ONE: f32 = 128.0;
    let row_bytes = w * 3;
    // ramp[..row_bytes]: the x part of the ramp per byte; ramp[row_bytes..]: gain per byte.
    ramp.clear();
    ramp.extend((0..row_bytes).map(|i| {
        (light.gx * ((i / 3) as f32 + 0.5) / w as f32 * ONE).clamp(-8192.0, 8192.0) as i16
    }));
    ramp.extend((0..row_bytes).map(|i| light.gain[i % 3].min(256) as i16));
    let (cols, gains) = ramp.split_at(row_bytes);
    let lo = (light.lo * ONE) as i16;
    let hi = (light.hi * ONE).min(255.0) as i16;
    for (y, row) in rgb.chunks_exact_mut(row_bytes).take(h).enumerate() {
        let base = ((light.c0 + light.gy * (y as f32 + 0.5) / h as f32) * ONE)
            .clamp(-8192.0, 8192.0) as i16;
        for ((p, col), gain) in row.iter_mut().zip(cols).zip(gains) {
            // f <= 255 and gain <= 256, both 1/128 units: the product fits u16.
            let f = (base + col).clamp(lo, hi) as u16;
            let m = ((*gain as u16 * f) >> 7).min(256);
            *p = ((u16::from(*p) * m) >> 7).min(255) as u8;
        }
    }
}

/// Buffers for [`motion_blur`], sized once for the largest blur.
#[derive(Debug, Default)]
pub(super) struct BlurScratch {
    /// One padded row, channels packed in 16-bit lanes (horizontal blur).
    packed: Vec<u64>,
    /// Window sums of one row (horizontal blur).
    sums16: Vec<u16>,
    /// The last `len + 1` original rows (diagonal blur).
    ring: Vec<u8>,
    /// Running sum per diagonal and channel.
    sums: Vec<u16>,
    /// First pixel of each diagonal, replicated before its start.
    first: Vec<u8>,
}

impl BlurScratch {
    pub(super) fn new(w: usize, h: usize, max_len: usize) -> Self {
        let mut s = Self::default();
        s.reserve(w, h, max_len);
        s
    }

    /// Size the buffers for a `len` blur of a `w × h` frame (no-op once big enough).
    fn reserve(&mut self, w: usize, h: usize, len: usize) {
        if self.packed.len() < w + len {
            self.packed.resize(w + len, 0);
        }
        if self.sums16.len() < w * 3 {
            self.sums16.resize(w * 3, 0);
        }
        let ring = (len + 1) * w * 3;
        if self.ring.len() < ring {
            self.ring.resize(ring, 0);
        }
        let diagonals = (w + h) * 3;
        if self.sums.len() < diagonals {
            self.sums.resize(diagonals, 0);
            self.first.resize(diagonals, 0);
        }
    }
}

/// Longest blur: keeps every window sum (`len * 255`) within u16.
const MAX_BLUR: usize = 255;

/// Box blur of odd length `len` (at most [`MAX_BLUR`]) along `dir`, in place, edges
/// replicated.
pub(super) fn motion_blur(
    rgb: &mut [u8],
    w: usize,
    h: usize,
    dir: BlurDir,
    len: usize,
    scratch: &mut BlurScratch,
) {
    let len = len.min(MAX_BLUR) | 1;
    if len == 1 || w == 0 || h == 0 {
        return;
    }
    scratch.reserve(w, h, len);
    let div = Divisor::new(len);
    match dir {
        BlurDir::Horizontal => {
            for row in rgb.chunks_exact_mut(w * 3).take(h) {
                blur_row(row, len, div, scratch);
            }
        }
        BlurDir::Diagonal => blur_diagonal(rgb, w, h, len, div, false, scratch),
        BlurDir::AntiDiagonal => blur_diagonal(rgb, w, h, len, div, true, scratch),
    }
}

/// Rounded division of a window sum by the window length with a 16-bit multiply-high.
#[derive(Debug, Clone, Copy)]
struct Divisor {
    half: u16,
    inv: u16,
}

impl Divisor {
    /// For `3 <= len <= MAX_BLUR`.
    fn new(len: usize) -> Self {
        let len = len.clamp(3, MAX_BLUR) as u32;
        Self {
            half: (len / 2) as u16,
            // ceil(65536 / len): exact for every sum below 65536 / len * len.
            inv: 65536u32.div_ceil(len) as u16,
        }
    }

    #[inline]
    fn average(self, sum: u16) -> u8 {
        ((u32::from(sum + self.half) * u32::from(self.inv)) >> 16).min(255) as u8
    }
}

/// Horizontal box blur of one RGB row. The three channels ride in 16-bit lanes of one
/// u64 (SWAR), so the running sum is a single add per pixel; the division is a separate
/// vectorisable pass.
fn blur_row(row: &mut [u8], len: usize, div: Divisor, s: &mut BlurScratch) {
    let r = len / 2;
    let n = row.len() / 3;
    if n == 0 {
        return;
    }
    let pack = |p: &[u8]| u64::from(p[0]) | (u64::from(p[1]) << 16) | (u64::from(p[2]) << 32);
    // packed = first pixel × (r + 1), the row, last pixel × r; output i is the sum of
    // packed[i + 1 ..= i + len].
    let packed = &mut s.packed[..n + len];
    packed[..=r].fill(pack(&row[..3]));
    for (d, p) in packed[r + 1..r + 1 + n].iter_mut().zip(row.chunks_exact(3)) {
        *d = pack(p);
    }
    packed[r + 1 + n..].fill(pack(&row[row.len() - 3..]));
    // Every lane of every partial sum stays within 0..=len*255 < 65536, so the packed
    // wrapping arithmetic never carries between lanes.
    let mut sum = packed[..len].iter().fold(0u64, |a, p| a.wrapping_add(*p));
    let sums = &mut s.sums16[..n * 3];
    for ((o, a), b) in sums
        .chunks_exact_mut(3)
        .zip(&packed[len..])
        .zip(packed.iter())
    {
        sum = sum.wrapping_add(a.wrapping_sub(*b));
        o[0] = sum as u16;
        o[1] = (sum >> 16) as u16;
        o[2] = (sum >> 32) as u16;
    }
    for (o, s) in row.iter_mut().zip(sums.iter()) {
        *o = div.average(*s);
    }
}

/// Diagonal box blur (down-right, or down-left when `anti`), swept in row order: each
/// diagonal keeps a running sum, fed by the current row and drained from a ring of the
/// last `len + 1` original rows, so memory is read and written sequentially and the
/// interior of each row is one vectorisable loop.
fn blur_diagonal(
    rgb: &mut [u8],
    w: usize,
    h: usize,
    len: usize,
    div: Divisor,
    anti: bool,
    s: &mut BlurScratch,
) {
    let r = len / 2;
    let ring_rows = len + 1;
    let row_bytes = w * 3;
    let ring = &mut s.ring[..ring_rows * row_bytes];
    let sums = &mut s.sums[..(w + h) * 3];
    let first = &mut s.first[..(w + h) * 3];

    // In memory coordinates (x, y): the pixel k steps back along the line is at
    // (x - k, y - k), or (x + k, y - k) for the anti-diagonal.
    let back = |x: usize, k: usize| if anti { x + k } else { x - k };
    let key = |x: usize, y: usize| if anti { x + y } else { x + h - 1 - y };
    let along = |x: usize, y: usize| if anti { (w - 1 - x).min(y) } else { x.min(y) };
    let last_x = if anti { 0 } else { w - 1 };

    // One pixel, any position: the general (edge) case.
    let step =
        |rgb: &mut [u8], ring: &[u8], sums: &mut [u16], first: &mut [u8], x: usize, y: usize| {
            let at = (y % ring_rows) * row_bytes + x * 3;
            let p = [ring[at], ring[at + 1], ring[at + 2]];
            let d = key(x, y) * 3;
            let j = along(x, y);
            if j == 0 {
                first[d..d + 3].copy_from_slice(&p);
                for c in 0..3 {
                    sums[d + c] = len as u16 * u16::from(p[c]);
                }
            } else {
                for c in 0..3 {
                    let sub = if j >= len {
                        ring[((y - len) % ring_rows) * row_bytes + back(x, len) * 3 + c]
                    } else {
                        first[d + c]
                    };
                    sums[d + c] = sums[d + c] + u16::from(p[c]) - u16::from(sub);
                }
            }
            if j >= r {
                let out = (y - r) * row_bytes + back(x, r) * 3;
                for c in 0..3 {
                    rgb[out + c] = div.average(sums[d + c]);
                }
            }
            if x == last_x || y == h - 1 {
                // End of this line: finish its last r outputs, the last pixel replicated.
                for t in 1..=r {
                    let jj = j + t;
                    for c in 0..3 {
                        let sub = if jj >= len {
                            ring[((y + t - len) % ring_rows) * row_bytes + back(x, len - t) * 3 + c]
                        } else {
                            first[d + c]
                        };
                        sums[d + c] = sums[d + c] + u16::from(p[c]) - u16::from(sub);
                    }
                    if jj >= r {
                        let out = (y + t - r) * row_bytes + back(x, r - t) * 3;
                        for c in 0..3 {
                            rgb[out + c] = div.average(sums[d + c]);
                        }
                    }
                }
            }
        };

    for y in 0..h {
        let slot = (y % ring_rows) * row_bytes;
        ring[slot..slot + row_bytes].copy_from_slice(&rgb[y * row_bytes..(y + 1) * row_bytes]);
        // Interior: at least `len` along its line, not its end.
        let interior = if y >= len && y + 1 < h && w > len + 1 {
            if anti { 1..w - len } else { len..w - 1 }
        } else {
            0..0
        };
        for x in (0..w).filter(|x| !interior.contains(x)) {
            step(rgb, ring, sums, first, x, y);
        }
        if interior.is_empty() {
            continue;
        }
        let n = interior.len() * 3;
        let x0 = interior.start;
        let old_slot = ((y - len) % ring_rows) * row_bytes;
        let (cur, old) = if old_slot < slot {
            let (a, b) = ring.split_at(slot);
            (&b[x0 * 3..][..n], &a[old_slot + back(x0, len) * 3..][..n])
        } else {
            let (a, b) = ring.split_at(old_slot);
            (&a[slot + x0 * 3..][..n], &b[back(x0, len) * 3..][..n])
        };
        let sum = &mut sums[key(x0, y) * 3..][..n];
        let out = &mut rgb[(y - r) * row_bytes + back(x0, r) * 3..][..n];
        for (((o, s), c), b) in out.iter_mut().zip(sum.iter_mut()).zip(cur).zip(old) {
            *s = *s + u16::from(*c) - u16::from(*b);
            *o = div.average(*s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::synthetic::render::Layers;
    use crate::capture::synthetic::tests::{config, render, render_layers};
    use crate::capture::synthetic::{Split, SyntheticSource};
    use crate::frame::Perturbations;

    /// Variance of the 4-neighbour Laplacian of luma.
    fn laplacian_variance(rgb: &[u8], w: usize, h: usize) -> f64 {
        let luma: Vec<f64> = rgb
            .chunks_exact(3)
            .map(|p| 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]))
            .collect();
        let mut vals = Vec::new();
        for y in 1..h - 1 {
            for x in 1..w - 1 {
                let i = y * w + x;
                vals.push(luma[i - 1] + luma[i + 1] + luma[i - w] + luma[i + w] - 4.0 * luma[i]);
            }
        }
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / vals.len() as f64
    }

    #[test]
    fn motion_blur_lowers_laplacian_variance() {
        let (w, h) = (320usize, 240usize);
        let mut src = SyntheticSource::new(config(Split::Store, 2, w as u32, h as u32));
        let mut tested = 0;
        for i in 0..400 {
            let (blurred, truth) = render(&mut src, i);
            if !truth.perturbations.contains(Perturbations::MOTION_BLUR) {
                continue;
            }
            let (sharp, sharp_truth) = render_layers(
                &mut src,
                i,
                Layers {
                    blur: false,
                    ..Layers::ALL
                },
            );
            assert!(
                !sharp_truth
                    .perturbations
                    .contains(Perturbations::MOTION_BLUR)
            );
            assert_eq!(sharp_truth.boxes, truth.boxes);
            let vb = laplacian_variance(&blurred, w, h);
            let vs = laplacian_variance(&sharp, w, h);
            assert!(vb < vs * 0.5, "frame {i}: blurred {vb:.1} vs sharp {vs:.1}");
            tested += 1;
            if tested >= 6 {
                break;
            }
        }
        assert!(tested >= 3, "too few blurred frames");
    }

    #[test]
    fn blur_directly_smooths_and_preserves_flat_images() {
        let (w, h) = (64usize, 48usize);
        for dir in [
            BlurDir::Horizontal,
            BlurDir::Diagonal,
            BlurDir::AntiDiagonal,
        ] {
            let mut flat = vec![200u8; w * h * 3];
            let mut scratch = BlurScratch::default();
            motion_blur(&mut flat, w, h, dir, 9, &mut scratch);
            assert!(
                flat.iter().all(|&p| p == 200),
                "{dir:?} changed a flat image"
            );

            // Vertical stripes get averaged out along the blur.
            let mut stripes: Vec<u8> = (0..w * h)
                .flat_map(|i| {
                    let v = if (i % w) % 2 == 0 { 0 } else { 255 };
                    [v, v, v]
                })
                .collect();
            let before = laplacian_variance(&stripes, w, h);
            motion_blur(&mut stripes, w, h, dir, 9, &mut scratch);
            let after = laplacian_variance(&stripes, w, h);
            assert!(after < before * 0.1, "{dir:?}: {after} vs {before}");
        }
    }

    /// Straightforward per-pixel box blur along `dir` with edge replication.
    fn reference_blur(src: &[u8], w: usize, h: usize, dir: BlurDir, len: usize) -> Vec<u8> {
        let div = Divisor::new(len);
        let r = (len / 2) as i64;
        let mut out = vec![0u8; src.len()];
        for y in 0..h as i64 {
            for x in 0..w as i64 {
                // Step along the line, its start and its length.
                let (sx, sy, j, n) = match dir {
                    BlurDir::Horizontal => (1i64, 0i64, x, w as i64),
                    BlurDir::Diagonal => {
                        let j = x.min(y);
                        (1, 1, j, (w as i64 - (x - j)).min(h as i64 - (y - j)))
                    }
                    BlurDir::AntiDiagonal => {
                        let j = (w as i64 - 1 - x).min(y);
                        (-1, 1, j, (x + j + 1).min(h as i64 - (y - j)))
                    }
                };
                for c in 0..3 {
                    let mut sum = 0u16;
                    for k in -r..=r {
                        let m = (j + k).clamp(0, n - 1) - j;
                        let (px, py) = (x + sx * m, y + sy * m);
                        sum += u16::from(src[((py * w as i64 + px) * 3) as usize + c]);
                    }
                    out[((y * w as i64 + x) * 3) as usize + c] = if len == 1 {
                        src[((y * w as i64 + x) * 3) as usize + c]
                    } else {
                        div.average(sum)
                    };
                }
            }
        }
        out
    }

    #[test]
    fn fast_blur_matches_reference() {
        let mut rng = Rng::new(99);
        for (w, h) in [(37usize, 23usize), (20, 41), (64, 64), (5, 3)] {
            let src: Vec<u8> = (0..w * h * 3).map(|_| rng.below(256) as u8).collect();
            for dir in [
                BlurDir::Horizontal,
                BlurDir::Diagonal,
                BlurDir::AntiDiagonal,
            ] {
                for len in [1usize, 3, 9, 25] {
                    let mut fast = src.clone();
                    let mut scratch = BlurScratch::default();
                    motion_blur(&mut fast, w, h, dir, len, &mut scratch);
                    let slow = reference_blur(&src, w, h, dir, len);
                    assert!(fast == slow, "{w}x{h} {dir:?} len {len} differs");
                }
            }
        }
    }
}
