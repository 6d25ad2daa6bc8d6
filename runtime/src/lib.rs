//! framesift: an on-device inference and active-learning runtime.
//!
//! It runs a detector with ONNX Runtime on camera streams, scores every frame for how
//! much a labeller would learn from it, keeps the best frames in a bounded buffer and
//! writes them atomically to a spool for upload — without slowing the inference path.
//! See ARCHITECTURE.md for the data flow and invariants.

pub mod bench;
pub mod cli;
pub mod codec;
pub mod config;
pub mod dataset;
pub mod detector;
pub mod frame;
pub mod keep;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod preprocess;
pub mod priority;
pub mod score;
pub mod sidecar;
mod simd;
pub mod source;
pub mod spool;
pub mod systemd;
