//! V4L2 camera source (through `nokhwa`'s V4L2 backend).
//!
//! MJPEG frames are kept as the camera sent them (`Frame::encoded`, so a kept frame is
//! written without re-encoding) and decoded with [`codec::FrameDecoder`]; YUYV frames are
//! converted to RGB here ([`yuyv_to_rgb`]). Neither path allocates once the frame's buffers
//! have grown to size.
//!
//! When a capture fails (camera unplugged, USB error) the stream is dropped and
//! [`SourceError::Disconnected`] returned; later calls reopen the camera, sleeping per a
//! doubling, capped [`Backoff`] before each attempt, and return `Disconnected` again until
//! it is back.
//!
//! The nokhwa camera sits behind the private [`Device`] trait so the reconnect logic is
//! tested with a scripted fake device (there is no camera on build machines or in CI).
//!
//! nokhwa notes (0.10 / nokhwa-bindings-linux 0.1): we use `V4LCaptureDevice` directly,
//! not `nokhwa::Camera` — `Camera` is not `Send` without the `camera-sync-impl` feature
//! and its `Drop` unwraps `stop_stream()`. `frame_raw()` borrows the driver's mmap buffer
//! (no copy) but returns the *whole* buffer, not `bytesused`, so the MJPEG end is found by
//! parsing the JPEG ([`scan_jpeg`]). Devices open by index (`/dev/videoN`), so paths are
//! resolved (symlinks such as `/dev/v4l/by-id/...` followed) at every (re)open. nokhwa keeps
//! a process-wide table of open devices by index and hands back a still-alive handle, so the
//! old stream must be dropped before a reopen (we do) or the dead file descriptor comes back.

use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{FrameSource, Next, SourceError};
use crate::codec::FrameDecoder;
use crate::frame::Frame;

/// Pixel format requested from the camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CameraFormat {
    /// Motion JPEG: each frame is a JPEG; cheap on USB bandwidth, the usual choice at 720p+.
    Mjpeg,
    /// Uncompressed YUV 4:2:2 (`Y0 U Y1 V`).
    Yuyv,
}

impl CameraFormat {
    /// Stable lower-case name (`"mjpeg"`, `"yuyv"`), as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            CameraFormat::Mjpeg => "mjpeg",
            CameraFormat::Yuyv => "yuyv",
        }
    }

    /// Inverse of [`CameraFormat::name`] (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        [CameraFormat::Mjpeg, CameraFormat::Yuyv]
            .into_iter()
            .find(|format| format.name().eq_ignore_ascii_case(name.trim()))
    }
}

/// Validated settings of a V4L2 camera (TOML parsing happens elsewhere).
#[derive(Debug, Clone, PartialEq)]
pub struct V4l2Config {
    /// `/dev/videoN` path or a bare index `N`.
    pub device: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub format: CameraFormat,
    /// Backoff between reconnect attempts after the camera disappears: starts at initial,
    /// doubles up to max.
    pub reconnect_initial_ms: u64,
    pub reconnect_max_ms: u64,
}

/// Reconnect delay schedule: `initial`, doubling on every call, capped at `max`, back to
/// `initial` after [`Backoff::reset`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A zero `initial` is raised to 1 ms (so retries never spin) and `max` to `initial`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        let max = max.max(initial);
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay to wait before the next attempt; advances the schedule.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = delay.saturating_mul(2).min(self.max);
        delay
    }

    /// Start over from the initial delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Why [`yuyv_to_rgb`] could not convert a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YuyvError {
    #[error("YUYV buffer holds {got} bytes, a {width}x{height} frame needs {need}")]
    ShortInput {
        width: u32,
        height: u32,
        need: usize,
        got: usize,
    },
    #[error("RGB buffer holds {got} bytes, a {width}x{height} frame needs {need}")]
    ShortOutput {
        width: u32,
        height: u32,
        need: usize,
        got: usize,
    },
    #[error("{width}x{height} is too large to address")]
    TooLarge { width: u32, height: u32 },
    #[error("YUYV conversion failed: {0}")]
    Convert(String),
}

/// Bytes of one YUYV row: pixels are stored in pairs sharing one U and one V sample, so an
/// odd width is padded to the next pair (the last pair's second luma is ignored).
fn yuyv_row_bytes(width: usize) -> Option<usize> {
    width.div_ceil(2).checked_mul(4)
}

/// Convert YUYV (YUV 4:2:2, BT.601 limited range: Y 16–235, U/V 16–240) to packed RGB8.
///
/// `yuyv` may be longer than needed (V4L2 buffers usually are); rows are read tightly
/// packed from its start. `rgb` must hold at least `width * height * 3` bytes. Odd widths
/// are handled (rows padded to whole pixel pairs). The conversion is `yuvutils-rs`'s
/// fixed-point SIMD code: within 2.5 levels of exact BT.601 on legal input, and
/// out-of-range values clamp rather than wrap. Allocates nothing.
pub fn yuyv_to_rgb(yuyv: &[u8], width: u32, height: u32, rgb: &mut [u8]) -> Result<(), YuyvError> {
    let (w, h) = (width as usize, height as usize);
    let too_large = YuyvError::TooLarge { width, height };
    let stride = yuyv_row_bytes(w).ok_or(too_large.clone())?;
    let need_in = stride.checked_mul(h).ok_or(too_large.clone())?;
    let out_row = w.checked_mul(3).ok_or(too_large.clone())?;
    let need_out = out_row.checked_mul(h).ok_or(too_large)?;
    if yuyv.len() < need_in {
        return Err(YuyvError::ShortInput {
            width,
            height,
            need: need_in,
            got: yuyv.len(),
        });
    }
    if rgb.len() < need_out {
        return Err(YuyvError::ShortOutput {
            width,
            height,
            need: need_out,
            got: rgb.len(),
        });
    }
    if w == 0 || h == 0 {
        return Ok(());
    }
    let (Ok(yuy_stride), Ok(rgb_stride)) = (u32::try_from(stride), u32::try_from(out_row)) else {
        return Err(YuyvError::TooLarge { width, height });
    };
    let packed = yuvutils_rs::YuvPackedImage {
        yuy: &yuyv[..need_in],
        yuy_stride,
        width,
        height,
    };
    yuvutils_rs::yuyv422_to_rgb(
        &packed,
        &mut rgb[..need_out],
        rgb_stride,
        yuvutils_rs::YuvRange::Limited,
        yuvutils_rs::YuvStandardMatrix::Bt601,
    )
    .map_err(|e| YuyvError::Convert(e.to_string()))
}

/// Where a JPEG ends inside a (possibly larger) buffer, and whether it carries Huffman tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct JpegLayout {
    /// Length up to and including the EOI marker.
    len: usize,
    /// Offset of the first SOS marker when no DHT segment precedes it: many UVC cameras
    /// send "AVI1" MJPEG with the standard tables omitted.
    missing_dht_at: Option<usize>,
}

/// Walk a JPEG's marker structure (segments, then entropy-coded data with byte stuffing and
/// restart markers) to find its end. V4L2 mmap buffers are larger than the frame and hold
/// stale bytes after it, so neither the buffer length nor a search for the last `FF D9` works.
fn scan_jpeg(bytes: &[u8]) -> Result<JpegLayout, String> {
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

/// Copy one MJPEG frame (trimmed to its EOI, standard Huffman tables inserted if the camera
/// left them out) into `frame.encoded` and decode it into `frame.rgb`.
fn fill_mjpeg(
    bytes: &[u8],
    decoder: &mut FrameDecoder,
    frame: &mut Frame,
) -> Result<(), crate::codec::DecodeError> {
    use crate::codec::DecodeError;
    let layout = scan_jpeg(bytes).map_err(DecodeError::Corrupt)?;
    frame.encoded.clear();
    match layout.missing_dht_at {
        Some(at) => {
            frame.encoded.extend_from_slice(&bytes[..at]);
            push_default_dht(&mut frame.encoded);
            frame.encoded.extend_from_slice(&bytes[at..layout.len]);
        }
        None => frame.encoded.extend_from_slice(&bytes[..layout.len]),
    }
    // `decode_into` needs the frame mutably; lend it the bytes (no allocation either way).
    let encoded = std::mem::take(&mut frame.encoded);
    let decoded = decoder.decode_into(&encoded, frame);
    frame.encoded = encoded;
    decoded.map_err(|e| {
        frame.encoded.clear();
        match e {
            DecodeError::TooLarge { .. } => e,
            e => DecodeError::Corrupt(format!("corrupt MJPEG frame: {e}")),
        }
    })
}

fn fill_yuyv(bytes: &[u8], width: u32, height: u32, frame: &mut Frame) -> Result<(), String> {
    frame.set_size(width, height);
    yuyv_to_rgb(bytes, width, height, &mut frame.rgb).map_err(|e| format!("bad YUYV frame: {e}"))
}

/// One captured frame as the driver delivered it.
struct RawFrame<'a> {
    bytes: &'a [u8],
    width: u32,
    height: u32,
}

/// An open, streaming camera.
trait Device: Send {
    /// Block until the next frame. An error means the stream is unusable (unplugged, I/O
    /// error); the caller drops the device and reopens.
    fn frame(&mut self) -> Result<RawFrame<'_>, String>;
}

/// Opens the configured camera; called once by [`CameraSource::open`] and again on reconnect.
type Opener = Box<dyn FnMut() -> Result<Box<dyn Device>, OpenFailure> + Send>;
/// How to wait between reconnect attempts (`thread::sleep`; recorded in tests).
type Sleeper = Box<dyn FnMut(Duration) + Send>;

/// Why a camera could not be opened.
#[derive(Debug, Clone, PartialEq)]
enum OpenFailure {
    /// No device node at the configured path (or the index's `/dev/videoN`).
    Missing,
    /// The path exists but is not a `/dev/videoN` node (resolved path attached).
    NotVideoNode(String),
    /// The device exists but could not be opened or started (permission, busy, driver).
    Open(String),
    /// The camera rejected the requested mode; `offers` describes what it supports, when
    /// that could be queried.
    Mode {
        error: String,
        offers: Option<String>,
    },
    /// No V4L2 on this platform.
    #[cfg_attr(target_os = "linux", allow(dead_code))]
    Unsupported,
}

impl OpenFailure {
    /// One line for a `Disconnected` reason while reconnecting.
    fn reason(&self) -> String {
        match self {
            OpenFailure::Missing => "the device does not exist".to_string(),
            OpenFailure::NotVideoNode(real) => format!("not a V4L2 video device ({real})"),
            OpenFailure::Open(error) => error.clone(),
            OpenFailure::Mode { error, .. } => {
                format!("the camera rejected the configured mode: {error}")
            }
            OpenFailure::Unsupported => "V4L2 cameras are only supported on Linux".to_string(),
        }
    }

    /// The full, actionable message for a camera that cannot start at all.
    fn fatal_message(&self, config: &V4l2Config, name: &str) -> String {
        const WITHOUT_CAMERA: &str =
            "use type = \"synthetic\" or type = \"replay\" to run without a camera";
        match self {
            OpenFailure::Missing => format!(
                "no camera at {name}: the device does not exist (cameras present: {}). Plug a camera in, set \
                 [[camera]] device to one of the listed devices, or {WITHOUT_CAMERA}.",
                cameras_present()
            ),
            OpenFailure::NotVideoNode(real) => format!(
                "{name} is not a V4L2 video device (it resolves to {real}; cameras present: {}). Set [[camera]] \
                 device to a /dev/videoN node or a bare index N, or {WITHOUT_CAMERA}.",
                cameras_present()
            ),
            OpenFailure::Open(error) => format!(
                "cannot open camera at {name}: {error}. Check it with `v4l2-ctl --device {name} --all`, or \
                 {WITHOUT_CAMERA}."
            ),
            OpenFailure::Mode { error, offers } => {
                let wanted = format!(
                    "{}x{}@{} {}",
                    config.width,
                    config.height,
                    config.fps,
                    config.format.name()
                );
                match offers {
                    Some(offers) if offers.is_empty() => format!(
                        "camera at {name} cannot capture {wanted} ({error}): it offers no MJPEG or YUYV mode. A USB \
                         camera creates two /dev/video nodes and the second is a metadata node; set [[camera]] device \
                         to the other one (cameras present: {}).",
                        cameras_present()
                    ),
                    Some(offers) => format!(
                        "camera at {name} cannot capture {wanted} ({error}). It offers: {offers}. Set [[camera]] \
                         width, height, fps and format to one of these."
                    ),
                    None => format!(
                        "camera at {name} cannot capture {wanted} ({error}); its modes could not be queried. List \
                         them with `v4l2-ctl --device {name} --list-formats-ext` and set [[camera]] width, height, \
                         fps and format to one of them."
                    ),
                }
            }
            OpenFailure::Unsupported => {
                format!(
                    "cannot open camera at {name}: V4L2 cameras are only supported on Linux; {WITHOUT_CAMERA}."
                )
            }
        }
    }
}

/// The device as shown in logs and errors: a bare index `N` becomes `/dev/videoN`.
fn display_device(device: &str) -> String {
    let device = device.trim();
    match device.parse::<u32>() {
        Ok(index) => format!("/dev/video{index}"),
        Err(_) => device.to_string(),
    }
}

/// `N` for a file name `videoN`.
fn video_index(file_name: &str) -> Option<u32> {
    let digits = file_name.strip_prefix("video")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Resolve the configured device to the V4L2 index nokhwa opens (`/dev/videoN`),
/// following symlinks such as `/dev/v4l/by-id/...`.
fn resolve_index(device: &str) -> Result<u32, OpenFailure> {
    let device = device.trim();
    if let Ok(index) = device.parse::<u32>() {
        return if Path::new(&format!("/dev/video{index}")).exists() {
            Ok(index)
        } else {
            Err(OpenFailure::Missing)
        };
    }
    let path = Path::new(device);
    if !path.exists() {
        return Err(OpenFailure::Missing);
    }
    let real = std::fs::canonicalize(path).map_err(|e| OpenFailure::Open(e.to_string()))?;
    let index = (real.parent() == Some(Path::new("/dev")))
        .then(|| {
            real.file_name()
                .and_then(|n| n.to_str())
                .and_then(video_index)
        })
        .flatten();
    index.ok_or_else(|| OpenFailure::NotVideoNode(real.display().to_string()))
}

/// The `videoN` nodes in `dev_dir`, sorted by index.
fn video_nodes(dev_dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut nodes: Vec<(u32, PathBuf)> = std::fs::read_dir(dev_dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| {
                    let index = video_index(entry.file_name().to_str()?)?;
                    Some((index, entry.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    nodes
}

/// `"/dev/video0 (HD Webcam), /dev/video1 (HD Webcam)"`, or `"none"`; names come from
/// `sys_dir/videoN/name` (sysfs) when readable.
fn cameras_present_in(dev_dir: &Path, sys_dir: &Path) -> String {
    let mut out = String::new();
    for (index, path) in video_nodes(dev_dir) {
        if !out.is_empty() {
            out.push_str(", ");
        }
        let _ = write!(out, "{}", path.display());
        if let Ok(name) =
            std::fs::read_to_string(sys_dir.join(format!("video{index}")).join("name"))
            && !name.trim().is_empty()
        {
            let _ = write!(out, " ({})", name.trim());
        }
    }
    if out.is_empty() {
        "none".to_string()
    } else {
        out
    }
}

fn cameras_present() -> String {
    cameras_present_in(Path::new("/dev"), Path::new("/sys/class/video4linux"))
}

/// A V4L2 camera.
pub struct CameraSource {
    config: V4l2Config,
    /// Device as shown in logs, errors and `Frame::origin` (`/dev/video0`).
    name: String,
    /// `None` after a capture failure until a reopen succeeds.
    device: Option<Box<dyn Device>>,
    opener: Opener,
    sleep: Sleeper,
    backoff: Backoff,
    seq: u64,
    decoder: FrameDecoder,
}

impl CameraSource {
    /// Opens the camera and checks it accepts the configured mode. A missing device, an
    /// unsupported mode or an unopenable camera is [`SourceError::Fatal`] with a message
    /// saying what to change.
    pub fn open(config: V4l2Config) -> Result<Self, SourceError> {
        let opener_config = config.clone();
        let opener: Opener = Box::new(move || v4l2::open_device(&opener_config));
        Self::with_parts(config, opener, Box::new(std::thread::sleep))
    }

    fn with_parts(
        config: V4l2Config,
        mut opener: Opener,
        sleep: Sleeper,
    ) -> Result<Self, SourceError> {
        let name = display_device(&config.device);
        if name.is_empty() {
            return Err(SourceError::Fatal(
                "[[camera]] device is empty: set it to a /dev/videoN path or a bare index N"
                    .to_string(),
            ));
        }
        if config.width == 0 || config.height == 0 || config.fps == 0 {
            return Err(SourceError::Fatal(format!(
                "camera {name}: width, height and fps must be positive (got {}x{}@{})",
                config.width, config.height, config.fps
            )));
        }
        let device = opener()
            .map_err(|failure| SourceError::Fatal(failure.fatal_message(&config, &name)))?;
        let backoff = Backoff::new(
            Duration::from_millis(config.reconnect_initial_ms),
            Duration::from_millis(config.reconnect_max_ms),
        );
        Ok(Self {
            config,
            name,
            device: Some(device),
            opener,
            sleep,
            backoff,
            seq: 0,
            decoder: FrameDecoder::full_size(),
        })
    }

    /// Decode MJPEG frames with `decoder` (e.g. [`FrameDecoder::fitting`] the model input).
    pub fn decoding_with(mut self, decoder: FrameDecoder) -> Self {
        self.decoder = decoder;
        self
    }

    /// Wait out the next backoff delay and try to reopen the camera.
    fn reopen(&mut self) -> Result<Box<dyn Device>, SourceError> {
        let delay = self.backoff.next_delay();
        (self.sleep)(delay);
        (self.opener)().map_err(|failure| SourceError::Disconnected {
            device: self.name.clone(),
            reason: format!(
                "reconnect failed after waiting {} ms: {}",
                delay.as_millis(),
                failure.reason()
            ),
        })
    }

    /// Drop the stream. v4l's stream `Drop` panics if `VIDIOC_STREAMOFF` fails with anything
    /// but `ENODEV`; a camera going away must not take the capture thread with it.
    fn drop_device(&mut self) {
        if let Some(device) = self.device.take() {
            let _ = catch_unwind(AssertUnwindSafe(move || drop(device)));
        }
    }
}

impl FrameSource for CameraSource {
    fn next_frame(&mut self, frame: &mut Frame) -> Result<Next, SourceError> {
        let device = match self.device.as_mut() {
            Some(device) => device,
            None => {
                let device = self.reopen()?;
                tracing::info!(camera = %self.name, "camera reopened");
                self.device.insert(device)
            }
        };
        let raw = match device.frame() {
            Ok(raw) => raw,
            Err(reason) => {
                self.drop_device();
                return Err(SourceError::Disconnected {
                    device: self.name.clone(),
                    reason: format!("capture failed: {reason}"),
                });
            }
        };
        let captured_at = SystemTime::now();
        frame.clear();
        frame.truth = None;
        let filled = match self.config.format {
            CameraFormat::Mjpeg => fill_mjpeg(raw.bytes, &mut self.decoder, frame)
                .map_err(|e| SourceError::undecodable(PathBuf::from(&self.name), e)),
            CameraFormat::Yuyv => {
                fill_yuyv(raw.bytes, raw.width, raw.height, frame).map_err(|reason| {
                    SourceError::BadFrame {
                        path: PathBuf::from(&self.name),
                        reason,
                    }
                })
            }
        };
        filled?;
        frame.seq = self.seq;
        self.seq += 1;
        frame.captured_at = captured_at;
        frame.origin.push_str(&self.name);
        self.backoff.reset();
        Ok(Next::Frame)
    }

    fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "v4l2 {} {}x{}@{} {}",
            self.name,
            c.width,
            c.height,
            c.fps,
            c.format.name()
        )
    }
}

impl Drop for CameraSource {
    fn drop(&mut self) {
        self.drop_device();
    }
}

#[cfg(target_os = "linux")]
mod v4l2 {
    use std::borrow::Cow;
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use nokhwa::NokhwaError;
    use nokhwa::backends::capture::V4LCaptureDevice;
    use nokhwa::camera_traits::CaptureBackendTrait;
    use nokhwa::utils::{
        CameraFormat as ModeSpec, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType,
    };

    use super::{CameraFormat, Device, OpenFailure, RawFrame, V4l2Config, resolve_index};

    struct V4l2Device {
        camera: V4LCaptureDevice<'static>,
        width: u32,
        height: u32,
        /// Only used if a backend ever hands back an owned frame (V4L2 lends its buffer).
        owned: Vec<u8>,
    }

    impl Device for V4l2Device {
        fn frame(&mut self) -> Result<RawFrame<'_>, String> {
            let (width, height) = (self.width, self.height);
            let bytes: &[u8] = match self.camera.frame_raw().map_err(|e| e.to_string())? {
                Cow::Borrowed(bytes) => bytes,
                Cow::Owned(bytes) => {
                    self.owned = bytes;
                    &self.owned
                }
            };
            Ok(RawFrame {
                bytes,
                width,
                height,
            })
        }
    }

    fn frame_format(format: CameraFormat) -> FrameFormat {
        match format {
            CameraFormat::Mjpeg => FrameFormat::MJPEG,
            CameraFormat::Yuyv => FrameFormat::YUYV,
        }
    }

    /// Open the configured camera in exactly the configured mode and start streaming.
    /// nokhwa can panic on odd driver answers (e.g. a zero step in a stepwise frame-size
    /// list); that is reported as an open failure rather than killing the capture thread.
    pub(super) fn open_device(config: &V4l2Config) -> Result<Box<dyn Device>, OpenFailure> {
        let index = resolve_index(&config.device)?;
        catch_unwind(AssertUnwindSafe(|| open_index(index, config))).unwrap_or_else(|_| {
            Err(OpenFailure::Open(
                "the V4L2 backend panicked while opening the camera".into(),
            ))
        })
    }

    fn open_index(index: u32, config: &V4l2Config) -> Result<Box<dyn Device>, OpenFailure> {
        let formats = [frame_format(config.format)];
        let wanted = ModeSpec::new_from(config.width, config.height, formats[0], config.fps);
        let request = RequestedFormat::with_formats(RequestedFormatType::Exact(wanted), &formats);
        let mut camera: V4LCaptureDevice<'static> =
            match V4LCaptureDevice::new(&CameraIndex::Index(index), request) {
                Ok(camera) => camera,
                Err(error) => return Err(classify(error, index)),
            };
        // V4L2 does not start on its own: frame_raw() before open_stream() is an error.
        camera
            .open_stream()
            .map_err(|e| OpenFailure::Open(with_hint(e.to_string())))?;
        let mode = camera.camera_format();
        Ok(Box::new(V4l2Device {
            camera,
            width: mode.width(),
            height: mode.height(),
            owned: Vec::new(),
        }))
    }

    /// Tell "cannot open the device at all" from "the device refuses this mode".
    fn classify(error: NokhwaError, index: u32) -> OpenFailure {
        let text = error.to_string();
        if is_permission(&text) || is_busy(&text) {
            return OpenFailure::Open(with_hint(text));
        }
        match error {
            NokhwaError::OpenDeviceError(..) | NokhwaError::InitializeError { .. } => {
                OpenFailure::Open(with_hint(text))
            }
            _ => OpenFailure::Mode {
                error: text,
                offers: probe_offers(index),
            },
        }
    }

    fn is_permission(text: &str) -> bool {
        text.contains("os error 13") || text.contains("Permission denied")
    }

    fn is_busy(text: &str) -> bool {
        text.contains("os error 16") || text.contains("Device or resource busy")
    }

    fn with_hint(text: String) -> String {
        if is_permission(&text) {
            format!(
                "{text} (the user running framesift needs access to the device: add it to the `video` group, \
                 e.g. `usermod -aG video <user>`)"
            )
        } else if is_busy(&text) {
            format!(
                "{text} (another process is using the camera; find it with `fuser /dev/video*` and stop it)"
            )
        } else {
            text
        }
    }

    /// What the camera offers in the formats framesift reads, e.g.
    /// `"mjpeg 1920x1080@30, 1280x720@30/60; yuyv 640x480@30"`. `Some("")` when it offers
    /// none (a metadata node, or only H.264/other formats); `None` when it cannot be queried.
    fn probe_offers(index: u32) -> Option<String> {
        catch_unwind(|| probe_offers_inner(index)).ok().flatten()
    }

    fn probe_offers_inner(index: u32) -> Option<String> {
        let any = [
            FrameFormat::MJPEG,
            FrameFormat::YUYV,
            FrameFormat::NV12,
            FrameFormat::GRAY,
            FrameFormat::RAWRGB,
            FrameFormat::RAWBGR,
        ];
        let request = RequestedFormat::with_formats(RequestedFormatType::None, &any);
        let mut camera: V4LCaptureDevice<'static> =
            match V4LCaptureDevice::new(&CameraIndex::Index(index), request) {
                Ok(camera) => camera,
                // Nothing to choose from: the node lists no capture format nokhwa understands.
                Err(NokhwaError::GetPropertyError { property, .. })
                    if property == "CameraFormat" =>
                {
                    return Some(String::new());
                }
                Err(_) => return None,
            };
        let fourccs = camera.compatible_fourcc().ok()?;
        let mut parts = Vec::new();
        for (fourcc, name) in [(FrameFormat::MJPEG, "mjpeg"), (FrameFormat::YUYV, "yuyv")] {
            if !fourccs.contains(&fourcc) {
                continue;
            }
            let mut modes: Vec<_> = camera
                .compatible_list_by_resolution(fourcc)
                .ok()?
                .into_iter()
                .collect();
            modes.sort_by_key(|(res, _)| {
                std::cmp::Reverse((
                    u64::from(res.width()) * u64::from(res.height()),
                    res.width(),
                ))
            });
            let listed: Vec<String> = modes
                .iter()
                .take(12)
                .map(|(res, rates)| {
                    let mut rates = rates.clone();
                    rates.sort_unstable_by(|a, b| b.cmp(a));
                    rates.dedup();
                    let rates: Vec<String> = rates.iter().map(u32::to_string).collect();
                    format!("{}x{}@{}", res.width(), res.height(), rates.join("/"))
                })
                .collect();
            let more = if modes.len() > listed.len() {
                ", ..."
            } else {
                ""
            };
            parts.push(format!("{name} {}{more}", listed.join(", ")));
        }
        Some(parts.join("; "))
    }
}

#[cfg(not(target_os = "linux"))]
mod v4l2 {
    use super::{Device, OpenFailure, V4l2Config};

    pub(super) fn open_device(_config: &V4l2Config) -> Result<Box<dyn Device>, OpenFailure> {
        Err(OpenFailure::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use super::*;

    fn config(device: &str, format: CameraFormat) -> V4l2Config {
        V4l2Config {
            device: device.to_string(),
            width: 4,
            height: 2,
            fps: 30,
            format,
            reconnect_initial_ms: 10,
            reconnect_max_ms: 50,
        }
    }

    fn convert(pixel_pairs: &[[u8; 4]], width: u32, height: u32) -> Vec<u8> {
        let yuyv: Vec<u8> = pixel_pairs.iter().flatten().copied().collect();
        let mut rgb = vec![0; width as usize * height as usize * 3];
        yuyv_to_rgb(&yuyv, width, height, &mut rgb).expect("convert");
        rgb
    }

    fn assert_near(got: &[u8], want: [u8; 3], what: &str) {
        for (g, w) in got.iter().zip(want) {
            assert!(g.abs_diff(w) <= 2, "{what}: got {got:?}, want {want:?} ±2");
        }
    }

    #[test]
    fn yuyv_known_colours() {
        // BT.601 limited range: (Y, U, V) of white, black and the primaries.
        let cases = [
            ((235, 128, 128), [255, 255, 255], "white"),
            ((16, 128, 128), [0, 0, 0], "black"),
            ((126, 128, 128), [128, 128, 128], "grey"),
            ((81, 90, 240), [255, 0, 0], "red"),
            ((145, 54, 34), [0, 255, 0], "green"),
            ((41, 240, 110), [0, 0, 255], "blue"),
        ];
        for ((y, u, v), want, what) in cases {
            let rgb = convert(&[[y, u, y, v]], 2, 1);
            assert_near(&rgb[..3], want, what);
            assert_near(&rgb[3..], want, what);
        }
    }

    /// BT.601 limited range in floating point: the oracle for the fixed-point SIMD path.
    fn bt601(y: u8, u: u8, v: u8) -> [f64; 3] {
        let (c, d, e) = (
            (f64::from(y) - 16.0) * 255.0 / 219.0,
            (f64::from(u) - 128.0) * 255.0 / 224.0,
            (f64::from(v) - 128.0) * 255.0 / 224.0,
        );
        [
            c + 1.402 * e,
            c - 0.344_136 * d - 0.714_136 * e,
            c + 1.772 * d,
        ]
        .map(|x| x.clamp(0.0, 255.0))
    }

    #[test]
    fn yuyv_matches_floating_point_bt601_on_noise() {
        // Widths that exercise the SIMD blocks, their remainders, and an odd width whose
        // last pair is half padding; values over the legal ranges (Y 16–235, U/V 16–240).
        // Below-black luma is read as black (16) by the SIMD path, so it has no oracle
        // here; `yuyv_out_of_range_values_saturate` covers it.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut byte = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        };
        for (width, height) in [(64u32, 3u32), (70, 2), (37, 5), (1, 1), (1280, 2)] {
            let stride = width.div_ceil(2) as usize * 4;
            let yuyv: Vec<u8> = (0..stride * height as usize)
                .map(|i| match (i % 2, byte()) {
                    (0, b) => 16 + b % 220, // Y
                    (_, b) => 16 + b % 225, // U or V
                })
                .collect();
            let mut rgb = vec![0; width as usize * height as usize * 3];
            yuyv_to_rgb(&yuyv, width, height, &mut rgb).expect("convert");
            let mut worst = 0.0f64;
            for y in 0..height as usize {
                for x in 0..width as usize {
                    let pair = &yuyv[y * stride + x / 2 * 4..][..4];
                    let luma = pair[(x % 2) * 2];
                    let want = bt601(luma, pair[1], pair[3]);
                    let got = &rgb[(y * width as usize + x) * 3..][..3];
                    for (g, w) in got.iter().zip(want) {
                        worst = worst.max((f64::from(*g) - w).abs());
                    }
                }
            }
            assert!(
                worst <= 2.5,
                "{width}x{height}: off by {worst:.2} from BT.601"
            );
        }
    }

    #[test]
    fn yuyv_out_of_range_values_saturate() {
        // Each case as a short row (the converter's scalar remainder) and as 64 pixel
        // pairs (its SIMD blocks).
        for repeat in [1, 32] {
            // Sensors do emit Y below 16 and above 235: black and white, not wrapped
            // colours.
            let pairs = [[0, 128, 0, 128], [255, 128, 255, 128]].repeat(repeat);
            let rgb = convert(&pairs, 4 * repeat as u32, 1);
            for (i, px) in rgb.chunks_exact(3).enumerate() {
                let want = if (i / 2) % 2 == 0 { [0; 3] } else { [255; 3] };
                assert_near(px, want, &format!("pixel {i} of {}", 4 * repeat));
            }
            // Chroma at the byte limits clamps each channel instead of wrapping.
            for (u, v) in [(255, 0), (0, 255), (255, 255), (0, 0)] {
                let rgb = convert(&[[16, u, 16, v]].repeat(repeat), 2 * repeat as u32, 1);
                let want = bt601(16, u, v);
                for px in rgb.chunks_exact(3) {
                    for (g, w) in px.iter().zip(want) {
                        assert!(
                            (f64::from(*g) - w).abs() <= 2.5,
                            "U {u} V {v}, width {}: {px:?} vs {want:?}",
                            2 * repeat
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn yuyv_pairs_share_chroma_but_not_luma() {
        // One pair: black then white with neutral chroma; then a red pair on the next row.
        let rgb = convert(&[[16, 128, 235, 128], [81, 90, 81, 240]], 2, 2);
        assert_near(&rgb[0..3], [0, 0, 0], "black");
        assert_near(&rgb[3..6], [255, 255, 255], "white");
        assert_near(&rgb[6..9], [255, 0, 0], "red");
        assert_near(&rgb[9..12], [255, 0, 0], "red");
    }

    #[test]
    fn yuyv_odd_width_rows_are_padded_to_pairs() {
        // 3x2: each row is two pairs (8 bytes); the last pair's second luma is padding.
        let rgb = convert(
            &[
                [235, 128, 235, 128],
                [16, 128, 99, 128],
                [41, 240, 41, 110],
                [81, 90, 7, 240],
            ],
            3,
            2,
        );
        assert_eq!(rgb.len(), 18);
        assert_near(&rgb[0..3], [255, 255, 255], "row 0 px 0");
        assert_near(&rgb[3..6], [255, 255, 255], "row 0 px 1");
        assert_near(&rgb[6..9], [0, 0, 0], "row 0 px 2");
        assert_near(&rgb[9..12], [0, 0, 255], "row 1 px 0");
        assert_near(&rgb[15..18], [255, 0, 0], "row 1 px 2");
    }

    #[test]
    fn yuyv_short_buffers_are_rejected_and_long_input_is_fine() {
        let mut rgb = vec![0; 4 * 2 * 3];
        assert_eq!(
            yuyv_to_rgb(&[0; 15], 4, 2, &mut rgb),
            Err(YuyvError::ShortInput {
                width: 4,
                height: 2,
                need: 16,
                got: 15
            })
        );
        assert_eq!(
            yuyv_to_rgb(&[0; 16], 4, 2, &mut rgb[..23]),
            Err(YuyvError::ShortOutput {
                width: 4,
                height: 2,
                need: 24,
                got: 23
            })
        );
        // 5 wide needs 3 pairs per row.
        assert!(matches!(
            yuyv_to_rgb(&[0; 20], 5, 2, &mut [0; 30]),
            Err(YuyvError::ShortInput { need: 24, .. })
        ));
        // V4L2 buffers are bigger than the frame: the extra tail is ignored.
        let mut yuyv = [235, 128, 235, 128].repeat(4);
        yuyv.extend_from_slice(&[0; 100]);
        yuyv_to_rgb(&yuyv, 4, 2, &mut rgb).expect("convert");
        assert!(rgb.iter().all(|&c| c == 255));
        assert_eq!(yuyv_to_rgb(&[], 0, 0, &mut []), Ok(()));
    }

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(1000));
        let delays: Vec<_> = (0..6).map(|_| backoff.next_delay()).collect();
        assert_eq!(
            delays,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        backoff.reset();
        assert_eq!(backoff.next_delay(), ms(100));
        // Degenerate settings never spin or shrink.
        let mut zero = Backoff::new(ms(0), ms(0));
        assert_eq!([zero.next_delay(), zero.next_delay()], [ms(1), ms(1)]);
        let mut inverted = Backoff::new(ms(500), ms(100));
        assert_eq!(
            [inverted.next_delay(), inverted.next_delay()],
            [ms(500), ms(500)]
        );
    }

    /// What the fake camera does: per open, whether it succeeds; per frame, bytes or an error.
    #[derive(Default)]
    struct Script {
        opens: VecDeque<bool>,
        frames: VecDeque<Result<Vec<u8>, String>>,
        open_calls: usize,
    }

    struct FakeDevice {
        script: Arc<Mutex<Script>>,
        current: Vec<u8>,
        width: u32,
        height: u32,
    }

    impl Device for FakeDevice {
        fn frame(&mut self) -> Result<RawFrame<'_>, String> {
            let next = self.script.lock().expect("lock").frames.pop_front();
            self.current = next.unwrap_or_else(|| Err("script ended".to_string()))?;
            Ok(RawFrame {
                bytes: &self.current,
                width: self.width,
                height: self.height,
            })
        }
    }

    struct Fake {
        source: CameraSource,
        script: Arc<Mutex<Script>>,
        sleeps: Arc<Mutex<Vec<Duration>>>,
    }

    fn fake(
        config: V4l2Config,
        opens: &[bool],
        frames: Vec<Result<Vec<u8>, String>>,
    ) -> Result<Fake, SourceError> {
        let script = Arc::new(Mutex::new(Script {
            opens: opens.iter().copied().collect(),
            frames: frames.into(),
            open_calls: 0,
        }));
        let sleeps = Arc::new(Mutex::new(Vec::new()));
        let (width, height) = (config.width, config.height);
        let opener_script = Arc::clone(&script);
        let opener: Opener = Box::new(move || {
            let mut s = opener_script.lock().expect("lock");
            s.open_calls += 1;
            if s.opens.pop_front().unwrap_or(true) {
                let device = FakeDevice {
                    script: Arc::clone(&opener_script),
                    current: Vec::new(),
                    width,
                    height,
                };
                Ok(Box::new(device) as Box<dyn Device>)
            } else {
                Err(OpenFailure::Missing)
            }
        });
        let recorded = Arc::clone(&sleeps);
        let sleep: Sleeper = Box::new(move |d| recorded.lock().expect("lock").push(d));
        let source = CameraSource::with_parts(config, opener, sleep)?;
        Ok(Fake {
            source,
            script,
            sleeps,
        })
    }

    fn white_yuyv() -> Vec<u8> {
        // 4x2, as the driver hands it over: a buffer larger than the frame.
        let mut bytes = [235, 128, 235, 128].repeat(4);
        bytes.extend_from_slice(&[7; 32]);
        bytes
    }

    #[test]
    fn reconnects_with_backoff_after_the_camera_disappears() {
        let unplugged = || Err("Could not capture frame: No such device (os error 19)".to_string());
        let frames = vec![
            Ok(white_yuyv()),
            Ok(white_yuyv()),
            unplugged(),
            Ok(white_yuyv()),
            unplugged(),
            Ok(white_yuyv()),
        ];
        // Initial open; 4 failed reopens then success; after the second unplug, success at once.
        let opens = [true, false, false, false, false, true, true];
        let mut f = fake(config("/dev/video0", CameraFormat::Yuyv), &opens, frames).expect("open");
        let mut frame = Frame::with_capacity(4, 2);
        let mut outcomes = Vec::new();
        for _ in 0..9 {
            outcomes.push(match f.source.next_frame(&mut frame) {
                Ok(Next::Frame) => {
                    assert_eq!((frame.width, frame.height), (4, 2));
                    assert!(frame.rgb.iter().all(|&c| c == 255));
                    assert_eq!(frame.origin, "/dev/video0");
                    assert!(frame.encoded.is_empty());
                    format!("frame {}", frame.seq)
                }
                Ok(Next::End) => "end".to_string(),
                Err(SourceError::Disconnected { device, reason }) => {
                    assert_eq!(device, "/dev/video0");
                    if reason.starts_with("reconnect failed") {
                        assert!(reason.contains("does not exist"), "{reason}");
                        "reopen failed".to_string()
                    } else {
                        assert!(reason.contains("os error 19"), "{reason}");
                        "unplugged".to_string()
                    }
                }
                Err(other) => panic!("unexpected {other:?}"),
            });
        }
        assert_eq!(
            outcomes,
            [
                "frame 0",
                "frame 1",
                "unplugged",
                "reopen failed",
                "reopen failed",
                "reopen failed",
                "reopen failed",
                "frame 2",
                "unplugged",
            ]
        );
        // After the second unplug the schedule starts over (reset by the successful frame).
        assert!(matches!(f.source.next_frame(&mut frame), Ok(Next::Frame)));
        assert_eq!(frame.seq, 3);
        let ms = Duration::from_millis;
        assert_eq!(
            *f.sleeps.lock().expect("lock"),
            [ms(10), ms(20), ms(40), ms(50), ms(50), ms(10)]
        );
        assert_eq!(f.script.lock().expect("lock").open_calls, 7);
    }

    #[test]
    fn initial_open_failure_is_fatal_and_names_the_fix() {
        let Err(SourceError::Fatal(message)) =
            fake(config("/dev/video7", CameraFormat::Yuyv), &[false], vec![])
        else {
            panic!("expected Fatal");
        };
        assert!(
            message.starts_with(
                "no camera at /dev/video7: the device does not exist (cameras present: "
            )
        );
        assert!(
            message.contains("type = \"synthetic\"") && message.contains("type = \"replay\""),
            "{message}"
        );
    }

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let rgb: Vec<u8> = (0..width * height)
            .flat_map(|i| [(i * 7) as u8, (i * 3) as u8, 200])
            .collect();
        let mut out = Vec::new();
        crate::codec::encode_jpeg(&rgb, width, height, 90, &mut out).expect("encode");
        out
    }

    #[test]
    fn mjpeg_frames_keep_original_bytes_and_corrupt_ones_are_skipped() {
        let original = jpeg(16, 8);
        // A driver buffer: the frame, then stale bytes including an old end marker.
        let mut padded = original.clone();
        padded.extend_from_slice(&[0xFF, 0xD9, 0x12, 0xFF, 0xD9, 0, 0, 0]);
        let mut truncated = original.clone();
        truncated.truncate(original.len() / 2);
        let frames = vec![
            Ok(padded),
            Ok(truncated),
            Ok(vec![0; 64]),
            Ok(original.clone()),
        ];
        let mut cfg = config("3", CameraFormat::Mjpeg);
        (cfg.width, cfg.height) = (16, 8);
        let mut f = fake(cfg, &[], frames).expect("open");
        assert_eq!(f.source.describe(), "v4l2 /dev/video3 16x8@30 mjpeg");
        let mut frame = Frame::with_capacity(16, 8);

        assert!(matches!(f.source.next_frame(&mut frame), Ok(Next::Frame)));
        assert_eq!(frame.encoded, original);
        assert_eq!(
            (frame.width, frame.height, frame.rgb.len()),
            (16, 8, 16 * 8 * 3)
        );
        assert_eq!((frame.seq, frame.origin.as_str()), (0, "/dev/video3"));
        assert!(frame.captured_at > SystemTime::UNIX_EPOCH);

        for _ in 0..2 {
            match f.source.next_frame(&mut frame) {
                Err(SourceError::BadFrame { path, reason }) => {
                    assert_eq!(path, PathBuf::from("/dev/video3"));
                    assert!(reason.contains("JPEG"), "{reason}");
                }
                other => panic!("expected BadFrame, got {other:?}"),
            }
        }
        // Still connected: the next good frame arrives without a reopen or a sleep.
        assert!(matches!(f.source.next_frame(&mut frame), Ok(Next::Frame)));
        assert_eq!(frame.seq, 1);
        assert_eq!(f.script.lock().expect("lock").open_calls, 1);
        assert!(f.sleeps.lock().expect("lock").is_empty());
    }

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
        let original = jpeg(32, 16);
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
        let mut got = Frame::with_capacity(32, 16);
        fill_mjpeg(&stripped, &mut decoder, &mut got).expect("fill");
        assert_eq!(got.rgb, want.rgb);
        // The kept bytes are a standalone JPEG with tables, decodable by anything.
        assert_eq!(got.encoded.len(), stripped.len() + 420);
        assert_eq!(scan_jpeg(&got.encoded).expect("scan").missing_dht_at, None);
        let mut again = Frame::with_capacity(32, 16);
        decoder
            .decode_into(&got.encoded, &mut again)
            .expect("decode kept bytes");
        assert_eq!(again.rgb, want.rgb);
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

    #[test]
    fn missing_device_is_fatal_with_an_actionable_message() {
        let Err(SourceError::Fatal(message)) =
            CameraSource::open(config("/dev/video-framesift-missing", CameraFormat::Mjpeg))
        else {
            panic!("expected Fatal");
        };
        assert!(
            message.starts_with("no camera at /dev/video-framesift-missing: the device does not exist (cameras present: "),
            "{message}"
        );
        assert!(message.contains("[[camera]] device"), "{message}");
        assert!(
            message.contains("type = \"synthetic\"") && message.contains("type = \"replay\""),
            "{message}"
        );

        let Err(SourceError::Fatal(message)) =
            CameraSource::open(config("4000000", CameraFormat::Yuyv))
        else {
            panic!("expected Fatal");
        };
        assert!(
            message.starts_with("no camera at /dev/video4000000:"),
            "{message}"
        );
    }

    #[test]
    fn a_path_that_is_not_a_video_node_is_fatal() {
        let Err(SourceError::Fatal(message)) =
            CameraSource::open(config("/dev/null", CameraFormat::Mjpeg))
        else {
            panic!("expected Fatal");
        };
        assert!(
            message.starts_with("/dev/null is not a V4L2 video device"),
            "{message}"
        );
        let Err(SourceError::Fatal(message)) =
            CameraSource::open(config("  ", CameraFormat::Mjpeg))
        else {
            panic!("expected Fatal");
        };
        assert!(message.contains("device is empty"), "{message}");
    }

    #[test]
    fn lists_video_nodes_in_index_order_with_names() {
        let dev = tempfile::tempdir().expect("tempdir");
        let sys = tempfile::tempdir().expect("tempdir");
        for name in [
            "video10",
            "video2",
            "video0",
            "video",
            "videoX",
            "media0",
            "v4l-subdev0",
        ] {
            std::fs::write(dev.path().join(name), b"").expect("write");
        }
        std::fs::create_dir(sys.path().join("video0")).expect("mkdir");
        std::fs::write(sys.path().join("video0").join("name"), "HD Webcam C615\n").expect("write");
        let d = dev.path().display();
        assert_eq!(
            cameras_present_in(dev.path(), sys.path()),
            format!("{d}/video0 (HD Webcam C615), {d}/video2, {d}/video10")
        );
        let empty = tempfile::tempdir().expect("tempdir");
        assert_eq!(cameras_present_in(empty.path(), sys.path()), "none");
        assert_eq!(
            cameras_present_in(Path::new("/nonexistent-framesift"), sys.path()),
            "none"
        );
    }

    #[test]
    fn format_names_round_trip() {
        for format in [CameraFormat::Mjpeg, CameraFormat::Yuyv] {
            assert_eq!(CameraFormat::from_name(format.name()), Some(format));
        }
        assert_eq!(CameraFormat::from_name("MJPEG"), Some(CameraFormat::Mjpeg));
        assert_eq!(CameraFormat::from_name("h264"), None);
    }

    #[test]
    fn camera_source_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<CameraSource>();
    }
}
