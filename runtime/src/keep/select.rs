//! Selection on the keeper's side: which of the candidates a window collected are kept.
//!
//! - **Budget.** With `[keep] target_rate`, a window keeps `target_rate` × the frames
//!   captured during it (the fraction carries over to the next window); a window ends
//!   early once its budget reaches half the buffer, so the best are always chosen among
//!   at least twice as many. Without a target rate, the whole buffer is kept.
//! - **Near-duplicates.** A candidate whose thumbnail is within `dedupe_distance` of a
//!   frame of the same camera less than `dedupe_secs` apart — one in the buffer, or one
//!   kept recently — is one moment seen twice: only the more valuable stays. So the
//!   budget is spread over different moments instead of thirty copies of one.
//! - **Control.** Control frames (the uniform sample) skip ranking and de-duplication
//!   and are kept first, inside the budget.
//!
//! Pure bookkeeping over anything [`Selectable`]: the keeper runs it on candidates,
//! `framesift evaluate` on recorded frames, so both select alike.

use std::collections::VecDeque;

use super::{KeepBuffer, Offer, Valued, WhenFull};
use crate::capture::Thumbnail;

/// Kept frames remembered for de-duplication.
const RECENT: usize = 256;

/// What selection needs to know of an item.
pub(crate) trait Selectable: Valued {
    fn camera(&self) -> usize;
    fn thumbnail(&self) -> &Thumbnail;
    /// When it was captured, in seconds on any fixed clock.
    fn at(&self) -> f64;
    fn is_control(&self) -> bool;
}

/// Why an item left without being kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Released {
    /// A more valuable near-duplicate was kept or held.
    Duplicate,
    /// The buffer was full of better ones, or it ranked below the window's budget.
    Outranked,
}

/// The selection settings (from `[keep]`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SelectConfig {
    pub capacity: usize,
    pub when_full: WhenFull,
    pub target_rate: f64,
    pub dedupe_distance: f32,
    pub dedupe_secs: f64,
}

pub(crate) struct Selector<T> {
    config: SelectConfig,
    buffer: KeepBuffer<T>,
    controls: Vec<T>,
    /// (camera, thumbnail, at) of the last kept frames.
    recent: VecDeque<(usize, Thumbnail, f64)>,
    /// Frames owed to the budget and not yet kept.
    credit: f64,
}

impl<T: Selectable> Selector<T> {
    pub(crate) fn new(config: SelectConfig) -> Self {
        Selector {
            buffer: KeepBuffer::new(config.capacity, config.when_full),
            controls: Vec::with_capacity(config.capacity),
            recent: VecDeque::with_capacity(RECENT),
            credit: 0.0,
            config,
        }
    }

    /// New settings (a reload); a smaller buffer releases its lowest items.
    pub(crate) fn reconfigure(
        &mut self,
        config: SelectConfig,
        mut release: impl FnMut(T, Released),
    ) {
        self.buffer
            .reconfigure(config.capacity, config.when_full, |t| {
                release(t, Released::Outranked)
            });
        self.config = config;
    }

    /// Items held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buffer.len() + self.controls.len()
    }

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.buffer.capacity()
    }

    /// Offer an item; what does not stay is handed to `release` at once.
    pub(crate) fn offer(&mut self, item: T, mut release: impl FnMut(T, Released)) {
        if item.is_control() {
            if self.controls.len() < self.config.capacity {
                self.controls.push(item);
            } else {
                release(item, Released::Outranked);
            }
            return;
        }
        let (camera, thumbnail, at) = (item.camera(), *item.thumbnail(), item.at());
        let config = &self.config;
        let recently_kept = self
            .recent
            .iter()
            .any(|(c, t, when)| near(config, (*c, camera), (*when, at), (t, &thumbnail)));
        if recently_kept {
            release(item, Released::Duplicate);
            return;
        }
        let value = item.value();
        let twin = |held: &T| {
            near(
                config,
                (held.camera(), camera),
                (held.at(), at),
                (held.thumbnail(), &thumbnail),
            )
        };
        if self
            .buffer
            .iter()
            .any(|held| twin(held) && held.value() >= value)
        {
            release(item, Released::Duplicate);
            return;
        }
        self.buffer
            .take_if(twin, |t| release(t, Released::Duplicate));
        match self.buffer.offer(item) {
            Offer::Accepted => {}
            Offer::Evicted(t) | Offer::Rejected(t) => release(t, Released::Outranked),
        }
    }

    /// Whether a window of `frames` captured frames should end now (its budget is half
    /// the buffer).
    pub(crate) fn window_full(&self, frames: u64) -> bool {
        self.config.target_rate > 0.0
            && self.credit + self.config.target_rate * frames as f64
                >= (self.config.capacity as f64 / 2.0).max(1.0)
    }

    /// End a window of `frames` captured frames: move what it keeps into `out` (emptied
    /// first; `out.pop()` gives the best first, control frames before the rest) and
    /// release the others. A window that ends because it was told to (a flush, the end
    /// of the run) rounds its budget up: the share owed so far is granted, so a short
    /// run keeps its best frame rather than none.
    pub(crate) fn end_window(
        &mut self,
        frames: u64,
        told: bool,
        out: &mut Vec<T>,
        mut release: impl FnMut(T, Released),
    ) {
        out.clear();
        let mut ranked = Vec::new();
        self.buffer.drain_into(&mut ranked);
        let budget = if self.config.target_rate > 0.0 {
            self.credit += self.config.target_rate * frames as f64;
            if told {
                self.credit.ceil() as usize
            } else {
                self.credit.floor() as usize
            }
        } else {
            usize::MAX
        };
        let controls = self.controls.len();
        let valued = budget.saturating_sub(controls).min(ranked.len());
        // `ranked` is ascending: the best `valued` are at its end.
        let cut = ranked.len() - valued;
        for t in ranked.drain(..cut) {
            release(t, Released::Outranked);
        }
        out.append(&mut ranked);
        out.append(&mut self.controls);
        for t in out.iter() {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back((t.camera(), *t.thumbnail(), t.at()));
        }
        if self.config.target_rate > 0.0 {
            // What this window could not fill is owed to the next, at most a buffer.
            self.credit = (self.credit - out.len() as f64).clamp(0.0, self.config.capacity as f64);
        }
    }
}

/// Whether two frames are one moment seen twice (never, with `dedupe_distance` or
/// `dedupe_secs` 0).
fn near(
    c: &SelectConfig,
    camera: (usize, usize),
    at: (f64, f64),
    views: (&Thumbnail, &Thumbnail),
) -> bool {
    c.dedupe_distance > 0.0
        && c.dedupe_secs > 0.0
        && camera.0 == camera.1
        && (at.0 - at.1).abs() <= c.dedupe_secs
        && views.0.distance(views.1) <= c.dedupe_distance
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Item {
        value: f32,
        camera: usize,
        view: u8,
        at: f64,
        control: bool,
    }

    impl Valued for Item {
        fn value(&self) -> f32 {
            self.value
        }
    }

    impl Selectable for Item {
        fn camera(&self) -> usize {
            self.camera
        }
        fn thumbnail(&self) -> &Thumbnail {
            // A distinct view per `view`: cells alternate by its bits.
            static VIEWS: std::sync::OnceLock<Vec<Thumbnail>> = std::sync::OnceLock::new();
            &VIEWS.get_or_init(|| {
                (0..=255u8)
                    .map(|v| {
                        Thumbnail(std::array::from_fn(|i| {
                            if (v as usize >> (i % 8)) & 1 == 1 {
                                200
                            } else {
                                20
                            }
                        }))
                    })
                    .collect()
            })[usize::from(self.view)]
        }
        fn at(&self) -> f64 {
            self.at
        }
        fn is_control(&self) -> bool {
            self.control
        }
    }

    fn item(value: f32, view: u8, at: f64) -> Item {
        Item {
            value,
            camera: 0,
            view,
            at,
            control: false,
        }
    }

    fn config(target_rate: f64) -> SelectConfig {
        SelectConfig {
            capacity: 8,
            when_full: WhenFull::DropLowest,
            target_rate,
            dedupe_distance: 4.0,
            dedupe_secs: 10.0,
        }
    }

    #[test]
    fn a_duplicate_burst_keeps_one_frame_the_best() {
        let mut s = Selector::new(config(0.0));
        let mut released = Vec::new();
        for (i, v) in [0.5, 0.9, 0.7, 0.8, 0.6].into_iter().enumerate() {
            s.offer(item(v, 1, i as f64 * 0.1), |t, why| {
                released.push((t.value, why))
            });
        }
        s.offer(item(0.4, 2, 0.6), |t, why| released.push((t.value, why)));
        let mut out = Vec::new();
        s.end_window(100, false, &mut out, |t, why| released.push((t.value, why)));
        let kept: Vec<f32> = out.iter().rev().map(|t| t.value).collect();
        assert_eq!(kept, [0.9, 0.4], "one of the burst, and the other view");
        assert_eq!(released.len(), 4);
        assert!(released.iter().all(|&(_, why)| why == Released::Duplicate));
        // The same view again soon after is a duplicate of what was kept; later it is not.
        s.offer(item(2.0, 1, 5.0), |t, why| released.push((t.value, why)));
        assert_eq!(released.last(), Some(&(2.0, Released::Duplicate)));
        s.offer(item(2.0, 1, 20.0), |_, _| {
            panic!("not a duplicate 20 s later")
        });
        // Another camera's identical view is its own moment.
        s.offer(
            Item {
                camera: 1,
                ..item(1.0, 2, 0.7)
            },
            |_, _| panic!("another camera"),
        );
    }

    #[test]
    fn the_budget_is_the_target_rate_of_frames_carried_across_windows() {
        let mut s = Selector::new(config(0.01));
        let mut out = Vec::new();
        let mut kept = 0;
        for window in 0..100u32 {
            // 150 frames a window: 1.5 kept on average; 5 distinct candidates offered.
            for k in 0..5u8 {
                s.offer(
                    item(
                        f32::from(k),
                        (window as u8).wrapping_mul(5).wrapping_add(k),
                        window as f64 * 100.0,
                    ),
                    |_, _| {},
                );
            }
            assert!(!s.window_full(150));
            s.end_window(150, false, &mut out, |_, _| {});
            kept += out.len();
            assert!(
                out.iter().all(|t| t.value >= 3.0),
                "the best of each window"
            );
        }
        assert_eq!(kept, 150);
        // A budget of half the buffer ends the window.
        assert!(s.window_full(400));
    }

    #[test]
    fn control_frames_are_kept_first_inside_the_budget() {
        let mut s = Selector::new(config(0.02));
        for k in 0..6u8 {
            s.offer(item(5.0 + f32::from(k), k, 0.0), |_, _| {});
        }
        s.offer(
            Item {
                control: true,
                ..item(0.0, 1, 0.0)
            },
            |_, _| panic!("control frames skip de-duplication"),
        );
        let mut out = Vec::new();
        let mut outranked = 0;
        s.end_window(100, false, &mut out, |_, why| {
            assert_eq!(why, Released::Outranked);
            outranked += 1;
        });
        assert_eq!(out.len(), 2);
        assert!(out.pop().is_some_and(|t| t.control));
        assert_eq!(out.pop().map(|t| t.value), Some(10.0));
        assert_eq!(outranked, 5);
    }
}
