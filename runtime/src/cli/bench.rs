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
    /// A TOML file whose [upload] table is where the upload phase delivers (default: a
    /// scratch directory). Not the cart's production config: the phase uploads
    /// hundreds of bench frames.
    #[arg(long)]
    upload_config: Option<std::path::PathBuf>,
    /// Only measure how long a spool of this many entries takes to open (recovery
    /// included), without and with its index log; no pipeline phases.
    #[arg(long, value_name = "ENTRIES")]
    spool_open: Option<usize>,
    /// Only the drift benchmark: calibrate studio and store references (2000 frames
    /// each), then count the frames until the monitor notices a lighting shift, a
    /// camera-angle change and a change of split, and its false alarms on 100,000
    /// stationary frames. [drift] of --config sets the window and bands.
    #[arg(long)]
    drift: bool,
    /// The synthetic cart the drift benchmark runs on (its basket, light and scenes).
    #[arg(long, default_value_t = 1, requires = "drift")]
    seed: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

pub(super) fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(entries) = args.spool_open {
        let report = crate::bench::spool_open(entries, |phase| tracing::info!("bench: {phase}"))?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "spool open, {} entries (page cache warm)\n  first open, no index (reads every sidecar)  {:8.3} s\n  open from the index log                     {:8.3} s",
                report.entries, report.without_index_secs, report.with_index_secs
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
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
    if args.drift {
        let opts = crate::drift_bench::DriftBenchOptions {
            reference: 2000,
            before: 1000,
            after: 1000,
            stationary: 100_000,
            stationary_fresh: 3000,
            seed: args.seed,
        };
        let report = crate::drift_bench::run(&config, &model, &opts, |phase| {
            tracing::info!("bench --drift: {phase}")
        })?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.table());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let upload = match &args.upload_config {
        None => None,
        Some(file) => match crate::config::Config::load(std::slice::from_ref(file)) {
            Ok(loaded) if loaded.config.upload.target.is_some() => Some(loaded.config.upload),
            Ok(_) => {
                eprintln!(
                    "error: {} has no [upload] url; write url = \"s3://bucket/prefix\" (and endpoint_url) there",
                    file.display()
                );
                return Ok(ExitCode::from(2));
            }
            Err(e) => {
                eprintln!("{e}");
                return Ok(ExitCode::from(2));
            }
        },
    };
    let opts = crate::bench::BenchOptions {
        frames: args.frames,
        rounds: args.rounds,
        upload,
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
