//! Image decoding and encoding into pooled buffers.

use std::io::Cursor;

use image::{ImageDecoder, ImageFormat, codecs::jpeg::JpegEncoder};

use crate::frame::Frame;

/// Why an encoded image could not be turned into a frame.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty file")]
    Empty,
    #[error("not a JPEG or PNG image")]
    UnknownFormat,
    #[error("{0}")]
    Corrupt(String),
}

/// Decode a JPEG or PNG held in memory into `frame.rgb` (resized in place, capacity reused).
/// Sets `width`/`height`; leaves the other metadata to the caller.
pub fn decode_into(bytes: &[u8], frame: &mut Frame) -> Result<(), DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| DecodeError::UnknownFormat)?;
    let corrupt = |e: image::ImageError| DecodeError::Corrupt(e.to_string());
    match format {
        ImageFormat::Jpeg => {
            if !jpeg_is_complete(bytes) {
                // The decoder fills a truncated scan with grey and reports success;
                // a frame cut short must be skipped, not scored.
                return Err(DecodeError::Corrupt(
                    "truncated JPEG: no end-of-image marker after the image data".into(),
                ));
            }
            let decoder =
                image::codecs::jpeg::JpegDecoder::new(Cursor::new(bytes)).map_err(corrupt)?;
            read_rgb(decoder, frame).map_err(corrupt)
        }
        ImageFormat::Png => {
            let decoder =
                image::codecs::png::PngDecoder::new(Cursor::new(bytes)).map_err(corrupt)?;
            read_rgb(decoder, frame).map_err(corrupt)
        }
        _ => Err(DecodeError::UnknownFormat),
    }
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

/// Encode packed RGB8 as JPEG into `out` (cleared first, capacity reused).
pub fn encode_jpeg(
    rgb: &[u8],
    width: u32,
    height: u32,
    quality: u8,
    out: &mut Vec<u8>,
) -> image::ImageResult<()> {
    out.clear();
    let mut encoder = JpegEncoder::new_with_quality(&mut *out, quality);
    encoder.encode(rgb, width, height, image::ExtendedColorType::Rgb8)
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

    #[test]
    fn jpeg_round_trip_keeps_size_and_roughly_pixels() {
        let rgb = gradient(64, 48);
        let mut jpeg = Vec::new();
        encode_jpeg(&rgb, 64, 48, 95, &mut jpeg).expect("encode");
        let mut frame = Frame::with_capacity(64, 48);
        decode_into(&jpeg, &mut frame).expect("decode");
        assert_eq!((frame.width, frame.height), (64, 48));
        let err: u64 = rgb
            .iter()
            .zip(&frame.rgb)
            .map(|(a, b)| a.abs_diff(*b) as u64)
            .sum();
        assert!(
            err / (rgb.len() as u64) < 4,
            "mean abs error {}",
            err / rgb.len() as u64
        );
    }

    #[test]
    fn bad_inputs_are_named() {
        let mut frame = Frame::with_capacity(8, 8);
        assert!(matches!(
            decode_into(&[], &mut frame),
            Err(DecodeError::Empty)
        ));
        assert!(matches!(
            decode_into(b"hello, not an image", &mut frame),
            Err(DecodeError::UnknownFormat)
        ));
        let rgb = gradient(64, 48);
        let mut jpeg = Vec::new();
        encode_jpeg(&rgb, 64, 48, 90, &mut jpeg).expect("encode");
        jpeg.truncate(jpeg.len() / 3);
        assert!(matches!(
            decode_into(&jpeg, &mut frame),
            Err(DecodeError::Corrupt(_))
        ));
    }
}
