//! The steady-state per-frame path allocates nothing: acquire (synthetic source) →
//! preprocess → inference (ORT through IoBinding) → decode + NMS → score → hand-off;
//! and for JPEG sources, reading and decoding a frame file at reduced scale.
//!
//! A counting global allocator counts allocations made on this thread while the
//! counter is armed. ONNX Runtime's own intra-op worker threads are other threads; any
//! allocation ORT makes on the calling thread inside `run` is counted here too.

// A global allocator can only be written with `unsafe` (GlobalAlloc is an unsafe
// trait); it forwards to the system allocator unchanged.
#![allow(unsafe_code)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    sync::Mutex,
};

use framesift::{
    codec::{FrameDecoder, encode_jpeg},
    config::{Config, SourceConfig},
    metrics::Metrics,
    model::{self, Model, ModelFile},
    pipeline::{Handoff, Inferer, Preparer, Slot},
    preprocess::{FrameMeter, Normalization, Preprocessor},
    source::{
        FrameSource,
        replay::{ReplayConfig, ReplaySource},
    },
};

struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    // try_with: the thread-local may be gone while a thread exits.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made on this thread by `f`.
fn count<T>(f: impl FnOnce() -> T) -> (T, u64) {
    COUNT.with(|c| c.set(0));
    ARMED.with(|a| a.set(true));
    let out = f();
    ARMED.with(|a| a.set(false));
    (out, COUNT.with(|c| c.get()))
}

fn ort_library() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return p.into();
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.join("target/ort")
        .join(std::env::consts::ARCH)
        .join("libonnxruntime.so")
}

#[test]
fn steady_state_per_frame_path_allocates_nothing() {
    let mut config = Config::default();
    // Every frame is a candidate, so the hand-off runs on every frame too.
    config.scoring.min_value = 0.0;
    let (env, _) =
        model::environment(Some(&ort_library())).expect("ONNX Runtime (run cross/fetch-ort.sh)");
    let file = ModelFile::embedded().expect("embedded model");
    let model = Mutex::new(Model::load(&env, &file, &config.model).expect("model"));
    let info = model.lock().expect("lock").info.clone();

    let SourceConfig::Synthetic(synthetic) = &config.cameras[0].source else {
        panic!("default camera is synthetic")
    };
    let mut source = config.cameras[0]
        .source
        .build((info.input_width, info.input_height))
        .expect("source");
    let mut preparer = Preparer::new(&info);
    let mut inferer = Inferer::new(&model.lock().expect("lock"), &config).expect("inferer");
    let tensor_len = 3 * (info.input_width * info.input_height) as usize;
    let mut slot = Slot::new(synthetic.width, synthetic.height, tensor_len);
    let (handoff, keep_rx, free_tx) = Handoff::new(
        4,
        2,
        synthetic.width,
        synthetic.height,
        config.model.max_detections,
    );
    let metrics = Metrics::default();

    let mut per_frame = Vec::new();
    // Warm-up: the first use of each pooled buffer (5 frames circulate here) may size
    // it, e.g. the ground-truth box list of a synthetic frame. After that: nothing.
    for i in 0..60 {
        // Counted stage by stage so a failure says where the allocation is.
        let (_, a) = count(|| source.next_frame(&mut slot.frame).expect("frame"));
        let (_, b) = count(|| preparer.prepare(&mut slot).expect("prepare"));
        let (scores, c) = count(|| inferer.infer(&model, &slot, &metrics).expect("infer"));
        let (_, d) = count(|| {
            handoff.offer(
                &metrics,
                0,
                &mut slot.frame,
                inferer.detections(),
                slot.stats,
                scores,
            )
        });
        // The keeper's side, on its own thread in the daemon: take and recycle.
        while let Ok(c) = keep_rx.try_recv() {
            free_tx.try_send(c).expect("recycle");
        }
        if i >= 20 {
            per_frame.push((a, b, c, d));
        }
    }
    assert_eq!(metrics.total_drops(), 0);
    assert!(
        per_frame.iter().all(|n| *n == (0, 0, 0, 0)),
        "allocations per frame after warm-up (acquire, preprocess, inference+decode+score, hand-off): {per_frame:?}"
    );
}

/// Replayed JPEG files: open + read into a reused buffer, libjpeg-turbo decode at 1/4
/// scale into the pooled frame, letterbox. libjpeg-turbo's per-image working memory is
/// malloc'd inside the C library, out of this allocator's sight; the Rust side must
/// allocate nothing.
#[test]
fn jpeg_replay_acquire_and_preprocess_allocate_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (w, h) = (1280u32, 720u32);
    let mut jpeg = Vec::new();
    for i in 0..3u32 {
        let rgb: Vec<u8> = (0..w * h * 3)
            .map(|p| ((p / 3 + i * 37) % 251) as u8)
            .collect();
        encode_jpeg(&rgb, w, h, 90, &mut jpeg).expect("encode");
        std::fs::write(dir.path().join(format!("{i}.jpg")), &jpeg).expect("write");
    }
    let mut source = ReplaySource::open(ReplayConfig {
        dir: dir.path().to_path_buf(),
        fps: 0.0,
        looping: true,
    })
    .expect("replay")
    .decoding_with(FrameDecoder::fitting(320, 320));
    let mut preparer = Preparer {
        preprocessor: Preprocessor::new(320, 320, 114, Normalization::UNIT),
        meter: FrameMeter::default(),
    };
    let mut slot = Slot::new(w, h, 3 * 320 * 320);
    let mut per_frame = Vec::new();
    for i in 0..20 {
        let (_, a) = count(|| source.next_frame(&mut slot.frame).expect("frame"));
        let (_, b) = count(|| preparer.prepare(&mut slot).expect("prepare"));
        assert_eq!((slot.frame.width, slot.frame.source_width), (320, 1280));
        if i >= 5 {
            per_frame.push((a, b));
        }
    }
    assert!(
        per_frame.iter().all(|n| *n == (0, 0)),
        "allocations per frame after warm-up (acquire, preprocess): {per_frame:?}"
    );
}
