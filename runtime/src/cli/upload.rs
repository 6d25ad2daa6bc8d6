//! `framesift upload --once`: drain the spool to the configured destination and exit —
//! what a field engineer runs on a docked cart. The daemon must not be running (one
//! spool, one process); upload windows and the docking file do not apply, the bandwidth
//! limit does.

use std::{
    io::IsTerminal,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{mib, plural};
use crate::{
    config::NamedFiles,
    ops::metrics::Metrics,
    store::{
        self, DaemonStatus,
        upload::{Delivery, DeliveryError, deliver_one},
        uploader::{Backoff, destination, prefix, throttle},
    },
};

#[derive(Parser)]
pub(super) struct UploadArgs {
    /// Drain the spool once and exit (0 when it is empty).
    #[arg(long, required = true)]
    once: bool,
    /// Config files, as for `run`.
    #[arg(long, short)]
    config: Vec<PathBuf>,
    /// Spool directory, overriding [spool] dir.
    #[arg(long)]
    spool_dir: Option<PathBuf>,
    /// Give up (exit 1, frames kept) after this many seconds without a delivery. Refused
    /// credentials or permissions give up at once; frames the store refuses, once
    /// every other frame has gone.
    #[arg(long, default_value_t = 300)]
    give_up_secs: u64,
}

pub(super) fn upload(args: UploadArgs) -> anyhow::Result<ExitCode> {
    // Draining the spool needs no drift reference: a broken one must not stop it.
    let mut config = match super::load_files_with(&args.config, NamedFiles::Skip) {
        Ok(loaded) => loaded.config,
        Err(code) => return Ok(code),
    };
    if let Some(dir) = args.spool_dir {
        config.spool.dir = dir;
    }
    let Some(target) = config.upload.target.clone() else {
        eprintln!(
            "error: no destination: set [upload] url = \"s3://bucket/prefix\" or \"file:///mnt/share\""
        );
        return Ok(ExitCode::from(2));
    };
    // A mistyped directory would open as a new, empty spool: "nothing to upload".
    if !config.spool.dir.is_dir() {
        eprintln!(
            "error: no spool at {}; check [spool] dir or --spool-dir",
            config.spool.dir.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    let (spool, recovery) = store::open(&config.spool)?;
    if recovery.removed_partial + recovery.removed_temp + recovery.removed_corrupt > 0 {
        eprintln!(
            "spool recovered: removed {} half-written, {} temporary, {} corrupt",
            recovery.removed_partial, recovery.removed_temp, recovery.removed_corrupt
        );
    }
    let mut destination = match destination(&target, &config.upload) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}; the frames stay in the spool");
            return Ok(ExitCode::FAILURE);
        }
    };
    let (total, total_bytes) = {
        let s = spool.lock().unwrap_or_else(|p| p.into_inner());
        (s.len(), s.used_bytes())
    };
    eprintln!(
        "uploading {} ({}) to {}, the most valuable first",
        plural(total, "frame"),
        mib(total_bytes),
        destination.describe()
    );
    let bar = progress_bar(total_bytes);
    let metrics = Metrics::default();
    let (mut frames, mut corrupt) = (0usize, 0usize);
    let mut backoff = Backoff::new(u64::from(std::process::id()));
    let started = Instant::now();
    let mut delivered_at = Instant::now();
    let mut logged_at = Instant::now();
    let outcome = loop {
        let t0 = Instant::now();
        match deliver_one(&spool, destination.as_mut(), prefix(&target)) {
            Ok(Delivery::Empty) => break Ok(()),
            Ok(Delivery::Delivered { id, bytes }) => {
                frames += 1;
                backoff.reset();
                delivered_at = Instant::now();
                crate::ops::metrics::event::uploaded(&metrics, &id, bytes, false);
                bar.inc(bytes);
                bar.set_message(format!("{frames}/{total} frames"));
                std::thread::sleep(throttle(
                    bytes,
                    t0.elapsed(),
                    config.upload.max_bytes_per_sec,
                ));
            }
            Ok(Delivery::Corrupt { id, reason }) => {
                bar.suspend(|| eprintln!("warning: removed corrupt entry {id}: {reason}"));
                corrupt += 1;
            }
            Err(e) => {
                metrics.upload_failure(&e);
                // Refused credentials need a person, not a retry; so do frames the
                // store refuses (other bytes at the key, a request it will not take),
                // once they are all that is left: the spool hands out every other
                // frame before it retries one of them.
                let only_refused = e.refuses_the_entry()
                    && spool
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .all_refused();
                if matches!(e, DeliveryError::Denied(_))
                    || only_refused
                    || delivered_at.elapsed() > Duration::from_secs(args.give_up_secs)
                {
                    break Err((e, only_refused));
                }
                let wait = backoff.failed(&config.upload);
                bar.suspend(|| {
                    eprintln!(
                        "upload failed: {e}; retrying in {:.1} s",
                        wait.as_secs_f64()
                    )
                });
                std::thread::sleep(wait);
            }
        }
        // Without a terminal the bar is hidden: a line every 10 s for the log.
        if bar.is_hidden() && logged_at.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "{frames}/{total} frames, {} of {}",
                mib(metrics
                    .uploaded_bytes
                    .load(std::sync::atomic::Ordering::Relaxed)),
                mib(total_bytes)
            );
            logged_at = Instant::now();
        }
    };
    bar.finish_and_clear();
    if outcome.is_ok() {
        // Drained: nothing waits (a failure already left the state "failing").
        crate::ops::metrics::event::upload_idle(&metrics);
    }
    store::write_status(
        &config.spool.dir,
        &DaemonStatus::from_metrics(&metrics, true),
    );
    let uploaded_bytes = metrics
        .uploaded_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    let corrupt_note = if corrupt > 0 {
        format!(" ({} removed as corrupt)", plural(corrupt, "frame"))
    } else {
        String::new()
    };
    match outcome {
        // Entries the spool could not read when it opened are not in its index, but
        // they are still on the disk: not delivered, so not a success.
        Ok(()) if recovery.unreadable > 0 => {
            eprintln!(
                "error: {} could not be read from the spool and {} there (the log names \
                 each); uploaded {} ({}){corrupt_note}",
                plural(recovery.unreadable, "frame"),
                if recovery.unreadable == 1 {
                    "stays"
                } else {
                    "stay"
                },
                plural(frames, "frame"),
                mib(uploaded_bytes),
            );
            Ok(ExitCode::FAILURE)
        }
        Ok(()) => {
            println!(
                "uploaded {} ({}) in {:.1} s; the spool is empty{corrupt_note}",
                plural(frames, "frame"),
                mib(uploaded_bytes),
                started.elapsed().as_secs_f64(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Err((e, only_refused)) => {
            let left = spool.lock().unwrap_or_else(|p| p.into_inner()).len();
            let why = match e {
                DeliveryError::Denied(_) => "the store refused the upload".to_string(),
                DeliveryError::Conflict(_) if only_refused => "the store holds other bytes \
                    at the keys of the frames left (does another cart share [spool] \
                    device_id?)"
                    .to_string(),
                DeliveryError::Unreadable(_) if only_refused => {
                    "the frames left cannot be read from the spool".to_string()
                }
                _ if only_refused => "the store refused the frames left".to_string(),
                _ => format!("nothing delivered for {} s; last error", args.give_up_secs),
            };
            eprintln!(
                "error: {why}: {e}\n\
                 uploaded {} ({}); {} in the spool{corrupt_note}",
                plural(frames, "frame"),
                mib(uploaded_bytes),
                if left == 1 {
                    "1 frame stays".to_string()
                } else {
                    format!("{left} frames stay")
                },
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Bytes sent of `total`, with the frame count as its message; drawn only on a terminal.
fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(total),
        if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:30} {bytes}/{total_bytes} {msg} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}
