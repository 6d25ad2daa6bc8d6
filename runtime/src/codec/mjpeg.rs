//! MJPEG frames as cameras send them, made into standalone JPEGs.
//!
//! V4L2 mmap buffers are larger than the frame and hold stale bytes after it, so the
//! frame's end is found by walking its marker structure ([`scan_jpeg`]); many UVC
//! cameras send "AVI1" MJPEG without Huffman tables, so the standard ones are inserted
//! ([`repair`]): a kept frame is then a JPEG any tool decodes.

use super::DecodeError;

/// Copy the JPEG at the start of `bytes` into `out` (cleared first), trimmed to its
/// end-of-image marker, with the standard Huffman tables inserted when the camera left
/// them out. Allocates nothing once `out` has grown to size.
pub(crate) fn repair(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let layout = scan_jpeg(bytes).map_err(DecodeError::Corrupt)?;
    out.clear();
    match layout.missing_dht_at {
        Some(at) => {
            out.extend_from_slice(&bytes[..at]);
            push_default_dht(out);
            out.extend_from_slice(&bytes[at..layout.len]);
        }
        None => out.extend_from_slice(&bytes[..layout.len]),
    }
    Ok(())
}

/// Where a JPEG ends inside a (possibly larger) buffer, and whether it carries Huffman tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JpegLayout {
    /// Length up to and including the EOI marker.
    pub(crate) len: usize,
    /// Offset of the first SOS marker when no DHT segment precedes it: many UVC cameras
    /// send "AVI1" MJPEG with the standard tables omitted.
    pub(crate) missing_dht_at: Option<usize>,
}

/// Walk a JPEG's marker structure (segments, then entropy-coded data with byte stuffing and
/// restart markers) to find its end. V4L2 mmap buffers are larger than the frame and hold
/// stale bytes after it, so neither the buffer length nor a search for the last `FF D9` works.
pub(crate) fn scan_jpeg(bytes: &[u8]) -> Result<JpegLayout, String> {
    const TRUNCATED: &str = "truncated MJPEG frame (no end-of-image marker)";
    if bytes.len() < 4 || bytes[0] != 0xFF || bytes[1] != 0xD8 {
        return Err("not a JPEG (no start-of-image marker)".to_string());
    }
    let mut i = 2;
    let mut seen_dht = false;
    let mut missing_dht_at = None;
    let mut seen_sos = false;
    loop {
        if bytes.get(i) != Some(&0xFF) {
            return Err(if i >= bytes.len() {
                TRUNCATED.to_string()
            } else {
                format!("corrupt MJPEG frame (expected a marker at byte {i})")
            });
        }
        let start = i;
        while bytes.get(i) == Some(&0xFF) {
            i += 1; // fill bytes
        }
        let Some(&marker) = bytes.get(i) else {
            return Err(TRUNCATED.to_string());
        };
        i += 1;
        match marker {
            0xD9 => {
                return Ok(JpegLayout {
                    len: i,
                    missing_dht_at,
                });
            }
            // Standalone markers without a length: TEM, RSTn.
            0x01 | 0xD0..=0xD7 => continue,
            0x00 | 0xD8 => {
                return Err(format!(
                    "corrupt MJPEG frame (unexpected marker FF{marker:02X} at byte {start})"
                ));
            }
            _ => {}
        }
        let Some(len_bytes) = bytes.get(i..i + 2) else {
            return Err(TRUNCATED.to_string());
        };
        let seg_len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        if seg_len < 2 {
            return Err(format!(
                "corrupt MJPEG frame (segment length {seg_len} at byte {start})"
            ));
        }
        i += seg_len;
        if i > bytes.len() {
            return Err(TRUNCATED.to_string());
        }
        if marker == 0xC4 {
            seen_dht = true;
        }
        if marker != 0xDA {
            continue;
        }
        if !seen_sos && !seen_dht {
            missing_dht_at = Some(start);
        }
        seen_sos = true;
        // Entropy-coded data: runs until a marker other than a stuffed 00 or a restart.
        loop {
            let Some(offset) = bytes[i..].iter().position(|&b| b == 0xFF) else {
                return Err(TRUNCATED.to_string());
            };
            let p = i + offset;
            match bytes.get(p + 1) {
                None => return Err(TRUNCATED.to_string()),
                Some(0x00 | 0xD0..=0xD7) => i = p + 2,
                Some(0xFF) => i = p + 1,
                Some(_) => {
                    i = p;
                    break;
                }
            }
        }
    }
}

/// Append a DHT segment with the standard Huffman tables (ITU T.81 Annex K.3, the tables the
/// MJPEG/"AVI1" convention leaves out) so a kept frame is a standalone, valid JPEG.
fn push_default_dht(out: &mut Vec<u8>) {
    let tables: [(u8, &[u8; 16], &[u8]); 4] = [
        (0x00, &DC_LUMA_BITS, &DC_VALUES),
        (0x10, &AC_LUMA_BITS, &AC_LUMA_VALUES),
        (0x01, &DC_CHROMA_BITS, &DC_VALUES),
        (0x11, &AC_CHROMA_BITS, &AC_CHROMA_VALUES),
    ];
    let len = 2 + tables
        .iter()
        .map(|(_, bits, values)| 1 + bits.len() + values.len())
        .sum::<usize>();
    out.extend_from_slice(&[0xFF, 0xC4]);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    for (class_id, bits, values) in tables {
        out.push(class_id);
        out.extend_from_slice(bits);
        out.extend_from_slice(values);
    }
}

const DC_LUMA_BITS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
const DC_CHROMA_BITS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
const DC_VALUES: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
const AC_LUMA_BITS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D];
const AC_LUMA_VALUES: [u8; 162] = [
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
    0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xA1, 0x08, 0x23, 0x42, 0xB1, 0xC1, 0x15, 0x52, 0xD1, 0xF0,
    0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0A, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x25, 0x26, 0x27, 0x28,
    0x29, 0x2A, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
    0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
    0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
    0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7,
    0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5,
    0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE1, 0xE2,
    0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8,
    0xF9, 0xFA,
];
const AC_CHROMA_BITS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
const AC_CHROMA_VALUES: [u8; 162] = [
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71,
    0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xA1, 0xB1, 0xC1, 0x09, 0x23, 0x33, 0x52, 0xF0,
    0x15, 0x62, 0x72, 0xD1, 0x0A, 0x16, 0x24, 0x34, 0xE1, 0x25, 0xF1, 0x17, 0x18, 0x19, 0x1A, 0x26,
    0x27, 0x28, 0x29, 0x2A, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
    0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
    0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5,
    0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3,
    0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA,
    0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8,
    0xF9, 0xFA,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{codec::FrameDecoder, frame::Frame};

    /// Remove every DHT segment, as many UVC cameras do ("AVI1" MJPEG).
    fn strip_dht(jpeg: &[u8]) -> Vec<u8> {
        let mut out = jpeg[..2].to_vec();
        let mut i = 2;
        loop {
            let marker = jpeg[i + 1];
            if marker == 0xDA {
                out.extend_from_slice(&jpeg[i..]);
                return out;
            }
            let len = usize::from(u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]));
            if marker != 0xC4 {
                out.extend_from_slice(&jpeg[i..i + 2 + len]);
            }
            i += 2 + len;
        }
    }

    #[test]
    fn mjpeg_without_huffman_tables_gets_the_standard_ones() {
        let original = crate::codec::test_jpeg(32, 16);
        let stripped = strip_dht(&original);
        assert!(stripped.len() < original.len());
        assert_eq!(scan_jpeg(&original).expect("scan").missing_dht_at, None);
        let sos = scan_jpeg(&stripped)
            .expect("scan")
            .missing_dht_at
            .expect("no DHT before SOS");
        assert_eq!(&stripped[sos..sos + 2], [0xFF, 0xDA]);

        let mut want = Frame::with_capacity(32, 16);
        let mut decoder = FrameDecoder::full_size();
        decoder
            .decode_into(&original, &mut want)
            .expect("decode original");
        // The repaired bytes are a standalone JPEG with tables, decodable by anything.
        let mut repaired = Vec::new();
        repair(&stripped, &mut repaired).expect("repair");
        assert_eq!(repaired.len(), stripped.len() + 420);
        assert_eq!(scan_jpeg(&repaired).expect("scan").missing_dht_at, None);
        let mut got = Frame::with_capacity(32, 16);
        decoder
            .decode_into(&repaired, &mut got)
            .expect("decode repaired bytes");
        assert_eq!(got.rgb, want.rgb);
        // A complete JPEG in a larger driver buffer is trimmed to its end marker.
        let mut padded = original.clone();
        padded.extend_from_slice(&[0xFF, 0xD9, 0x12, 0xFF, 0xD9, 0, 0, 0]);
        repair(&padded, &mut repaired).expect("repair");
        assert_eq!(repaired, original);
    }

    #[test]
    fn jpeg_scan_handles_stuffing_restarts_and_truncation() {
        // SOI, DHT (empty body), SOS (len 2), data with FF00 and RST0, EOI, stale tail.
        let bytes = [
            0xFF, 0xD8, 0xFF, 0xC4, 0, 2, 0xFF, 0xDA, 0, 2, 0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0,
            0x56, 0xFF, 0xFF, 0xD9, 0xAA, 0xFF, 0xD9,
        ];
        assert_eq!(
            scan_jpeg(&bytes),
            Ok(JpegLayout {
                len: 20,
                missing_dht_at: None
            })
        );
        for cut in 0..20 {
            assert!(
                scan_jpeg(&bytes[..cut]).is_err(),
                "prefix of {cut} bytes accepted"
            );
        }
        assert!(scan_jpeg(b"not a jpeg at all").is_err());
        assert!(scan_jpeg(&[0xFF, 0xD8, 0x00, 0x00, 0xFF, 0xD9]).is_err());
    }
}
