//! Frame sources: where frames come from.
//!
//! Every source fills a caller-owned [`Frame`] (pooled, pre-allocated) so that the
//! capture path allocates nothing in steady state. Sources pace themselves (a camera by
//! its own clock, replay and synthetic by their `fps` setting, [`super::pacing`]); a
//! source never sleeps for anything else: a camera that is gone says how long to wait
//! before the next attempt ([`SourceError::Disconnected`]) and the capture stage waits,
//! interruptibly.

use std::{path::PathBuf, time::Duration};

use super::{CameraConfig, SourceConfig, camera, replay, synthetic};
use crate::{codec::FrameDecoder, frame::Frame};

/// What a call to [`FrameSource::next_frame`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// `frame` holds a new frame.
    Frame,
    /// The source is exhausted (end of a replay directory without looping).
    End,
}

/// A stream of frames.
pub trait FrameSource: Send {
    /// Fill `frame` with the next frame. The frame's buffers are reused; the source
    /// sets size, pixels, `seq`, `captured_at` and any of `encoded`, `origin`, `truth`.
    fn next_frame(&mut self, frame: &mut Frame) -> Result<Next, SourceError>;

    /// A short human description for logs (`synthetic 1280x720 seed 7`, `/dev/video0`).
    fn describe(&self) -> String;
}

/// Errors from a frame source. Only [`SourceError::Fatal`] stops the camera; the others
/// are counted, or waited out, and the stream goes on.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// One input frame could not be used (truncated JPEG, zero-byte file, not an image).
    /// The frame is skipped and counted; the stream goes on.
    #[error("skipped {path}: {reason}")]
    BadFrame { path: PathBuf, reason: String },

    /// The frame is larger than `[pipeline] max_frame_pixels` (by its header): refused
    /// before anything is allocated for it, skipped and counted.
    #[error("skipped {path}: {reason}")]
    FrameTooLarge { path: PathBuf, reason: String },

    /// The camera went away or returned an error, or a reconnect attempt failed. The
    /// capture stage waits `retry_after` (the camera's backoff), then calls again, which
    /// tries to reopen it.
    #[error("camera {device}: {reason}")]
    Disconnected {
        device: String,
        reason: String,
        retry_after: Duration,
    },

    /// The source cannot run at all (no camera, directory missing or empty).
    #[error("{0}")]
    Fatal(String),
}

impl SourceError {
    /// A frame at `path` the decoder refused: too large, or bad.
    pub fn undecodable(path: PathBuf, error: crate::codec::DecodeError) -> Self {
        match error {
            e @ crate::codec::DecodeError::TooLarge { .. } => SourceError::FrameTooLarge {
                path,
                reason: e.to_string(),
            },
            e => SourceError::BadFrame {
                path,
                reason: e.to_string(),
            },
        }
    }
}

impl SourceConfig {
    /// Open the configured source for a model with a `model_input` (width, height)
    /// input: JPEG frames are decoded at the reduced scale that still fills it
    /// ([`FrameDecoder::fitting`]). Fails with a clear message when the source cannot run at
    /// all (no camera, missing replay directory).
    pub fn build(
        &self,
        model_input: (u32, u32),
        max_frame_pixels: u64,
    ) -> Result<Box<dyn FrameSource>, SourceError> {
        let decoder = || {
            FrameDecoder::fitting(model_input.0, model_input.1).with_max_pixels(max_frame_pixels)
        };
        Ok(match self {
            SourceConfig::Synthetic(c) => Box::new(synthetic::SyntheticSource::new(c.clone())),
            SourceConfig::Replay(c) => {
                Box::new(replay::ReplaySource::open(c.clone())?.decoding_with(decoder()))
            }
            SourceConfig::V4l2(c) => {
                Box::new(camera::CameraSource::open(c.clone())?.decoding_with(decoder()))
            }
        })
    }

    /// A live source runs on its own clock: when inference falls behind, the oldest
    /// waiting frame is dropped so capture never stalls. Unpaced replay and synthetic
    /// sources are not live: they wait for inference, so every frame is processed.
    pub fn is_live(&self) -> bool {
        match self {
            SourceConfig::Synthetic(c) => c.fps > 0.0,
            SourceConfig::Replay(c) => c.fps > 0.0,
            SourceConfig::V4l2(_) => true,
        }
    }

    /// Expected frame size, for pre-allocating buffers (0×0 when only the files know).
    pub fn frame_size(&self) -> (u32, u32) {
        match self {
            SourceConfig::Synthetic(c) => (c.width, c.height),
            SourceConfig::Replay(_) => (0, 0),
            SourceConfig::V4l2(c) => (c.width, c.height),
        }
    }
}

impl CameraConfig {
    /// `capture-<name>`, the capture stage's thread name.
    pub(crate) fn capture_stage(&self) -> String {
        format!("capture-{}", self.name)
    }

    /// `infer-<name>`, the inference stage's thread name.
    pub(crate) fn infer_stage(&self) -> String {
        format!("infer-{}", self.name)
    }
}
