//! framesift: an on-device inference and active-learning runtime.
//!
//! It runs a detector with ONNX Runtime on camera streams, scores every frame for how
//! much a labeller would learn from it, keeps the best frames in a bounded buffer and
//! writes them atomically to a spool for upload — without slowing the inference path.
//! See ARCHITECTURE.md for the stages, the data flow and the invariants.
//!
//! The public modules are the ones the `benches` crate and the integration tests drive
//! directly (the per-frame path, frames and codecs); everything else is crate-private.
//! These docs are for maintainers, so they link to private items: read them with
//! `cargo doc -p framesift --no-deps --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

pub mod capture;
pub mod cli;
pub mod codec;
pub mod config;
pub mod frame;
pub mod infer;
pub mod keep;
pub mod ops;
pub mod policy;

pub(crate) mod bench;
pub(crate) mod calibrate;
pub(crate) mod dataset;
mod digest;
pub(crate) mod drift;
pub(crate) mod drift_bench;
pub(crate) mod evaluate;
mod faults;
pub(crate) mod pipeline;
mod simd;
pub(crate) mod store;
pub(crate) mod supervisor;
