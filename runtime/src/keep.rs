//! Keeping: the bounded best-N buffer, and the candidates that cross from the inference
//! thread to the keeper.
//!
//! Candidates are pooled: the inference thread takes an empty one from a free list with
//! `try_recv` (none free → the frame is dropped and counted), swaps its frame buffer
//! with the candidate's (O(1), no pixel copy), and `try_send`s it to the keeper. The
//! keeper returns every candidate to the free list once it has written or evicted it.
//! So the number of frame buffers is fixed at start-up and nothing on the hand-off
//! blocks or allocates.

use crate::{
    config::WhenFull, detector::Detection, frame::Frame, preprocess::FrameStats, score::Scores,
};

/// A frame worth considering for the spool, with everything its sidecar needs.
#[derive(Debug)]
pub struct Candidate {
    /// Index of the camera in the config's camera list.
    pub camera: usize,
    pub frame: Frame,
    pub detections: Vec<Detection>,
    pub stats: FrameStats,
    pub scores: Scores,
}

impl Candidate {
    /// An empty candidate with buffers sized for `width × height` frames and
    /// `max_detections` detections.
    pub fn with_capacity(width: u32, height: u32, max_detections: usize) -> Self {
        Candidate {
            camera: 0,
            frame: Frame::with_capacity(width, height),
            detections: Vec::with_capacity(max_detections),
            stats: FrameStats::default(),
            scores: Scores::default(),
        }
    }
}

/// Anything the keep buffer can rank.
pub trait Valued {
    fn value(&self) -> f32;
}

impl Valued for Candidate {
    fn value(&self) -> f32 {
        self.scores.value
    }
}

impl<T: Valued> Valued for Box<T> {
    fn value(&self) -> f32 {
        (**self).value()
    }
}

/// What happened to an item offered to the buffer. Items that leave the buffer are
/// handed back so their buffers can be recycled.
#[derive(Debug, PartialEq)]
pub enum Offer<T> {
    Accepted,
    /// Accepted; the lowest-value item was evicted to make room.
    Evicted(T),
    /// Not accepted (full, and not better than the lowest under `drop_lowest`, or full
    /// under `drop_newest`).
    Rejected(T),
}

/// At most `capacity` items, the highest-value ones offered since the last drain.
pub struct KeepBuffer<T> {
    items: Vec<T>,
    capacity: usize,
    when_full: WhenFull,
}

impl<T: Valued> KeepBuffer<T> {
    pub fn new(capacity: usize, when_full: WhenFull) -> Self {
        assert!(capacity > 0, "keep capacity must be at least 1");
        KeepBuffer {
            items: Vec::with_capacity(capacity),
            capacity,
            when_full,
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Offer an item. Never grows past capacity; never blocks.
    pub fn offer(&mut self, item: T) -> Offer<T> {
        if self.items.len() < self.capacity {
            self.items.push(item);
            return Offer::Accepted;
        }
        match self.when_full {
            WhenFull::DropNewest => Offer::Rejected(item),
            WhenFull::DropLowest => {
                let (lowest, lowest_value) = self
                    .items
                    .iter()
                    .enumerate()
                    .map(|(i, it)| (i, it.value()))
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .unwrap_or((0, f32::MAX));
                if item.value() > lowest_value {
                    Offer::Evicted(std::mem::replace(&mut self.items[lowest], item))
                } else {
                    Offer::Rejected(item)
                }
            }
        }
    }

    /// Take every item out, best first.
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.items
            .sort_unstable_by(|a, b| b.value().total_cmp(&a.value()));
        self.items.drain(..)
    }

    /// The lowest value held, if any.
    pub fn lowest_value(&self) -> Option<f32> {
        self.items
            .iter()
            .map(|i| i.value())
            .min_by(|a, b| a.total_cmp(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct V(f32);
    impl Valued for V {
        fn value(&self) -> f32 {
            self.0
        }
    }

    #[test]
    fn bounded_and_evicts_the_lowest() {
        let mut buf = KeepBuffer::new(3, WhenFull::DropLowest);
        for v in [0.5, 0.9, 0.2] {
            assert_eq!(buf.offer(V(v)), Offer::Accepted);
        }
        assert_eq!(buf.offer(V(0.6)), Offer::Evicted(V(0.2)));
        assert_eq!(buf.offer(V(0.1)), Offer::Rejected(V(0.1)));
        assert_eq!(
            buf.offer(V(0.5)),
            Offer::Rejected(V(0.5)),
            "ties keep the incumbent"
        );
        assert_eq!(buf.len(), 3);
        assert_eq!(buf.lowest_value(), Some(0.5));
        let drained: Vec<f32> = buf.drain().map(|v| v.0).collect();
        assert_eq!(drained, [0.9, 0.6, 0.5]);
        assert!(buf.is_empty());
    }

    #[test]
    fn drop_newest_refuses_when_full() {
        let mut buf = KeepBuffer::new(2, WhenFull::DropNewest);
        buf.offer(V(0.1));
        buf.offer(V(0.2));
        assert_eq!(buf.offer(V(0.9)), Offer::Rejected(V(0.9)));
        assert_eq!(buf.len(), 2);
    }

    #[test]
    fn many_offers_stay_bounded_and_keep_the_best() {
        // A deterministic shuffle of 0..1000: the buffer ends with the top 10.
        let mut buf = KeepBuffer::new(10, WhenFull::DropLowest);
        let mut returned = 0;
        for i in 0..1000u32 {
            let v = ((i * 7919) % 1000) as f32;
            match buf.offer(V(v)) {
                Offer::Accepted => {}
                Offer::Evicted(_) | Offer::Rejected(_) => returned += 1,
            }
            assert!(buf.len() <= 10);
        }
        assert_eq!(returned, 990, "every item not kept is handed back");
        let kept: Vec<f32> = buf.drain().map(|v| v.0).collect();
        assert_eq!(
            kept,
            (990..1000).rev().map(|v| v as f32).collect::<Vec<_>>()
        );
    }
}
