//! `framesift calibrate`.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::load_model;
use crate::{
    calibrate::{CalibrateOptions, describe_source, kept_share, signal_key},
    capture::{
        CameraConfig, SourceConfig,
        replay::ReplayConfig,
        synthetic::{Split, SyntheticConfig},
    },
    config::NamedFiles,
};

#[derive(Parser)]
pub(super) struct CalibrateArgs {
    /// A directory of reference frames (JPEG, PNG, BMP or WebP, e.g. a known-good week of
    /// a store); with --synthetic, the number of synthetic frames.
    #[arg(long, value_name = "DIR|N")]
    frames: String,
    /// Calibrate on the synthetic scene source instead of a directory: `studio` (what
    /// the shipped model was trained on) or `store`, at the frame size and scene length
    /// of the config's synthetic camera when it has one.
    #[arg(long, value_parser = ["studio", "store"])]
    synthetic: Option<String>,
    /// Seed of the synthetic frames.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Config file(s) for the model, the signals and [drift] (window, bands); repeat to
    /// overlay, as `run` does.
    #[arg(long, short)]
    config: Vec<PathBuf>,
    /// Model file (.onnx), overriding [model] path.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The share of reference frames the chosen thresholds keep.
    #[arg(long, default_value_t = 0.02)]
    target_rate: f64,
    /// Where to write the reference (TOML), for [drift] reference.
    #[arg(long)]
    out: PathBuf,
    /// Also write PNG plots of every histogram and a summary.md here.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
}

pub(super) fn calibrate(args: CalibrateArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.target_rate > 0.0 && args.target_rate <= 1.0,
        "--target-rate must be above 0 and at most 1, e.g. 0.02"
    );
    // The reference the config names is the file being written (it may not exist yet),
    // and the new one must not depend on it: its novelty is measured without it.
    let mut config = match super::load_files_with(&args.config, NamedFiles::Skip) {
        Ok(loaded) => loaded.config,
        Err(code) => return Ok(code),
    };
    config.drift.reference = None;
    if let Some(model) = &args.model {
        config.model.path = Some(model.clone());
    }
    check_outputs(&args)?;
    // The drift bands come from the sample's own window-to-window spread: two windows
    // at the least.
    let least = 2 * config.drift.window_frames;
    let (source, frames) = match &args.synthetic {
        Some(split) => {
            let n: u64 = args.frames.parse().map_err(|_| {
                anyhow::anyhow!(
                    "with --synthetic, --frames is a number of frames (e.g. --frames 3000), not {:?}",
                    args.frames
                )
            })?;
            anyhow::ensure!(
                n >= least as u64,
                "--frames {n} is fewer than two [drift] windows ({least} frames): the reference could not measure how much its own windows differ; write --frames {} or more, or lower [drift] window_frames",
                (3 * least).max(3000)
            );
            let split = if split == "studio" {
                Split::Studio
            } else {
                Split::Store
            };
            // The frame size and scene length of the config's synthetic camera, if it
            // has one: drift statistics depend on them.
            let camera = crate::capture::first_synthetic(&config.cameras);
            let source = SourceConfig::Synthetic(SyntheticConfig {
                split,
                seed: args.seed,
                ..camera
            });
            (source, Some(n))
        }
        None => {
            let dir = PathBuf::from(&args.frames);
            anyhow::ensure!(
                dir.is_dir(),
                "--frames {}: not a directory of frames (for synthetic frames write --synthetic store --frames N)",
                dir.display()
            );
            let source = SourceConfig::Replay(ReplayConfig {
                dir,
                fps: 0.0,
                looping: false,
            });
            (source, None)
        }
    };
    let describe = describe_source(&source);
    config.cameras = vec![CameraConfig {
        name: "reference".into(),
        source,
    }];
    let model = std::sync::Arc::new(std::sync::Mutex::new(load_model(&config)?));
    let bar = progress_bar(frames);
    let opts = CalibrateOptions {
        frames,
        target_rate: args.target_rate,
        describe,
    };
    let cal = crate::calibrate::calibrate(&config, &model, &opts, |done| bar.set_position(done));
    bar.finish_and_clear();
    let cal = cal?;
    anyhow::ensure!(
        cal.reference.frames >= least as u64,
        "{} gave {} frames, fewer than two [drift] windows ({least} frames): the reference could not measure how much its own windows differ, so nothing was written; calibrate on more frames, or lower [drift] window_frames",
        opts_source(&args),
        cal.reference.frames
    );
    let text = cal.reference.to_toml();
    let tmp = args.out.with_extension("toml.tmp");
    if let Err(e) = std::fs::write(&tmp, &text).and_then(|()| std::fs::rename(&tmp, &args.out)) {
        let _ = std::fs::remove_file(&tmp);
        anyhow::bail!("cannot write {}: {e}", args.out.display());
    }
    if let Some(dir) = &args.report {
        crate::calibrate::write_report(dir, &cal, &config, args.target_rate)?;
    }
    let r = &cal.reference;
    println!(
        "calibrated on {} frames ({}; {} skipped) with model {}",
        r.frames, r.source, cal.skipped, r.model.id
    );
    let keeps = |key: &str, values: &[f32]| match r.thresholds.get(key) {
        Some(&t) => format!("{t:.4} (keeps {:.1} %)", 100.0 * kept_share(values, t)),
        None => "none: every reference frame scores the same".to_string(),
    };
    println!("  [policy] min_value = {}", keeps("min_value", &cal.values));
    for (i, name) in crate::policy::signals::NAMES.iter().enumerate() {
        let own: Vec<f32> = cal.signals.iter().map(|s| s[i]).collect();
        println!("  {name:<16} alone: {}", keeps(&signal_key(name), &own));
    }
    if let Some((lo, hi, dark, bright)) = crate::calibrate::exposure_range(&cal.luma_means) {
        println!(
            "  [signals.exposure] dark_luma = {dark:.0}, bright_luma = {bright:.0} (this sample's mean luma spans {lo:.1} to {hi:.1}, 0.5 to 99.5 %)"
        );
    }
    // Each statistic's bands, as the drift monitor will judge it.
    let bands: Vec<(&str, calibration::Bands)> = r
        .stats
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                config.drift.bands(s.noise, r.window_frames),
            )
        })
        .collect();
    let list: Vec<String> = bands
        .iter()
        .map(|(name, b)| format!("{name} {:.3}", b.js_moderate))
        .collect();
    println!(
        "  drift bands     JS moderate from, for {}-frame windows: {} (significant from 1.5 × that, at least the PSI-matching floor)",
        r.window_frames,
        list.join(", ")
    );
    let unreachable: Vec<&str> = bands
        .iter()
        .filter(|(_, b)| b.js_significant >= 1.0)
        .map(|(name, _)| *name)
        .collect();
    if !unreachable.is_empty() {
        println!(
            "  warning: the significant band of {} cannot be reached: this sample varies too much between windows this short; raise [drift] window_frames",
            unreachable.join(", ")
        );
    }
    println!("  wrote {}", args.out.display());
    if let Some(dir) = &args.report {
        println!("  report {}", dir.join("summary.md").display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `--frames` as given, for messages.
fn opts_source(args: &CalibrateArgs) -> String {
    match &args.synthetic {
        Some(split) => format!("--synthetic {split}"),
        None => format!("--frames {}", args.frames),
    }
}

/// Refuse outputs that cannot be written before the sample is read, not after.
fn check_outputs(args: &CalibrateArgs) -> anyhow::Result<()> {
    super::check_output_file("--out", &args.out)?;
    if let Some(dir) = &args.report {
        anyhow::ensure!(
            !dir.exists() || dir.is_dir(),
            "--report {} is a file; name a directory for the plots and summary.md",
            dir.display()
        );
    }
    Ok(())
}

fn progress_bar(total: Option<u64>) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(total, target);
    if let Ok(style) =
        ProgressStyle::with_template("calibrate {bar:30} {pos}/{len} frames {per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}
