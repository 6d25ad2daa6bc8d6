//! Per-stage micro-benchmarks of the framesift per-frame path, one criterion group per
//! stage, each with its throughput (frames, candidates). Run with
//!
//! ```sh
//! ORT_DYLIB_PATH=target/ort/x86_64/libonnxruntime.so \
//!   cargo bench -p benches --bench stages -- --warm-up-time 1 --measurement-time 2
//! ```
//!
//! The decode + NMS group decodes real YOLOv8n outputs captured with ONNX Runtime at
//! start-up (see `benches::capture_outputs`) when the benchmark models and the library
//! are found, and always synthetic outputs with a fixed number of candidates.

use std::{hint::black_box, time::Duration};

use benches::{
    CLASSES, DECODE_PARAMS, HEIGHT, Output, WIDTH, capture_outputs, downscaled_luma, models_dir,
    rgb_to_yuyv, synthetic_frame, synthetic_output, synthetic_source,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use framesift::{
    capture::preprocess::{FrameMeter, Normalization, Preprocessor, laplacian_variance},
    codec::{FrameDecoder, JpegEncoder, encode_jpeg, yuyv_to_rgb},
    config::Config,
    frame::Frame,
    infer::{DecodeParams, Decoder, Detection, Layout},
    keep::{Candidate, Handoff, KeepBuffer, Kind, Offer, WhenFull},
    ops::metrics::Metrics,
    policy::{FrameFacts, Policy, Scores},
};

/// A realistic 1280×720 frame: synthetic store scene 0 (products, hands, basket).
fn frame() -> Frame {
    synthetic_frame(&mut synthetic_source(WIDTH, HEIGHT), 0, WIDTH, HEIGHT)
}

fn preprocess(c: &mut Criterion) {
    let frame = frame();
    let mut group = c.benchmark_group("preprocess");
    group.throughput(Throughput::Elements(1)); // frames
    for input in [320u32, 640] {
        let mut pre = Preprocessor::new(input, input, 114, Normalization::UNIT);
        let mut tensor = vec![0.0f32; pre.tensor_len()];
        group.bench_function(BenchmarkId::new("letterbox_rgb_1280x720", input), |b| {
            b.iter(|| {
                pre.letterbox(black_box(&frame), &mut tensor)
                    .expect("letterbox")
            })
        });
    }

    // A YUYV camera: convert into the pooled frame, then letterbox (what the capture
    // thread does for `format = "yuyv"`).
    let yuyv = rgb_to_yuyv(&frame.rgb, WIDTH, HEIGHT);
    let mut converted = Frame::with_capacity(WIDTH, HEIGHT);
    converted.set_size(WIDTH, HEIGHT);
    group.bench_function("yuyv_to_rgb_1280x720", |b| {
        b.iter(|| yuyv_to_rgb(black_box(&yuyv), WIDTH, HEIGHT, &mut converted.rgb).expect("yuyv"))
    });
    let mut pre = Preprocessor::new(320, 320, 114, Normalization::UNIT);
    let mut tensor = vec![0.0f32; pre.tensor_len()];
    group.bench_function(
        BenchmarkId::new("yuyv_to_rgb_letterbox_1280x720", 320),
        |b| {
            b.iter(|| {
                yuyv_to_rgb(black_box(&yuyv), WIDTH, HEIGHT, &mut converted.rgb).expect("yuyv");
                pre.letterbox(&converted, &mut tensor).expect("letterbox")
            })
        },
    );
    group.finish();
}

fn frame_stats(c: &mut Criterion) {
    let frame = frame();
    let (luma, w, h) = downscaled_luma(&frame);
    let mut group = c.benchmark_group("frame_stats");
    group.throughput(Throughput::Elements(1)); // frames
    let mut meter = FrameMeter::default();
    group.bench_function("frame_meter_1280x720", |b| {
        b.iter(|| meter.measure(black_box(&frame)))
    });
    // What the capture thread does for a 1280×720 frame: the letterbox already holds
    // the 4× downscale, so the statistics are read from the tensor.
    let mut pre = Preprocessor::new(320, 320, 114, Normalization::UNIT);
    let mut tensor = vec![0.0f32; pre.tensor_len()];
    let lb = pre.letterbox(&frame, &mut tensor).expect("letterbox");
    group.bench_function("from_letterbox_1280x720_320", |b| {
        b.iter(|| meter.measure_letterboxed(black_box(&frame), &pre, &lb, &tensor))
    });
    group.bench_function(format!("laplacian_variance_{w}x{h}"), |b| {
        b.iter(|| laplacian_variance(black_box(&luma), w, h))
    });
    group.finish();
}

/// Real outputs of the YOLOv8n benchmark model with `n` anchors, or `None` (with the
/// reason on stderr) when the model or ONNX Runtime is missing.
fn real_outputs(n: usize) -> Option<Vec<Output>> {
    let input = if n == 8400 { 640 } else { 320 };
    let path = models_dir().join(format!("yolov8n-{input}.onnx"));
    match capture_outputs(&path, 8) {
        Ok(outputs) => {
            let cands: Vec<usize> = outputs.iter().map(|o| o.candidates_above(0.10)).collect();
            let dets: Vec<usize> = outputs.iter().map(|o| o.detections().len()).collect();
            eprintln!(
                "decode_nms: {} real outputs [1,84,{n}]; candidates >= 0.10 per frame {cands:?}, detections after NMS {dets:?}",
                outputs.len()
            );
            Some(outputs)
        }
        Err(e) => {
            eprintln!(
                "decode_nms: no real outputs for N={n} ({}): {e}; set ORT_DYLIB_PATH and FRAMESIFT_BENCH_MODELS",
                path.display()
            );
            None
        }
    }
}

fn decode_nms(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_nms");
    let mut dets = Vec::with_capacity(DECODE_PARAMS.max_detections);
    for n in [8400usize, 2100] {
        group.throughput(Throughput::Elements(n as u64)); // candidate boxes (anchors)
        let input = if n == 8400 { 640 } else { 320 };
        let mut decoder = Decoder::new(Layout::YoloV8, CLASSES, DECODE_PARAMS);
        if let Some(outputs) = real_outputs(n) {
            // Down to 0.10 (the uncertainty band) and down to 0.04 (the faint signal's
            // floor, what the default config decodes): the cost of the extra candidates.
            let faint = DecodeParams {
                keep_down_to: 0.04,
                ..DECODE_PARAMS
            };
            let mut faint_decoder = Decoder::new(Layout::YoloV8, CLASSES, faint);
            for (name, decoder) in [
                ("yolov8n_real", &mut decoder),
                ("yolov8n_real_down_to_0.04", &mut faint_decoder),
            ] {
                let mut i = 0;
                group.bench_function(BenchmarkId::new(name, n), |b| {
                    b.iter(|| {
                        // Cycle through the captured frames, as consecutive frames would.
                        let o = &outputs[i % outputs.len()];
                        i += 1;
                        decoder
                            .decode(black_box(&o.data), &o.shape, &o.letterbox, &mut dets)
                            .expect("decode");
                    })
                });
            }
        }
        for candidates in [50usize, 300] {
            let o = synthetic_output(n, input, candidates, 15, 5);
            group.bench_function(
                BenchmarkId::new(format!("synthetic_{candidates}_above_0.10"), n),
                |b| {
                    b.iter(|| {
                        decoder
                            .decode(black_box(&o.data), &o.shape, &o.letterbox, &mut dets)
                            .expect("decode")
                    })
                },
            );
        }
    }
    group.finish();
}

fn scoring(c: &mut Criterion) {
    let frame = frame();
    let stats = FrameMeter::default().measure(&frame);
    let dets = synthetic_output(8400, 640, 300, 15, 5).detections();
    let config = Config::default();
    let mut policy = Policy::new(&config.policy);
    let mut group = c.benchmark_group("score");
    group.throughput(Throughput::Elements(1)); // frames
    group.bench_function(format!("{}_detections", dets.len()), |b| {
        b.iter(|| {
            policy.score(&FrameFacts {
                detections: black_box(&dets),
                stats: &stats,
                confidence: config.model.confidence_threshold,
                class_names: &[],
                features: &[],
            })
        })
    });
    group.finish();
}

fn keep(c: &mut Criterion) {
    let mut group = c.benchmark_group("keep");
    group.throughput(Throughput::Elements(1)); // candidates

    // Inference side offers (free-list try_recv, frame buffer swap, try_send); the
    // keeper side receives and returns the candidate to the free list.
    let config = Config::default();
    let pool = config.keep.capacity + config.pipeline.keeper_queue + 1;
    let (handoff, ends) = Handoff::new(
        pool,
        pool,
        config.pipeline.keeper_queue,
        WIDTH,
        HEIGHT,
        DECODE_PARAMS.max_detections,
    );
    let metrics = Metrics::default();
    let mut frame = frame();
    let stats = FrameMeter::default().measure(&frame);
    let dets: Vec<Detection> = synthetic_output(2100, 320, 300, 15, 5).detections();
    let scores = Scores {
        value: 0.8,
        ..Scores::default()
    };
    group.bench_function("handoff_offer_and_recycle", |b| {
        b.iter(|| {
            handoff.offer(
                &metrics,
                0,
                &mut frame,
                black_box(&dets),
                stats,
                scores,
                Kind::Ranked,
            );
            let c = ends.keep_rx.try_recv().expect("candidate queued");
            ends.free_tx.try_send(c).expect("free list has room");
        })
    });
    assert_eq!(metrics.total_drops(), 0, "the hand-off dropped candidates");

    // The keeper's best-16 buffer, full (steady state): every offer scans for the
    // lowest and evicts it or is rejected; the returned candidate is offered next.
    let mut buffer: KeepBuffer<Box<Candidate>> = KeepBuffer::new(16, WhenFull::DropLowest);
    let mut rng = benches::Rng::new(11);
    let values: Vec<f32> = (0..1024).map(|_| rng.range(0.5, 1.0)).collect();
    for v in &values[..16] {
        let mut c = Box::new(Candidate::with_capacity(WIDTH, HEIGHT, 0));
        c.scores.value = *v;
        let _ = buffer.offer(c);
    }
    let mut spare = Some(Box::new(Candidate::with_capacity(WIDTH, HEIGHT, 0)));
    let mut i = 16;
    group.bench_function("keep_buffer_offer_capacity_16", |b| {
        b.iter(|| {
            let mut c = spare
                .take()
                .unwrap_or_else(|| Box::new(Candidate::with_capacity(WIDTH, HEIGHT, 0)));
            c.scores.value = values[i % values.len()];
            i += 1;
            spare = match buffer.offer(c) {
                Offer::Accepted => None,
                Offer::Evicted(c) | Offer::Rejected(c) => Some(c),
            };
        })
    });
    group.finish();
}

fn jpeg(c: &mut Criterion) {
    let frame = frame();
    let mut group = c.benchmark_group("jpeg");
    group.throughput(Throughput::Elements(1)); // frames
    // The keeper's encoder, kept from frame to frame.
    let mut encoder = JpegEncoder::new().expect("encoder");
    group.bench_function("encode_1280x720_q90", |b| {
        b.iter(|| {
            encoder
                .encode(black_box(&frame.rgb), WIDTH, HEIGHT, 90)
                .map(|bytes| bytes.len())
                .expect("encode")
        })
    });
    let mut jpeg = Vec::new();
    encode_jpeg(&frame.rgb, WIDTH, HEIGHT, 90, &mut jpeg).expect("encode");
    let mut decoded = Frame::with_capacity(WIDTH, HEIGHT);
    let kib = jpeg.len() / 1024;
    let mut full = FrameDecoder::full_size();
    group.bench_function(format!("decode_1280x720_q90_{kib}kib"), |b| {
        b.iter(|| {
            full.decode_into(black_box(&jpeg), &mut decoded)
                .expect("decode")
        })
    });
    // What the pipeline does for a 320×320 model: DCT-scaled decode to 320×180.
    let mut fitted = FrameDecoder::fitting(320, 320);
    group.bench_function(format!("decode_1280x720_q90_{kib}kib_fit_320"), |b| {
        b.iter(|| {
            fitted
                .decode_into(black_box(&jpeg), &mut decoded)
                .expect("decode")
        })
    });
    group.finish();
}

fn config() -> Criterion {
    // Short by default on shared boards; command-line flags override.
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = stages;
    config = config();
    targets = preprocess, frame_stats, decode_nms, scoring, keep, jpeg
}
criterion_main!(stages);
