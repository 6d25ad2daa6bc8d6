//! The label-free signals a frame is scored by, one file each, registered on one line.
//!
//! A signal reads what the inference thread knows about one frame ([`FrameFacts`]:
//! detections, frame statistics, the confidence threshold) and returns a value in 0..=1,
//! 1 meaning most worth a labeller's time. It may keep state per camera (each camera's
//! inference thread owns its own [`Signals`]), but it does no I/O and allocates nothing
//! per frame: it runs on the inference thread, where every microsecond is fps.
//!
//! Each signal has its own `[signals.<name>]` table in the config (its `Raw` type, with
//! the defaults in its `Default`), validates it into its `Settings`, and is registered
//! in the `signals!` line below, which generates the config table, the validated
//! settings, the per-camera state and the names used in sidecars — static dispatch, no
//! trait objects. Adding a signal: its file, one entry in that line, its table in
//! `default-config.toml`, and a line in the README.

use serde::{Serialize, de::DeserializeOwned};

use crate::config::Checker;

pub(crate) use super::FrameFacts;

/// A per-frame, label-free signal. See the module documentation.
pub(crate) trait Signal: Sized + Send + 'static {
    /// The word a sidecar's `reasons` lists when the signal fires.
    const REASON: &'static str;
    /// The `[signals.<name>]` table as written: every key optional, `Default` holds the
    /// defaults.
    type Raw: Default + Serialize + DeserializeOwned + std::fmt::Debug;
    /// The validated settings.
    type Settings: Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static;

    /// Check the table, recording every problem in `c` (keys are relative to the table).
    fn validate(raw: &Self::Raw, c: &mut Checker) -> Self::Settings;
    /// The signal's weight in a frame's value.
    fn weight(settings: &Self::Settings) -> f32;
    /// The lowest detection score the decoder must keep for this signal (detections
    /// below the confidence threshold are kept, flagged, when a signal asks); `used`:
    /// whether its value counts (a weight above 0, or a trigger on it).
    fn lowest_score(_settings: &Self::Settings, confidence: f32, _used: bool) -> f32 {
        confidence
    }
    /// A camera's instance, with fresh state.
    fn new(settings: &Self::Settings) -> Self;
    /// Take new settings (a config reload), keeping the camera's state.
    fn reconfigure(&mut self, settings: &Self::Settings);
    /// The value for one frame, in 0..=1.
    fn value(&mut self, frame: &FrameFacts<'_>) -> f32;
}

macro_rules! signals {
    ($($name:ident :: $ty:ident),* $(,)?) => {
        $(mod $name;)*

        /// Every signal's `[signals.<name>]` table, as written.
        #[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub(crate) struct RawSignals {
            $(pub(crate) $name: <$name::$ty as Signal>::Raw,)*
        }

        /// Every signal's validated settings.
        #[derive(Debug, Clone, PartialEq)]
        pub(crate) struct Settings {
            $(pub(crate) $name: <$name::$ty as Signal>::Settings,)*
        }

        /// One camera's signals, with their state.
        pub(crate) struct Signals {
            $($name: $name::$ty,)*
        }

        /// How many signals are registered.
        pub(crate) const COUNT: usize = [$(stringify!($name)),*].len();
        /// Their names (config tables, sidecar keys), in registration order.
        pub(crate) const NAMES: [&str; COUNT] = [$(stringify!($name)),*];
        /// The reason each one gives, in the same order.
        pub(crate) const REASONS: [&str; COUNT] = [$(<$name::$ty as Signal>::REASON),*];

        impl Settings {
            pub(crate) fn validate(raw: &RawSignals, c: &mut Checker) -> Self {
                Settings {
                    $($name: c.within(stringify!($name), |c| {
                        <$name::$ty as Signal>::validate(&raw.$name, c)
                    }),)*
                }
            }

            pub(crate) fn weights(&self) -> [f32; COUNT] {
                [$(<$name::$ty as Signal>::weight(&self.$name)),*]
            }

            /// The lowest detection score any signal needs decoded; `used[i]`: whether
            /// signal i's value counts (a weight above 0, or a trigger on it).
            pub(crate) fn lowest_score(&self, confidence: f32, used: [bool; COUNT]) -> f32 {
                let mut lowest = confidence;
                let mut used = used.into_iter();
                $(lowest = lowest.min(<$name::$ty as Signal>::lowest_score(
                    &self.$name,
                    confidence,
                    used.next().unwrap_or(true),
                ));)*
                lowest
            }
        }

        impl Signals {
            pub(crate) fn new(settings: &Settings) -> Self {
                Signals {
                    $($name: <$name::$ty as Signal>::new(&settings.$name),)*
                }
            }

            pub(crate) fn reconfigure(&mut self, settings: &Settings) {
                $(self.$name.reconfigure(&settings.$name);)*
            }

            /// Every signal's value for one frame, in registration order.
            pub(crate) fn values(&mut self, frame: &FrameFacts<'_>, out: &mut [f32; COUNT]) {
                let mut slot = out.iter_mut();
                $(if let Some(v) = slot.next() {
                    *v = self.$name.value(frame);
                })*
            }

            /// As [`Signals::values`], adding each signal's time to `spent` (for
            /// `framesift evaluate`'s cost table; the pipeline calls `values`).
            pub(crate) fn values_timed(
                &mut self,
                frame: &FrameFacts<'_>,
                out: &mut [f32; COUNT],
                spent: &mut [std::time::Duration; COUNT],
            ) {
                let mut slot = out.iter_mut().zip(spent.iter_mut());
                $(if let Some((v, t)) = slot.next() {
                    let t0 = std::time::Instant::now();
                    *v = self.$name.value(frame);
                    *t += t0.elapsed();
                })*
            }
        }
    };
}

// The registration line: `module::Type` per signal, in the order sidecars list them.
signals!(
    uncertainty::Uncertainty,
    faint::Faint,
    margin::Margin,
    blur::Blur,
    exposure::Exposure,
    count::Count,
    flicker::Flicker,
    novelty::Novelty,
    class::Class,
);

impl Signals {
    /// Measure against a calibration reference's sample of views (the signals that use
    /// one: novelty).
    pub(crate) fn use_reference(&mut self, views: &std::sync::Arc<[crate::capture::Thumbnail]>) {
        self.novelty.use_reference(views);
    }
}

/// A weight: 0 or more (0 turns the signal off).
pub(crate) fn weight(c: &mut Checker, value: f64, example: &str) -> f32 {
    c.float(
        "weight",
        value,
        |v| v >= 0.0,
        &format!("0 or more (0 turns the signal off), e.g. {example}"),
    ) as f32
}
