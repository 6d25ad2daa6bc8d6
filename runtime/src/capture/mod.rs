//! Capture: one stage per camera that takes frames from its source into pooled slots,
//! letterboxes each into the model's input tensor, measures it, and queues it for the
//! camera's inference stage.
//!
//! Invariants:
//! - A live source (a camera, or a paced replay/synthetic source) never waits for
//!   inference: when the work queue is full the oldest waiting frame is dropped and
//!   counted (`queue_full`). An unpaced replay or synthetic source waits instead, so
//!   offline runs process every frame — but never beyond a command: every wait here
//!   (for a free slot, for room in the queue, out a reconnect backoff) wakes for the
//!   supervisor's `Shutdown` within [`WAIT_SLICE`].
//! - Waiting is idle, not busy: the heartbeat marks only the source's own call and the
//!   preprocessing, so a camera that stays gone does not look stalled to the watchdog.

pub mod camera;
mod config;
mod pacing;
pub mod preprocess;
pub mod replay;
mod source;
pub mod synthetic;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crossbeam_channel::{
    Receiver, RecvTimeoutError, SendTimeoutError, Sender, TryRecvError, TrySendError,
};

pub use config::{CameraConfig, SourceConfig};
pub(crate) use config::{RawCamera, check_frame_sizes, first_synthetic, validate_cameras};
pub use preprocess::{FrameStats, Letterbox, Thumbnail};
pub use source::{FrameSource, Next, SourceError};

use crate::{
    frame::Frame,
    infer::ModelInfo,
    ops::metrics::{Drop, Metrics, Stage, event},
    supervisor::{Command, StageContext, StageFailure},
};
use preprocess::{FrameMeter, PreprocessError, Preprocessor};

/// Longest a capture stage waits on anything before it looks at its commands again.
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// One frame in flight between capture and inference, with its input tensor.
pub struct Slot {
    pub frame: Frame,
    pub tensor: Vec<f32>,
    pub letterbox: Letterbox,
    pub stats: FrameStats,
}

impl Slot {
    /// A slot with buffers for `width × height` frames and a `tensor_len` input.
    pub fn new(width: u32, height: u32, tensor_len: usize) -> Self {
        // A zeroed allocation is lazily mapped too, and a release build turns
        // `with_capacity` + `resize(0.0)` into one: fault the pages in first
        // (`slot_tensors_are_resident_before_the_first_frame` fails in release without).
        let mut tensor = Vec::with_capacity(tensor_len);
        crate::frame::prefault(&mut tensor);
        tensor.resize(tensor_len, 0.0);
        Slot {
            frame: Frame::with_capacity(width, height),
            tensor,
            letterbox: Letterbox::fit(1, 1, 1, 1),
            stats: FrameStats::default(),
        }
    }
}

/// The capture stage's per-frame work after acquisition: letterbox into the slot's
/// tensor and measure the frame. Separate from the stage so benchmarks and the
/// allocation test run exactly the same code.
pub struct Preparer {
    pub preprocessor: Preprocessor,
    pub meter: FrameMeter,
}

impl Preparer {
    pub fn new(info: &ModelInfo) -> Self {
        Preparer {
            preprocessor: Preprocessor::new(
                info.input_width,
                info.input_height,
                info.letterbox_fill,
                info.normalization,
            ),
            meter: FrameMeter::default(),
        }
    }

    pub fn prepare(&mut self, slot: &mut Slot) -> Result<(), PreprocessError> {
        slot.letterbox = self.preprocessor.letterbox(&slot.frame, &mut slot.tensor)?;
        // When the letterbox already holds the frame at the meter's scale (1280×720 into
        // 320), read the statistics from it instead of passing over the frame again.
        slot.stats = match self.meter.measure_letterboxed(
            &slot.frame,
            &self.preprocessor,
            &slot.letterbox,
            &slot.tensor,
        ) {
            Some(stats) => stats,
            None => self.meter.measure(&slot.frame),
        };
        Ok(())
    }
}

/// A source opened for the calling thread, and the frame size to make buffers for.
pub(crate) type OpenedSource = (Box<dyn FrameSource>, (u32, u32));

/// The first configured camera's source, opened for a model with `info`'s input (tools
/// that run one camera on the calling thread).
pub(crate) fn open_first_camera(
    config: &crate::config::Config,
    info: &ModelInfo,
) -> Result<OpenedSource, SourceError> {
    let camera = config
        .cameras
        .first()
        .ok_or_else(|| SourceError::Fatal("no camera configured".into()))?;
    let source = camera.source.build(
        (info.input_width, info.input_height),
        config.pipeline.max_frame_pixels,
    )?;
    Ok((source, camera.source.frame_size()))
}

/// What a command means to a capture stage.
enum Heard {
    Stop,
    Nothing,
}

/// Capture has nothing to flush and nothing live to reload: it answers a flush and
/// stops on `Shutdown`.
fn hear(command: Command) -> Heard {
    match command {
        Command::Shutdown => Heard::Stop,
        Command::Flush { done } => {
            let _ = done.send(());
            Heard::Nothing
        }
        Command::Reload(_) => Heard::Nothing,
    }
}

/// The commands that arrived since the last look, without waiting.
fn poll(ctx: &StageContext) -> Heard {
    loop {
        match ctx.commands.try_recv() {
            Ok(command) => {
                if let Heard::Stop = hear(command) {
                    return Heard::Stop;
                }
            }
            Err(TryRecvError::Empty) => return Heard::Nothing,
            // The supervisor is gone: nobody can stop this stage any more but itself.
            Err(TryRecvError::Disconnected) => return Heard::Stop,
        }
    }
}

/// The capture stage of one camera.
pub(crate) struct Capture {
    pub camera: String,
    pub source: Box<dyn FrameSource>,
    pub preparer: Preparer,
    /// Live sources drop the oldest waiting frame instead of waiting for inference.
    pub live: bool,
    pub work_tx: Sender<Box<Slot>>,
    /// A second handle on the work queue, to drop the oldest frame when it is full.
    pub work_rx: Receiver<Box<Slot>>,
    pub slot_rx: Receiver<Box<Slot>>,
    pub metrics: Arc<Metrics>,
    /// Frames acquired by every camera together, for `max_frames`.
    pub acquired: Arc<AtomicU64>,
    pub max_frames: Option<u64>,
}

/// A camera's channels: the work queue to inference, and its pool of slots.
pub(crate) struct CameraChannels {
    pub work_tx: Sender<Box<Slot>>,
    pub work_rx: Receiver<Box<Slot>>,
    pub slot_tx: Sender<Box<Slot>>,
    pub slot_rx: Receiver<Box<Slot>>,
}

impl CameraChannels {
    /// A work queue of `queue_depth` and `queue_depth + 2` slots for `camera`'s frames
    /// and `info`'s input tensor, made (and pre-faulted) now.
    pub(crate) fn new(camera: &CameraConfig, queue_depth: usize, info: &ModelInfo) -> Self {
        let (work_tx, work_rx) = crossbeam_channel::bounded(queue_depth);
        let slots = queue_depth + 2;
        let (slot_tx, slot_rx) = crossbeam_channel::bounded(slots);
        let (w, h) = camera.source.frame_size();
        let tensor_len = 3 * info.input_width as usize * info.input_height as usize;
        for _ in 0..slots {
            let _ = slot_tx.try_send(Box::new(Slot::new(w, h, tensor_len)));
        }
        CameraChannels {
            work_tx,
            work_rx,
            slot_tx,
            slot_rx,
        }
    }
}

impl Capture {
    /// `camera`'s capture stage: opens its source (a camera that cannot run is an error
    /// here, before any thread starts for it).
    pub(crate) fn build(
        camera: &CameraConfig,
        max_frame_pixels: u64,
        info: &ModelInfo,
        work: (Sender<Box<Slot>>, Receiver<Box<Slot>>),
        slot_rx: Receiver<Box<Slot>>,
        metrics: Arc<Metrics>,
        (acquired, max_frames): (Arc<AtomicU64>, Option<u64>),
    ) -> Result<Capture, SourceError> {
        let source = camera
            .source
            .build((info.input_width, info.input_height), max_frame_pixels)?;
        tracing::info!(camera = %camera.name, source = %source.describe(), "camera ready");
        Ok(Capture {
            camera: camera.name.clone(),
            source,
            preparer: Preparer::new(info),
            live: camera.source.is_live(),
            work_tx: work.0,
            work_rx: work.1,
            slot_rx,
            metrics,
            acquired,
            max_frames,
        })
    }

    pub(crate) fn run(mut self, ctx: &StageContext) -> Result<(), StageFailure> {
        let name = self.camera.clone();
        let mut spare: Option<Box<Slot>> = None;
        // Between a lost stream and the next frame: failed attempts are not reconnects.
        let mut gone = false;
        let mut acquired_here = 0u64;
        loop {
            if let Heard::Stop = poll(ctx) {
                break;
            }
            if let Some(max) = self.max_frames
                && self.acquired.load(Ordering::Relaxed) >= max
            {
                break;
            }
            // A free slot: a spare, or one returned by inference.
            let mut slot = match spare.take() {
                Some(s) => s,
                None => match self.slot_rx.recv_timeout(WAIT_SLICE) {
                    Ok(s) => s,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            };

            let t0 = Instant::now();
            slot.frame.clear();
            ctx.heartbeat.begin();
            let mut next = self.source.next_frame(&mut slot.frame);
            ctx.heartbeat.end();
            if let Some(fault) = crate::faults::at(&ctx.name, acquired_here) {
                next = fault.into_source_result(next);
            }
            match next {
                Ok(Next::Frame) if gone => {
                    gone = false;
                    event::camera_reconnected(&self.metrics, &name);
                }
                Ok(Next::Frame) => {}
                Ok(Next::End) => break,
                Err(SourceError::BadFrame { path, reason }) => {
                    event::bad_frame(&self.metrics, &name, &path, &reason);
                    spare = Some(slot);
                    continue;
                }
                Err(SourceError::FrameTooLarge { path, reason }) => {
                    event::frame_too_large(&self.metrics, &name, &path, &reason);
                    spare = Some(slot);
                    continue;
                }
                Err(SourceError::Disconnected {
                    reason,
                    retry_after,
                    ..
                }) => {
                    if gone {
                        event::camera_still_gone(&name, &reason, retry_after);
                    } else {
                        gone = true;
                        event::camera_lost(&self.metrics, &name, &reason, retry_after);
                    }
                    spare = Some(slot);
                    if let Heard::Stop = wait_out(ctx, retry_after) {
                        break;
                    }
                    continue;
                }
                Err(error @ SourceError::Fatal(_)) => {
                    return Err(StageFailure::new(error.to_string()));
                }
            }
            let t1 = Instant::now();
            self.metrics.record(Stage::Acquire, t1 - t0);
            self.acquired.fetch_add(1, Ordering::Relaxed);
            acquired_here += 1;
            self.metrics.frames.fetch_add(1, Ordering::Relaxed);

            ctx.heartbeat.begin();
            let prepared = self.preparer.prepare(&mut slot);
            ctx.heartbeat.end();
            if let Err(e) = prepared {
                event::bad_frame(
                    &self.metrics,
                    &name,
                    std::path::Path::new(&slot.frame.origin),
                    &e.to_string(),
                );
                spare = Some(slot);
                continue;
            }
            self.metrics.record(Stage::Preprocess, t1.elapsed());

            if self.live {
                match self.work_tx.try_send(slot) {
                    Ok(()) => {}
                    Err(TrySendError::Full(slot)) => {
                        // Drop the oldest waiting frame and queue this one instead.
                        if let Ok(oldest) = self.work_rx.try_recv() {
                            event::dropped(&self.metrics, Drop::QueueFull);
                            spare = Some(oldest);
                        }
                        if let Err(e) = self.work_tx.try_send(slot) {
                            // Inference just took a frame; requeue failed only if the
                            // queue refilled, which only this thread does. Count it.
                            event::dropped(&self.metrics, Drop::QueueFull);
                            spare.get_or_insert(e.into_inner());
                        }
                    }
                    Err(TrySendError::Disconnected(_)) => break,
                }
                continue;
            }
            // Not live: wait for room, but hear the supervisor while waiting.
            let mut pending = slot;
            loop {
                match self.work_tx.send_timeout(pending, WAIT_SLICE) {
                    Ok(()) => break,
                    Err(SendTimeoutError::Timeout(back)) => {
                        pending = back;
                        if let Heard::Stop = poll(ctx) {
                            return Ok(());
                        }
                    }
                    Err(SendTimeoutError::Disconnected(_)) => return Ok(()),
                }
            }
        }
        Ok(())
    }
}

/// Wait `delay` (a reconnect backoff) while answering commands; `Stop` as soon as a
/// shutdown arrives.
fn wait_out(ctx: &StageContext, delay: Duration) -> Heard {
    let until = Instant::now() + delay;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Heard::Nothing;
        }
        match ctx.commands.recv_timeout(left) {
            Ok(command) => {
                if let Heard::Stop = hear(command) {
                    return Heard::Stop;
                }
            }
            Err(RecvTimeoutError::Timeout) => return Heard::Nothing,
            Err(RecvTimeoutError::Disconnected) => return Heard::Stop,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use crossbeam_channel::{Sender, bounded, unbounded};

    use super::*;
    use crate::supervisor::Heartbeat;

    #[cfg(target_os = "linux")]
    #[test]
    fn slot_tensors_are_resident_before_the_first_frame() {
        // 64 MB of f32: far above what the tests running beside this one allocate.
        let len = 16 << 20;
        let before = crate::ops::metrics::rss_kib();
        let slot = Slot::new(0, 0, len);
        let grown = crate::ops::metrics::rss_kib() - before;
        let kib = (len * 4 / 1024) as i64;
        assert_eq!(slot.tensor.len(), len);
        assert!(
            grown >= kib * 9 / 10,
            "RSS grew by {grown} KiB for a {kib} KiB tensor"
        );
        std::hint::black_box(&slot);
    }

    /// A source that plays a script: a frame, or a disconnection with `retry_after`.
    struct Scripted(VecDeque<Option<Duration>>, u64);

    impl FrameSource for Scripted {
        fn next_frame(&mut self, frame: &mut Frame) -> Result<Next, SourceError> {
            match self.0.pop_front() {
                None => Ok(Next::End),
                Some(None) => {
                    frame.set_size(64, 64);
                    frame.seq = self.1;
                    self.1 += 1;
                    Ok(Next::Frame)
                }
                Some(Some(retry_after)) => Err(SourceError::Disconnected {
                    device: "/dev/video9".into(),
                    reason: "gone".into(),
                    retry_after,
                }),
            }
        }

        fn describe(&self) -> String {
            "scripted".into()
        }
    }

    struct Stage {
        capture: Capture,
        work_rx: Receiver<Box<Slot>>,
        /// Inference's end of the slot pool: while it lives, the pool is open.
        _slot_tx: Sender<Box<Slot>>,
        metrics: Arc<Metrics>,
    }

    /// A capture stage over `script` with a work queue of `queue` and 16 slots.
    fn capture(script: Vec<Option<Duration>>, queue: usize) -> Stage {
        let info = crate::infer::test_model_info();
        let (work_tx, work_rx) = bounded(queue);
        let (slot_tx, slot_rx) = bounded(16);
        for _ in 0..16 {
            let _ = slot_tx.try_send(Box::new(Slot::new(64, 64, 3 * 32 * 32)));
        }
        let metrics = Arc::new(Metrics::default());
        let capture = Capture {
            camera: "test".into(),
            source: Box::new(Scripted(script.into(), 0)),
            preparer: Preparer::new(&info),
            live: false,
            work_tx,
            work_rx: work_rx.clone(),
            slot_rx,
            metrics: metrics.clone(),
            acquired: Arc::new(AtomicU64::new(0)),
            max_frames: None,
        };
        Stage {
            capture,
            work_rx,
            _slot_tx: slot_tx,
            metrics,
        }
    }

    fn context() -> (StageContext, Sender<Command>) {
        let (tx, rx) = unbounded();
        (
            StageContext {
                name: "capture-test".into(),
                commands: rx,
                heartbeat: Arc::new(Heartbeat::new(Instant::now())),
            },
            tx,
        )
    }

    #[test]
    fn a_camera_that_comes_back_after_failed_attempts_counts_one_reconnect() {
        // Lost after one frame, four failed reopen attempts, back; lost again for one
        // attempt, back.
        let gone = Some(Duration::from_millis(1));
        let script = vec![None, gone, gone, gone, gone, None, None, gone, None];
        let stage = capture(script, 16);
        let (ctx, _commands) = context();
        stage
            .capture
            .run(&ctx)
            .expect("capture ends with the script");
        assert_eq!(stage.work_rx.len(), 4, "every frame went on");
        assert_eq!(stage.metrics.disconnects.load(Ordering::Relaxed), 2);
        assert_eq!(stage.metrics.reconnects.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_shutdown_ends_a_reconnect_backoff_at_once_and_the_wait_is_not_busy() {
        let stage = capture(vec![None, Some(Duration::from_secs(600))], 16);
        let (ctx, commands) = context();
        let heartbeat = ctx.heartbeat.clone();
        let Stage {
            capture, _slot_tx, ..
        } = stage;
        let stage = std::thread::spawn(move || capture.run(&ctx));
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(heartbeat.busy_for(), None, "waiting out a backoff is idle");
        let t0 = Instant::now();
        commands.send(Command::Shutdown).expect("command");
        stage.join().expect("joined").expect("clean exit");
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    }

    #[test]
    fn an_unpaced_source_waiting_for_room_still_hears_a_shutdown() {
        // A queue of 4, 16 slots and 40 frames: the stage blocks on a full queue that
        // nobody drains (an inference stage that died).
        let Stage {
            capture,
            work_rx,
            _slot_tx,
            ..
        } = capture(vec![None; 40], 4);
        let (ctx, commands) = context();
        let stage = std::thread::spawn(move || capture.run(&ctx));
        let until = Instant::now() + Duration::from_secs(10);
        while work_rx.len() < 4 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(work_rx.len(), 4);
        std::thread::sleep(Duration::from_millis(100));
        let t0 = Instant::now();
        commands.send(Command::Shutdown).expect("command");
        stage.join().expect("joined").expect("clean exit");
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    }
}
