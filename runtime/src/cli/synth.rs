//! `framesift synth`.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use clap::Parser;

#[derive(Parser)]
pub(super) struct SynthArgs {
    /// Output directory (created; must be empty).
    #[arg(long)]
    out: PathBuf,
    /// Number of frames.
    #[arg(long, default_value_t = 1000)]
    frames: u64,
    /// `studio` (clean, known products only) or `store` (perturbations, unseen products).
    #[arg(long, value_parser = ["studio", "store"], default_value = "store")]
    split: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 640)]
    width: u32,
    #[arg(long, default_value_t = 360)]
    height: u32,
    /// Consecutive frames per scene (1 = every frame a new scene).
    #[arg(long, default_value_t = 1)]
    frames_per_scene: u32,
}

pub(super) fn synth(args: SynthArgs) -> anyhow::Result<ExitCode> {
    use crate::capture::synthetic::Split;
    // The bounds a synthetic camera has in the config.
    anyhow::ensure!(
        (64..=8192).contains(&args.width) && (64..=8192).contains(&args.height),
        "--width and --height must be from 64 to 8192 pixels"
    );
    anyhow::ensure!(args.frames >= 1, "--frames must be at least 1");
    anyhow::ensure!(
        (1..=1000).contains(&args.frames_per_scene),
        "--frames-per-scene must be from 1 to 1000"
    );
    let opts = crate::dataset::ExportOptions {
        out: args.out.clone(),
        frames: args.frames,
        split: if args.split == "studio" {
            Split::Studio
        } else {
            Split::Store
        },
        seed: args.seed,
        width: args.width,
        height: args.height,
        frames_per_scene: args.frames_per_scene,
    };
    let tty = std::io::stderr().is_terminal();
    let mut last = 0;
    let stats = crate::dataset::export(&opts, |done, total| {
        let pct = done * 100 / total.max(1);
        if pct != last && (tty || pct % 10 == 0) {
            last = pct;
            if tty {
                eprint!("\rsynth: {done}/{total} frames ({pct}%)");
            } else {
                eprintln!("synth: {done}/{total} frames ({pct}%)");
            }
        }
    })?;
    if tty {
        eprintln!();
    }
    println!(
        "wrote {} {} frames to {} ({} labelled objects, {} objects of unseen types, {} perturbed frames)",
        stats.frames,
        args.split,
        args.out.display(),
        stats.labelled_objects,
        stats.unseen_objects,
        stats.perturbed_frames
    );
    Ok(ExitCode::SUCCESS)
}
