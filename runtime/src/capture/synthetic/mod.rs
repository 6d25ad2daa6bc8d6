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
//!
//! One file per concern: `rng.rs` holds the random streams and the portable maths,
//! `scene.rs` the product catalogue and the planning of each scene, `render.rs` the
//! drawing of the basket and the products, `perturb.rs` the perturbations (damage, hands,
//! lighting, blur) and `truth.rs` the ground truth read back from the drawing. This file
//! holds the settings and the source that ties them together.

mod perturb;
mod render;
mod rng;
mod scene;
mod truth;

use std::time::SystemTime;

use self::perturb::{BlurScratch, apply_lighting, draw_hand, motion_blur};
use self::render::{
    Canvas, Layers, NO_OBJECT, Rect, copy_background, draw_object, grain_tile, render_background,
};
use self::rng::{FRAME_SALT, mix};
use self::scene::{MAX_OBJECTS, Scene};
use self::truth::visible_boxes;
use super::{FrameSource, Next, SourceError, pacing::Pacer};
use crate::frame::{Frame, GroundTruth, Perturbations};

pub(crate) use self::rng::Rng;
pub use self::scene::{KNOWN_PRODUCTS, PRODUCT_NAMES};

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

/// Smallest accepted frame side; smaller configured values are raised to it.
const MIN_SIDE: u32 = 64;

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
    pacer: Pacer,
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
            noise: grain_tile(),
            blur: BlurScratch::new(w, h, ((25.0 * scale).round() as usize).max(3) | 1),
            ramp: Vec::with_capacity(w * 6),
            scene: Scene {
                objects: Vec::with_capacity(MAX_OBJECTS),
                ..Scene::default()
            },
            scene_id: None,
            next_index: 0,
            pacer: Pacer::new(config.fps),
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

    /// The same source, delivering frames from `index` on: the same cart (its seed
    /// draws the basket and background) seeing scenes it has not shown yet.
    pub(crate) fn starting_at(mut self, index: u64) -> Self {
        self.next_index = index;
        self
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
            self.scene.plan(
                self.stream_key(),
                scene_id,
                self.config.split,
                (w, h),
                self.scale,
                self.jitter,
            );
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
            draw_hand(&mut canvas, hand, hand_dx, hand_dy);
            perturbations.insert(Perturbations::HAND_OCCLUSION);
        }

        // Ground truth from the owner map: the visible extent of each product.
        perturbations.insert(visible_boxes(
            &scene.objects,
            &totals,
            &rects,
            &self.ids,
            w,
            &mut truth.boxes,
        ));

        if let (Some(light), true) = (&scene.lighting, layers.lighting) {
            apply_lighting(rgb, w, h, light, &mut self.ramp);
            perturbations.insert(Perturbations::LIGHTING);
        }

        if let (Some(blur), true) = (&scene.blur, layers.blur) {
            let len = blur.frame_len(blur_wobble, self.scale);
            motion_blur(rgb, w, h, blur.dir, len, &mut self.blur);
            perturbations.insert(Perturbations::MOTION_BLUR);
        }

        truth.perturbations = perturbations;
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
        self.pacer.wait();
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::scene::GEOM;
    use super::*;

    // `config`, `render` and `render_layers` are shared with the tests of the other files.

    pub(super) fn config(split: Split, seed: u64, w: u32, h: u32) -> SyntheticConfig {
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

    pub(super) fn render(src: &mut SyntheticSource, index: u64) -> (Vec<u8>, GroundTruth) {
        let mut rgb = vec![0u8; src.w * src.h * 3];
        let mut truth = GroundTruth::default();
        src.render(index, &mut rgb, &mut truth);
        (rgb, truth)
    }

    pub(super) fn render_layers(
        src: &mut SyntheticSource,
        index: u64,
        layers: Layers,
    ) -> (Vec<u8>, GroundTruth) {
        let mut rgb = vec![0u8; src.w * src.h * 3];
        let mut truth = GroundTruth::default();
        src.render_with(index, &mut rgb, &mut truth, layers);
        (rgb, truth)
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
