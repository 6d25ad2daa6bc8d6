//! The one pacing rule for sources that run on a configured rate (`fps` of a synthetic
//! or replay camera): frame `n` is due one period after frame `n − 1`; a source that
//! falls more than a period behind starts the schedule again one period from now rather
//! than bursting to catch up, as a camera would drop frames rather than deliver them
//! late.

use std::time::{Duration, Instant};

pub(crate) struct Pacer {
    /// Zero: unpaced.
    period: Duration,
    due: Option<Instant>,
}

impl Pacer {
    /// `fps` frames a second; 0, negative or not finite: as fast as possible.
    pub(crate) fn new(fps: f32) -> Self {
        let period = if fps.is_finite() && fps > 0.0 {
            Duration::from_secs_f64(1.0 / f64::from(fps.max(0.001)))
        } else {
            Duration::ZERO
        };
        Pacer { period, due: None }
    }

    /// Wait until the next frame is due (the first is due at once).
    pub(crate) fn wait(&mut self) {
        if self.period.is_zero() {
            return;
        }
        let now = Instant::now();
        let due = self.due.unwrap_or(now);
        if due > now {
            std::thread::sleep(due - now);
        }
        let now = Instant::now();
        let next = due + self.period;
        self.due = Some(if next < now { now + self.period } else { next });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_frames_keep_the_rate_and_unpaced_ones_do_not_wait() {
        let mut pacer = Pacer::new(100.0);
        let t0 = Instant::now();
        for _ in 0..11 {
            pacer.wait();
        }
        let elapsed = t0.elapsed();
        // The first at once, then ten 10 ms periods.
        assert!(
            elapsed >= Duration::from_millis(100) && elapsed < Duration::from_millis(400),
            "{elapsed:?}"
        );
        let mut unpaced = Pacer::new(0.0);
        let t0 = Instant::now();
        for _ in 0..1000 {
            unpaced.wait();
        }
        assert!(t0.elapsed() < Duration::from_millis(50));
        assert!(Pacer::new(f32::NAN).period.is_zero());
    }

    #[test]
    fn a_source_that_fell_behind_does_not_burst() {
        let mut pacer = Pacer::new(100.0);
        pacer.wait();
        std::thread::sleep(Duration::from_millis(60));
        // Six periods late: this frame goes at once, the next a period later.
        let t0 = Instant::now();
        pacer.wait();
        pacer.wait();
        assert!(
            t0.elapsed() >= Duration::from_millis(9),
            "{:?}",
            t0.elapsed()
        );
    }
}
