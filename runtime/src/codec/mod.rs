//! Image decoding and encoding into pooled buffers, and the camera pixel formats:
//! MJPEG made standalone ([`mjpeg`]), YUYV to RGB ([`yuyv_to_rgb`]).
//!
//! JPEG goes through libjpeg-turbo (the `turbojpeg` crate, built from its vendored
//! source): it decodes 1280×720 about twice as fast as the pure-Rust decoder, and it can
//! decode at 1/2 or 1/4 scale, which skips most of the inverse DCT and colour conversion
//! when the model only needs a 320-pixel letterbox. CMYK JPEGs (print and photo-editing
//! tools) are decoded to CMYK and converted here. PNG, BMP and WebP go through `image`.

pub(crate) mod mjpeg;
mod yuyv;

pub use yuyv::{YuyvError, yuyv_to_rgb};

use std::io::Cursor;

use image::ImageDecoder;
use turbojpeg::{Colorspace, Compressor, Decompressor, Image, PixelFormat, ScalingFactor, Subsamp};

use crate::frame::Frame;

/// Why an encoded image could not be turned into a frame.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty file")]
    Empty,
    #[error("not a JPEG, PNG, BMP or WebP image")]
    UnknownFormat,
    #[error("{0}")]
    Corrupt(String),
    /// The header claims more pixels than `max_frame_pixels`: refused before anything
    /// is allocated for it (a corrupt header can claim 65535 × 65535).
    #[error(
        "{width}x{height} is larger than the configured maximum of {max_pixels} pixels ([pipeline] max_frame_pixels)"
    )]
    TooLarge {
        width: u64,
        height: u64,
        max_pixels: u64,
    },
}

/// Default `[pipeline] max_frame_pixels`: 3840 × 2160.
pub const DEFAULT_MAX_FRAME_PIXELS: u64 = 3840 * 2160;

/// Smallest DCT scale the decoder uses: the blur meter measures at 1/4 of the captured
/// size ([`crate::capture::preprocess::STATS_DOWNSCALE`]), so decoding smaller would lose the
/// detail it scores.
const MAX_DOWNSCALE: usize = 4;

/// libjpeg's JWRN_EXTRANEOUS_DATA ("Corrupt JPEG data: N extraneous bytes before marker
/// 0xXX"): bytes between the scan and the next marker, skipped without touching the image.
const STRAY_BYTES_WARNING: &str = "extraneous bytes before marker";

/// Decodes encoded frames into a [`Frame`], reusing its state from frame to frame.
pub struct FrameDecoder {
    /// Created on first use, so building a source never fails on it.
    jpeg: Option<Decompressor>,
    /// Model input size: JPEGs are decoded at the smallest DCT scale that still fills it.
    fit: Option<(u32, u32)>,
    /// Larger images (by their header, at captured size) are refused.
    max_pixels: u64,
    /// CMYK pixels of a print-workflow JPEG, before they become RGB; empty until one comes.
    cmyk: Vec<u8>,
}

impl FrameDecoder {
    /// Decodes every image at its full size.
    pub fn full_size() -> Self {
        Self {
            jpeg: None,
            fit: None,
            max_pixels: DEFAULT_MAX_FRAME_PIXELS,
            cmyk: Vec::new(),
        }
    }

    /// Decodes JPEGs at 1/2 or 1/4 scale when the result still fills an
    /// `input_w × input_h` letterbox along its limiting side, so the letterbox only ever
    /// shrinks (1280×720 for a 320×320 input decodes at 1/4, to exactly 320×180). The
    /// frame records its captured size and detections are mapped back to it.
    pub fn fitting(input_w: u32, input_h: u32) -> Self {
        Self {
            jpeg: None,
            fit: Some((input_w, input_h)),
            max_pixels: DEFAULT_MAX_FRAME_PIXELS,
            cmyk: Vec::new(),
        }
    }

    /// Refuse images of more than `max_pixels` pixels (default
    /// [`DEFAULT_MAX_FRAME_PIXELS`]), before allocating for them.
    pub fn with_max_pixels(mut self, max_pixels: u64) -> Self {
        self.max_pixels = max_pixels;
        self
    }

    /// The largest encoded file worth reading for an image of at most `max_pixels`:
    /// raw RGBA of that size (an uncompressed 32-bit BMP) plus room for headers.
    pub fn max_file_bytes(&self) -> u64 {
        self.max_pixels.saturating_mul(4).saturating_add(1 << 20)
    }

    fn check_size(&self, width: u64, height: u64) -> Result<(), DecodeError> {
        check_size(self.max_pixels, width, height)
    }

    /// Decode a JPEG, PNG, BMP or WebP held in memory into `frame.rgb` (resized in place,
    /// capacity reused). Sets the frame's size; leaves the other metadata to the caller.
    pub fn decode_into(&mut self, bytes: &[u8], frame: &mut Frame) -> Result<(), DecodeError> {
        if bytes.is_empty() {
            return Err(DecodeError::Empty);
        }
        if is_jpeg(bytes) {
            return self.decode_jpeg(bytes, frame);
        }
        let corrupt = |e: image::ImageError| DecodeError::Corrupt(e.to_string());
        let bytes = Cursor::new(bytes);
        match image::guess_format(bytes.get_ref()).map_err(|_| DecodeError::UnknownFormat)? {
            image::ImageFormat::Png => self.read_checked(
                image::codecs::png::PngDecoder::new(bytes).map_err(corrupt)?,
                frame,
            ),
            image::ImageFormat::Bmp => self.read_checked(
                image::codecs::bmp::BmpDecoder::new(bytes).map_err(corrupt)?,
                frame,
            ),
            image::ImageFormat::WebP => self.read_checked(
                image::codecs::webp::WebPDecoder::new(bytes).map_err(corrupt)?,
                frame,
            ),
            _ => Err(DecodeError::UnknownFormat),
        }
    }

    /// Check a decoder's image size against the limit, then read its pixels as RGB8.
    fn read_checked(
        &self,
        decoder: impl ImageDecoder,
        frame: &mut Frame,
    ) -> Result<(), DecodeError> {
        let (w, h) = decoder.dimensions();
        self.check_size(u64::from(w), u64::from(h))?;
        read_rgb(decoder, frame).map_err(|e| DecodeError::Corrupt(e.to_string()))
    }

    fn decode_jpeg(&mut self, bytes: &[u8], frame: &mut Frame) -> Result<(), DecodeError> {
        if !jpeg_is_complete(bytes) {
            // Decoders fill a truncated scan with grey; a frame cut short must be skipped,
            // not scored.
            return Err(DecodeError::Corrupt(
                "truncated JPEG: no end-of-image marker after the image data".into(),
            ));
        }
        let corrupt = |e: turbojpeg::Error| DecodeError::Corrupt(e.to_string());
        let jpeg = match &mut self.jpeg {
            Some(d) => d,
            empty => empty.insert(Decompressor::new().map_err(corrupt)?),
        };
        let header = jpeg.read_header(bytes).map_err(corrupt)?;
        check_size(self.max_pixels, header.width as u64, header.height as u64)?;
        let factor = match self.fit {
            Some((iw, ih)) if !header.is_lossless => {
                downscale_for(header.width, header.height, iw as usize, ih as usize)
            }
            _ => ScalingFactor::ONE,
        };
        jpeg.set_scaling_factor(factor).map_err(corrupt)?;
        let scaled = header.scaled(factor);
        // JPEG dimensions are 16-bit, so these casts are lossless.
        frame.set_scaled_size(
            scaled.width as u32,
            scaled.height as u32,
            header.width as u32,
            header.height as u32,
        );
        // libjpeg-turbo converts anything but CMYK to RGB itself; images saved by print
        // and photo-editing tools can be CMYK (or YCCK, which it decodes to CMYK).
        let four_channels = matches!(header.colorspace, Colorspace::CMYK | Colorspace::YCCK);
        let (pixels, format, channels) = if four_channels {
            self.cmyk.resize(scaled.width * scaled.height * 4, 0);
            (&mut self.cmyk[..], PixelFormat::CMYK, 4)
        } else {
            (&mut frame.rgb[..], PixelFormat::RGB, 3)
        };
        let image = Image {
            pixels,
            width: scaled.width,
            pitch: scaled.width * channels,
            height: scaled.height,
            format,
        };
        // libjpeg-turbo also fails on warnings, e.g. corrupt entropy data: such a frame is
        // reported as corrupt rather than scored half-grey. One warning leaves the image
        // intact and is common in webcam MJPEG: stray bytes after the scan, before EOI.
        // (Stray bytes between header segments fail `read_header` above, and the frame
        // is skipped as corrupt.)
        match jpeg.decompress(bytes, image) {
            Err(e) if e.to_string().contains(STRAY_BYTES_WARNING) => {}
            result => result.map_err(corrupt)?,
        }
        if four_channels {
            cmyk_to_rgb(&self.cmyk, &mut frame.rgb);
        }
        Ok(())
    }
}

/// CMYK as JPEGs store it (Adobe's convention, which libjpeg-turbo follows: 255 is no
/// ink) to RGB: each channel is what its ink and the black leave of the light.
fn cmyk_to_rgb(cmyk: &[u8], rgb: &mut [u8]) {
    for (src, dst) in cmyk.chunks_exact(4).zip(rgb.chunks_exact_mut(3)) {
        let k = u32::from(src[3]);
        for (d, &ink) in dst.iter_mut().zip(&src[..3]) {
            *d = ((u32::from(ink) * k + 127) / 255) as u8;
        }
    }
}

fn check_size(max_pixels: u64, width: u64, height: u64) -> Result<(), DecodeError> {
    if width.saturating_mul(height) > max_pixels {
        return Err(DecodeError::TooLarge {
            width,
            height,
            max_pixels,
        });
    }
    Ok(())
}

/// The smallest of 1/4 and 1/2 at which `w × h` still fills an `iw × ih` letterbox along
/// its limiting side (the letterbox then scales by ≤ 1), else full size.
fn downscale_for(w: usize, h: usize, iw: usize, ih: usize) -> ScalingFactor {
    let mut denom = MAX_DOWNSCALE;
    while denom > 1 {
        let factor = ScalingFactor::new(1, denom);
        if factor.scale(w) >= iw || factor.scale(h) >= ih {
            return factor;
        }
        denom /= 2;
    }
    ScalingFactor::ONE
}

/// True when the last start-of-scan marker (FF DA) is followed by an end-of-image
/// marker (FF D9). In entropy-coded data every FF is stuffed, so FF D9 there is a real
/// marker; an embedded thumbnail's EOI comes before the main scan and does not count.
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let find_last = |marker: u8| {
        bytes
            .windows(2)
            .rposition(|w| w[0] == 0xFF && w[1] == marker)
    };
    match (find_last(0xDA), find_last(0xD9)) {
        (Some(sos), Some(eoi)) => eoi > sos,
        _ => false,
    }
}

/// True when `bytes` start like a JPEG file (SOI marker).
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// Read a decoder's pixels as packed RGB8 into the frame. Grey, grey-alpha and RGBA
/// images are expanded/stripped in place so every frame downstream is RGB8.
fn read_rgb(decoder: impl ImageDecoder, frame: &mut Frame) -> image::ImageResult<()> {
    let (width, height) = decoder.dimensions();
    let color = decoder.color_type();
    let pixels = width as usize * height as usize;
    frame.set_size(width, height);
    match color {
        image::ColorType::Rgb8 => decoder.read_image(&mut frame.rgb),
        image::ColorType::L8 => {
            decoder.read_image(&mut frame.rgb[..pixels])?;
            // Expand grey to RGB back to front so no source byte is overwritten first.
            for i in (0..pixels).rev() {
                let v = frame.rgb[i];
                frame.rgb[i * 3..i * 3 + 3].fill(v);
            }
            Ok(())
        }
        _ => {
            // Rare formats (RGBA, 16-bit, grey-alpha): take the general path.
            let image = image::DynamicImage::from_decoder(decoder)?.into_rgb8();
            frame.rgb.copy_from_slice(image.as_raw());
            Ok(())
        }
    }
}

/// A baseline 4:2:0 JPEG encoder that keeps its libjpeg-turbo handle and output buffer
/// from frame to frame.
pub struct JpegEncoder {
    compressor: Compressor,
    /// Sized for the worst case of the largest frame so far; encodes write into it.
    out: Vec<u8>,
}

impl JpegEncoder {
    pub fn new() -> Result<Self, turbojpeg::Error> {
        let mut compressor = Compressor::new()?;
        compressor.set_subsamp(Subsamp::Sub2x2)?;
        Ok(Self {
            compressor,
            out: Vec::new(),
        })
    }

    /// Encode one blank `width × height` frame, so the output buffer and libjpeg-turbo's
    /// per-image memory for that size are allocated now, by the calling thread (glibc
    /// reuses a thread's freed memory for that thread), and not when the first real
    /// frame is encoded: the keeper calls this at start-up, so the process's RSS does
    /// not step up at its first keep window.
    pub fn warm_up(&mut self, width: u32, height: u32) -> Result<(), turbojpeg::Error> {
        if width > 0 && height > 0 {
            let blank = vec![0u8; width as usize * height as usize * 3];
            self.encode(&blank, width, height, 90)?;
        }
        Ok(())
    }

    /// Encode packed RGB8 at `quality` (1..=100); the bytes live until the next call.
    pub fn encode(
        &mut self,
        rgb: &[u8],
        width: u32,
        height: u32,
        quality: u8,
    ) -> Result<&[u8], turbojpeg::Error> {
        self.compressor
            .set_quality(i32::from(quality.clamp(1, 100)))?;
        let (w, h) = (width as usize, height as usize);
        let worst = self.compressor.buf_len(w, h)?;
        if self.out.len() < worst {
            self.out.resize(worst, 0);
        }
        let image = Image {
            pixels: rgb,
            width: w,
            pitch: w * 3,
            height: h,
            format: PixelFormat::RGB,
        };
        let len = self.compressor.compress_to_slice(image, &mut self.out)?;
        Ok(&self.out[..len])
    }
}

/// Encode packed RGB8 as a baseline 4:2:0 JPEG into `out`, with a one-off
/// [`JpegEncoder`] (tests, dataset generation).
pub fn encode_jpeg(
    rgb: &[u8],
    width: u32,
    height: u32,
    quality: u8,
    out: &mut Vec<u8>,
) -> Result<(), turbojpeg::Error> {
    let mut encoder = JpegEncoder::new()?;
    let bytes = encoder.encode(rgb, width, height, quality)?;
    out.clear();
    out.extend_from_slice(bytes);
    Ok(())
}

/// A `width × height` JPEG with varied pixels, for tests.
#[cfg(test)]
pub(crate) fn test_jpeg(width: u32, height: u32) -> Vec<u8> {
    let rgb: Vec<u8> = (0..width * height)
        .flat_map(|i| [(i * 7) as u8, (i * 3) as u8, 200])
        .collect();
    let mut out = Vec::new();
    encode_jpeg(&rgb, width, height, 90, &mut out).expect("encode");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: u32, height: u32) -> Vec<u8> {
        (0..width * height)
            .flat_map(|i| {
                let (x, y) = (i % width, i / width);
                [(x * 255 / width) as u8, (y * 255 / height) as u8, 128]
            })
            .collect()
    }

    /// A `width × height` gradient and its JPEG at `quality`.
    fn gradient_jpeg(width: u32, height: u32, quality: u8) -> (Vec<u8>, Vec<u8>) {
        let rgb = gradient(width, height);
        let mut jpeg = Vec::new();
        encode_jpeg(&rgb, width, height, quality, &mut jpeg).expect("encode");
        (rgb, jpeg)
    }

    #[test]
    fn a_reused_encoder_matches_one_off_encodes_at_every_size() {
        let mut encoder = JpegEncoder::new().expect("encoder");
        encoder.warm_up(64, 48).expect("warm-up");
        // Larger than the warm-up (the buffer grows), then smaller again (bytes past
        // the new end are stale and must not be returned), at two qualities.
        for (w, h, q) in [(96, 80, 90), (16, 8, 50), (64, 48, 95), (96, 80, 30)] {
            let (rgb, one_off) = gradient_jpeg(w, h, q);
            let reused = encoder.encode(&rgb, w, h, q).expect("encode");
            assert_eq!(reused, &one_off[..], "{w}x{h} q{q}");
            let mut frame = Frame::with_capacity(w, h);
            FrameDecoder::full_size()
                .decode_into(reused, &mut frame)
                .expect("decodes");
            assert_eq!((frame.width, frame.height), (w, h));
        }
    }

    #[test]
    fn jpeg_round_trip_keeps_size_and_roughly_pixels() {
        let (rgb, jpeg) = gradient_jpeg(64, 48, 95);
        let mut frame = Frame::with_capacity(64, 48);
        FrameDecoder::full_size()
            .decode_into(&jpeg, &mut frame)
            .expect("decode");
        assert_eq!((frame.width, frame.height), (64, 48));
        assert_close(&frame.rgb, &rgb);
    }

    /// `got` is `want` give or take a JPEG's loss: a mean absolute error below 4.
    fn assert_close(got: &[u8], want: &[u8]) {
        assert_eq!(got.len(), want.len());
        let err: u64 = got
            .iter()
            .zip(want)
            .map(|(a, b)| u64::from(a.abs_diff(*b)))
            .sum();
        let mean = err / want.len() as u64;
        assert!(mean < 4, "mean abs error {mean}");
    }

    /// A CMYK JPEG, as print and photo-editing tools save them, decodes to the colours it
    /// was made from, at full size and DCT-scaled.
    #[test]
    fn cmyk_jpegs_decode_to_their_colours() {
        let (w, h) = (64u32, 48u32);
        let rgb = gradient(w, h);
        // RGB to Adobe CMYK (255 is no ink), as libjpeg-turbo's own tools convert.
        let cmyk: Vec<u8> = rgb
            .chunks_exact(3)
            .flat_map(|p| {
                let ink = [p[0], p[1], p[2]].map(|v| 1.0 - f64::from(v) / 255.0);
                let k = ink.iter().copied().fold(1.0, f64::min);
                let share = |c: f64| if k < 1.0 { (c - k) / (1.0 - k) } else { 1.0 };
                let byte = |c: f64| (255.0 - c * 255.0).round() as u8;
                [
                    byte(share(ink[0])),
                    byte(share(ink[1])),
                    byte(share(ink[2])),
                    byte(k),
                ]
            })
            .collect();
        let mut compressor = Compressor::new().expect("compressor");
        compressor.set_quality(95).expect("quality");
        compressor.set_subsamp(Subsamp::None).expect("subsampling");
        let jpeg = compressor
            .compress_to_vec(Image {
                pixels: &cmyk[..],
                width: w as usize,
                pitch: w as usize * 4,
                height: h as usize,
                format: PixelFormat::CMYK,
            })
            .expect("encode CMYK");
        let header = Decompressor::new()
            .expect("decompressor")
            .read_header(&jpeg)
            .expect("header");
        assert!(matches!(
            header.colorspace,
            Colorspace::CMYK | Colorspace::YCCK
        ));

        let mut frame = Frame::with_capacity(8, 8);
        FrameDecoder::full_size()
            .decode_into(&jpeg, &mut frame)
            .expect("a CMYK JPEG decodes");
        assert_eq!((frame.width, frame.height), (w, h));
        assert_close(&frame.rgb, &rgb);

        // Decoded at 1/4 for a 16-pixel input: a quarter of each side, the same colours.
        let mut small = Frame::with_capacity(8, 8);
        FrameDecoder::fitting(16, 16)
            .decode_into(&jpeg, &mut small)
            .expect("a scaled CMYK JPEG decodes");
        assert_eq!((small.width, small.height), (w / 4, h / 4));
        let centre = |f: &Frame| {
            let i = ((f.height / 2 * f.width + f.width / 2) * 3) as usize;
            [f.rgb[i], f.rgb[i + 1], f.rgb[i + 2]]
        };
        let (a, b) = (centre(&small), centre(&frame));
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.abs_diff(*y) < 12),
            "{a:?} vs {b:?}"
        );
    }

    /// PNG, BMP (24- and 32-bit) and lossless WebP come back pixel for pixel, alpha
    /// dropped.
    #[test]
    fn lossless_formats_decode_to_their_pixels() {
        let (w, h) = (37, 23);
        let rgb = gradient(w, h);
        let rgb_image = image::RgbImage::from_raw(w, h, rgb.clone()).expect("rgb");
        let rgba_image = image::DynamicImage::ImageRgb8(rgb_image.clone()).into_rgba8();
        let files = [
            ("png", encode(&rgb_image, image::ImageFormat::Png)),
            ("bmp", encode(&rgb_image, image::ImageFormat::Bmp)),
            ("bmp rgba", encode(&rgba_image, image::ImageFormat::Bmp)),
            ("webp", encode(&rgba_image, image::ImageFormat::WebP)),
        ];
        for (name, bytes) in files {
            let mut frame = Frame::with_capacity(8, 8);
            FrameDecoder::full_size()
                .decode_into(&bytes, &mut frame)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((frame.width, frame.height), (w, h), "{name}");
            assert!(frame.rgb == rgb, "{name}: pixels differ");
        }
    }

    #[test]
    fn bad_inputs_are_named() {
        let mut frame = Frame::with_capacity(8, 8);
        let mut decoder = FrameDecoder::full_size();
        let mut decode_into = |bytes: &[u8], frame: &mut Frame| decoder.decode_into(bytes, frame);
        assert!(matches!(
            decode_into(&[], &mut frame),
            Err(DecodeError::Empty)
        ));
        assert!(matches!(
            decode_into(b"hello, not an image", &mut frame),
            Err(DecodeError::UnknownFormat)
        ));
        let (_, mut jpeg) = gradient_jpeg(64, 48, 90);
        jpeg.truncate(jpeg.len() / 3);
        assert!(matches!(
            decode_into(&jpeg, &mut frame),
            Err(DecodeError::Corrupt(_))
        ));
    }

    /// A header claiming a huge image is refused before the frame buffer grows for it.
    #[test]
    fn images_above_the_maximum_are_refused_before_allocating() {
        const SIDE: u16 = 20_000;
        // A real JPEG whose SOF0 segment (FF C0, length, precision, height, width) is
        // patched to claim SIDE × SIDE.
        let (_, mut jpeg) = gradient_jpeg(64, 48, 90);
        let sof = jpeg
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .expect("SOF0");
        jpeg[sof + 5..sof + 7].copy_from_slice(&SIDE.to_be_bytes());
        jpeg[sof + 7..sof + 9].copy_from_slice(&SIDE.to_be_bytes());
        // A PNG whose IHDR claims the same (the decoder checks the chunk's CRC).
        let mut png = encode(&image::RgbImage::new(8, 8), image::ImageFormat::Png);
        png[16..20].copy_from_slice(&u32::from(SIDE).to_be_bytes());
        png[20..24].copy_from_slice(&u32::from(SIDE).to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());

        // A BMP whose info header claims it (width and height, little-endian i32).
        let mut bmp = encode(&image::RgbImage::new(8, 8), image::ImageFormat::Bmp);
        bmp[18..22].copy_from_slice(&i32::from(SIDE).to_le_bytes());
        bmp[22..26].copy_from_slice(&i32::from(SIDE).to_le_bytes());

        for (name, bytes) in [("jpeg", &jpeg), ("png", &png), ("bmp", &bmp)] {
            for mut decoder in [FrameDecoder::full_size(), FrameDecoder::fitting(320, 320)] {
                let mut frame = Frame::with_capacity(64, 48);
                let capacity = frame.rgb.capacity();
                match decoder.decode_into(bytes, &mut frame) {
                    Err(DecodeError::TooLarge {
                        width,
                        height,
                        max_pixels,
                    }) => {
                        assert_eq!((width, height), (u64::from(SIDE), u64::from(SIDE)));
                        assert_eq!(max_pixels, DEFAULT_MAX_FRAME_PIXELS);
                    }
                    other => panic!("{name}: expected TooLarge, got {other:?}"),
                }
                assert_eq!(frame.rgb.capacity(), capacity, "{name}: nothing allocated");
            }
        }
        // Within a raised maximum the header is believed (and the bad data then fails).
        let mut decoder = FrameDecoder::full_size().with_max_pixels(1_000);
        let (_, small) = gradient_jpeg(64, 48, 90);
        let mut frame = Frame::with_capacity(8, 8);
        assert!(matches!(
            decoder.decode_into(&small, &mut frame),
            Err(DecodeError::TooLarge {
                width: 64,
                height: 48,
                max_pixels: 1_000
            })
        ));
    }

    /// `image` encoded as a `format` file.
    fn encode<P, C>(image: &image::ImageBuffer<P, C>, format: image::ImageFormat) -> Vec<u8>
    where
        P: image::PixelWithColorType,
        [P::Subpixel]: image::EncodableLayout,
        C: std::ops::Deref<Target = [P::Subpixel]>,
    {
        let mut out = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut out), format)
            .expect("encode");
        out
    }

    /// CRC-32 (ISO-HDLC), as PNG chunks use.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn corrupt_entropy_data_is_an_error_not_a_grey_frame() {
        let (_, mut jpeg) = gradient_jpeg(256, 128, 90);
        // Keep the headers and the end marker, cut out the middle of the scan.
        let sos = jpeg
            .windows(2)
            .position(|w| w == [0xFF, 0xDA])
            .expect("SOS");
        let mid = sos + (jpeg.len() - sos) / 2;
        jpeg.drain(mid..jpeg.len() - 2);
        let mut frame = Frame::with_capacity(8, 8);
        assert!(matches!(
            FrameDecoder::full_size().decode_into(&jpeg, &mut frame),
            Err(DecodeError::Corrupt(_))
        ));
    }

    #[test]
    fn stray_bytes_after_the_scan_are_tolerated() {
        let (_, mut jpeg) = gradient_jpeg(64, 48, 90);
        let mut want = Frame::with_capacity(8, 8);
        let mut decoder = FrameDecoder::full_size();
        decoder.decode_into(&jpeg, &mut want).expect("decode");
        // Junk between the end of the scan and the end-of-image marker, as some UVC
        // webcams send ("1 extraneous bytes before marker 0xd9").
        let eoi = jpeg.len() - 2;
        jpeg.splice(eoi..eoi, [0x00, 0x11, 0x22]);
        let mut got = Frame::with_capacity(8, 8);
        decoder
            .decode_into(&jpeg, &mut got)
            .expect("stray bytes tolerated");
        assert_eq!(got.rgb, want.rgb);
    }

    #[test]
    fn downscale_keeps_the_letterbox_filled() {
        let d = |w, h, iw, ih| downscale_for(w, h, iw, ih).denom();
        assert_eq!(d(1280, 720, 320, 320), 4, "320x180 fills the width");
        assert_eq!(d(1920, 1080, 320, 320), 4, "never below 1/4");
        assert_eq!(d(1280, 720, 640, 640), 2);
        assert_eq!(d(640, 480, 320, 320), 2);
        assert_eq!(d(640, 480, 640, 640), 1);
        assert_eq!(d(320, 240, 320, 320), 1);
        assert_eq!(d(1366, 768, 320, 320), 4, "342x192, rounded up");
    }

    #[test]
    fn fitted_decode_records_the_captured_size() {
        let (rgb, jpeg) = gradient_jpeg(1280, 720, 90);
        let mut frame = Frame::with_capacity(8, 8);
        let mut decoder = FrameDecoder::fitting(320, 320);
        decoder.decode_into(&jpeg, &mut frame).expect("decode");
        assert_eq!((frame.width, frame.height), (320, 180));
        assert_eq!((frame.source_width, frame.source_height), (1280, 720));
        assert_eq!(frame.rgb.len(), 320 * 180 * 3);
        // A DCT-scaled pixel is the average of its 4×4 block: compare with the gradient.
        let (x, y) = (100usize, 50usize);
        let want = rgb[((y * 4 + 2) * 1280 + x * 4 + 2) * 3];
        let got = frame.rgb[(y * 320 + x) * 3];
        assert!(want.abs_diff(got) <= 4, "{want} vs {got}");

        // The same decoder decodes a small image at full size.
        let (_, small) = gradient_jpeg(200, 100, 90);
        decoder.decode_into(&small, &mut frame).expect("decode");
        assert_eq!((frame.width, frame.height), (200, 100));
        assert_eq!((frame.source_width, frame.source_height), (200, 100));
    }

    /// The blur meter sees the same detail whether a frame arrived raw (box-averaged to
    /// 1/4 by the meter) or as a JPEG decoded at 1/4 scale by the DCT, so one
    /// `blur_threshold` serves both kinds of camera.
    #[test]
    fn blur_agrees_between_raw_frames_and_dct_scaled_jpegs() {
        use crate::{
            capture::preprocess::FrameMeter,
            capture::{
                FrameSource, Next,
                synthetic::{SyntheticConfig, SyntheticSource},
            },
        };
        let mut source = SyntheticSource::new(SyntheticConfig {
            frames_per_scene: 1,
            seed: 11,
            ..SyntheticConfig::default()
        });
        let (mut raw, mut decoded) = (Frame::with_capacity(8, 8), Frame::with_capacity(8, 8));
        let (mut meter, mut decoder, mut jpeg) = (
            FrameMeter::default(),
            FrameDecoder::fitting(320, 320),
            Vec::new(),
        );
        for _ in 0..40 {
            assert!(matches!(source.next_frame(&mut raw), Ok(Next::Frame)));
            encode_jpeg(&raw.rgb, raw.width, raw.height, 90, &mut jpeg).expect("encode");
            decoder.decode_into(&jpeg, &mut decoded).expect("decode");
            assert_eq!(decoded.width, raw.width / 4);
            let (a, b) = (meter.measure(&raw).blur, meter.measure(&decoded).blur);
            assert!(
                (b / a - 1.0).abs() < 0.05,
                "blur raw {a:.1} vs 1/4-scale JPEG {b:.1}"
            );
        }
    }
}
