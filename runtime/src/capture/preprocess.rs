//! Preprocessing: letterbox a frame into the model's input tensor, and measure the
//! frame (luma statistics, blur). Pure functions of their inputs; scratch buffers live
//! in [`Preprocessor`] so the per-frame path allocates nothing after the first frame.

use crate::{frame::Frame, simd};

/// How a frame was fitted into the model input: scaled by `scale`, then offset by the
/// padding. Maps model-input coordinates back to the captured image's coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub scale: f32,
    pub pad_x: f32,
    pub pad_y: f32,
    /// Size of the frame's pixels (as decoded), to clip mapped boxes.
    pub frame_width: u32,
    pub frame_height: u32,
    /// Decoded pixels → captured-image pixels, per axis: 1 unless the JPEG decoder
    /// downscaled (see [`Frame::source_width`]).
    pub to_source: [f32; 2],
}

impl Letterbox {
    /// Geometry of fitting `frame_w × frame_h` into `input_w × input_h`, keeping the
    /// aspect ratio and centring (as Ultralytics does).
    pub fn fit(frame_w: u32, frame_h: u32, input_w: u32, input_h: u32) -> Self {
        let scale = (input_w as f32 / frame_w as f32).min(input_h as f32 / frame_h as f32);
        let (new_w, new_h) = Self::scaled_size(frame_w, frame_h, scale, input_w, input_h);
        Letterbox {
            scale,
            pad_x: ((input_w - new_w) / 2) as f32,
            pad_y: ((input_h - new_h) / 2) as f32,
            frame_width: frame_w,
            frame_height: frame_h,
            to_source: [1.0, 1.0],
        }
    }

    fn scaled_size(
        frame_w: u32,
        frame_h: u32,
        scale: f32,
        input_w: u32,
        input_h: u32,
    ) -> (u32, u32) {
        let w = ((frame_w as f32 * scale).round() as u32).clamp(1, input_w);
        let h = ((frame_h as f32 * scale).round() as u32).clamp(1, input_h);
        (w, h)
    }

    /// Size of the resized image inside the padding.
    pub fn content_size(&self, input_w: u32, input_h: u32) -> (u32, u32) {
        Self::scaled_size(
            self.frame_width,
            self.frame_height,
            self.scale,
            input_w,
            input_h,
        )
    }

    /// Map a point from model-input pixels to captured-image pixels, clipped to the image.
    pub fn to_frame(&self, x: f32, y: f32) -> (f32, f32) {
        let fx = ((x - self.pad_x) / self.scale).clamp(0.0, self.frame_width as f32);
        let fy = ((y - self.pad_y) / self.scale).clamp(0.0, self.frame_height as f32);
        (fx * self.to_source[0], fy * self.to_source[1])
    }
}

/// How pixel values become tensor values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    /// Per channel (R, G, B): `tensor = (pixel / 255 - mean) / std`.
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// Ultralytics convention: RGB scaled to 0..1.
    pub const UNIT: Self = Self {
        mean: [0.0; 3],
        std: [1.0; 3],
    };
}

/// Letterboxes frames into an NCHW f32 tensor for one model input size, in one fused
/// pass: separable resampling (area averaging when shrinking, like OpenCV's
/// `INTER_AREA`; bilinear when enlarging), normalisation and planar packing. When the
/// frame is an exact integer multiple of the content (1280×720 → 320×180), area
/// averaging is a k×k box sum and runs in integers, about twice as fast.
///
/// Written by hand rather than with `fast_image_resize` because that crate recomputes
/// its filter coefficients — about 500 small allocations — on every call; here the
/// coefficients are computed once per frame size and every buffer is reused, so a
/// frame costs no allocation.
pub struct Preprocessor {
    input_w: u32,
    input_h: u32,
    fill: u8,
    /// Per channel: tensor = pixel × scale + offset.
    scale: [f32; 3],
    offset: [f32; 3],
    /// Coefficients for the current frame size → content size.
    plan: Option<Plan>,
    /// One vertically resampled row, `frame_w × 3`.
    row: Vec<f32>,
    /// Integer box path scratch, `frame_w × 3` each: column sums of `k` source rows,
    /// then their sums over `k` pixels.
    sums: [Vec<u16>; 2],
}

/// Resampling weights along one axis: destination `i` reads `taps` source indexes from
/// `start[i]` with `weights[i * taps..]`.
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    start: Vec<u32>,
    weights: Vec<f32>,
    taps: usize,
}

impl Axis {
    fn new(src: u32, dst: u32) -> Axis {
        let scale = src as f64 / dst as f64;
        let mut spans: Vec<(u32, Vec<f32>)> = Vec::with_capacity(dst as usize);
        for i in 0..dst {
            let (first, w) = if scale >= 1.0 {
                // Area: the destination pixel covers [i·s, (i+1)·s) of the source.
                let (a, b) = (i as f64 * scale, (i + 1) as f64 * scale);
                let first = a.floor() as u32;
                let last = (b.ceil() as u32).min(src);
                let w: Vec<f32> = (first..last)
                    .map(|k| ((b.min(k as f64 + 1.0) - a.max(k as f64)) / scale) as f32)
                    .collect();
                (first, w)
            } else {
                // Bilinear between the two nearest source pixels.
                let x = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
                let x0 = (x.floor() as u32).min(src - 1);
                let frac = (x - x0 as f64) as f32;
                if x0 + 1 < src {
                    (x0, vec![1.0 - frac, frac])
                } else {
                    (x0, vec![1.0])
                }
            };
            spans.push((first, w));
        }
        let taps = spans.iter().map(|(_, w)| w.len()).max().unwrap_or(1);
        let mut start = Vec::with_capacity(dst as usize);
        let mut weights = vec![0.0f32; dst as usize * taps];
        for (i, (first, w)) in spans.into_iter().enumerate() {
            // Keep every window inside the source by sliding it left at the far edge.
            let window = first.min(src.saturating_sub(taps as u32));
            let shift = (first - window) as usize;
            start.push(window);
            weights[i * taps + shift..i * taps + shift + w.len()].copy_from_slice(&w);
        }
        Axis {
            start,
            weights,
            taps,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Plan {
    src: (u32, u32),
    dst: (u32, u32),
    x: Axis,
    y: Axis,
    /// `Some(k)` when the frame is exactly `k` times the content on both axes (1280×720
    /// into 320×180: 4; a JPEG decoded at 1/4 scale straight to 320×180: 1): area
    /// averaging is then a plain k×k box sum, done in integers.
    box_factor: Option<usize>,
}

impl Plan {
    /// Largest factor the integer box path takes: a `k × k` block sum, `k² × 255`,
    /// fits a u16 (16: a 5120-wide frame into 320). Larger factors take the general path.
    const MAX_BOX: u32 = 16;

    fn box_factor(src: (u32, u32), dst: (u32, u32)) -> Option<usize> {
        let k = src.0 / dst.0;
        ((1..=Self::MAX_BOX).contains(&k) && src.0 == dst.0 * k && src.1 == dst.1 * k)
            .then_some(k as usize)
    }
}

impl Preprocessor {
    pub fn new(input_w: u32, input_h: u32, fill: u8, norm: Normalization) -> Self {
        let scale = std::array::from_fn(|c| 1.0 / (255.0 * norm.std[c]));
        let offset = std::array::from_fn(|c| -norm.mean[c] / norm.std[c]);
        Self {
            input_w,
            input_h,
            fill,
            scale,
            offset,
            plan: None,
            row: Vec::new(),
            sums: [Vec::new(), Vec::new()],
        }
    }

    /// Number of f32 values in one input tensor (`3 × h × w`).
    pub fn tensor_len(&self) -> usize {
        3 * self.input_w as usize * self.input_h as usize
    }

    /// Letterbox `frame` into `tensor` (NCHW, batch 1). `tensor.len()` must equal
    /// [`Self::tensor_len`].
    pub fn letterbox(
        &mut self,
        frame: &Frame,
        tensor: &mut [f32],
    ) -> Result<Letterbox, PreprocessError> {
        if tensor.len() != self.tensor_len() {
            return Err(PreprocessError::TensorSize {
                expected: self.tensor_len(),
                actual: tensor.len(),
            });
        }
        let (fw, fh) = (frame.width, frame.height);
        if fw == 0 || fh == 0 || frame.rgb.len() < fw as usize * fh as usize * 3 {
            return Err(PreprocessError::EmptyFrame);
        }
        let mut lb = Letterbox::fit(fw, fh, self.input_w, self.input_h);
        if frame.source_width > 0 {
            lb.to_source = [
                frame.source_width as f32 / fw as f32,
                frame.source_height as f32 / fh as f32,
            ];
        }
        let (nw, nh) = lb.content_size(self.input_w, self.input_h);
        if self
            .plan
            .as_ref()
            .is_none_or(|p| p.src != (fw, fh) || p.dst != (nw, nh))
        {
            // New frame size: the only time this allocates.
            self.plan = Some(Plan {
                src: (fw, fh),
                dst: (nw, nh),
                x: Axis::new(fw, nw),
                y: Axis::new(fh, nh),
                box_factor: Plan::box_factor((fw, fh), (nw, nh)),
            });
            self.row = vec![0.0; fw as usize * 3];
            self.sums = [vec![0; fw as usize * 3], vec![0; fw as usize * 3]];
        }
        let Some(plan) = &self.plan else {
            return Err(PreprocessError::EmptyFrame);
        };

        let (iw, ih) = (self.input_w as usize, self.input_h as usize);
        let plane = iw * ih;
        let (r_plane, rest) = tensor.split_at_mut(plane);
        let (g_plane, b_plane) = rest.split_at_mut(plane);
        let (px, py) = (lb.pad_x as usize, lb.pad_y as usize);
        let (nw, nh) = (nw as usize, nh as usize);
        // Padding only: the content is written below.
        for (c, plane) in [&mut *r_plane, &mut *g_plane, &mut *b_plane]
            .into_iter()
            .enumerate()
        {
            let fill = self.fill as f32 * self.scale[c] + self.offset[c];
            plane[..py * iw].fill(fill);
            plane[(py + nh) * iw..].fill(fill);
            for y in py..py + nh {
                plane[y * iw..y * iw + px].fill(fill);
                plane[y * iw + px + nw..(y + 1) * iw].fill(fill);
            }
        }

        let stride = fw as usize * 3;
        if let Some(k) = plan.box_factor {
            let planes = [&mut *r_plane, &mut *g_plane, &mut *b_plane];
            let area = (k * k) as f32;
            let scale = self.scale.map(|s| s / area);
            box_average(
                &frame.rgb,
                stride,
                k,
                nw,
                nh,
                py * iw + px,
                iw,
                planes,
                scale,
                self.offset,
                &mut self.sums,
            );
            return Ok(lb);
        }

        let row = &mut self.row;
        let rows = (0..nh).map(|y| (y + py) * iw + px);
        for (y, out) in rows.enumerate() {
            // Vertical pass: a weighted sum of source rows (contiguous, vectorises).
            row.fill(0.0);
            let first = plan.y.start[y] as usize;
            for (k, &w) in plan.y.weights[y * plan.y.taps..(y + 1) * plan.y.taps]
                .iter()
                .enumerate()
            {
                if w == 0.0 {
                    continue;
                }
                let src = &frame.rgb[(first + k) * stride..(first + k + 1) * stride];
                for (acc, &v) in row.iter_mut().zip(src) {
                    *acc += w * v as f32;
                }
            }
            // Horizontal pass, normalise, and write the three planes.
            let (r, g, b) = (
                &mut r_plane[out..out + nw],
                &mut g_plane[out..out + nw],
                &mut b_plane[out..out + nw],
            );
            for x in 0..nw {
                let first = plan.x.start[x] as usize;
                let weights = &plan.x.weights[x * plan.x.taps..(x + 1) * plan.x.taps];
                let taps = &row[first * 3..(first + weights.len()) * 3];
                let (mut sr, mut sg, mut sb) = (0.0f32, 0.0f32, 0.0f32);
                for (w, p) in weights.iter().zip(taps.chunks_exact(3)) {
                    sr += w * p[0];
                    sg += w * p[1];
                    sb += w * p[2];
                }
                r[x] = sr * self.scale[0] + self.offset[0];
                g[x] = sg * self.scale[1] + self.offset[1];
                b[x] = sb * self.scale[2] + self.offset[2];
            }
        }
        Ok(lb)
    }
}

simd::kernel! {
    /// The `k × k` box average of RGB `frame` (rows of `stride` bytes) into the
    /// letterbox content, `nw × nh` pixels whose first row starts at `out` in each plane
    /// (rows `iw` apart). Each step runs over whole rows, so it vectorises: sum `k`
    /// source rows per byte, add to each byte the same channel of the next `k − 1`
    /// pixels, then read every `k`-th pixel out as `sum × scale + offset`.
    #[allow(clippy::too_many_arguments)]
    fn box_average(
        frame: &[u8],
        stride: usize,
        k: usize,
        nw: usize,
        nh: usize,
        out: usize,
        iw: usize,
        planes: [&mut [f32]; 3],
        scale: [f32; 3],
        offset: [f32; 3],
        scratch: &mut [Vec<u16>; 2],
    ) {
        let [r_plane, g_plane, b_plane] = planes;
        let [cols, blocks] = scratch;
        // Block sums are read at 3k·x + c only, so the shifted sums stop 3(k − 1) early.
        let n = stride - 3 * (k - 1);
        for y in 0..nh {
            let band = &frame[y * k * stride..(y + 1) * k * stride];
            let (first, rest) = band.split_at(stride);
            for (acc, &v) in cols.iter_mut().zip(first) {
                *acc = v as u16;
            }
            for src in rest.chunks_exact(stride) {
                for (acc, &v) in cols.iter_mut().zip(src) {
                    *acc += v as u16;
                }
            }
            // k = 1 (a JPEG decoded straight to the content size): the rows are the sums.
            let sums: &[u16] = if k == 1 {
                cols
            } else {
                blocks[..n].copy_from_slice(&cols[..n]);
                for j in 1..k {
                    for (acc, &v) in blocks[..n].iter_mut().zip(&cols[3 * j..3 * j + n]) {
                        *acc += v;
                    }
                }
                blocks
            };
            let o = out + y * iw;
            let lanes = sums
                .chunks(3 * k)
                .zip(&mut r_plane[o..o + nw])
                .zip(&mut g_plane[o..o + nw])
                .zip(&mut b_plane[o..o + nw]);
            for (((block, r), g), b) in lanes {
                *r = block[0] as f32 * scale[0] + offset[0];
                *g = block[1] as f32 * scale[1] + offset[1];
                *b = block[2] as f32 * scale[2] + offset[2];
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("input tensor holds {actual} values, the model needs {expected}")]
    TensorSize { expected: usize, actual: usize },
    #[error("frame has no pixels")]
    EmptyFrame,
}

/// Cheap per-frame statistics, computed on a downscaled luma image.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct FrameStats {
    /// The frame's luma layout in a few bytes: the embedding near-duplicate suppression
    /// and novelty compare.
    #[serde(skip)]
    pub thumbnail: Thumbnail,
    /// Mean luma, 0..255.
    pub luma_mean: f32,
    /// Standard deviation of luma (contrast).
    pub luma_std: f32,
    /// Variance of the 4-neighbour Laplacian of the downscaled luma; low = blurred.
    pub blur: f32,
    /// Fractions of the downscaled luma at or below [`DARK_CLIP`] and at or above
    /// [`BRIGHT_CLIP`]: crushed shadows and blown highlights.
    pub dark_clip: f32,
    pub bright_clip: f32,
    /// Mean red, green and blue, 0..255 (white balance, tinted light).
    pub mean_rgb: [f32; 3],
}

/// A frame's luma as a [`Thumbnail::COLS`] × [`Thumbnail::ROWS`] grid of cell means,
/// 0..255, each cell a fixed share of the frame whatever its size, so frames of one
/// camera compare cell by cell. Two frames of one view (a few pixels of camera shake,
/// sensor noise) differ by a level or two; a different view by tens.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Thumbnail(pub [u8; Thumbnail::LEN]);

impl Thumbnail {
    pub const COLS: usize = 16;
    pub const ROWS: usize = 12;
    pub const LEN: usize = Self::COLS * Self::ROWS;

    /// Mean absolute difference per cell, in luma levels (0..255), after removing each
    /// thumbnail's mean: a global brightness change alone (auto-exposure) is not a new
    /// view.
    pub fn distance(&self, other: &Thumbnail) -> f32 {
        // Integers throughout (the offset rounded to a level), so the loops vectorise:
        // novelty compares each frame with tens of remembered thumbnails.
        let sum = |t: &Thumbnail| t.0.iter().map(|&v| i32::from(v)).sum::<i32>();
        let n = Self::LEN as i32;
        let diff = sum(self) - sum(other);
        let offset = (diff + diff.signum() * n / 2) / n;
        let total: i32 = self
            .0
            .iter()
            .zip(&other.0)
            .map(|(&a, &b)| (i32::from(a) - i32::from(b) - offset).abs())
            .sum();
        total as f32 / Self::LEN as f32
    }

    /// The cells as lowercase hex, row by row (how a calibration reference stores views).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|v| format!("{v:02x}")).collect()
    }

    /// The inverse of [`Thumbnail::to_hex`]; `None` unless `hex` is exactly that.
    pub fn from_hex(hex: &str) -> Option<Thumbnail> {
        let bytes = hex.as_bytes();
        if bytes.len() != 2 * Self::LEN {
            return None;
        }
        let mut t = [0u8; Self::LEN];
        for (cell, pair) in t.iter_mut().zip(bytes.chunks_exact(2)) {
            *cell = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(Thumbnail(t))
    }

    /// The grid of a `w × h` luma image: per row, a plain sum over each cell's columns
    /// (no per-pixel index arithmetic; this runs on every frame's capture thread).
    fn of(luma: &[f32], w: usize, h: usize) -> Thumbnail {
        let mut sums = [0.0f32; Self::LEN];
        let mut counts = [0u32; Self::LEN];
        let edge = |c: usize| c * w / Self::COLS;
        for (y, row) in luma.chunks_exact(w).take(h).enumerate() {
            let cells = (y * Self::ROWS / h) * Self::COLS;
            for cx in 0..Self::COLS {
                let part = &row[edge(cx)..edge(cx + 1)];
                sums[cells + cx] += part.iter().sum::<f32>();
                counts[cells + cx] += part.len() as u32;
            }
        }
        Thumbnail(std::array::from_fn(|i| {
            (sums[i] / counts[i].max(1) as f32)
                .round()
                .clamp(0.0, 255.0) as u8
        }))
    }
}

impl Default for Thumbnail {
    fn default() -> Self {
        Thumbnail([0; Self::LEN])
    }
}

impl std::fmt::Debug for Thumbnail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Thumbnail(..)")
    }
}

/// Luma at or below this counts as clipped dark, at or above [`BRIGHT_CLIP`] as clipped
/// bright (of 4×4 block averages, so one hot pixel does not count).
pub const DARK_CLIP: f32 = 8.0;
pub const BRIGHT_CLIP: f32 = 247.0;

/// Downscale factor for the statistics: blur on a 4× smaller luma separates motion
/// blur as well as full resolution at a sixteenth of the cost.
pub const STATS_DOWNSCALE: usize = 4;

/// Measures frames; holds the scratch buffers.
#[derive(Default)]
pub struct FrameMeter {
    luma: Vec<f32>,
    /// Sum of `STATS_DOWNSCALE` source rows, per byte (contiguous, so it vectorises).
    rows: Vec<u16>,
}

impl FrameMeter {
    pub fn measure(&mut self, frame: &Frame) -> FrameStats {
        let (w, h) = (frame.width as usize, frame.height as usize);
        // Measure at 1/STATS_DOWNSCALE of the captured size whatever the decoder did, so
        // blur scores of JPEG (decoded at reduced scale) and raw frames agree.
        let decoded_at = (frame.source_width as usize)
            .checked_div(w)
            .unwrap_or(1)
            .max(1);
        let k = (STATS_DOWNSCALE / decoded_at).max(1);
        let (sw, sh) = (w / k, h / k);
        if sw < 3 || sh < 3 {
            return FrameStats::default();
        }
        self.luma.clear();
        self.luma.resize(sw * sh, 0.0);
        let span = sw * k * 3;
        self.rows.clear();
        self.rows.resize(span, 0);
        // Box-average k×k blocks of BT.601 luma: integer row sums first (k × 255 fits a
        // u16), then per block the three channel sums, weighted once.
        let weight = [
            0.299 / (k * k) as f32,
            0.587 / (k * k) as f32,
            0.114 / (k * k) as f32,
        ];
        let mut channels = [0u64; 3];
        for sy in 0..sh {
            self.rows.fill(0);
            for dy in 0..k {
                let start = (sy * k + dy) * w * 3;
                for (acc, &v) in self.rows.iter_mut().zip(&frame.rgb[start..start + span]) {
                    *acc += u16::from(v);
                }
            }
            let out = &mut self.luma[sy * sw..(sy + 1) * sw];
            for (o, block) in out.iter_mut().zip(self.rows.chunks_exact(3 * k)) {
                let mut rgb = [0u32; 3];
                for p in block.chunks_exact(3) {
                    rgb[0] += u32::from(p[0]);
                    rgb[1] += u32::from(p[1]);
                    rgb[2] += u32::from(p[2]);
                }
                *o = weight[0] * rgb[0] as f32
                    + weight[1] * rgb[1] as f32
                    + weight[2] * rgb[2] as f32;
                for (total, v) in channels.iter_mut().zip(rgb) {
                    *total += u64::from(v);
                }
            }
        }
        let pixels = (sw * sh * k * k) as f64;
        luma_stats(
            &self.luma,
            sw,
            sh,
            channels.map(|c| (c as f64 / pixels) as f32),
        )
    }

    /// The same statistics read from a letterboxed tensor whose content is already the
    /// frame at 1/[`STATS_DOWNSCALE`] of its captured size (e.g. 1280×720 into 320×320):
    /// the letterbox's area resampling computed exactly the block averages `measure`
    /// would, so this skips a pass over the full frame. `None` when the content is at
    /// another scale.
    pub fn measure_letterboxed(
        &mut self,
        frame: &Frame,
        pre: &Preprocessor,
        lb: &Letterbox,
        tensor: &[f32],
    ) -> Option<FrameStats> {
        let (cw, ch) = lb.content_size(pre.input_w, pre.input_h);
        let (cw, ch) = (cw as usize, ch as usize);
        let k = STATS_DOWNSCALE;
        let exact = cw * k == frame.source_width as usize && ch * k == frame.source_height as usize;
        if !exact || cw < 3 || ch < 3 {
            return None;
        }
        let (iw, ih) = (pre.input_w as usize, pre.input_h as usize);
        let plane = iw * ih;
        if tensor.len() < 3 * plane {
            return None;
        }
        let (px, py) = (lb.pad_x as usize, lb.pad_y as usize);
        // tensor = pixel × scale + offset, so pixel = (tensor − offset) / scale.
        let w = [0.299f32, 0.587, 0.114];
        let a: [f32; 3] = std::array::from_fn(|c| w[c] / pre.scale[c]);
        let b: f32 = (0..3).map(|c| -a[c] * pre.offset[c]).sum();
        self.luma.clear();
        let mut channels = [0.0f64; 3];
        for y in 0..ch {
            let start = (py + y) * iw + px;
            let (r, g, bl) = (
                &tensor[start..start + cw],
                &tensor[plane + start..plane + start + cw],
                &tensor[2 * plane + start..2 * plane + start + cw],
            );
            for (total, row) in channels.iter_mut().zip([r, g, bl]) {
                *total += sums(row).0;
            }
            self.luma.extend(
                r.iter()
                    .zip(g)
                    .zip(bl)
                    .map(|((r, g), bl)| a[0] * r + a[1] * g + a[2] * bl + b),
            );
        }
        let n = (cw * ch) as f64;
        let mean_rgb = std::array::from_fn(|c| {
            ((channels[c] / n - f64::from(pre.offset[c])) / f64::from(pre.scale[c])) as f32
        });
        Some(luma_stats(&self.luma, cw, ch, mean_rgb))
    }
}

/// Mean, contrast, blur and clipping of a `w × h` luma image, with the frame's channel
/// means.
fn luma_stats(luma: &[f32], w: usize, h: usize, mean_rgb: [f32; 3]) -> FrameStats {
    let n = (w * h) as f64;
    let (sum, sum_sq) = sums(luma);
    let mean = sum / n;
    let var = (sum_sq / n - mean * mean).max(0.0);
    let (dark, bright) = clipped(luma);
    FrameStats {
        thumbnail: Thumbnail::of(luma, w, h),
        luma_mean: mean as f32,
        luma_std: var.sqrt() as f32,
        blur: laplacian_variance(luma, w, h),
        dark_clip: (dark as f64 / n) as f32,
        bright_clip: (bright as f64 / n) as f32,
        mean_rgb,
    }
}

/// How many values are at or below [`DARK_CLIP`] and at or above [`BRIGHT_CLIP`].
fn clipped(luma: &[f32]) -> (u32, u32) {
    luma.iter().fold((0, 0), |(dark, bright), &v| {
        (
            dark + u32::from(v <= DARK_CLIP),
            bright + u32::from(v >= BRIGHT_CLIP),
        )
    })
}

/// Lanes of the f32 accumulators below: independent sums, so the loops vectorise.
const LANES: usize = 8;

/// Add `LANES` partial sums in f64.
fn total(lanes: [f32; LANES]) -> f64 {
    lanes.iter().map(|&v| v as f64).sum()
}

simd::kernel! {
    /// Σv and Σv² of `values`, in `LANES` f32 lanes per block of 4096 values and f64
    /// across blocks: a lane adds at most 512 values, so for 0..255 lumas the rounding
    /// stays near 1e-6 relative, far below what the contrast signal resolves.
    fn sums(values: &[f32]) -> (f64, f64) {
        let (mut sum, mut sum_sq) = (0.0f64, 0.0f64);
        for block in values.chunks(4096) {
            let (mut s, mut q) = ([0.0f32; LANES], [0.0f32; LANES]);
            let mut chunks = block.chunks_exact(LANES);
            for c in &mut chunks {
                for i in 0..LANES {
                    s[i] += c[i];
                    q[i] += c[i] * c[i];
                }
            }
            for (i, &v) in chunks.remainder().iter().enumerate() {
                s[i] += v;
                q[i] += v * v;
            }
            sum += total(s);
            sum_sq += total(q);
        }
        (sum, sum_sq)
    }
}

/// Variance of the 4-neighbour Laplacian over the interior of a `w × h` image. (Left to
/// the baseline build: written in 8 lanes for [`simd::kernel!`] it did not vectorise and
/// ran no faster, 35 µs at 320×180.)
pub fn laplacian_variance(img: &[f32], w: usize, h: usize) -> f32 {
    if w < 3 || h < 3 {
        return 0.0;
    }
    let (mut sum, mut sum_sq) = (0.0f64, 0.0f64);
    for y in 1..h - 1 {
        let (up, row, down) = (
            &img[(y - 1) * w..y * w],
            &img[y * w..(y + 1) * w],
            &img[(y + 1) * w..(y + 2) * w],
        );
        let mut s = 0.0f32;
        let mut q = 0.0f32;
        for x in 1..w - 1 {
            let l = up[x] + down[x] + row[x - 1] + row[x + 1] - 4.0 * row[x];
            s += l;
            q += l * l;
        }
        sum += s as f64;
        sum_sq += q as f64;
    }
    let n = ((w - 2) * (h - 2)) as f64;
    let mean = sum / n;
    (sum_sq / n - mean * mean).max(0.0) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_from(width: u32, height: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Frame {
        let mut frame = Frame::with_capacity(width, height);
        frame.set_size(width, height);
        for y in 0..height {
            for x in 0..width {
                let i = ((y * width + x) * 3) as usize;
                frame.rgb[i..i + 3].copy_from_slice(&f(x, y));
            }
        }
        frame
    }

    #[test]
    fn thumbnails_tell_a_new_view_from_the_same_one_shaken_or_brightened() {
        let (w, h) = (160usize, 90usize);
        let scene = |shift: usize, gain: f32, bright_box: bool| -> Vec<f32> {
            (0..w * h)
                .map(|i| {
                    let (x, y) = ((i % w + shift) as f32, (i / w) as f32);
                    let base = 60.0 + 40.0 * ((x / 20.0).floor() % 2.0) + y * 0.3;
                    let boxed =
                        bright_box && (40.0..90.0).contains(&x) && (20.0..60.0).contains(&y);
                    (if boxed { 220.0 } else { base }) + gain
                })
                .collect()
        };
        let a = Thumbnail::of(&scene(0, 0.0, false), w, h);
        let shaken = Thumbnail::of(&scene(1, 0.0, false), w, h);
        let brighter = Thumbnail::of(&scene(0, 25.0, false), w, h);
        let new_view = Thumbnail::of(&scene(0, 0.0, true), w, h);
        assert_eq!(a.distance(&a), 0.0);
        assert!(a.distance(&shaken) < 4.0, "{}", a.distance(&shaken));
        assert!(a.distance(&brighter) < 1.0, "{}", a.distance(&brighter));
        assert!(a.distance(&new_view) > 10.0, "{}", a.distance(&new_view));
        assert_eq!(a.distance(&new_view), new_view.distance(&a), "symmetric");
    }

    #[test]
    fn letterbox_geometry_wide_frame() {
        // 1280×720 into 320×320: scale 0.25, content 320×180, 70 rows of padding above.
        let lb = Letterbox::fit(1280, 720, 320, 320);
        assert_eq!(lb.scale, 0.25);
        assert_eq!((lb.pad_x, lb.pad_y), (0.0, 70.0));
        assert_eq!(lb.content_size(320, 320), (320, 180));
        assert_eq!(lb.to_frame(0.0, 70.0), (0.0, 0.0));
        assert_eq!(lb.to_frame(160.0, 160.0), (640.0, 360.0));
        assert_eq!(lb.to_frame(320.0, 250.0), (1280.0, 720.0));
        // Points in the padding clip to the frame edge.
        assert_eq!(lb.to_frame(10.0, 5.0), (40.0, 0.0));
    }

    #[test]
    fn letterbox_geometry_tall_and_exact_frames() {
        let lb = Letterbox::fit(480, 640, 320, 320);
        assert_eq!(lb.scale, 0.5);
        assert_eq!((lb.pad_x, lb.pad_y), (40.0, 0.0));
        let same = Letterbox::fit(320, 320, 320, 320);
        assert_eq!((same.scale, same.pad_x, same.pad_y), (1.0, 0.0, 0.0));
    }

    #[test]
    fn letterbox_fills_padding_and_normalizes() {
        // Solid colour 64×32 into 32×32: content rows 8..24, padding grey 114.
        let frame = frame_from(64, 32, |_, _| [255, 0, 51]);
        let mut pre = Preprocessor::new(32, 32, 114, Normalization::UNIT);
        let mut tensor = vec![0.0; pre.tensor_len()];
        let lb = pre.letterbox(&frame, &mut tensor).expect("letterbox");
        assert_eq!((lb.pad_x, lb.pad_y), (0.0, 8.0));
        let at = |c: usize, y: usize, x: usize| tensor[c * 32 * 32 + y * 32 + x];
        let grey = 114.0 / 255.0;
        for c in 0..3 {
            assert!((at(c, 0, 0) - grey).abs() < 1e-6);
            assert!((at(c, 31, 31) - grey).abs() < 1e-6);
        }
        assert!((at(0, 16, 16) - 1.0).abs() < 1e-6);
        assert!(at(1, 16, 16).abs() < 1e-6);
        assert!((at(2, 16, 16) - 0.2).abs() < 1e-6);
    }

    #[test]
    fn integer_box_path_equals_area_resampling() {
        // Exact integer ratios take the box path; it must give what the weighted area
        // path gives, and both must write every value (the tensors start as NaN).
        let norm = Normalization {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        };
        for (fw, fh, k) in [
            (1280, 720, 4),
            (640, 480, 2),
            (960, 540, 3),
            (480, 640, 2),
            (320, 180, 1),
        ] {
            let frame = frame_from(fw, fh, |x, y| {
                [(x * 7 + y * 3) as u8, (x * y) as u8, (x ^ y) as u8]
            });
            let mut pre = Preprocessor::new(320, 320, 114, norm);
            let mut boxed = vec![f32::NAN; pre.tensor_len()];
            pre.letterbox(&frame, &mut boxed).expect("letterbox");
            let plan = pre.plan.as_mut().expect("plan");
            assert_eq!(plan.box_factor, Some(k), "{fw}x{fh}");
            plan.box_factor = None;
            let mut area = vec![f32::NAN; pre.tensor_len()];
            pre.letterbox(&frame, &mut area).expect("letterbox");
            assert!(
                boxed.iter().chain(&area).all(|v| v.is_finite()),
                "{fw}x{fh}"
            );
            let worst = boxed
                .iter()
                .zip(&area)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-4, "{fw}x{fh}: differs by {worst}");
        }
        assert_eq!(Plan::box_factor((1000, 600), (320, 192)), None);
        assert_eq!(Plan::box_factor((1280, 720), (320, 181)), None);
        assert_eq!(Plan::box_factor((160, 90), (320, 180)), None);
    }

    #[test]
    fn normalization_uses_mean_and_std() {
        let frame = frame_from(8, 8, |_, _| [255, 127, 0]);
        let norm = Normalization {
            mean: [0.5, 0.5, 0.5],
            std: [0.5, 0.25, 0.5],
        };
        let mut pre = Preprocessor::new(8, 8, 0, norm);
        let mut tensor = vec![0.0; pre.tensor_len()];
        pre.letterbox(&frame, &mut tensor).expect("letterbox");
        assert!((tensor[0] - 1.0).abs() < 1e-5);
        assert!((tensor[64] - (127.0 / 255.0 - 0.5) / 0.25).abs() < 1e-5);
        assert!((tensor[128] + 1.0).abs() < 1e-5);
    }

    #[test]
    fn letterbox_keeps_spatial_layout() {
        // Left half red, right half blue, in a 2:1 frame: the tensor's left content is red.
        let frame = frame_from(
            200,
            100,
            |x, _| if x < 100 { [255, 0, 0] } else { [0, 0, 255] },
        );
        let mut pre = Preprocessor::new(64, 64, 114, Normalization::UNIT);
        let mut tensor = vec![0.0; pre.tensor_len()];
        pre.letterbox(&frame, &mut tensor).expect("letterbox");
        let at = |c: usize, y: usize, x: usize| tensor[c * 64 * 64 + y * 64 + x];
        assert!(at(0, 32, 10) > 0.99 && at(2, 32, 10) < 0.01);
        assert!(at(2, 32, 54) > 0.99 && at(0, 32, 54) < 0.01);
    }

    #[test]
    fn resampling_weights_sum_to_one_and_stay_inside_the_source() {
        for (src, dst) in [
            (1280, 320),
            (720, 180),
            (1000, 333),
            (64, 64),
            (100, 320),
            (7, 3),
            (1, 5),
        ] {
            let axis = Axis::new(src, dst);
            assert_eq!(axis.start.len(), dst as usize);
            for i in 0..dst as usize {
                let w = &axis.weights[i * axis.taps..(i + 1) * axis.taps];
                let sum: f32 = w.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "{src}->{dst} [{i}] sums to {sum}");
                let last_used = w.iter().rposition(|v| *v != 0.0).unwrap_or(0);
                assert!(
                    axis.start[i] as usize + last_used < src as usize,
                    "{src}->{dst} [{i}] reads past the edge"
                );
            }
        }
        // An exact 4× shrink averages blocks of four.
        let axis = Axis::new(8, 2);
        assert_eq!(
            (axis.start.clone(), axis.weights.clone()),
            (vec![0, 4], vec![0.25; 8])
        );
    }

    #[test]
    fn shrinking_averages_and_reallocates_only_on_size_change() {
        // 4×2 frame of alternating black/white columns shrunk into 2×... : each output
        // pixel averages one black and one white column.
        let frame = frame_from(4, 4, |x, _| {
            if x % 2 == 0 {
                [0, 0, 0]
            } else {
                [255, 255, 255]
            }
        });
        let mut pre = Preprocessor::new(2, 2, 0, Normalization::UNIT);
        let mut tensor = vec![0.0; pre.tensor_len()];
        pre.letterbox(&frame, &mut tensor).expect("letterbox");
        assert!(tensor.iter().all(|v| (v - 0.5).abs() < 1e-6), "{tensor:?}");
        let plan = pre.plan.clone();
        pre.letterbox(&frame, &mut tensor).expect("again");
        assert_eq!(pre.plan, plan);
    }

    #[test]
    fn wrong_tensor_size_is_an_error() {
        let frame = frame_from(8, 8, |_, _| [0, 0, 0]);
        let mut pre = Preprocessor::new(8, 8, 0, Normalization::UNIT);
        let mut tensor = vec![0.0; 10];
        assert!(matches!(
            pre.letterbox(&frame, &mut tensor),
            Err(PreprocessError::TensorSize { .. })
        ));
    }

    /// A checkerboard-ish textured scene and the same scene box-blurred horizontally.
    fn textured(blur_radius: i32) -> Frame {
        let base = |x: i32, y: i32| -> f32 {
            let v = ((x / 6 + y / 5) % 2) as f32 * 160.0 + ((x * 7 + y * 13) % 37) as f32;
            v.min(255.0)
        };
        frame_from(320, 240, |x, y| {
            let (x, y) = (x as i32, y as i32);
            let mut acc = 0.0;
            for dx in -blur_radius..=blur_radius {
                acc += base((x + dx).clamp(0, 319), y);
            }
            let v = (acc / (2 * blur_radius + 1) as f32) as u8;
            [v, v, v]
        })
    }

    #[test]
    fn blur_score_is_lower_for_a_blurred_copy() {
        let mut meter = FrameMeter::default();
        let sharp = meter.measure(&textured(0));
        let blurred = meter.measure(&textured(12));
        assert!(
            sharp.blur > 4.0 * blurred.blur,
            "sharp {} vs blurred {}",
            sharp.blur,
            blurred.blur
        );
        // Same scene: brightness statistics barely move.
        assert!((sharp.luma_mean - blurred.luma_mean).abs() < 10.0);
    }

    #[test]
    fn stats_from_the_letterbox_equal_stats_from_the_frame() {
        use crate::capture::{
            FrameSource,
            synthetic::{SyntheticConfig, SyntheticSource},
        };
        let mut source = SyntheticSource::new(SyntheticConfig {
            frames_per_scene: 1,
            seed: 4,
            ..SyntheticConfig::default()
        });
        let mut frame = Frame::with_capacity(8, 8);
        let mut meter = FrameMeter::default();
        for norm in [
            Normalization::UNIT,
            Normalization {
                mean: [0.485, 0.456, 0.406],
                std: [0.229, 0.224, 0.225],
            },
        ] {
            let mut pre = Preprocessor::new(320, 320, 114, norm);
            let mut tensor = vec![0.0; pre.tensor_len()];
            for _ in 0..6 {
                source.next_frame(&mut frame).expect("frame");
                let lb = pre.letterbox(&frame, &mut tensor).expect("letterbox");
                let direct = meter.measure(&frame);
                let from_tensor = meter
                    .measure_letterboxed(&frame, &pre, &lb, &tensor)
                    .expect("1280x720 into 320 is at the meter's scale");
                let close = |a: f32, b: f32| (a - b).abs() <= 1e-3 * a.abs().max(1.0);
                assert!(
                    close(direct.luma_mean, from_tensor.luma_mean),
                    "{direct:?} {from_tensor:?}"
                );
                assert!(
                    close(direct.luma_std, from_tensor.luma_std),
                    "{direct:?} {from_tensor:?}"
                );
                assert!(
                    close(direct.blur, from_tensor.blur),
                    "{direct:?} {from_tensor:?}"
                );
            }
        }
        // Another scale: not available, the caller measures the frame.
        let mut pre = Preprocessor::new(640, 640, 114, Normalization::UNIT);
        let mut tensor = vec![0.0; pre.tensor_len()];
        let lb = pre.letterbox(&frame, &mut tensor).expect("letterbox");
        assert!(
            meter
                .measure_letterboxed(&frame, &pre, &lb, &tensor)
                .is_none()
        );
    }

    #[test]
    fn laplacian_of_flat_and_ramp_is_zero() {
        assert_eq!(laplacian_variance(&[7.0; 25], 5, 5), 0.0);
        let ramp: Vec<f32> = (0..25).map(|i| (i % 5) as f32 * 3.0).collect();
        assert!(laplacian_variance(&ramp, 5, 5) < 1e-6);
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// `cargo test --release -p framesift --lib preprocess::timing -- --ignored --nocapture`
    #[test]
    #[ignore = "timing; run in release"]
    fn letterbox_and_measure_1280x720() {
        let mut frame = Frame::with_capacity(1280, 720);
        frame.set_size(1280, 720);
        for (i, v) in frame.rgb.iter_mut().enumerate() {
            *v = (i * 7 % 251) as u8;
        }
        let mut pre = Preprocessor::new(320, 320, 114, Normalization::UNIT);
        let mut tensor = vec![0.0; pre.tensor_len()];
        let mut meter = FrameMeter::default();
        for _ in 0..5 {
            pre.letterbox(&frame, &mut tensor).expect("letterbox");
        }
        let n = 50;
        let t = std::time::Instant::now();
        for _ in 0..n {
            pre.letterbox(&frame, &mut tensor).expect("letterbox");
        }
        let lb = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            meter.measure(&frame);
        }
        eprintln!("letterbox {:?}  measure {:?}", lb, t.elapsed() / n);
    }
}
