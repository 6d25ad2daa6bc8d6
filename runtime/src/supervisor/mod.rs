//! Stages and the supervisor that owns them.
//!
//! Every background stage (capture and inference per camera, the keeper, and any stage
//! added later) runs on a named thread owned by a [`StageHandle`], receives
//! [`Command`]s over its own channel, and reports how it ended — cleanly, with an error,
//! or by panicking — to the one [`Supervisor`] the moment it ends. Nothing below the
//! supervisor spawns threads.
//!
//! Invariants:
//! - A stage's exit is reported exactly once, by the thread itself as its last act
//!   (a panic is caught and reported as [`Exit::Panicked`]); the report channel is
//!   unbounded, so reporting never blocks.
//! - Shutdown is ordered: [`Supervisor::stop`] tells the stages that start the data
//!   flow ([`Role::Source`], the capture threads) to stop; every later stage ends when
//!   its input channel closes, after draining it, so nothing accepted is lost. Only
//!   when that does not finish within a grace period are the other stages told to stop
//!   directly ([`Supervisor::shut_down`]).
//! - A waiting stage is idle, not stalled: [`Heartbeat`]s mark a stage busy only while it
//!   works on one item, so the watchdog tells a stuck stage from one waiting for input
//!   or for a reconnect backoff.

mod priority;

pub(crate) use priority::{CAPTURE_NICE, KEEPER_NICE, Priority, UPLOADER_NICE};

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, unbounded};

use crate::config::Config;

/// What the supervisor can ask of a stage.
#[derive(Debug)]
pub(crate) enum Command {
    /// Finish now: a source stops capturing; a stage that holds data (the keeper)
    /// writes it out first.
    Shutdown,
    /// Write out whatever is held (the keeper's buffer), then send on `done`.
    Flush { done: Sender<()> },
    /// Apply the live-changeable parts of a new, validated config.
    Reload(Arc<Config>),
}

/// How a stage ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Exit {
    Clean,
    Failed(String),
    Panicked(String),
}

impl Exit {
    pub(crate) fn is_clean(&self) -> bool {
        matches!(self, Exit::Clean)
    }
}

/// One stage's exit, as reported to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExitReport {
    pub stage: String,
    pub exit: Exit,
}

impl std::fmt::Display for ExitReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.exit {
            Exit::Clean => write!(f, "stage {} ended", self.stage),
            Exit::Failed(cause) => write!(f, "stage {} failed: {cause}", self.stage),
            Exit::Panicked(cause) => write!(f, "stage {} panicked: {cause}", self.stage),
        }
    }
}

/// Why a stage's body returned early. `panicked`: the stage caught a panic of its own
/// (to save what it held first) and reports it as one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StageFailure {
    pub message: String,
    pub panicked: bool,
}

impl StageFailure {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        StageFailure {
            message: message.into(),
            panicked: false,
        }
    }

    pub(crate) fn panicked(message: impl Into<String>) -> Self {
        StageFailure {
            message: message.into(),
            panicked: true,
        }
    }
}

impl<E: std::fmt::Display> From<E> for StageFailure {
    fn from(e: E) -> Self {
        StageFailure::new(e.to_string())
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Where a stage sits in the data flow, which decides how it is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Produces data on its own clock (a camera): told to stop first.
    Source,
    /// Consumes an upstream channel and ends when it closes.
    Downstream,
    /// Works beside the data flow (the uploader): told to stop with the sources, and
    /// when every other stage has ended.
    Service,
}

/// What a stage's body receives: its name, its command channel and its heartbeat.
pub(crate) struct StageContext {
    pub name: String,
    pub commands: Receiver<Command>,
    pub heartbeat: Arc<Heartbeat>,
}

/// A running stage. Dropping the handle tells the stage to shut down and waits a
/// bounded time for its thread.
#[must_use = "a stage runs until it is shut down; dropping the handle shuts it down"]
pub(crate) struct StageHandle {
    name: String,
    role: Role,
    commands: Sender<Command>,
    heartbeat: Arc<Heartbeat>,
    thread: Option<JoinHandle<()>>,
}

impl StageHandle {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Send a command; false when the stage has already ended.
    pub(crate) fn send(&self, command: Command) -> bool {
        self.commands.send(command).is_ok()
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Wait for the thread, at most `timeout`; true when it has ended.
    fn join_within(&mut self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while !self.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !self.is_finished() {
            return false;
        }
        if let Some(thread) = self.thread.take() {
            // The body's panics are caught inside the thread; this cannot fail.
            let _ = thread.join();
        }
        true
    }
}

impl Drop for StageHandle {
    fn drop(&mut self) {
        if self.thread.is_none() {
            return;
        }
        let _ = self.commands.send(Command::Shutdown);
        if !self.join_within(Duration::from_secs(5)) {
            tracing::error!(
                stage = %self.name,
                "stage did not stop within 5 s of being told to; leaving its thread behind"
            );
        }
    }
}

/// Owns every stage of a run, hears their exits, stops them in order.
pub(crate) struct Supervisor {
    stages: Vec<StageHandle>,
    exits_tx: Sender<ExitReport>,
    exits_rx: Receiver<ExitReport>,
    epoch: Instant,
    /// Exit reports received so far, in order.
    exits: Vec<ExitReport>,
    /// When [`Supervisor::stop`] was first called.
    stopping_since: Option<Instant>,
    /// Whether the remaining stages were told to shut down directly.
    escalated: bool,
}

impl Default for Supervisor {
    fn default() -> Self {
        let (exits_tx, exits_rx) = unbounded();
        Supervisor {
            stages: Vec::new(),
            exits_tx,
            exits_rx,
            epoch: Instant::now(),
            exits: Vec::new(),
            stopping_since: None,
            escalated: false,
        }
    }
}

impl Supervisor {
    /// Start `body` on a thread named `name`, scheduled at `priority`.
    pub(crate) fn spawn<F>(
        &mut self,
        name: String,
        role: Role,
        priority: Priority,
        body: F,
    ) -> Result<(), std::io::Error>
    where
        F: FnOnce(StageContext) -> Result<(), StageFailure> + Send + 'static,
    {
        let (commands_tx, commands_rx) = unbounded();
        let heartbeat = Arc::new(Heartbeat::new(self.epoch));
        let context = StageContext {
            name: name.clone(),
            commands: commands_rx,
            heartbeat: heartbeat.clone(),
        };
        let exits = self.exits_tx.clone();
        let stage = name.clone();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                if std::env::var_os("FRAMESIFT_NO_NICE").is_none()
                    && let Err(e) = priority.apply()
                {
                    tracing::warn!(%stage, ?priority, "could not lower thread priority: {e}");
                }
                let exit = match catch_unwind(AssertUnwindSafe(|| body(context))) {
                    Ok(Ok(())) => Exit::Clean,
                    Ok(Err(f)) if f.panicked => Exit::Panicked(f.message),
                    Ok(Err(f)) => Exit::Failed(f.message),
                    Err(payload) => Exit::Panicked(panic_message(payload.as_ref())),
                };
                let _ = exits.send(ExitReport { stage, exit });
            })?;
        self.stages.push(StageHandle {
            name,
            role,
            commands: commands_tx,
            heartbeat,
            thread: Some(thread),
        });
        Ok(())
    }

    /// The next exit report, waiting at most `timeout`.
    pub(crate) fn next_exit(&mut self, timeout: Duration) -> Option<ExitReport> {
        let report = match self.exits_rx.recv_timeout(timeout) {
            Ok(report) => report,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
        };
        if !report.exit.is_clean() {
            tracing::error!("{report}");
        }
        self.exits.push(report.clone());
        let flow_done = self
            .stages
            .iter()
            .filter(|s| s.role != Role::Service)
            .all(|s| self.exits.iter().any(|r| r.stage == s.name));
        if flow_done {
            for stage in self.stages.iter().filter(|s| s.role == Role::Service) {
                stage.send(Command::Shutdown);
            }
        }
        Some(report)
    }

    /// True once every stage has reported its exit.
    pub(crate) fn all_exited(&self) -> bool {
        self.exits.len() >= self.stages.len()
    }

    /// The first stage that failed or panicked, if any.
    pub(crate) fn first_failure(&self) -> Option<&ExitReport> {
        self.exits.iter().find(|r| !r.exit.is_clean())
    }

    /// Send `command()` to every stage still running.
    pub(crate) fn broadcast(&self, command: impl Fn() -> Command) {
        for stage in &self.stages {
            stage.send(command());
        }
    }

    /// Send `command` to the stage named `name`; false when there is none or it ended.
    pub(crate) fn tell(&self, name: &str, command: Command) -> bool {
        self.stages
            .iter()
            .find(|s| s.name() == name)
            .is_some_and(|s| s.send(command))
    }

    /// Begin the ordered shutdown: the sources stop, every later stage drains its input
    /// and ends when it closes. Idempotent.
    pub(crate) fn stop(&mut self) {
        if self.stopping_since.is_some() {
            return;
        }
        self.stopping_since = Some(Instant::now());
        for stage in self
            .stages
            .iter()
            .filter(|s| matches!(s.role, Role::Source | Role::Service))
        {
            stage.send(Command::Shutdown);
        }
    }

    /// Tell every stage still running to shut down now, without waiting for its input
    /// to close (for stages stuck behind one that does not stop).
    fn escalate(&mut self) {
        if self.escalated {
            return;
        }
        self.escalated = true;
        let stuck: Vec<&str> = self
            .stages
            .iter()
            .filter(|s| !s.is_finished())
            .map(StageHandle::name)
            .collect();
        tracing::warn!(
            stages = %stuck.join(", "),
            "stages still running after the shutdown grace period; telling them to stop now"
        );
        for stage in &self.stages {
            stage.send(Command::Shutdown);
        }
    }

    /// Stop every stage and wait for all of them: the ordered shutdown, then — after
    /// `grace` — a direct shutdown of whatever still runs, then at most `grace` more.
    /// Returns the names of stages that never ended.
    pub(crate) fn shut_down(&mut self, grace: Duration) -> Vec<String> {
        self.stop();
        let start = Instant::now();
        while !self.all_exited() {
            let waited = start.elapsed();
            if waited >= 2 * grace {
                break;
            }
            if waited >= grace {
                self.escalate();
            }
            self.next_exit(Duration::from_millis(20));
        }
        let mut stuck = Vec::new();
        for stage in &mut self.stages {
            // A stage that reported its exit is ending: its thread is gone within
            // moments. One that did not report is stuck.
            let reported = self.exits.iter().any(|r| r.stage == stage.name);
            let wait = if reported {
                Duration::from_secs(5)
            } else {
                Duration::ZERO
            };
            if !stage.join_within(wait) {
                stuck.push(stage.name.clone());
            }
        }
        stuck
    }

    /// The stage that has been busy with one item the longest, and for how long; `None`
    /// when every stage is idle or waiting.
    pub(crate) fn longest_busy(&self) -> Option<(&str, Duration)> {
        self.stages
            .iter()
            .filter(|s| !s.is_finished())
            .filter_map(|s| s.heartbeat.busy_for().map(|d| (s.name(), d)))
            .max_by_key(|(_, d)| *d)
    }

    pub(crate) fn stage_names(&self) -> impl Iterator<Item = &str> {
        self.stages.iter().map(StageHandle::name)
    }
}

/// Marks a stage busy with one unit of work, so a watchdog can tell a stalled stage
/// (busy for too long) from an idle one (waiting for input, or waiting out a backoff).
pub(crate) struct Heartbeat {
    epoch: Instant,
    /// Milliseconds since `epoch` + 1 when the current work began; 0 when idle.
    busy_since: AtomicU64,
}

impl Heartbeat {
    pub(crate) fn new(epoch: Instant) -> Self {
        Heartbeat {
            epoch,
            busy_since: AtomicU64::new(0),
        }
    }

    pub(crate) fn begin(&self) {
        self.busy_since
            .store(self.epoch.elapsed().as_millis() as u64 + 1, Relaxed);
    }

    pub(crate) fn end(&self) {
        self.busy_since.store(0, Relaxed);
    }

    /// How long the current work has taken, if busy.
    pub(crate) fn busy_for(&self) -> Option<Duration> {
        match self.busy_since.load(Relaxed) {
            0 => None,
            since => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(since - 1)),
            ),
        }
    }
}

/// Names of this process's live threads (Linux), for tests that check a stage ended.
#[cfg(test)]
pub(crate) fn live_threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|c| c.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_reported_clean_failed_or_panicked() {
        let mut sup = Supervisor::default();
        sup.spawn(
            "sv-clean".into(),
            Role::Downstream,
            Priority::Nice(0),
            |_| Ok(()),
        )
        .expect("spawn");
        sup.spawn(
            "sv-failed".into(),
            Role::Downstream,
            Priority::Nice(0),
            |_| Err(StageFailure::new("disk on fire")),
        )
        .expect("spawn");
        sup.spawn(
            "sv-panic".into(),
            Role::Downstream,
            Priority::Nice(0),
            |_| panic!("index out of bounds"),
        )
        .expect("spawn");
        let mut reports = Vec::new();
        while reports.len() < 3 {
            reports.extend(sup.next_exit(Duration::from_secs(10)));
        }
        reports.sort_by(|a, b| a.stage.cmp(&b.stage));
        assert_eq!(
            reports,
            [
                ExitReport {
                    stage: "sv-clean".into(),
                    exit: Exit::Clean
                },
                ExitReport {
                    stage: "sv-failed".into(),
                    exit: Exit::Failed("disk on fire".into())
                },
                ExitReport {
                    stage: "sv-panic".into(),
                    exit: Exit::Panicked("index out of bounds".into())
                },
            ]
        );
        assert!(sup.all_exited());
        let first = sup.first_failure().expect("a failure").to_string();
        assert!(
            first == "stage sv-failed failed: disk on fire"
                || first == "stage sv-panic panicked: index out of bounds",
            "{first}"
        );
    }

    #[test]
    fn stop_reaches_sources_first_and_downstream_stages_end_when_their_input_closes() {
        let mut sup = Supervisor::default();
        let (tx, rx) = crossbeam_channel::bounded::<u32>(4);
        let drained = Arc::new(AtomicU64::new(0));
        sup.spawn(
            "sv-source".into(),
            Role::Source,
            Priority::Nice(0),
            move |ctx| {
                let mut n = 0;
                loop {
                    if let Ok(Command::Shutdown) = ctx.commands.try_recv() {
                        return Ok(());
                    }
                    crossbeam_channel::select! {
                        send(tx, n) -> r => { r.map_err(|_| StageFailure::new("closed"))?; n += 1; }
                        recv(ctx.commands) -> _ => return Ok(()),
                    }
                }
            },
        )
        .expect("spawn");
        let count = drained.clone();
        sup.spawn(
            "sv-sink".into(),
            Role::Downstream,
            Priority::Nice(0),
            move |ctx| {
                // Ignores Shutdown: ends only when the source's channel closes.
                let _keep = ctx.commands;
                while rx.recv().is_ok() {
                    count.fetch_add(1, Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(())
            },
        )
        .expect("spawn");
        std::thread::sleep(Duration::from_millis(50));
        let stuck = sup.shut_down(Duration::from_secs(10));
        assert!(stuck.is_empty(), "{stuck:?}");
        assert!(sup.first_failure().is_none(), "{:?}", sup.exits);
        assert!(drained.load(Relaxed) > 0);
        assert!(!sup.escalated, "the ordered shutdown sufficed");
    }

    #[test]
    fn a_stage_that_ignores_the_ordered_shutdown_is_told_directly() {
        let mut sup = Supervisor::default();
        let (_tx, rx) = crossbeam_channel::bounded::<u32>(1);
        sup.spawn(
            "sv-deaf".into(),
            Role::Downstream,
            Priority::Nice(0),
            move |ctx| {
                // Waits on an input that never closes, but obeys a direct Shutdown.
                crossbeam_channel::select! {
                    recv(rx) -> _ => Ok(()),
                    recv(ctx.commands) -> _ => Ok(()),
                }
            },
        )
        .expect("spawn");
        let t0 = Instant::now();
        let stuck = sup.shut_down(Duration::from_millis(200));
        assert!(stuck.is_empty());
        assert!(sup.escalated);
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn dropping_a_handle_shuts_the_stage_down() {
        let mut sup = Supervisor::default();
        sup.spawn(
            "sv-dropped".into(),
            Role::Source,
            Priority::Nice(0),
            |ctx| {
                let _ = ctx.commands.recv();
                Ok(())
            },
        )
        .expect("spawn");
        let until = Instant::now() + Duration::from_secs(5);
        while !live_threads().iter().any(|t| t == "sv-dropped") && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(live_threads().iter().any(|t| t == "sv-dropped"));
        drop(sup);
        assert!(!live_threads().iter().any(|t| t == "sv-dropped"));
    }

    #[test]
    fn heartbeat_reports_busy_time_only_while_busy() {
        let h = Heartbeat::new(Instant::now() - Duration::from_secs(5));
        assert_eq!(h.busy_for(), None);
        h.begin();
        std::thread::sleep(Duration::from_millis(20));
        let busy = h.busy_for().expect("busy");
        assert!(
            busy >= Duration::from_millis(15) && busy < Duration::from_secs(4),
            "{busy:?}"
        );
        h.end();
        assert_eq!(h.busy_for(), None);
    }
}
