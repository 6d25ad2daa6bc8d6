//! Frames and the pool they live in.
//!
//! A [`Frame`] owns its pixel buffer; buffers are allocated (and their pages faulted in,
//! [`prefault`]) once, when the pool is made, and recycled after the inference thread is
//! done with them, so the steady-state capture path allocates nothing.

use std::time::SystemTime;

/// One camera frame: packed RGB8 pixels plus what is known about where it came from.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Sequence number within its camera, starting at 0.
    pub seq: u64,
    /// Wall-clock time the frame was captured (or rendered / read).
    pub captured_at: SystemTime,
    /// Size of `rgb`.
    pub width: u32,
    pub height: u32,
    /// Size of the image as captured. Equal to `width × height` unless the JPEG decoder
    /// downscaled while decoding ([`crate::codec::FrameDecoder::fitting`]); detections and
    /// sidecars are in these coordinates.
    pub source_width: u32,
    pub source_height: u32,
    /// Packed RGB8, `width * height * 3` bytes. Capacity is kept across reuse.
    pub rgb: Vec<u8>,
    /// The frame's original encoded bytes when the source delivered JPEG/MJPEG, so a kept
    /// frame can be written without re-encoding. Empty otherwise.
    pub encoded: Vec<u8>,
    /// Where the frame came from, for logs and sidecars (file name for replay, device
    /// for a camera, empty for synthetic frames).
    pub origin: String,
    /// Ground truth, known only for synthetic frames.
    pub truth: Option<GroundTruth>,
}

impl Frame {
    /// A frame with buffers sized for `width × height`, so the first fill allocates
    /// nothing and page-faults nothing ([`prefault`]).
    pub fn with_capacity(width: u32, height: u32) -> Self {
        let bytes = width as usize * height as usize * 3;
        let mut rgb = Vec::with_capacity(bytes);
        prefault(&mut rgb);
        Self {
            seq: 0,
            captured_at: SystemTime::UNIX_EPOCH,
            width: 0,
            height: 0,
            source_width: 0,
            source_height: 0,
            rgb,
            encoded: Vec::new(),
            origin: String::new(),
            truth: None,
        }
    }

    /// Resize the pixel buffer for a `width × height` RGB frame (reuses capacity).
    pub fn set_size(&mut self, width: u32, height: u32) {
        self.set_scaled_size(width, height, width, height);
    }

    /// As [`Self::set_size`], for pixels decoded at reduced scale from a
    /// `source_width × source_height` image.
    pub fn set_scaled_size(
        &mut self,
        width: u32,
        height: u32,
        source_width: u32,
        source_height: u32,
    ) {
        self.width = width;
        self.height = height;
        self.source_width = source_width;
        self.source_height = source_height;
        self.rgb.resize(width as usize * height as usize * 3, 0);
    }

    /// Forget per-frame metadata before the frame is refilled.
    pub fn clear(&mut self) {
        self.encoded.clear();
        self.origin.clear();
        if let Some(truth) = &mut self.truth {
            truth.clear();
        }
    }
}

/// Touch every page of `buf`'s spare capacity now. A large allocation is only address
/// space until written; without this, the first frame written into each pooled buffer
/// page-faults on the capture thread (a 1280×720 RGB buffer: 675 faults and 2.7 MB of
/// kernel zeroing) — for candidate buffers, the first time each is swapped into a slot,
/// spread over the first minutes of a run. Memory is fixed at start-up in fact, not only
/// in address space.
pub fn prefault<T: Copy + Default>(buf: &mut Vec<T>) {
    // The smallest page Linux uses; with 16 or 64 KiB pages some writes land twice.
    const PAGE: usize = 4096;
    let step = (PAGE / std::mem::size_of::<T>().max(1)).max(1);
    for slot in buf.spare_capacity_mut().iter_mut().step_by(step) {
        slot.write(T::default());
    }
}

/// What the synthetic scene source knows about a frame: the objects in it and the
/// perturbations applied. Lets tests and benchmarks measure whether the runtime keeps
/// the frames the model gets wrong.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroundTruth {
    pub boxes: Vec<TruthBox>,
    pub perturbations: Perturbations,
}

impl GroundTruth {
    pub fn clear(&mut self) {
        self.boxes.clear();
        self.perturbations = Perturbations::NONE;
    }
}

/// One ground-truth object, in frame pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TruthBox {
    /// Index into [`crate::capture::synthetic::PRODUCT_NAMES`]. Ids at or above
    /// [`crate::capture::synthetic::KNOWN_PRODUCTS`] are product types never shown in
    /// studio training data.
    pub class_id: u16,
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
    /// More than a third of the object is hidden (by a hand or the frame edge).
    pub occluded: bool,
}

/// Set of perturbation tags applied to a synthetic frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Perturbations(pub u16);

impl Perturbations {
    pub const NONE: Self = Self(0);
    pub const LIGHTING: Self = Self(1 << 0);
    pub const MOTION_BLUR: Self = Self(1 << 1);
    pub const HAND_OCCLUSION: Self = Self(1 << 2);
    pub const DAMAGED_PACKAGING: Self = Self(1 << 3);
    pub const UNUSUAL_ANGLE: Self = Self(1 << 4);
    pub const UNSEEN_PRODUCT: Self = Self(1 << 5);

    /// Every tag with its stable name (used in sidecars and dataset CSVs).
    pub const ALL: [(Self, &'static str); 6] = [
        (Self::LIGHTING, "lighting"),
        (Self::MOTION_BLUR, "motion_blur"),
        (Self::HAND_OCCLUSION, "hand_occlusion"),
        (Self::DAMAGED_PACKAGING, "damaged_packaging"),
        (Self::UNUSUAL_ANGLE, "unusual_angle"),
        (Self::UNSEEN_PRODUCT, "unseen_product"),
    ];

    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Names of the tags in this set, in [`Self::ALL`] order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::ALL
            .into_iter()
            .filter(move |(tag, _)| self.contains(*tag))
            .map(|(_, name)| name)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn pooled_frame_buffers_are_resident_before_the_first_frame() {
        // 64 MB: far above what the tests running beside this one allocate meanwhile.
        let (w, h) = (4096, 5461);
        let before = crate::ops::metrics::rss_kib();
        let frame = Frame::with_capacity(w, h);
        let grown = crate::ops::metrics::rss_kib() - before;
        let bytes = (w * h * 3) as i64;
        assert!(frame.rgb.is_empty() && frame.rgb.capacity() >= bytes as usize);
        assert!(
            grown >= bytes / 1024 * 9 / 10,
            "RSS grew by {grown} KiB for a {} KiB buffer",
            bytes / 1024
        );
        std::hint::black_box(&frame);
    }
}
