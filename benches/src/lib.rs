//! Inputs for the stage benchmarks in `benches/stages.rs`: realistic frames, YUYV
//! buffers, downscaled luma and detector outputs (real ones captured with ONNX Runtime
//! when a model and the library are at hand, synthetic ones otherwise).
//!
//! Kept in the library so the input generators are unit-tested (`cargo test`) and the
//! bench file holds only measurements.

use std::path::{Path, PathBuf};

use framesift::{
    capture::{
        preprocess::{Letterbox, Preprocessor, STATS_DOWNSCALE},
        synthetic::{SyntheticConfig, SyntheticSource},
    },
    config::Config,
    frame::{Frame, GroundTruth},
    infer::{DecodeParams, Decoder, Detection, Layout, Model, ModelFile, model},
};

/// Frame size the stage benchmarks use: a typical USB cart camera.
pub const WIDTH: u32 = 1280;
pub const HEIGHT: u32 = 720;

/// The decode parameters of the default config (confidence 0.25, uncertainty band 0.15,
/// IoU 0.45, 100 detections).
pub const DECODE_PARAMS: DecodeParams = DecodeParams {
    confidence: 0.25,
    keep_down_to: 0.10,
    iou: 0.45,
    max_detections: 100,
};

/// Classes of the benchmark models (COCO-sized heads).
pub const CLASSES: usize = 80;

/// Render synthetic frame `index` (store split, default seed) into a pooled frame.
pub fn synthetic_frame(source: &mut SyntheticSource, index: u64, width: u32, height: u32) -> Frame {
    let mut frame = Frame::with_capacity(width, height);
    frame.set_size(width, height);
    let mut truth = GroundTruth::default();
    source.render(index, &mut frame.rgb, &mut truth);
    frame.seq = index;
    frame.truth = Some(truth);
    frame
}

/// The default synthetic source at `width × height`.
pub fn synthetic_source(width: u32, height: u32) -> SyntheticSource {
    SyntheticSource::new(SyntheticConfig {
        width,
        height,
        ..SyntheticConfig::default()
    })
}

/// Packed RGB8 → YUYV (4:2:2), BT.601 limited range, chroma averaged over each pixel
/// pair; the inverse of what `framesift::codec::yuyv_to_rgb` expects. `width`
/// must be even.
pub fn rgb_to_yuyv(rgb: &[u8], width: u32, height: u32) -> Vec<u8> {
    assert!(width.is_multiple_of(2), "rgb_to_yuyv: width must be even");
    let (w, h) = (width as usize, height as usize);
    assert_eq!(
        rgb.len(),
        w * h * 3,
        "rgb_to_yuyv: buffer is not {w}x{h} RGB"
    );
    let mut out = Vec::with_capacity(w * h * 2);
    for pair in rgb.chunks_exact(6) {
        let px = |i: usize| {
            (
                i32::from(pair[i * 3]),
                i32::from(pair[i * 3 + 1]),
                i32::from(pair[i * 3 + 2]),
            )
        };
        let (r0, g0, b0) = px(0);
        let (r1, g1, b1) = px(1);
        let y = |r: i32, g: i32, b: i32| (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16) as u8;
        let (r, g, b) = ((r0 + r1) / 2, (g0 + g1) / 2, (b0 + b1) / 2);
        let u = (((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128).clamp(0, 255) as u8;
        let v = (((112 * r - 94 * g - 18 * b + 128) >> 8) + 128).clamp(0, 255) as u8;
        out.extend_from_slice(&[y(r0, g0, b0), u, y(r1, g1, b1), v]);
    }
    out
}

/// The luma image `FrameMeter` computes its blur on: BT.601 luma box-averaged over
/// `STATS_DOWNSCALE`² blocks (1280×720 → 320×180). Returns `(luma, w, h)`.
pub fn downscaled_luma(frame: &Frame) -> (Vec<f32>, usize, usize) {
    let k = STATS_DOWNSCALE;
    let (w, h) = (frame.width as usize, frame.height as usize);
    let (sw, sh) = (w / k, h / k);
    let mut luma = vec![0.0f32; sw * sh];
    for (i, out) in luma.iter_mut().enumerate() {
        let (sx, sy) = (i % sw, i / sw);
        let mut sum = 0.0f32;
        for dy in 0..k {
            for dx in 0..k {
                let p = ((sy * k + dy) * w + sx * k + dx) * 3;
                let px = &frame.rgb[p..p + 3];
                sum +=
                    0.299 * f32::from(px[0]) + 0.587 * f32::from(px[1]) + 0.114 * f32::from(px[2]);
            }
        }
        *out = sum / (k * k) as f32;
    }
    (luma, sw, sh)
}

/// One detector output with what produced it.
#[derive(Debug, Clone)]
pub struct Output {
    /// Row-major `[1, 4 + CLASSES, n]` (YOLOv8 layout).
    pub data: Vec<f32>,
    pub shape: [usize; 3],
    /// Letterbox of a `WIDTH × HEIGHT` frame into the model input.
    pub letterbox: Letterbox,
}

impl Output {
    /// Candidates whose best class score reaches `floor`.
    pub fn candidates_above(&self, floor: f32) -> usize {
        let n = self.shape[2];
        let nc = self.shape[1] - 4;
        (0..n)
            .filter(|&i| (0..nc).any(|c| self.data[(4 + c) * n + i] >= floor))
            .count()
    }

    /// Detections after decode + NMS with [`DECODE_PARAMS`].
    pub fn detections(&self) -> Vec<Detection> {
        let mut decoder = Decoder::new(Layout::YoloV8, self.shape[1] - 4, DECODE_PARAMS);
        let mut out = Vec::new();
        decoder
            .decode(&self.data, &self.shape, &self.letterbox, &mut out)
            .map(|()| out)
            .unwrap_or_default()
    }
}

/// Where the benchmark models live: `$FRAMESIFT_BENCH_MODELS`, else `shared/models`
/// beside the repository.
pub fn models_dir() -> PathBuf {
    std::env::var_os("FRAMESIFT_BENCH_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/models"))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Run the detector at `path` with ONNX Runtime on `frames` synthetic 1280×720 frames
/// (one per scene) and return its raw outputs, exactly what the inference thread hands
/// to the decoder. Errors when ONNX Runtime or the model is missing.
pub fn capture_outputs(path: &Path, frames: usize) -> Result<Vec<Output>, String> {
    let (env, _) = model::environment(None).map_err(|e| e.to_string())?;
    let file = ModelFile::read(path).map_err(|e| e.to_string())?;
    let mut config = Config::default().model;
    config.intra_threads = 2;
    let mut model = Model::load(&env, &file, &config).map_err(|e| e.to_string())?;
    let info = model.info.clone();
    if info.layout != Layout::YoloV8 {
        return Err(format!("{} is not a YOLOv8-layout model", path.display()));
    }
    let mut runner = model.runner().map_err(|e| e.to_string())?;
    let mut pre = Preprocessor::new(
        info.input_width,
        info.input_height,
        info.letterbox_fill,
        info.normalization,
    );
    let mut source = synthetic_source(WIDTH, HEIGHT);
    let per_scene = u64::from(SyntheticConfig::default().frames_per_scene);
    let shape = [
        info.output_shape[0],
        info.output_shape[1],
        info.output_shape[2],
    ];
    let mut out = Vec::with_capacity(frames);
    for i in 0..frames as u64 {
        let frame = synthetic_frame(&mut source, i * per_scene, WIDTH, HEIGHT);
        let letterbox = pre
            .letterbox(&frame, runner.input_mut())
            .map_err(|e| e.to_string())?;
        model.run(&mut runner).map_err(|e| e.to_string())?;
        out.push(Output {
            data: runner.output().to_vec(),
            shape,
            letterbox,
        });
    }
    Ok(out)
}

/// A small deterministic generator (SplitMix64), so synthetic outputs are the same on
/// every run and machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// A synthetic YOLOv8 output `[1, 4 + CLASSES, n]` for a square `input × input` model
/// with about `candidates` boxes scoring at least 0.10, clustered around `objects`
/// objects the way a real head fires (several anchors per object, jittered boxes, one
/// dominant class with a runner-up); every other anchor scores below 0.05 in every class.
pub fn synthetic_output(
    n: usize,
    input: u32,
    candidates: usize,
    objects: usize,
    seed: u64,
) -> Output {
    let rows = 4 + CLASSES;
    let mut rng = Rng::new(seed);
    let mut data = vec![0.0f32; rows * n];
    let s = input as f32;
    // Background: small boxes anywhere, class scores of an unsure head (< 0.05).
    for i in 0..n {
        data[i] = rng.range(0.0, s);
        data[n + i] = rng.range(0.0, s);
        data[2 * n + i] = rng.range(4.0, s / 4.0);
        data[3 * n + i] = rng.range(4.0, s / 4.0);
        for c in 0..CLASSES {
            data[(4 + c) * n + i] = rng.range(0.0, 0.05);
        }
    }
    // Objects: `candidates` anchors, spread over the objects, each a jittered copy of its
    // object's box with its class scoring 0.10..0.90 and a runner-up class.
    let objects: Vec<[f32; 5]> = (0..objects.max(1))
        .map(|_| {
            let (w, h) = (rng.range(s / 16.0, s / 3.0), rng.range(s / 16.0, s / 3.0));
            [
                rng.range(w / 2.0, s - w / 2.0),
                rng.range(h / 2.0, s - h / 2.0),
                w,
                h,
                rng.below(CLASSES) as f32,
            ]
        })
        .collect();
    let mut used = vec![false; n];
    for k in 0..candidates.min(n) {
        let mut i = rng.below(n);
        while used[i] {
            i = (i + 1) % n;
        }
        used[i] = true;
        let [cx, cy, w, h, class] = objects[k % objects.len()];
        let j = 0.08;
        data[i] = cx + rng.range(-j, j) * w;
        data[n + i] = cy + rng.range(-j, j) * h;
        data[2 * n + i] = w * rng.range(1.0 - j, 1.0 + j);
        data[3 * n + i] = h * rng.range(1.0 - j, 1.0 + j);
        let best = rng.range(0.10, 0.90);
        let class = class as usize;
        data[(4 + class) * n + i] = best;
        let second = (class + 1 + rng.below(CLASSES - 1)) % CLASSES;
        data[(4 + second) * n + i] = best * rng.range(0.1, 0.9);
    }
    Output {
        data,
        shape: [1, rows, n],
        letterbox: Letterbox::fit(WIDTH, HEIGHT, input, input),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use framesift::codec::yuyv_to_rgb;

    #[test]
    fn yuyv_round_trips_through_the_runtime_converter() {
        let mut source = synthetic_source(128, 72);
        let frame = synthetic_frame(&mut source, 3, 128, 72);
        let yuyv = rgb_to_yuyv(&frame.rgb, 128, 72);
        assert_eq!(yuyv.len(), 128 * 72 * 2);
        let mut rgb = vec![0u8; frame.rgb.len()];
        yuyv_to_rgb(&yuyv, 128, 72, &mut rgb).expect("convert");
        let err: u64 = frame
            .rgb
            .iter()
            .zip(&rgb)
            .map(|(a, b)| u64::from(a.abs_diff(*b)))
            .sum();
        // Chroma is shared by pixel pairs, so edges lose a little; the mean stays small.
        let mean = err as f64 / rgb.len() as f64;
        assert!(mean < 6.0, "mean abs error {mean}");
    }

    #[test]
    fn downscaled_luma_matches_the_frame_meter_blur() {
        let mut source = synthetic_source(WIDTH, HEIGHT);
        let frame = synthetic_frame(&mut source, 0, WIDTH, HEIGHT);
        let (luma, w, h) = downscaled_luma(&frame);
        assert_eq!((w, h), (320, 180));
        let ours = framesift::capture::preprocess::laplacian_variance(&luma, w, h);
        let meter = framesift::capture::preprocess::FrameMeter::default()
            .measure(&frame)
            .blur;
        assert!(
            (ours - meter).abs() <= 1e-3 * meter.max(1.0),
            "{ours} vs {meter}"
        );
    }

    #[test]
    fn synthetic_output_has_the_candidates_asked_for() {
        for (n, input) in [(8400, 640), (2100, 320)] {
            let out = synthetic_output(n, input, 200, 15, 7);
            assert_eq!(out.data.len(), 84 * n);
            assert_eq!(out.candidates_above(0.10), 200);
            let dets = out.detections();
            assert!(
                (10..=100).contains(&dets.len()),
                "{} detections after NMS",
                dets.len()
            );
        }
    }
}
