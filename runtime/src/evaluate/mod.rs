//! `framesift evaluate`: does the capture policy keep the frames the model gets wrong?
//!
//! It runs the model over the synthetic store stream, one frame at a time on the calling
//! thread with the pipeline's own per-frame code ([`Scorer`]), labels each frame's
//! errors against the ground truth ([`truth`]), and then replays the stream's scores
//! through each policy at the same budget ([`policies`]): the configured one (the
//! inference thread's keep decision and the keeper's selection, the same code the
//! pipeline runs), seeded random sampling, an oracle that knows the errors, and each
//! signal alone. [`field`] measures the same lift on frames that came back labelled
//! from the carts (`framesift lift`).

pub(crate) mod field;
pub(crate) mod policies;
pub(crate) mod truth;
pub(crate) mod tune;

use crate::{
    calibrate::Scorer,
    capture::synthetic::{Split, SyntheticSource},
    capture::{FrameSource, Next, SourceError, Thumbnail, synthetic::SyntheticConfig},
    config::Config,
    frame::Perturbations,
    infer::SharedModel,
    policy::Scores,
};

use self::truth::{ClassMap, Errors};

/// What to evaluate.
#[derive(Debug, Clone)]
pub(crate) struct EvaluateOptions {
    pub frames: u64,
    /// The share of frames a policy may keep.
    pub budget: f64,
    pub seed: u64,
    /// The synthetic camera: size, frames per scene (the split is always the store's).
    pub camera: SyntheticConfig,
    /// Frames per second the stream stands for, which sets how many frames a keep window
    /// holds.
    pub fps: f64,
}

/// One frame as the policies see it, with what it really holds.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub scene: u64,
    pub perturbations: Perturbations,
    /// A bit per catalogue product present.
    pub products: u16,
    pub errors: Errors,
    pub scores: Scores,
    pub thumbnail: Thumbnail,
    /// Seconds since the stream began.
    pub at: f64,
}

/// A scored stream.
pub(crate) struct Stream {
    pub records: Vec<Record>,
    /// Mean time each signal took per frame on this thread, µs.
    pub signal_us: [f64; crate::policy::signals::COUNT],
}

/// Run the model over `opts.frames` synthetic store frames, calling `progress(done)`.
pub(crate) fn score_stream(
    config: &Config,
    model: &SharedModel,
    opts: &EvaluateOptions,
    mut csv: Option<&mut dyn std::io::Write>,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<Stream> {
    let (names, confidence) = {
        let m = model.lock().unwrap_or_else(|p| p.into_inner());
        (m.info.names.clone(), config.model.confidence_threshold)
    };
    let classes = ClassMap::new(&names);
    let camera = SyntheticConfig {
        split: Split::Store,
        seed: opts.seed,
        fps: 0.0,
        prerendered: 0,
        ..opts.camera.clone()
    };
    let per_scene = u64::from(camera.frames_per_scene.max(1));
    let mut source = SyntheticSource::new(camera.clone());
    let mut scorer = Scorer::new(config, model, (camera.width, camera.height))?;
    scorer.signal_time = Some([std::time::Duration::ZERO; crate::policy::signals::COUNT]);
    let mut records = Vec::with_capacity(opts.frames as usize);
    if let Some(out) = csv.as_deref_mut() {
        write_csv_header(out)?;
    }
    for index in 0..opts.frames {
        match source.next_frame(&mut scorer.slot.frame) {
            Ok(Next::Frame) => {}
            Ok(Next::End) => break,
            Err(e @ SourceError::Fatal(_)) => return Err(e.into()),
            Err(e) => anyhow::bail!("synthetic frame {index}: {e}"),
        }
        let Some((scores, _)) = scorer.score(model)? else {
            anyhow::bail!("synthetic frame {index} could not be prepared");
        };
        let truth = scorer.slot.frame.truth.clone().unwrap_or_default();
        let errors = truth::label(&truth, scorer.detections(), confidence, &classes);
        let record = Record {
            scene: index / per_scene,
            perturbations: truth.perturbations,
            products: truth.boxes.iter().fold(0u16, |bits, b| {
                bits | 1u16.checked_shl(u32::from(b.class_id)).unwrap_or(0)
            }),
            errors,
            scores,
            thumbnail: scorer.slot.stats.thumbnail,
            at: index as f64 / opts.fps,
        };
        if let Some(out) = csv.as_deref_mut() {
            write_csv_row(out, index, &record, &scorer, confidence)?;
        }
        records.push(record);
        progress(index + 1);
    }
    let n = records.len().max(1) as f64;
    let spent = scorer.signal_time.unwrap_or_default();
    Ok(Stream {
        records,
        signal_us: spent.map(|d| d.as_secs_f64() * 1e6 / n),
    })
}

fn write_csv_header(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    write!(
        out,
        "frame,scene,perturbations,truth_products,misses,false_positives,value"
    )?;
    for name in crate::policy::signals::NAMES {
        write!(out, ",{name}")?;
    }
    writeln!(
        out,
        ",reported,below_threshold,luma_mean,luma_std,dark_clip,bright_clip,blur,scores,thumbnail"
    )
}

fn write_csv_row(
    out: &mut dyn std::io::Write,
    index: u64,
    r: &Record,
    scorer: &Scorer,
    confidence: f32,
) -> std::io::Result<()> {
    let s = &scorer.slot.stats;
    let dets = scorer.detections();
    write!(
        out,
        "{index},{},{},{},{},{},{:.4}",
        r.scene,
        r.perturbations.names().collect::<Vec<_>>().join("|"),
        r.products,
        r.errors.misses,
        r.errors.false_positives,
        r.scores.value
    )?;
    for v in r.scores.signals {
        write!(out, ",{v:.4}")?;
    }
    let reported = dets.iter().filter(|d| d.score >= confidence).count();
    let scores: Vec<String> = dets
        .iter()
        .map(|d| {
            format!(
                "{}:{:.3}:{:.3}:{:.0}:{:.0}:{:.0}:{:.0}",
                d.class_id, d.score, d.second_score, d.x1, d.y1, d.x2, d.y2
            )
        })
        .collect();
    let thumb: String = r.thumbnail.0.iter().map(|v| format!("{v:02x}")).collect();
    writeln!(
        out,
        ",{reported},{},{:.2},{:.2},{:.4},{:.4},{:.2},{},{thumb}",
        dets.len() - reported,
        s.luma_mean,
        s.luma_std,
        s.dark_clip,
        s.bright_clip,
        s.blur,
        scores.join(" ")
    )
}
