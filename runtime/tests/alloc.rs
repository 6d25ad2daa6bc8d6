//! The steady-state per-frame path allocates nothing: acquire (synthetic source) →
//! preprocess → inference (ORT through IoBinding) → decode + NMS → score → hand-off;
//! and for JPEG sources, reading and decoding a frame file at reduced scale.
//!
//! This test binary defines `malloc`, `calloc`, `realloc`, `posix_memalign`,
//! `aligned_alloc`, `memalign`, `valloc` and `pvalloc` itself, forwarding to glibc's
//! `__libc_*` entry points. The dynamic linker binds every library's calls to these
//! names to the executable's definitions, so Rust's allocator (which calls `malloc`),
//! C++ `operator new` inside ONNX Runtime and libjpeg-turbo's memory manager are all
//! counted — on the measuring thread, and process-wide (ORT's intra-op worker threads
//! included) while the tests hold `SERIAL`.

// Allocation entry points can only be written with `unsafe`; they forward unchanged,
// so their safety contract is the C library's own.
#![allow(unsafe_code, clippy::missing_safety_doc)]

use std::{
    cell::Cell,
    ffi::c_void,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use framesift::{
    capture::{
        FrameSource, Preparer, Slot, SourceConfig,
        preprocess::{FrameMeter, Normalization, Preprocessor},
        replay::{ReplayConfig, ReplaySource},
    },
    codec::{FrameDecoder, encode_jpeg},
    config::Config,
    infer::{Inferer, Model, ModelFile, model},
    keep::{Handoff, Kind},
    ops::metrics::Metrics,
    policy::Policy,
};

thread_local! {
    // const-initialised and without Drop: reading them never allocates, so they are
    // safe to touch inside malloc.
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}
/// Counting process-wide, and the count: any thread's allocation while armed.
static PROCESS_ARMED: AtomicBool = AtomicBool::new(false);
static PROCESS_COUNT: AtomicU64 = AtomicU64::new(0);
/// One measurement at a time, so the process-wide count sees only the test measuring.
static SERIAL: Mutex<()> = Mutex::new(());

fn note() {
    // try_with: the thread-local may be gone while a thread exits.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
    if PROCESS_ARMED.load(Ordering::Relaxed) {
        PROCESS_COUNT.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe extern "C" {
    fn __libc_malloc(size: usize) -> *mut c_void;
    fn __libc_calloc(n: usize, size: usize) -> *mut c_void;
    fn __libc_realloc(ptr: *mut c_void, size: usize) -> *mut c_void;
    fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
    fn __libc_valloc(size: usize) -> *mut c_void;
    fn __libc_pvalloc(size: usize) -> *mut c_void;
}

// SAFETY (all below): each forwards its arguments unchanged to glibc's implementation
// of the same function, which has the same contract; `note` does not allocate.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    note();
    unsafe { __libc_malloc(size) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    note();
    unsafe { __libc_calloc(n, size) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    note();
    unsafe { __libc_realloc(ptr, size) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    note();
    unsafe { __libc_memalign(align, size) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    note();
    unsafe { __libc_memalign(align, size) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    note();
    unsafe { __libc_valloc(size) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    note();
    unsafe { __libc_pvalloc(size) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> i32 {
    note();
    // glibc's own checks: a power of two that is a multiple of sizeof(void *).
    if !align.is_power_of_two() || !align.is_multiple_of(std::mem::size_of::<*mut c_void>()) {
        return libc::EINVAL;
    }
    let p = unsafe { __libc_memalign(align, size) };
    if p.is_null() && size != 0 {
        return libc::ENOMEM;
    }
    unsafe { *out = p };
    0
}

/// Allocations by `f`: (on this thread, in the whole process).
fn count<T>(f: impl FnOnce() -> T) -> (T, (u64, u64)) {
    COUNT.with(|c| c.set(0));
    PROCESS_COUNT.store(0, Ordering::Relaxed);
    ARMED.with(|a| a.set(true));
    PROCESS_ARMED.store(true, Ordering::Relaxed);
    let out = f();
    PROCESS_ARMED.store(false, Ordering::Relaxed);
    ARMED.with(|a| a.set(false));
    (
        out,
        (
            COUNT.with(|c| c.get()),
            PROCESS_COUNT.load(Ordering::Relaxed),
        ),
    )
}

/// Proof the interposition works: Rust allocations and C++ `operator new` inside the
/// dynamically loaded ONNX Runtime are both counted.
#[test]
fn allocations_inside_onnx_runtime_are_counted() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    model::environment(None).expect("ONNX Runtime (run cross/fetch-ort.sh)");
    // OrtApi::CreateRunOptions is `new OrtRunOptions` inside libonnxruntime.so.
    let (options, n) = count(|| ort::session::RunOptions::new().expect("run options"));
    drop(options);
    assert!(n.0 >= 1, "ORT's operator new was not seen: {n:?}");
    // black_box: in a release build LLVM would otherwise elide the unused allocation.
    let (v, n) = count(|| std::hint::black_box(vec![0u8; 64]));
    assert_eq!(v.len(), 64);
    assert_eq!(n, (1, 1), "one Rust allocation");
}

#[test]
fn steady_state_per_frame_path_allocates_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut config = Config::default();
    // Every frame is a candidate, so the hand-off runs on every frame too.
    config.policy.min_value = 0.0;
    let (env, _) = model::environment(None).expect("ONNX Runtime (run cross/fetch-ort.sh)");
    let file = ModelFile::embedded().expect("embedded model");
    let model = Mutex::new(Model::load(&env, &file, &config.model).expect("model"));
    let info = model.lock().expect("lock").info.clone();

    let SourceConfig::Synthetic(synthetic) = &config.cameras[0].source else {
        panic!("default camera is synthetic")
    };
    let mut source = config.cameras[0]
        .source
        .build(
            (info.input_width, info.input_height),
            config.pipeline.max_frame_pixels,
        )
        .expect("source");
    let mut preparer = Preparer::new(&info);
    let params = config.model.decode_params(
        config
            .policy
            .lowest_score(config.model.confidence_threshold),
    );
    let mut inferer = Inferer::new(&model.lock().expect("lock"), params).expect("inferer");
    let mut policy = Policy::new(&config.policy);
    let tensor_len = 3 * (info.input_width * info.input_height) as usize;
    let mut slot = Slot::new(synthetic.width, synthetic.height, tensor_len);
    let (handoff, ends) = Handoff::new(
        4,
        4,
        2,
        synthetic.width,
        synthetic.height,
        config.model.max_detections,
    );
    let metrics = Metrics::default();

    let mut per_frame = Vec::new();
    let mut framesift_runs = Vec::new();
    let mut ort_runs = Vec::new();
    // Warm-up: the first use of each pooled buffer (5 frames circulate here) may size
    // it, e.g. the ground-truth box list of a synthetic frame. After that: nothing but
    // what ONNX Runtime allocates inside its run.
    for i in 0..60 {
        // Counted stage by stage so a failure says where the allocation is.
        let (_, a) = count(|| source.next_frame(&mut slot.frame).expect("frame"));
        let (_, b) = count(|| preparer.prepare(&mut slot).expect("prepare"));
        let (_, run) = count(|| inferer.run_model(&model, &slot, &metrics).expect("run"));
        let (scores, c) = count(|| {
            inferer.decode(&slot, &metrics).expect("decode");
            policy.score(&inferer.facts(&slot))
        });
        // The same bound run again, bare: what ORT itself allocates per run.
        let (_, r) = count(|| {
            model
                .lock()
                .expect("lock")
                .run(inferer.runner_mut())
                .expect("run")
        });
        let (_, d) = count(|| {
            handoff.offer(
                &metrics,
                0,
                &mut slot.frame,
                inferer.detections(),
                slot.stats,
                scores,
                Kind::Ranked,
            )
        });
        // The keeper's side, on its own thread in the daemon: take and recycle.
        while let Ok(c) = ends.keep_rx.try_recv() {
            ends.free_tx.try_send(c).expect("recycle");
        }
        if i >= 20 {
            // On this thread: acquire, preprocess, decode + score, hand-off.
            per_frame.push((a.0, b.0, c.0, d.0));
            framesift_runs.push(run.0);
            ort_runs.push(r);
        }
    }
    assert_eq!(metrics.total_drops(), 0);
    assert!(
        per_frame.iter().all(|n| *n == (0, 0, 0, 0)),
        "allocations per frame after warm-up on the pipeline's threads (acquire, \
         preprocess, decode + score, hand-off): {per_frame:?}"
    );
    // ORT's own count moves by one now and then (1074 or 1075 with the shipped model),
    // so the model-run step is compared on its floor: an allocation of ours on every
    // frame would lift it.
    let floor = |counts: &mut dyn Iterator<Item = u64>| counts.min().unwrap_or_default();
    assert_eq!(
        floor(&mut framesift_runs.iter().copied()),
        floor(&mut ort_runs.iter().map(|r| r.0)),
        "the inferer's model run allocates beyond ORT's own run: {framesift_runs:?} vs \
         ORT's runs alone (this thread, process) {ort_runs:?}"
    );
    // ORT allocates inside every run whatever the session options
    // (`onnx_runtime_allocates_inside_every_run`); for the record:
    let (min, max) = ort_runs
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), r| (lo.min(r.1), hi.max(r.1)));
    eprintln!(
        "ORT run with IoBinding: {} allocations on the calling thread, {min}-{max} in the process",
        ort_runs[0].0
    );
}

/// Replayed JPEG files: open + read into a reused buffer, libjpeg-turbo decode at 1/4
/// scale into the pooled frame, letterbox. libjpeg allocates its per-image working
/// memory at the start of every decompression and frees it at the end (its pools live
/// for one image; no libjpeg or turbojpeg call keeps them), so acquiring a frame must
/// allocate exactly what a bare decode of the same file does, and preprocessing nothing.
#[test]
fn jpeg_replay_acquire_and_preprocess_allocate_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
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
    let mut bare = FrameDecoder::fitting(320, 320);
    let mut bare_frame = framesift::frame::Frame::with_capacity(w, h);
    let mut per_frame = Vec::new();
    for i in 0..20 {
        let (_, a) = count(|| source.next_frame(&mut slot.frame).expect("frame"));
        let (_, b) = count(|| preparer.prepare(&mut slot).expect("prepare"));
        assert_eq!((slot.frame.width, slot.frame.source_width), (320, 1280));
        let (_, j) = count(|| bare.decode_into(&jpeg, &mut bare_frame).expect("decode"));
        if i >= 5 {
            per_frame.push((a.0, j.0, b.0));
        }
    }
    assert!(
        per_frame.iter().all(|&(a, j, b)| a == j && b == 0),
        "allocations per frame after warm-up on this thread (acquire, a bare libjpeg-turbo \
         decode of a frame file, preprocess): {per_frame:?}"
    );
    eprintln!("libjpeg-turbo per decode: {} allocations", per_frame[0].1);
}

/// ONNX Runtime allocates inside every `Run`, whatever the session is given: per-run
/// execution-frame bookkeeping (value vectors, shape and kernel-context objects) is
/// C++ heap memory that no option turns off. Measured here for the options the C API
/// offers that could matter — IoBinding with pre-allocated input and output (what
/// framesift uses), memory-pattern planning off, the CPU arena off, one thread instead
/// of a pool, no graph optimisation — against the plain `Run` with fresh outputs. The
/// test fails if any of them ever reaches zero, which would be the way to drop these.
#[test]
fn onnx_runtime_allocates_inside_every_run() {
    use ort::{
        AsPointer,
        session::{Session, builder::GraphOptimizationLevel, builder::SessionBuilder},
        value::Tensor,
    };
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (env, _) = model::environment(None).expect("ONNX Runtime (run cross/fetch-ort.sh)");
    let file = ModelFile::embedded().expect("embedded model");
    let config = Config::default().model;

    type Tweak = fn(SessionBuilder) -> SessionBuilder;
    let variants: [(&str, Tweak); 5] = [
        (
            "framesift's options (2 threads, arena, memory pattern)",
            |b| b,
        ),
        ("memory pattern off", |b| {
            b.with_memory_pattern(false).expect("option")
        }),
        ("CPU arena off", |mut b| {
            // SAFETY: a live session-options pointer owned by the builder.
            let status = unsafe { (ort::api().DisableCpuMemArena)(b.ptr_mut()) };
            assert!(status.0.is_null(), "DisableCpuMemArena failed");
            b
        }),
        ("1 intra-op thread", |b| {
            b.with_intra_threads(1).expect("option")
        }),
        ("no graph optimisation", |b| {
            b.with_optimization_level(GraphOptimizationLevel::Disable)
                .expect("option")
        }),
    ];
    let mut report = Vec::new();
    for (what, tweak) in variants {
        // framesift's own session set-up and IoBinding runner, with one option changed.
        let mut model = Model::load_tuned(&env, &file, &config, tweak).expect("model");
        let mut runner = model.runner().expect("runner");
        let mut run = || model.run(&mut runner).expect("run");
        for _ in 0..3 {
            run();
        }
        let fewest = (0..5).map(|_| count(&mut run).1.0).min().expect("runs");
        report.push((what, fewest));
    }
    let info = Model::load(&env, &file, &config).expect("model").info;
    let input_shape = [
        1usize,
        3,
        info.input_height as usize,
        info.input_width as usize,
    ];
    // The plain Run, for scale: fresh output values every call.
    let mut session = Session::builder(&env)
        .expect("builder")
        .with_intra_threads(2)
        .expect("threads")
        .commit_from_memory(&file.bytes)
        .expect("session");
    let input = Tensor::<f32>::new(session.allocator(), input_shape).expect("input");
    for _ in 0..3 {
        drop(
            session
                .run(ort::inputs![info.input_name.as_str() => &input])
                .expect("run"),
        );
    }
    let plain = (0..5)
        .map(|_| {
            count(|| {
                drop(
                    session
                        .run(ort::inputs![info.input_name.as_str() => &input])
                        .expect("run"),
                )
            })
            .1
            .0
        })
        .min()
        .expect("runs");
    report.push(("plain Run (no IoBinding)", plain));
    eprintln!("ORT allocations per run on the calling thread: {report:#?}");
    assert!(
        report.iter().all(|(_, n)| *n > 0),
        "an option makes ORT's run allocation-free; use it and tighten the per-frame test: {report:?}"
    );
}
