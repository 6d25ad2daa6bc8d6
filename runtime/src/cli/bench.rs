//! `framesift bench`.

use std::process::ExitCode;

use clap::Parser;

use super::{Inputs, load_model};
use crate::capture::SourceConfig;

#[derive(Parser)]
pub(super) struct BenchArgs {
    #[command(flatten)]
    inputs: Inputs,
    /// Frames per phase (pipeline, bare run, each capture condition). Use 3000 or more
    /// for capture_p99_ratio: its p99 of 900 frames is the 9th-slowest frame.
    #[arg(long, default_value_t = 300)]
    frames: u64,
    /// Interleaved rounds the frames are split over; `pipeline_vs_bare` is the median
    /// of the per-round ratios.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

pub(super) fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let replay = args.inputs.replay.is_some();
    let mut config = match args.inputs.load() {
        Ok(loaded) => loaded.config,
        Err(code) => return Ok(code),
    };
    args.inputs.apply(&mut config);
    if replay
        && let Some(SourceConfig::Replay(r)) = config.cameras.first_mut().map(|c| &mut c.source)
    {
        // Frames are split over rounds and phases: loop so every phase gets its share.
        r.looping = true;
    }
    config.cameras.truncate(1);
    let model = std::sync::Arc::new(std::sync::Mutex::new(load_model(&config)?));
    let opts = crate::bench::BenchOptions {
        frames: args.frames,
        rounds: args.rounds,
    };
    let report = crate::bench::run(&config, model, &opts, |phase| {
        tracing::info!("bench: {phase}")
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(ExitCode::SUCCESS)
}
