//! The keeper stage: takes the candidates every inference stage hands over, selects the
//! best distinct ones of each keep window within its budget ([`super::select`]), and
//! writes them — the camera's own JPEG bytes, or a JPEG encoded here — with their
//! sidecars to the spool when the window ends.
//!
//! Invariants:
//! - Only the keeper writes to the spool.
//! - A window's selection is never lost on the way out: the keeper ends only when its
//!   queue closes (every inference stage has ended) or on a direct `Shutdown`, and
//!   either way ends the window first (its budget rounded up). A panic in the keeper is
//!   caught, the window's selection is written, and the panic is reported to the
//!   supervisor as the keeper's exit.
//! - It owns the size of the candidate pool: a reload that raises the capacity makes
//!   more candidates here (never on an inference thread), a lower one lets the surplus
//!   go as candidates come back.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::Arc,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender, select};

use super::{
    Candidate, KeepConfig, KeeperEnds, Kind,
    context::{Arrival, Groups},
    select::{Released, Selector},
};
use crate::{
    codec::JpegEncoder,
    config::Config,
    infer::ModelInfo,
    ops::metrics::{Metrics, Stage, event},
    policy::triggers::{Limits, Trigger},
    store::{ImageEncoding, NewEntry, SharedSpool, SpoolError, sidecar::Sidecar},
    supervisor::{Command, StageContext, StageFailure, panic_message},
};

fn unix_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How many candidates exist, and how many should.
pub(crate) struct Pool {
    /// Candidates made so far and not let go.
    pub made: usize,
    /// [`KeepConfig::pool`] of the running config.
    pub target: usize,
    /// What new candidates are made for.
    pub frame_size: (u32, u32),
    pub max_detections: usize,
}

pub(crate) struct Keeper {
    pub cameras: Vec<String>,
    pub model: Arc<ModelInfo>,
    pub selector: Selector<Box<Candidate>>,
    /// `metrics.frames` when the window began: the window's frames, for its budget.
    pub window_frames_from: u64,
    /// The window being written out, best last (so `pop` gives the best first). Boxes:
    /// candidates move between the channels and the buffers without copying.
    #[allow(clippy::vec_box)]
    pub flushing: Vec<Box<Candidate>>,
    pub window: Duration,
    pub jpeg_quality: u8,
    /// The confidence threshold, for the sidecars' `below_threshold`.
    pub confidence: f32,
    pub spool: SharedSpool,
    pub keep_rx: Receiver<Box<Candidate>>,
    pub free_tx: Sender<Box<Candidate>>,
    pub metrics: Arc<Metrics>,
    /// Encodes kept raw frames; warmed up to `pool.frame_size` when the keeper starts.
    pub jpeg: JpegEncoder,
    pub pool: Pool,
    /// The keeper queue's length in the config, for the pool target on reload.
    pub queue: usize,
    /// Candidates received, for fault injection.
    pub received: u64,
    /// The `[[trigger]]`s and what they have used of their rate limits, saved in
    /// `limits_dir` (the spool) after a window that used some.
    pub triggers: Vec<Trigger>,
    pub limits: Limits,
    pub limits_dir: std::path::PathBuf,
    pub limits_changed: bool,
    /// Context frames waiting for their anchors ([`super::context`]).
    pub groups: Groups,
}

/// Why the keeper could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeeperError {
    #[error("keeper: could not create the JPEG encoder: {0}")]
    Encoder(turbojpeg::Error),
}

impl Keeper {
    /// The keeper of a run: writes into `spool`, and takes the keeper's ends of the
    /// hand-off, whose pool holds `pool.made` candidates.
    pub(crate) fn build(
        config: &Config,
        model: Arc<ModelInfo>,
        spool: SharedSpool,
        ends: KeeperEnds,
        pool: Pool,
        metrics: Arc<Metrics>,
    ) -> Result<Keeper, KeeperError> {
        Ok(Keeper {
            cameras: config.cameras.iter().map(|c| c.name.clone()).collect(),
            model,
            selector: Selector::new(config.keep.select()),
            window_frames_from: 0,
            flushing: Vec::with_capacity(config.keep.capacity),
            window: Duration::from_secs_f64(config.keep.window_secs),
            jpeg_quality: config.keep.jpeg_quality,
            confidence: config.model.confidence_threshold,
            spool,
            keep_rx: ends.keep_rx,
            free_tx: ends.free_tx,
            metrics,
            jpeg: JpegEncoder::new().map_err(KeeperError::Encoder)?,
            pool,
            queue: config.pipeline.keeper_queue,
            received: 0,
            triggers: config.policy.triggers.clone(),
            limits: crate::policy::triggers::load_limits(&config.spool.dir),
            limits_dir: config.spool.dir.clone(),
            limits_changed: false,
            groups: Groups::default(),
        })
    }

    pub(crate) fn run(mut self, ctx: &StageContext) -> Result<(), StageFailure> {
        let (w, h) = self.pool.frame_size;
        if let Err(e) = self.jpeg.warm_up(w, h) {
            // Not fatal: frames that arrived as JPEG need no encoder, and a real
            // encode failure is reported per frame.
            tracing::warn!("keeper: JPEG encoder warm-up at {w}x{h} failed: {e}");
        }
        match catch_unwind(AssertUnwindSafe(|| self.serve(ctx))) {
            Ok(result) => result,
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                let saved = self.flush_after_panic(ctx);
                tracing::error!(
                    saved,
                    "keeper panicked ({message}); wrote the {saved} frames its buffer still held"
                );
                Err(StageFailure::panicked(message))
            }
        }
    }

    fn serve(&mut self, ctx: &StageContext) -> Result<(), StageFailure> {
        let mut window_end = Instant::now() + self.window;
        loop {
            let timeout = window_end.saturating_duration_since(Instant::now());
            select! {
                recv(self.keep_rx) -> candidate => match candidate {
                    Ok(candidate) => {
                        self.offer(candidate, ctx)?;
                        if self.selector.window_full(self.window_frames()) {
                            self.end_window(ctx, false);
                            window_end = Instant::now() + self.window;
                        }
                    }
                    // Every inference stage has ended: write what is held and end.
                    Err(_) => {
                        self.flush(ctx);
                        return Ok(());
                    }
                },
                recv(ctx.commands) -> command => match command {
                    Ok(Command::Flush { done }) => {
                        // What is queued was handed over before the flush was asked for.
                        while let Ok(candidate) = self.keep_rx.try_recv() {
                            self.offer(candidate, ctx)?;
                        }
                        self.flush(ctx);
                        let _ = done.send(());
                    }
                    Ok(Command::Reload(config)) => {
                        self.reconfigure(&config);
                        window_end = window_end.min(Instant::now() + self.window);
                    }
                    Ok(Command::Shutdown) | Err(_) => {
                        // Told directly (upstream is stuck): take what is queued, write, end.
                        while let Ok(candidate) = self.keep_rx.try_recv() {
                            self.offer(candidate, ctx)?;
                        }
                        self.flush(ctx);
                        return Ok(());
                    }
                },
                // A timeout can come early (seen under qemu-user): flush only once the
                // window has really ended, so a window never yields more than capacity.
                default(timeout) => {
                    if Instant::now() >= window_end {
                        self.end_window(ctx, false);
                        window_end = Instant::now() + self.window;
                    }
                }
            }
        }
    }

    pub(crate) fn offer(
        &mut self,
        candidate: Box<Candidate>,
        ctx: &StageContext,
    ) -> Result<(), StageFailure> {
        if let Some(fault) = crate::faults::at(&ctx.name, self.received) {
            fault.fire()?;
        }
        self.take(candidate);
        Ok(())
    }

    /// Into the selection, or back to the pool if it is not good enough.
    fn take(&mut self, mut candidate: Box<Candidate>) {
        self.received += 1;
        // A trigger past its rate limit gives the frame no boost; nor does one on a
        // context frame, which is kept for its anchor and uses no allowance.
        let now = unix_secs(candidate.frame.captured_at);
        let context = matches!(candidate.kind, Kind::Context { .. });
        for (i, t) in self.triggers.iter().enumerate() {
            let bit = 1u16 << i;
            if candidate.scores.triggers & bit != 0 && (context || !self.limits.allows(t, now)) {
                candidate.scores.triggers &= !bit;
                candidate.scores.value -= t.weight;
            }
        }
        match candidate.kind {
            Kind::Context { .. } => {
                match self.groups.arrive(candidate) {
                    Arrival::Waits => {}
                    Arrival::Write(c, anchor) => {
                        self.write(&c, Some(&anchor));
                        self.release(c);
                    }
                    Arrival::Drop(c) => {
                        event::evicted(&self.metrics);
                        self.release(c);
                    }
                }
                return;
            }
            // Past its rate limits, a trigger brings no context either.
            Kind::Anchor if candidate.scores.triggers == 0 => candidate.kind = Kind::Ranked,
            Kind::Anchor => {
                let released = self.groups.anchor(
                    candidate.camera,
                    candidate.frame.seq,
                    candidate.scores.value,
                );
                self.drop_context(released);
            }
            Kind::Ranked | Kind::Control => {}
        }
        let mut gone = Vec::new();
        self.selector.offer(candidate, |c, why| gone.push((c, why)));
        self.let_go(gone);
    }

    /// Count candidates selection let go and return them to the pool.
    #[allow(clippy::vec_box)]
    fn let_go(&mut self, gone: Vec<(Box<Candidate>, Released)>) {
        for (c, why) in gone {
            match why {
                Released::Duplicate => event::duplicate(&self.metrics),
                Released::Outranked => event::evicted(&self.metrics),
            }
            if c.kind == Kind::Anchor {
                let context = self.groups.resolve(c.camera, c.frame.seq, None);
                self.drop_context(context);
            }
            self.release(c);
        }
    }

    /// Let go of context frames whose anchor was not kept.
    #[allow(clippy::vec_box)]
    fn drop_context(&mut self, context: Vec<Box<Candidate>>) {
        for c in context {
            event::evicted(&self.metrics);
            self.release(c);
        }
    }

    /// Frames captured since the window began.
    fn window_frames(&self) -> u64 {
        self.metrics
            .frames
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(self.window_frames_from)
    }

    /// Return a candidate to the free list, or let it go when the pool is above target.
    fn release(&mut self, candidate: Box<Candidate>) {
        if self.pool.made > self.pool.target {
            self.pool.made -= 1;
            return;
        }
        let _ = self.free_tx.try_send(candidate);
    }

    fn reconfigure(&mut self, config: &Config) {
        let keep: &KeepConfig = &config.keep;
        self.triggers.clone_from(&config.policy.triggers);
        self.window = Duration::from_secs_f64(keep.window_secs);
        self.jpeg_quality = keep.jpeg_quality;
        self.confidence = config.model.confidence_threshold;
        self.spool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_budget(config.spool.budget());
        self.pool.target = keep.pool(self.queue, self.cameras.len());
        let mut gone = Vec::new();
        self.selector
            .reconfigure(keep.select(), |c, why| gone.push((c, why)));
        self.let_go(gone);
        while self.pool.made < self.pool.target {
            let (w, h) = self.pool.frame_size;
            let candidate = Box::new(Candidate::with_capacity(w, h, self.pool.max_detections));
            if self.free_tx.try_send(candidate).is_err() {
                break;
            }
            self.pool.made += 1;
        }
    }

    /// Write the window's selection now (told to: a flush, the end of the run).
    pub(crate) fn flush(&mut self, ctx: &StageContext) {
        self.end_window(ctx, true);
    }

    /// End the keep window: write what selection keeps, best first. Between writes,
    /// take what inference handed over meanwhile into the next window, so a slow disk
    /// or a busy CPU does not back the hand-off up into drops.
    fn end_window(&mut self, ctx: &StageContext, told: bool) {
        let frames = self.window_frames();
        self.window_frames_from += frames;
        let mut gone = Vec::new();
        self.selector
            .end_window(frames, told, &mut self.flushing, |c, why| {
                gone.push((c, why))
            });
        self.let_go(gone);
        while let Some(candidate) = self.flushing.pop() {
            while let Ok(next) = self.keep_rx.try_recv() {
                self.take(next);
            }
            let t0 = Instant::now();
            ctx.heartbeat.begin();
            let id = self.write(&candidate, None);
            if candidate.kind == Kind::Anchor {
                let context =
                    self.groups
                        .resolve(candidate.camera, candidate.frame.seq, id.clone());
                match &id {
                    Some(anchor) => {
                        for c in context {
                            self.write(&c, Some(anchor));
                            self.release(c);
                        }
                    }
                    None => self.drop_context(context),
                }
            }
            ctx.heartbeat.end();
            self.metrics.record(Stage::Keeper, t0.elapsed());
            self.release(candidate);
        }
        if self.limits_changed {
            self.limits_changed = false;
            if let Err(e) = crate::policy::triggers::save_limits(&self.limits_dir, &self.limits) {
                tracing::warn!("cannot save the trigger rate limits: {e}");
            }
        }
    }

    /// After a panic: write what the buffer and the window being flushed still hold,
    /// each write guarded so a second panic stops only the rescue. Returns how many
    /// frames were written.
    fn flush_after_panic(&mut self, ctx: &StageContext) -> usize {
        let mut rest: Vec<Box<Candidate>> = std::mem::take(&mut self.flushing);
        let mut held = Vec::new();
        let frames = self.window_frames();
        self.selector
            .end_window(frames, true, &mut held, |c, _| drop(c));
        rest.extend(held);
        rest.sort_unstable_by(|a, b| a.scores.value.total_cmp(&b.scores.value));
        let mut saved = 0;
        while let Some(candidate) = rest.pop() {
            let before = self.metrics.kept.load(std::sync::atomic::Ordering::Relaxed);
            let written = catch_unwind(AssertUnwindSafe(|| {
                ctx.heartbeat.begin();
                self.write(&candidate, None);
                ctx.heartbeat.end();
            }));
            if written.is_err() {
                break;
            }
            saved +=
                (self.metrics.kept.load(std::sync::atomic::Ordering::Relaxed) - before) as usize;
        }
        saved
    }

    /// Write a kept frame (`context_of`: the entry id of its group's anchor); returns
    /// its entry id, `None` if it could not be written (counted and logged).
    fn write(&mut self, c: &Candidate, context_of: Option<&str>) -> Option<String> {
        let camera = &self.cameras[c.camera];
        let (image, encoding): (&[u8], ImageEncoding) = if !c.frame.encoded.is_empty() {
            (&c.frame.encoded, ImageEncoding::Original)
        } else {
            let encoded = self.jpeg.encode(
                &c.frame.rgb,
                c.frame.width,
                c.frame.height,
                self.jpeg_quality,
            );
            match encoded {
                Ok(bytes) => (bytes, ImageEncoding::Encoded),
                Err(e) => {
                    event::spool_write_failed(&self.metrics, &format!("JPEG encode: {e}"));
                    return None;
                }
            }
        };
        let model = &self.model;
        let confidence = self.confidence;
        let entry = NewEntry {
            value: c.scores.value,
            camera,
            captured_unix_ms: crate::store::sidecar::unix_ms(c.frame.captured_at),
        };
        let mut spool = self.spool.lock().unwrap_or_else(|p| p.into_inner());
        let evicted_before = spool.counters.evicted;
        // The triggers this frame is credited to, each using one of its allowances.
        let now = unix_secs(c.frame.captured_at);
        let fired: Vec<&Trigger> = self
            .triggers
            .iter()
            .enumerate()
            .filter(|(i, _)| c.scores.triggers & (1 << i) != 0)
            .map(|(_, t)| t)
            .collect();
        let result = spool.write(entry, image, encoding, |id, record| {
            let mut sidecar = Sidecar::new(id, camera, c, model, confidence, record);
            sidecar.triggers = fired.iter().map(|t| t.name.as_str()).collect();
            sidecar.context_of = context_of.map(str::to_string);
            serde_json::to_vec_pretty(&sidecar)
        });
        // Evictions happen before the new entry is placed, so a write that fails may
        // have made some too.
        event::spool_evicted(&self.metrics, spool.counters.evicted - evicted_before);
        drop(spool);
        match result {
            Ok(written) => {
                for t in fired {
                    self.limits.record(t, now);
                    self.limits_changed = true;
                }
                event::kept(
                    &self.metrics,
                    camera,
                    &written.id,
                    &written.sidecar,
                    c.scores.value,
                );
                Some(written.id)
            }
            Err(e) => {
                match e {
                    SpoolError::Full { .. } => event::spool_full(&self.metrics, &e.to_string()),
                    SpoolError::DiskFull { .. } => event::disk_full(&self.metrics, &e.to_string()),
                    _ => event::spool_write_failed(&self.metrics, &e.to_string()),
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use crossbeam_channel::bounded;

    use super::*;
    use crate::{frame::Frame, keep::WhenFull, supervisor::Heartbeat};

    fn context() -> (StageContext, Sender<Command>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (
            StageContext {
                name: "keeper".into(),
                commands: rx,
                heartbeat: Arc::new(Heartbeat::new(Instant::now())),
            },
            tx,
        )
    }

    /// A keeper on a spool in `dir`, its queue's sending end, and its free list's
    /// receiving end (keep it: a closed free list drops what the keeper returns).
    fn keeper(
        dir: &std::path::Path,
        capacity: usize,
    ) -> (Keeper, Sender<Box<Candidate>>, Receiver<Box<Candidate>>) {
        let (spool, _) = crate::store::open(&spool_config(dir)).expect("spool");
        let (keep_tx, keep_rx) = bounded(8);
        let (free_tx, free_rx) = bounded(64);
        let keeper = Keeper {
            cameras: vec!["cam0".into()],
            model: Arc::new(crate::infer::test_model_info()),
            selector: Selector::new(super::super::select::SelectConfig {
                capacity,
                when_full: WhenFull::DropLowest,
                target_rate: 0.0,
                dedupe_distance: 0.0,
                dedupe_secs: 0.0,
            }),
            window_frames_from: 0,
            flushing: Vec::new(),
            window: Duration::from_secs(3600),
            jpeg_quality: 80,
            confidence: 0.25,
            spool,
            keep_rx,
            free_tx,
            metrics: Arc::new(Metrics::default()),
            jpeg: JpegEncoder::new().expect("encoder"),
            pool: Pool {
                made: 0,
                target: 0,
                frame_size: (8, 8),
                max_detections: 1,
            },
            queue: 8,
            received: 0,
            triggers: Vec::new(),
            limits: Limits::default(),
            limits_dir: dir.to_path_buf(),
            limits_changed: false,
            groups: Groups::default(),
        };
        (keeper, keep_tx, free_rx)
    }

    fn spool_config(dir: &std::path::Path) -> crate::store::SpoolConfig {
        crate::store::SpoolConfig {
            dir: dir.to_path_buf(),
            max_bytes: u64::MAX,
            min_free_bytes: 0,
            device_id: None,
        }
    }

    fn candidate(seq: u64, value: f32) -> Box<Candidate> {
        let mut c = Box::new(Candidate::with_capacity(8, 8, 1));
        let mut f = Frame::with_capacity(4, 4);
        f.set_size(4, 4);
        f.seq = seq;
        c.frame = f;
        c.scores.value = value;
        c
    }

    fn written(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .count()
    }

    #[test]
    fn keeper_takes_hand_offs_into_the_next_window_while_it_flushes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut keeper, keep_tx, _free) = keeper(dir.path(), 4);
        let (ctx, _commands) = context();
        for seq in 0..4 {
            keeper
                .offer(candidate(seq, 1.0 + seq as f32), &ctx)
                .expect("offer");
        }
        for seq in 4..7 {
            keep_tx.send(candidate(seq, 0.5)).expect("send");
        }
        keeper.flush(&ctx);
        assert_eq!(keeper.metrics.kept.load(Ordering::Relaxed), 4);
        assert!(
            keeper.keep_rx.is_empty(),
            "the queue was drained while writing"
        );
        let mut next = Vec::new();
        keeper
            .selector
            .end_window(0, true, &mut next, |_, _| panic!("no budget: all kept"));
        let next: Vec<u64> = next.iter().map(|c| c.frame.seq).collect();
        assert_eq!(
            next.len(),
            3,
            "the next window holds what arrived: {next:?}"
        );
        assert!(next.iter().all(|seq| (4..7).contains(seq)));
        assert_eq!(written(dir.path()), 4);
    }

    /// Frame sequence numbers start at 0 in every run and the clock may be unset (a
    /// cart without RTC before NTP): neither may make a new entry replace a kept one.
    #[test]
    fn entries_of_restarted_runs_never_replace_each_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        for _run in 0..3 {
            let (mut keeper, _keep_tx, _free) = keeper(dir.path(), 4);
            let (ctx, _commands) = context();
            let mut c = candidate(0, 1.0);
            c.frame.captured_at = std::time::SystemTime::UNIX_EPOCH;
            keeper.offer(c, &ctx).expect("offer");
            keeper.flush(&ctx);
        }
        let (spool, _) = crate::store::open(&spool_config(dir.path())).expect("spool");
        assert_eq!(spool.lock().expect("lock").len(), 3);
    }

    #[test]
    fn a_flush_command_writes_the_buffer_and_a_closed_queue_ends_the_keeper() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (keeper, keep_tx, _free) = keeper(dir.path(), 4);
        let (ctx, commands) = context();
        let metrics = keeper.metrics.clone();
        let stage = std::thread::spawn(move || keeper.run(&ctx));
        for seq in 0..3 {
            keep_tx.send(candidate(seq, 1.0)).expect("send");
        }
        let (done_tx, done_rx) = bounded(1);
        commands
            .send(Command::Flush { done: done_tx })
            .expect("command");
        done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("flushed");
        assert_eq!(written(dir.path()), 3);
        keep_tx.send(candidate(3, 1.0)).expect("send");
        drop(keep_tx);
        stage.join().expect("joined").expect("clean exit");
        assert_eq!(written(dir.path()), 4, "the last one, flushed at the end");
        assert_eq!(metrics.kept.load(Ordering::Relaxed), 4);
    }

    /// A trigger's allowance is used by the frames written with it and saved in the
    /// spool: a keeper started on the same spool finds the day's allowance spent, and
    /// the frame it writes is not credited to the trigger.
    #[test]
    fn trigger_allowances_survive_a_restart_of_the_keeper() {
        let dir = tempfile::tempdir().expect("tempdir");
        let trigger = Trigger {
            name: "dark".into(),
            signal: 3,
            threshold: 0.5,
            weight: 2.0,
            limits: [None, None, Some(1)],
        };
        let triggered = |seq: u64| {
            let mut c = candidate(seq, 3.0);
            c.scores.triggers = 1;
            c.frame.captured_at = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seq);
            c
        };
        let credited = || -> Vec<Vec<String>> {
            let mut all: Vec<(u64, Vec<String>)> = std::fs::read_dir(dir.path())
                .expect("dir")
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .map(|e| {
                    let v: serde_json::Value =
                        serde_json::from_slice(&std::fs::read(e.path()).expect("read"))
                            .expect("json");
                    let names = v["triggers"]
                        .as_array()
                        .expect("triggers")
                        .iter()
                        .map(|t| t.as_str().expect("name").to_string())
                        .collect();
                    (v["seq"].as_u64().expect("seq"), names)
                })
                .collect();
            all.sort();
            all.into_iter().map(|(_, names)| names).collect()
        };
        {
            let (mut keeper, _keep_tx, _free) = keeper(dir.path(), 4);
            keeper.triggers = vec![trigger.clone()];
            keeper.limits = crate::policy::triggers::load_limits(dir.path());
            let (ctx, _commands) = context();
            keeper.offer(triggered(0), &ctx).expect("offer");
            keeper.flush(&ctx);
        }
        assert_eq!(credited(), [vec!["dark".to_string()]]);
        let (mut keeper, _keep_tx, _free) = keeper(dir.path(), 4);
        keeper.triggers = vec![trigger];
        keeper.limits = crate::policy::triggers::load_limits(dir.path());
        let (ctx, _commands) = context();
        let mut second = triggered(1);
        second.frame.seq = 1;
        keeper.offer(second, &ctx).expect("offer");
        keeper.flush(&ctx);
        assert_eq!(
            credited(),
            [vec!["dark".to_string()], vec![]],
            "the day's one is spent"
        );
    }

    /// A trigger's context frames are written with it, naming it, and let go with it
    /// when it is not kept; they are not part of the buffer or the budget.
    #[test]
    fn context_frames_follow_their_anchor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut keeper, _keep_tx, _free) = keeper(dir.path(), 1);
        let (ctx, _commands) = context();
        let with = |seq: u64, value: f32, kind: Kind| {
            let mut c = candidate(seq, value);
            c.kind = kind;
            if kind == Kind::Anchor {
                c.scores.triggers = 1;
            }
            c
        };
        keeper.triggers = vec![Trigger {
            name: "hand".into(),
            signal: 0,
            threshold: 0.5,
            weight: 0.0,
            limits: [None, None, None],
        }];
        // Group 10 (kept: the best), group 20 (outranked by 10 in a buffer of one).
        for c in [
            with(10, 5.0, Kind::Anchor),
            with(9, 0.0, Kind::Context { anchor: 10 }),
            with(11, 0.0, Kind::Context { anchor: 10 }),
            with(20, 1.0, Kind::Anchor),
            with(19, 0.0, Kind::Context { anchor: 20 }),
            with(21, 0.0, Kind::Context { anchor: 20 }),
        ] {
            keeper.offer(c, &ctx).expect("offer");
        }
        assert_eq!(
            keeper.selector.len(),
            1,
            "context frames are not in the buffer"
        );
        keeper.flush(&ctx);
        // An after-frame that comes once its anchor is written goes straight out.
        keeper
            .offer(with(12, 0.0, Kind::Context { anchor: 10 }), &ctx)
            .expect("offer");
        assert_eq!(keeper.groups.waiting(), 0);
        let mut sidecars: Vec<serde_json::Value> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .map(|e| serde_json::from_slice(&std::fs::read(e.path()).expect("read")).expect("json"))
            .collect();
        sidecars.sort_by_key(|v| v["seq"].as_u64());
        let seqs: Vec<u64> = sidecars
            .iter()
            .map(|v| v["seq"].as_u64().expect("seq"))
            .collect();
        assert_eq!(seqs, [9, 10, 11, 12], "group 20 went with its anchor");
        let anchor = sidecars[1]["id"].as_str().expect("id");
        assert!(sidecars[1].get("context_of").is_none());
        for i in [0, 2, 3] {
            assert_eq!(sidecars[i]["context_of"], anchor, "{}", sidecars[i]);
        }
        assert_eq!(keeper.metrics.evicted.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_reload_resizes_the_buffer_and_the_pool() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut keeper, _keep_tx, _free) = keeper(dir.path(), 4);
        let (ctx, _commands) = context();
        keeper.pool.made = 8 + 4 + 1;
        keeper.pool.target = keeper.pool.made;
        for seq in 0..4 {
            keeper
                .offer(candidate(seq, seq as f32), &ctx)
                .expect("offer");
        }
        let mut config = Config::default();
        config.keep.capacity = 2;
        config.keep.target_rate = 0.0;
        keeper.reconfigure(&config);
        assert_eq!(keeper.selector.len(), 2, "the two lowest evicted at once");
        assert_eq!(keeper.metrics.evicted.load(Ordering::Relaxed), 2);
        assert_eq!(keeper.pool.target, 8 + 2 + 1);
        assert_eq!(keeper.pool.made, 8 + 2 + 1, "the surplus let go");
        config.keep.capacity = 10;
        keeper.reconfigure(&config);
        assert_eq!(
            keeper.pool.made,
            8 + 10 + 1,
            "new candidates made by the keeper"
        );
        assert_eq!(keeper.selector.capacity(), 10);
    }
}
