//! V4L2 camera source (through `nokhwa`'s V4L2 backend).
//!
//! MJPEG frames are kept as the camera sent them (`Frame::encoded`, made standalone by
//! [`codec::mjpeg::repair`], so a kept frame is written without re-encoding) and decoded
//! with [`FrameDecoder`]; YUYV frames are converted by [`codec::yuyv_to_rgb`]. Neither
//! path allocates once the frame's buffers have grown to size.
//!
//! When a capture fails (camera unplugged, USB error) the stream is dropped and
//! [`SourceError::Disconnected`] returned with the next delay of a doubling, capped
//! [`Backoff`]; the capture stage waits that long (interruptibly: a shutdown does not
//! wait it out) and calls again, which tries to reopen the camera, and so on until it is
//! back. The source itself never sleeps.
//!
//! The nokhwa camera sits behind the private [`Device`] trait so the reconnect logic is
//! tested with a scripted fake device (there is no camera on build machines or in CI).
//!
//! nokhwa notes (0.10 / nokhwa-bindings-linux 0.1): we use `V4LCaptureDevice` directly,
//! not `nokhwa::Camera` — `Camera` is not `Send` without the `camera-sync-impl` feature
//! and its `Drop` unwraps `stop_stream()`. `frame_raw()` borrows the driver's mmap buffer
//! (no copy) but returns the *whole* buffer, not `bytesused`, so the MJPEG end is found by
//! parsing the JPEG ([`codec::mjpeg::scan_jpeg`]). Devices open by index (`/dev/videoN`), so paths are
//! resolved (symlinks such as `/dev/v4l/by-id/...` followed) at every (re)open. nokhwa keeps
//! a process-wide table of open devices by index and hands back a still-alive handle, so the
//! old stream must be dropped before a reopen (we do) or the dead file descriptor comes back.

use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{FrameSource, Next, SourceError};
use crate::codec::{self, DecodeError, FrameDecoder, yuyv_to_rgb};
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

/// Copy one MJPEG frame (trimmed to its EOI, standard Huffman tables inserted if the camera
/// left them out) into `frame.encoded` and decode it into `frame.rgb`.
fn fill_mjpeg(
    bytes: &[u8],
    decoder: &mut FrameDecoder,
    frame: &mut Frame,
) -> Result<(), DecodeError> {
    codec::mjpeg::repair(bytes, &mut frame.encoded)?;
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
        Self::with_parts(config, opener)
    }

    fn with_parts(config: V4l2Config, mut opener: Opener) -> Result<Self, SourceError> {
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

    /// Try to reopen the camera (the caller has waited out the backoff delay).
    fn reopen(&mut self) -> Result<Box<dyn Device>, SourceError> {
        (self.opener)().map_err(|failure| SourceError::Disconnected {
            device: self.name.clone(),
            reason: format!("reconnect failed: {}", failure.reason()),
            retry_after: self.backoff.next_delay(),
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
                    retry_after: self.backoff.next_delay(),
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
        let source = CameraSource::with_parts(config, opener)?;
        Ok(Fake { source, script })
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
        let mut waits = Vec::new();
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
                Err(SourceError::Disconnected {
                    device,
                    reason,
                    retry_after,
                }) => {
                    assert_eq!(device, "/dev/video0");
                    waits.push(retry_after);
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
        // Each loss and each failed attempt says how long to wait before the next try.
        assert_eq!(waits, [ms(10), ms(20), ms(40), ms(50), ms(50), ms(10)]);
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

    #[test]
    fn mjpeg_frames_keep_original_bytes_and_corrupt_ones_are_skipped() {
        let original = crate::codec::test_jpeg(16, 8);
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
        // Still connected: the next good frame arrives without a reopen.
        assert!(matches!(f.source.next_frame(&mut frame), Ok(Next::Frame)));
        assert_eq!(frame.seq, 1);
        assert_eq!(f.script.lock().expect("lock").open_calls, 1);
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
    fn camera_source_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<CameraSource>();
    }
}
