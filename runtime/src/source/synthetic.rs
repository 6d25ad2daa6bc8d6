//! Deterministic procedural cart-camera scenes.
//!
//! [`SyntheticSource`] draws what a camera mounted on a shopping-cart handle would see:
//! the wire grid of the basket over the store floor, the edge of the kid seat, and a few
//! products lying in the basket. It is the default demo camera, the generator behind the
//! exported training sets (a clean *studio* split and a messy *store* split), and the
//! input of the benchmarks, so it is:
//!
//! - **deterministic**: the pixels and the ground truth of frame `index` depend only on
//!   the seed, the split, `frames_per_scene`, the frame size and `index`. All randomness
//!   comes from a SplitMix64 generator keyed by those values, and the drawing uses only
//!   IEEE-exact float operations (`+ - * /`, `sqrt`, `floor`) and integers — no `sin`,
//!   `exp` or platform maths library — so every machine renders the same bytes;
//! - **fast**: the basket is rendered once in [`SyntheticSource::new`] and copied per
//!   frame; products are shaded only inside their bounding boxes; blur and lighting are
//!   integer passes; every buffer is held in the source, so a frame allocates nothing
//!   after the first one.
//!
//! Store scenes carry the failure modes of a studio-trained detector, each tagged in
//! [`GroundTruth::perturbations`]: lighting changes, motion blur, hands, damaged
//! packaging, unusual angles and product types never seen in studio data.

use std::thread;
use std::time::{Duration, Instant, SystemTime};

use super::{FrameSource, Next, SourceError};
use crate::frame::{Frame, GroundTruth, Perturbations, TruthBox};

/// Which distribution to draw scenes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// Training-studio conditions: even light, sharp, upright, unoccluded, known products.
    Studio,
    /// In-store conditions: each scene may carry any of the perturbations.
    Store,
}

impl Split {
    /// Stable lowercase name (`studio` | `store`), used in dataset paths and logs.
    pub fn name(self) -> &'static str {
        match self {
            Split::Studio => "studio",
            Split::Store => "store",
        }
    }

    fn key(self) -> u64 {
        match self {
            Split::Studio => 0x5354_5544_494f,
            Split::Store => 0x0053_544f_5245,
        }
    }
}

/// Validated settings of a synthetic camera (the TOML parsing is elsewhere).
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticConfig {
    /// Frame width in pixels, at least 64.
    pub width: u32,
    /// Frame height in pixels, at least 64.
    pub height: u32,
    /// Frames per second to pace at; 0 = as fast as possible.
    pub fps: f32,
    pub seed: u64,
    pub split: Split,
    /// Consecutive frames that show the same scene (with small camera jitter), so
    /// temporal signals have something to compare. At least 1.
    pub frames_per_scene: u32,
    /// Render only the first `prerendered` frames, then deliver them again in a cycle,
    /// the way a camera hands over frames it filled by DMA: acquiring costs a copy, not a
    /// render. 0 renders every frame. `framesift bench` uses it so the renderer's CPU
    /// time is not counted as pipeline cost; not a TOML key.
    pub prerendered: u32,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            width: 1280,
            height: 720,
            fps: 0.0,
            seed: 1,
            split: Split::Store,
            frames_per_scene: 8,
            prerendered: 0,
        }
    }
}

/// Product type names, indexed by [`TruthBox::class_id`]. The first [`KNOWN_PRODUCTS`]
/// appear in studio data; the rest only in store data ("never seen in training").
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

const CEREAL_BOX: u8 = 0;
const SODA_CAN: u8 = 1;
const MILK_CARTON: u8 = 2;
const WATER_BOTTLE: u8 = 3;
const APPLE: u8 = 4;
const CHIP_BAG: u8 = 5;
const BANANA: u8 = 6;
const DETERGENT_JUG: u8 = 7;

/// Smallest accepted frame side; smaller configured values are raised to it.
const MIN_SIDE: u32 = 64;
/// Most products in one scene (object ids 1..=MAX_OBJECTS live in the id buffer).
const MAX_OBJECTS: usize = 6;
/// Id-buffer value of pixels that show no product (background, hands).
const NO_OBJECT: u8 = 0;

/// Probability that a store scene gets each perturbation.
const STORE_PERTURBATION_P: f32 = 0.3;

const SCENE_SALT: u64 = 0x7363_656e_6521;
const FRAME_SALT: u64 = 0x6672_616d_6521;
const BACKGROUND_SALT: u64 = 0x6261_736b_6574;

/// Shape of each product type: width / height of its upright box and the range of its
/// height as a fraction of the frame height.
struct ClassGeom {
    aspect: f32,
    min_h: f32,
    max_h: f32,
}

const GEOM: [ClassGeom; 8] = [
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

// ---------------------------------------------------------------------------------------
// Randomness and portable maths
// ---------------------------------------------------------------------------------------

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Order-sensitive hash of two words.
fn mix(a: u64, b: u64) -> u64 {
    splitmix64(a ^ splitmix64(b).rotate_left(17))
}

/// SplitMix64 stream (also `framesift bench`'s resampling).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), exactly representable (24 bits).
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / 16_777_216.0)
    }

    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform integer in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }

    fn chance(&mut self, p: f32) -> bool {
        self.unit() < p
    }

    fn sign(&mut self) -> f32 {
        if self.next_u64() & 1 == 0 { 1.0 } else { -1.0 }
    }
}

/// Sine and cosine of an angle in degrees (|deg| <= 180), from a polynomial so the result
/// does not depend on the platform's maths library.
fn sin_cos_deg(deg: f32) -> (f32, f32) {
    let d = deg.clamp(-180.0, 180.0);
    // Fold into [-90, 90] for the sine; the cosine's sign comes from the fold.
    let (folded, cos_sign) = if d > 90.0 {
        (180.0 - d, -1.0)
    } else if d < -90.0 {
        (-180.0 - d, -1.0)
    } else {
        (d, 1.0)
    };
    let x = folded * (std::f32::consts::PI / 180.0);
    let x2 = x * x;
    let s = x
        * (1.0
            - x2 / 6.0
                * (1.0 - x2 / 20.0 * (1.0 - x2 / 42.0 * (1.0 - x2 / 72.0 * (1.0 - x2 / 110.0)))));
    let s = s.clamp(-1.0, 1.0);
    let c = cos_sign * (1.0 - s * s).max(0.0).sqrt();
    (s, c)
}

/// Triangle wave with period 1: 1 at integers, 0 half-way between.
#[inline]
fn tri(x: f32) -> f32 {
    let f = x - x.floor();
    (2.0 * f - 1.0).abs()
}

#[inline]
fn to_u8(x: f32) -> u8 {
    (x + 0.5).clamp(0.0, 255.0) as u8
}

/// Side of the tile of grain added to drawn pixels (a power of two).
const NOISE_TILE: usize = 64;

/// Small fixed per-pixel noise in -8..=7 (sensor grain / print texture).
#[inline]
fn pixel_noise(x: u32, y: u32, salt: u32) -> i32 {
    let h = (x.wrapping_mul(0x9e37_79b1) ^ y.wrapping_mul(0x85eb_ca77) ^ salt)
        .wrapping_mul(0xc2b2_ae3d);
    let h = h ^ (h >> 15);
    ((h.wrapping_mul(0x2c1b_3c6d) >> 28) as i32) - 8
}

fn mix3(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

fn scale3(a: [f32; 3], s: f32) -> [f32; 3] {
    [a[0] * s, a[1] * s, a[2] * s]
}

// ---------------------------------------------------------------------------------------
// Scene description
// ---------------------------------------------------------------------------------------

/// Damage applied to one product, in its normalised local coordinates.
#[derive(Debug, Clone, Copy, Default)]
struct Damage {
    active: bool,
    /// A torn-off corner: points with `su*u + sv*v > cut` are missing.
    wedge: bool,
    su: f32,
    sv: f32,
    cut: f32,
    /// A crushed dent: an elliptical bite out of one edge with a crease around it.
    dent: bool,
    du: f32,
    dv: f32,
    dr: f32,
    /// A faded, scuffed patch.
    fade: bool,
    fu: f32,
    fv: f32,
    fru: f32,
    frv: f32,
}

/// One product placed in a scene (frame coordinates, before the per-frame jitter).
#[derive(Debug, Clone, Copy, Default)]
struct Obj {
    class: u8,
    variant: u8,
    cx: f32,
    cy: f32,
    /// Half width / half height of the upright product in pixels.
    hw: f32,
    hh: f32,
    cos: f32,
    sin: f32,
    /// Perspective taper: the width at local `v` is `hw * (1 + taper * v)`.
    taper: f32,
    /// Brightness of this instance (print and exposure variation).
    tint: f32,
    angled: bool,
    damage: Damage,
}

impl Obj {
    /// Half extents of the axis-aligned box around the rotated, tapered product.
    fn extents(&self) -> (f32, f32) {
        let hw = self.hw * (1.0 + self.taper.abs());
        let ex = self.cos.abs() * hw + self.sin.abs() * self.hh;
        let ey = self.sin.abs() * hw + self.cos.abs() * self.hh;
        (ex, ey)
    }
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
struct Hand {
    caps: [Capsule; HAND_CAPSULES],
    skin: [f32; 3],
    sleeve: [f32; 3],
}

/// A global lighting change: per-channel gain times a clamped linear ramp.
#[derive(Debug, Clone, Copy, Default)]
struct Lighting {
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
enum BlurDir {
    Horizontal,
    /// Down-right diagonal.
    Diagonal,
    /// Down-left diagonal.
    AntiDiagonal,
}

#[derive(Debug, Clone, Copy)]
struct Blur {
    dir: BlurDir,
    /// Blur length in pixels at 720 lines, 9..=25.
    base_len: f32,
}

#[derive(Debug, Default)]
struct Scene {
    objects: Vec<Obj>,
    hand: Option<Hand>,
    lighting: Option<Lighting>,
    blur: Option<Blur>,
    /// Shift of the basket for this scene, pixels.
    bg_shift: (i32, i32),
    /// Basket brightness for this scene, 8.8 fixed point (<= 256).
    bg_gain: u16,
}

/// Which layers a render draws; the public render draws all of them. Tests switch layers
/// off to compare a frame with its object-free or unblurred twin.
#[derive(Debug, Clone, Copy)]
struct Layers {
    objects: bool,
    hand: bool,
    lighting: bool,
    blur: bool,
}

impl Layers {
    const ALL: Self = Self {
        objects: true,
        hand: true,
        lighting: true,
        blur: true,
    };
}

/// The frame being drawn: pixels, the product owning each pixel, and the grain tile.
struct Canvas<'a> {
    rgb: &'a mut [u8],
    ids: &'a mut [u8],
    w: usize,
    h: usize,
    noise: &'a [f32],
}

impl Canvas<'_> {
    /// Grain at pixel (`x`, `y`), in -8..=7 grey levels.
    #[inline]
    fn grain(&self, x: usize, y: usize) -> f32 {
        self.noise[(y % NOISE_TILE) * NOISE_TILE + x % NOISE_TILE]
    }
}

/// Pixel rectangle, inclusive-exclusive, already clipped to the frame.
#[derive(Debug, Clone, Copy, Default)]
struct Rect {
    x0: usize,
    y0: usize,
    x1: usize,
    y1: usize,
}

// ---------------------------------------------------------------------------------------
// The source
// ---------------------------------------------------------------------------------------

/// A procedural cart camera. See the module documentation.
pub struct SyntheticSource {
    config: SyntheticConfig,
    w: usize,
    h: usize,
    /// Frame height / 720: lengths are specified for a 720-line frame.
    scale: f32,
    /// Largest jitter of the camera, pixels.
    jitter: f32,
    /// Border around the frame in the pre-rendered basket, covering shift + jitter.
    margin: usize,
    bg: Vec<u8>,
    bg_w: usize,
    /// Which product covers each pixel (1-based object index), for the ground truth.
    ids: Vec<u8>,
    /// Grain added to drawn pixels, `NOISE_TILE`² values in -8..=7.
    noise: Vec<f32>,
    /// Scratch buffers for the blur.
    blur: BlurScratch,
    /// Scratch per-column lighting ramp.
    ramp: Vec<i16>,
    scene: Scene,
    scene_id: Option<u64>,
    next_index: u64,
    period: Duration,
    deadline: Option<Instant>,
    /// The cycle of `config.prerendered` frames (pixels, truth), rendered by `new`.
    cycle: Vec<(Vec<u8>, GroundTruth)>,
}

impl SyntheticSource {
    /// Make a source and pre-render its basket. Out-of-range settings are raised to their
    /// minimum (64×64 frames, one frame per scene); a negative or non-finite `fps` means
    /// "as fast as possible".
    pub fn new(config: SyntheticConfig) -> Self {
        let mut config = config;
        config.width = config.width.max(MIN_SIDE);
        config.height = config.height.max(MIN_SIDE);
        config.frames_per_scene = config.frames_per_scene.max(1);
        if !(config.fps.is_finite() && config.fps > 0.0) {
            config.fps = 0.0;
        }
        let period = if config.fps > 0.0 {
            Duration::from_secs_f64(1.0 / f64::from(config.fps.max(0.001)))
        } else {
            Duration::ZERO
        };

        let w = config.width as usize;
        let h = config.height as usize;
        let scale = config.height as f32 / 720.0;
        let jitter = (3.0 * scale).max(1.0);
        let shift = (8.0 * scale).max(1.0);
        let margin = (jitter + shift).ceil() as usize + 2;
        let bg_w = w + 2 * margin;
        let bg_h = h + 2 * margin;
        let bg = render_background(config.seed, w, h, margin, bg_w, bg_h);

        let mut source = Self {
            w,
            h,
            scale,
            jitter,
            margin,
            bg,
            bg_w,
            ids: vec![NO_OBJECT; w * h],
            noise: (0..NOISE_TILE * NOISE_TILE)
                .map(|i| {
                    pixel_noise((i % NOISE_TILE) as u32, (i / NOISE_TILE) as u32, 0x5eed) as f32
                })
                .collect(),
            blur: BlurScratch::new(w, h, ((25.0 * scale).round() as usize).max(3) | 1),
            ramp: Vec::with_capacity(w * 6),
            scene: Scene {
                objects: Vec::with_capacity(MAX_OBJECTS),
                ..Scene::default()
            },
            scene_id: None,
            next_index: 0,
            period,
            deadline: None,
            cycle: Vec::new(),
            config,
        };
        // Rendered here, on the caller's thread, so a pipeline's capture thread only
        // ever copies: rendering costs several ms a frame and would otherwise land in
        // the first frames of every bench round.
        for index in 0..u64::from(source.config.prerendered) {
            let mut rgb = vec![0; w * h * 3];
            let mut truth = GroundTruth::default();
            source.render(index, &mut rgb, &mut truth);
            source.cycle.push((rgb, truth));
        }
        source
    }

    /// Render frame `index` into `rgb` (packed RGB8, `width * height * 3` bytes) and its
    /// ground truth into `truth` (cleared first; its allocation is reused).
    ///
    /// Pure and deterministic: the same seed, split, `frames_per_scene`, size and `index`
    /// always give byte-identical pixels and truth, whatever was rendered before.
    ///
    /// # Panics
    ///
    /// If `rgb.len()` is not `width * height * 3`.
    pub fn render(&mut self, index: u64, rgb: &mut [u8], truth: &mut GroundTruth) {
        self.render_with(index, rgb, truth, Layers::ALL);
    }

    fn stream_key(&self) -> u64 {
        mix(self.config.seed, self.config.split.key())
    }

    fn render_with(&mut self, index: u64, rgb: &mut [u8], truth: &mut GroundTruth, layers: Layers) {
        let (w, h) = (self.w, self.h);
        assert_eq!(
            rgb.len(),
            w * h * 3,
            "synthetic render: buffer is not {w}x{h} RGB"
        );
        let scene_id = index / u64::from(self.config.frames_per_scene);
        if self.scene_id != Some(scene_id) {
            self.plan_scene(scene_id);
            self.scene_id = Some(scene_id);
        }

        // Per-frame camera jitter and hand / blur wobble.
        let mut frng = Rng::new(mix(mix(self.stream_key(), FRAME_SALT), index));
        let jx = frng.range(-self.jitter, self.jitter).round();
        let jy = frng.range(-self.jitter, self.jitter).round();
        let hand_dx = jx + frng.range(-4.0, 4.0) * self.scale;
        let hand_dy = jy + frng.range(-4.0, 4.0) * self.scale;
        let blur_wobble = frng.range(-3.0, 3.0);

        // Basket: copy of the pre-rendered background at this scene's shift + jitter.
        let scene = &self.scene;
        let m = self.margin as i32;
        let sx = (m - scene.bg_shift.0 - jx as i32).clamp(0, 2 * m) as usize;
        let sy = (m - scene.bg_shift.1 - jy as i32).clamp(0, 2 * m) as usize;
        copy_background(rgb, &self.bg, self.bg_w, w, h, sx, sy, scene.bg_gain);

        truth.clear();
        let mut perturbations = Perturbations::NONE;

        // Products, with a per-pixel owner map for the ground truth.
        self.ids.fill(NO_OBJECT);
        let mut totals = [0u32; MAX_OBJECTS];
        let mut rects = [Rect::default(); MAX_OBJECTS];
        let mut canvas = Canvas {
            rgb,
            ids: &mut self.ids,
            w,
            h,
            noise: &self.noise,
        };
        if layers.objects {
            for (i, obj) in scene.objects.iter().enumerate() {
                let (total, rect) = draw_object(&mut canvas, obj, jx, jy, (i + 1) as u8);
                totals[i] = total;
                rects[i] = rect;
            }
        }

        if let (Some(hand), true) = (&scene.hand, layers.hand) {
            for cap in &hand.caps {
                let color = if cap.sleeve { hand.sleeve } else { hand.skin };
                draw_capsule(&mut canvas, cap, hand_dx, hand_dy, color);
            }
            perturbations.insert(Perturbations::HAND_OCCLUSION);
        }

        // Ground truth from the owner map: the visible extent of each product.
        for (i, obj) in scene.objects.iter().enumerate() {
            let total = totals[i];
            if total == 0 {
                continue;
            }
            let id = (i + 1) as u8;
            let r = rects[i];
            let mut visible = 0u32;
            let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
            for y in r.y0..r.y1 {
                let row = &self.ids[y * w + r.x0..y * w + r.x1];
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
            truth.boxes.push(TruthBox {
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

        if let (Some(light), true) = (&scene.lighting, layers.lighting) {
            apply_lighting(rgb, w, h, light, &mut self.ramp);
            perturbations.insert(Perturbations::LIGHTING);
        }

        if let (Some(blur), true) = (&scene.blur, layers.blur) {
            let base = (blur.base_len + blur_wobble).clamp(9.0, 25.0);
            let len = match blur.dir {
                BlurDir::Horizontal => base,
                // Diagonal steps are sqrt(2) pixels long.
                BlurDir::Diagonal | BlurDir::AntiDiagonal => base * std::f32::consts::FRAC_1_SQRT_2,
            } * self.scale;
            let len = ((len.round() as usize).max(3)) | 1;
            motion_blur(rgb, w, h, blur.dir, len, &mut self.blur);
            perturbations.insert(Perturbations::MOTION_BLUR);
        }

        truth.perturbations = perturbations;
    }

    /// Choose the contents of scene `scene_id` (pure function of the stream key).
    fn plan_scene(&mut self, scene_id: u64) {
        let mut rng = Rng::new(mix(mix(self.stream_key(), SCENE_SALT), scene_id));
        let (wf, hf) = (self.w as f32, self.h as f32);
        let store = self.config.split == Split::Store;
        let scene = &mut self.scene;
        scene.objects.clear();
        scene.hand = None;
        scene.lighting = None;
        scene.blur = None;

        let mut want = [false; 6];
        if store {
            for flag in &mut want {
                *flag = rng.chance(STORE_PERTURBATION_P);
            }
        }
        let [lighting, blur, hand, damaged, angle, unseen] = want;

        let shift = 8.0 * self.scale;
        scene.bg_shift = (
            rng.range(-shift, shift).round() as i32,
            rng.range(-shift, shift).round() as i32,
        );
        scene.bg_gain = if store {
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
            let edge = self.jitter + 2.0;
            let (lo_x, hi_x, lo_y, hi_y) = if inside {
                (ex + edge, wf - ex - edge, ey + edge, hf - ey - edge)
            } else {
                (ex * 0.3, wf - ex * 0.3, ey * 0.3, hf - ey * 0.3)
            };
            if lo_x >= hi_x || lo_y >= hi_y {
                continue;
            }
            let n = scene.objects.len();
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
                scene.objects.push(obj);
            }
        }

        if damaged && !scene.objects.is_empty() {
            // Damage one or two products in full view, packaged ones first (fruit does
            // not tear).
            let n = scene.objects.len();
            let victims = 1 + usize::from(n > 2 && rng.chance(0.4));
            let start = rng.below(n as u32) as usize;
            let margin = self.jitter + 1.0;
            let mut done = 0;
            for pass in 0..2 {
                for j in 0..n {
                    if done >= victims {
                        break;
                    }
                    let obj = &mut scene.objects[(start + j) % n];
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

        if hand && !scene.objects.is_empty() {
            let target = scene.objects[rng.below(scene.objects.len() as u32) as usize];
            scene.hand = Some(plan_hand(&mut rng, &target, wf, hf));
        }

        if lighting {
            scene.lighting = Some(plan_lighting(&mut rng));
        }

        if blur {
            let dir = match rng.below(3) {
                0 => BlurDir::Horizontal,
                1 => BlurDir::Diagonal,
                _ => BlurDir::AntiDiagonal,
            };
            scene.blur = Some(Blur {
                dir,
                base_len: rng.range(11.0, 23.0),
            });
        }
    }

    fn pace(&mut self) {
        if self.period.is_zero() {
            return;
        }
        let now = Instant::now();
        let deadline = self.deadline.unwrap_or(now);
        if deadline > now {
            thread::sleep(deadline - now);
        }
        let now = Instant::now();
        let next = deadline + self.period;
        // Fell more than a period behind: restart the schedule rather than burst.
        self.deadline = Some(if next < now { now } else { next });
    }
}

impl FrameSource for SyntheticSource {
    fn next_frame(&mut self, frame: &mut Frame) -> Result<Next, SourceError> {
        frame.clear();
        frame.set_size(self.config.width, self.config.height);
        let mut truth = frame.truth.take().unwrap_or_default();
        let index = self.next_index;
        if self.cycle.is_empty() {
            self.render(index, &mut frame.rgb, &mut truth);
        } else {
            let (rgb, cached) = &self.cycle[(index % self.cycle.len() as u64) as usize];
            frame.rgb.copy_from_slice(rgb);
            truth.clone_from(cached);
        }
        frame.truth = Some(truth);
        frame.seq = index;
        self.next_index += 1;
        self.pace();
        frame.captured_at = SystemTime::now();
        Ok(Next::Frame)
    }

    fn describe(&self) -> String {
        let cycle = match self.config.prerendered {
            0 => String::new(),
            n => format!(", {n} pre-rendered frames cycled"),
        };
        format!(
            "synthetic {}x{} seed {} split {}{cycle}",
            self.config.width,
            self.config.height,
            self.config.seed,
            self.config.split.name()
        )
    }
}

fn plan_damage(rng: &mut Rng) -> Damage {
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
fn plan_hand(rng: &mut Rng, target: &Obj, wf: f32, hf: f32) -> Hand {
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

fn plan_lighting(rng: &mut Rng) -> Lighting {
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
fn render_background(
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
fn copy_background(
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
fn draw_object(canvas: &mut Canvas<'_>, obj: &Obj, ox: f32, oy: f32, id: u8) -> (u32, Rect) {
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

// ---------------------------------------------------------------------------------------
// Hands, lighting, blur
// ---------------------------------------------------------------------------------------

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
fn apply_lighting(rgb: &mut [u8], w: usize, h: usize, light: &Lighting, ramp: &mut Vec<i16>) {
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
struct BlurScratch {
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
    fn new(w: usize, h: usize, max_len: usize) -> Self {
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
fn motion_blur(
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

// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn config(split: Split, seed: u64, w: u32, h: u32) -> SyntheticConfig {
        SyntheticConfig {
            width: w,
            height: h,
            fps: 0.0,
            seed,
            split,
            frames_per_scene: 4,
            prerendered: 0,
        }
    }

    fn render(src: &mut SyntheticSource, index: u64) -> (Vec<u8>, GroundTruth) {
        let mut rgb = vec![0u8; src.w * src.h * 3];
        let mut truth = GroundTruth::default();
        src.render(index, &mut rgb, &mut truth);
        (rgb, truth)
    }

    fn render_layers(
        src: &mut SyntheticSource,
        index: u64,
        layers: Layers,
    ) -> (Vec<u8>, GroundTruth) {
        let mut rgb = vec![0u8; src.w * src.h * 3];
        let mut truth = GroundTruth::default();
        src.render_with(index, &mut rgb, &mut truth, layers);
        (rgb, truth)
    }

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
    fn split_names_and_defaults() {
        assert_eq!(Split::Studio.name(), "studio");
        assert_eq!(Split::Store.name(), "store");
        let d = SyntheticConfig::default();
        assert_eq!(
            (d.width, d.height, d.seed, d.frames_per_scene),
            (1280, 720, 1, 8)
        );
        assert_eq!(d.split, Split::Store);
        assert_eq!(d.fps, 0.0);
        assert_eq!(PRODUCT_NAMES.len(), 8);
        assert_eq!(GEOM.len(), PRODUCT_NAMES.len());
    }

    #[test]
    fn sin_cos_is_accurate() {
        for i in -180..=180 {
            let deg = i as f32;
            let (s, c) = sin_cos_deg(deg);
            let rad = f64::from(deg).to_radians();
            assert!((f64::from(s) - rad.sin()).abs() < 1e-4, "sin {deg}");
            assert!((f64::from(c) - rad.cos()).abs() < 2e-3, "cos {deg}");
        }
    }

    #[test]
    fn rendering_is_deterministic() {
        for split in [Split::Studio, Split::Store] {
            let mut a = SyntheticSource::new(config(split, 7, 320, 240));
            let mut b = SyntheticSource::new(config(split, 7, 320, 240));
            let (rgb_a, truth_a) = render(&mut a, 9);
            // Render other scenes in between: the cache must not change the result.
            let _ = render(&mut a, 30);
            let _ = render(&mut a, 8);
            let (rgb_a2, truth_a2) = render(&mut a, 9);
            let _ = render(&mut b, 101);
            let (rgb_b, truth_b) = render(&mut b, 9);
            assert!(rgb_a == rgb_a2 && rgb_a == rgb_b, "{split:?} pixels differ");
            assert_eq!(truth_a, truth_a2);
            assert_eq!(truth_a, truth_b);
            assert!(!truth_a.boxes.is_empty());

            let mut other = SyntheticSource::new(config(split, 8, 320, 240));
            let (rgb_o, _) = render(&mut other, 9);
            assert!(rgb_o != rgb_a, "different seeds gave the same frame");
        }
    }

    #[test]
    fn frames_of_a_scene_look_alike_and_scenes_differ() {
        let mut src = SyntheticSource::new(config(Split::Studio, 3, 320, 240));
        let (a, ta) = render(&mut src, 4);
        let (b, tb) = render(&mut src, 5);
        let (c, _) = render(&mut src, 8);
        let diff = |x: &[u8], y: &[u8]| {
            x.iter()
                .zip(y)
                .map(|(p, q)| u64::from(p.abs_diff(*q)))
                .sum::<u64>() as f64
                / x.len() as f64
        };
        assert_eq!(ta.boxes.len(), tb.boxes.len());
        for (p, q) in ta.boxes.iter().zip(&tb.boxes) {
            assert_eq!(p.class_id, q.class_id);
            assert!(
                (p.x1 - q.x1).abs() <= 3.0 && (p.y1 - q.y1).abs() <= 3.0,
                "{p:?} vs {q:?}"
            );
        }
        assert!(
            diff(&a, &b) < diff(&a, &c),
            "same scene should be closer than the next scene"
        );
    }

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

    #[test]
    fn next_frame_fills_the_frame() {
        let mut src = SyntheticSource::new(config(Split::Store, 4, 160, 120));
        let mut frame = Frame::with_capacity(160, 120);
        frame.origin.push_str("stale");
        frame.encoded.extend_from_slice(b"stale");
        for expected in 0..3 {
            assert_eq!(src.next_frame(&mut frame).ok(), Some(Next::Frame));
            assert_eq!(frame.seq, expected);
            assert_eq!((frame.width, frame.height), (160, 120));
            assert_eq!(frame.rgb.len(), 160 * 120 * 3);
            assert!(frame.origin.is_empty() && frame.encoded.is_empty());
            let (rgb, truth) = render(&mut src, expected);
            assert_eq!(frame.rgb, rgb);
            assert_eq!(frame.truth.as_ref(), Some(&truth));
        }
        assert!(src.describe().contains("160x120"));
    }

    #[test]
    fn a_prerendered_cycle_repeats_the_rendered_frames() {
        let mut src = SyntheticSource::new(SyntheticConfig {
            prerendered: 3,
            ..config(Split::Store, 9, 96, 64)
        });
        let mut reference = SyntheticSource::new(config(Split::Store, 9, 96, 64));
        let mut frame = Frame::with_capacity(96, 64);
        for i in 0..7u64 {
            assert!(src.next_frame(&mut frame).is_ok());
            assert_eq!(frame.seq, i, "sequence numbers keep counting");
            let (rgb, truth) = render(&mut reference, i % 3);
            assert_eq!(frame.rgb, rgb, "frame {i} is rendered frame {}", i % 3);
            assert_eq!(frame.truth.as_ref(), Some(&truth));
        }
    }

    #[test]
    fn pacing_keeps_the_rate() {
        let mut src = SyntheticSource::new(SyntheticConfig {
            fps: 50.0,
            ..config(Split::Studio, 1, 64, 64)
        });
        let mut frame = Frame::with_capacity(64, 64);
        let start = Instant::now();
        for _ in 0..6 {
            assert!(src.next_frame(&mut frame).is_ok());
        }
        // Six frames at 50 fps: the first at once, then five 20 ms periods.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(95), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(400), "{elapsed:?}");
    }

    /// `cargo test --release -p framesift --lib synthetic -- --ignored --nocapture`
    #[test]
    #[ignore = "timing; run in release"]
    fn render_time_1280x720() {
        for split in [Split::Studio, Split::Store] {
            let mut src = SyntheticSource::new(SyntheticConfig {
                split,
                ..SyntheticConfig::default()
            });
            let mut rgb = vec![0u8; 1280 * 720 * 3];
            let mut truth = GroundTruth::default();
            src.render(0, &mut rgb, &mut truth);
            let frames = 400u64;
            let start = Instant::now();
            let mut worst = Duration::ZERO;
            for i in 0..frames {
                let t = Instant::now();
                src.render(i, &mut rgb, &mut truth);
                worst = worst.max(t.elapsed());
            }
            let mean = start.elapsed() / frames as u32;
            println!("{split:?} 1280x720: mean {mean:?}, worst {worst:?}");
        }
    }
}
