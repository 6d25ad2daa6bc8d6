//! Fixed bins and the counts in them.

use std::f64::consts::LN_10;

use serde::{Deserialize, Serialize};

/// How values map onto the bin axis before it is cut into equal widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// Bins equal in value.
    Linear,
    /// Bins equal in log10(1 + v): for scores such as the blur variance, which span 0 to
    /// about 10^4 and whose interesting changes are relative.
    Log10p1,
}

impl Scale {
    fn forward(self, v: f64) -> f64 {
        match self {
            Scale::Linear => v,
            Scale::Log10p1 => v.ln_1p() / LN_10,
        }
    }

    fn inverse(self, x: f64) -> f64 {
        match self {
            Scale::Linear => x,
            Scale::Log10p1 => (x * LN_10).exp_m1(),
        }
    }
}

/// `count` equal-width bins over `[lo, hi]`, measured on `scale`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bins {
    /// Lower edge of the first bin, in value units; smaller values fall in the first bin.
    pub lo: f64,
    /// Upper edge of the last bin, in value units; larger values fall in the last bin.
    pub hi: f64,
    /// Number of bins, 1 to [`Bins::MAX_COUNT`].
    pub count: usize,
    /// Axis the bins are equal on.
    pub scale: Scale,
}

/// Why a [`Bins`] cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BinsError {
    #[error("bin count is 0")]
    NoBins,
    #[error("bin count {count} is more than {}", Bins::MAX_COUNT)]
    TooMany { count: usize },
    #[error("bin range [{lo}, {hi}] is not finite")]
    NotFinite { lo: f64, hi: f64 },
    #[error("bin range [{lo}, {hi}] is empty: hi must be above lo")]
    Empty { lo: f64, hi: f64 },
    #[error("lo = {lo} is outside the log10p1 scale, which needs lo > -1")]
    OutsideScale { lo: f64 },
}

impl Bins {
    /// Most bins allowed: more would need more samples per window than a camera gives.
    pub const MAX_COUNT: usize = 1000;

    /// Checks that the bins are usable: 1 to [`Bins::MAX_COUNT`] bins over a finite,
    /// non-empty range that the scale can transform.
    pub fn validate(&self) -> Result<(), BinsError> {
        if self.count == 0 {
            return Err(BinsError::NoBins);
        }
        if self.count > Self::MAX_COUNT {
            return Err(BinsError::TooMany { count: self.count });
        }
        let (lo, hi) = (self.lo, self.hi);
        if !lo.is_finite() || !hi.is_finite() {
            return Err(BinsError::NotFinite { lo, hi });
        }
        // Written so that hi == lo is rejected as well.
        if hi <= lo {
            return Err(BinsError::Empty { lo, hi });
        }
        if self.scale == Scale::Log10p1 && lo <= -1.0 {
            return Err(BinsError::OutsideScale { lo });
        }
        Ok(())
    }

    /// The bin `v` falls in; `None` for NaN. Values below `lo` go to the first bin and
    /// values above `hi` to the last, so a shift past the range still shows as mass
    /// piling up at an end. Assumes the bins are valid.
    pub fn index(&self, v: f64) -> Option<usize> {
        if v.is_nan() {
            return None;
        }
        let last = self.count.saturating_sub(1);
        // Compared in value units first: the transform is monotone, and log10p1 is not
        // defined below -1.
        if v <= self.lo {
            return Some(0);
        }
        if v >= self.hi {
            return Some(last);
        }
        let lo = self.scale.forward(self.lo);
        let hi = self.scale.forward(self.hi);
        let position = (self.scale.forward(v) - lo) / (hi - lo) * self.count as f64;
        // `as` saturates; `min` guards against rounding just below `hi`.
        Some((position as usize).min(last))
    }

    /// The `count + 1` bin edges in value units, from `lo` to `hi`, for plotting.
    pub fn edges(&self) -> impl Iterator<Item = f64> + use<> {
        let bins = *self;
        let lo = bins.scale.forward(bins.lo);
        let hi = bins.scale.forward(bins.hi);
        (0..=bins.count).map(move |i| match i {
            // Exact ends, not the round trip through the scale.
            0 => bins.lo,
            i if i == bins.count => bins.hi,
            i => bins
                .scale
                .inverse(lo + (hi - lo) * i as f64 / bins.count as f64),
        })
    }
}

/// Counts of values in [`Bins`].
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub bins: Bins,
    /// One count per bin.
    pub counts: Vec<u64>,
}

impl Histogram {
    /// An empty histogram over `bins`.
    pub fn new(bins: Bins) -> Self {
        Self {
            bins,
            counts: vec![0; bins.count],
        }
    }

    /// Counts `v` and returns its bin, which a rolling window keeps to remove it later;
    /// NaN is not counted.
    pub fn add(&mut self, v: f64) -> Option<usize> {
        let i = self.bins.index(v)?;
        self.add_index(i);
        Some(i)
    }

    /// Counts one value in bin `i`.
    ///
    /// # Panics
    /// If `i` is not a bin of this histogram.
    pub fn add_index(&mut self, i: usize) {
        self.counts[i] += 1;
    }

    /// Uncounts one value from bin `i`, as a rolling window drops its oldest value; an
    /// empty bin stays at 0.
    ///
    /// # Panics
    /// If `i` is not a bin of this histogram.
    pub fn remove_index(&mut self, i: usize) {
        self.counts[i] = self.counts[i].saturating_sub(1);
    }

    /// Number of values counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Forgets every value, keeping the bins.
    pub fn clear(&mut self) {
        self.counts.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear(lo: f64, hi: f64, count: usize) -> Bins {
        Bins {
            lo,
            hi,
            count,
            scale: Scale::Linear,
        }
    }

    fn log(lo: f64, hi: f64, count: usize) -> Bins {
        Bins {
            lo,
            hi,
            count,
            scale: Scale::Log10p1,
        }
    }

    #[test]
    fn linear_index_cuts_equal_widths() {
        let bins = linear(0.0, 10.0, 5);
        let cases = [
            (0.0, 0),
            (1.99, 0),
            (2.0, 1),
            (5.0, 2),
            (7.999, 3),
            (8.0, 4),
            (10.0, 4),
        ];
        for (v, want) in cases {
            assert_eq!(bins.index(v), Some(want), "v = {v}");
        }
    }

    #[test]
    fn out_of_range_values_go_to_the_end_bins() {
        let bins = linear(0.0, 10.0, 5);
        assert_eq!(bins.index(-3.0), Some(0));
        assert_eq!(bins.index(f64::NEG_INFINITY), Some(0));
        assert_eq!(bins.index(11.0), Some(4));
        assert_eq!(bins.index(f64::INFINITY), Some(4));
        assert_eq!(bins.index(f64::NAN), None);
    }

    #[test]
    fn log10p1_index_cuts_equal_decades() {
        // log10(1 + v) over [0, 4]: bins [0,1) [1,2) [2,3) [3,4] in log units, that is
        // v in [0,9) [9,99) [99,999) [999,9999].
        let bins = log(0.0, 9999.0, 4);
        let cases = [
            (0.0, 0),
            (8.5, 0),
            (9.5, 1),
            (98.0, 1),
            (100.0, 2),
            (998.0, 2),
            (1000.0, 3),
            (9999.0, 3),
            (1e6, 3),
            (-0.5, 0),
            (-5.0, 0),
        ];
        for (v, want) in cases {
            assert_eq!(bins.index(v), Some(want), "v = {v}");
        }
    }

    #[test]
    fn edges_are_count_plus_one_in_value_units() {
        let lin: Vec<f64> = linear(0.0, 10.0, 5).edges().collect();
        assert_eq!(lin, [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);

        let logs: Vec<f64> = log(0.0, 9999.0, 4).edges().collect();
        let want = [0.0, 9.0, 99.0, 999.0, 9999.0];
        assert_eq!(logs.len(), want.len());
        for (got, want) in logs.iter().zip(want) {
            assert!((got - want).abs() < 1e-9 * want.max(1.0), "{got} vs {want}");
        }
    }

    #[test]
    fn each_edge_starts_its_bin() {
        for bins in [linear(-1.0, 3.0, 7), log(0.0, 5000.0, 13)] {
            let edges: Vec<f64> = bins.edges().collect();
            for (i, pair) in edges.windows(2).enumerate() {
                let mid = (pair[0] + pair[1]) / 2.0;
                assert_eq!(bins.index(mid), Some(i), "{bins:?} bin {i}");
            }
        }
    }

    #[test]
    fn validate_rejects_unusable_bins() {
        assert_eq!(linear(0.0, 1.0, 0).validate(), Err(BinsError::NoBins));
        assert_eq!(
            linear(0.0, 1.0, 1001).validate(),
            Err(BinsError::TooMany { count: 1001 })
        );
        assert_eq!(linear(0.0, 1.0, 1000).validate(), Ok(()));
        assert_eq!(linear(0.0, 1.0, 1).validate(), Ok(()));
        assert_eq!(
            linear(1.0, 1.0, 4).validate(),
            Err(BinsError::Empty { lo: 1.0, hi: 1.0 })
        );
        assert_eq!(
            linear(2.0, 1.0, 4).validate(),
            Err(BinsError::Empty { lo: 2.0, hi: 1.0 })
        );
        assert!(matches!(
            linear(f64::NAN, 1.0, 4).validate(),
            Err(BinsError::NotFinite { .. })
        ));
        assert!(matches!(
            linear(0.0, f64::INFINITY, 4).validate(),
            Err(BinsError::NotFinite { .. })
        ));
        assert_eq!(
            log(-1.0, 1.0, 4).validate(),
            Err(BinsError::OutsideScale { lo: -1.0 })
        );
        assert_eq!(log(-0.5, 1.0, 4).validate(), Ok(()));
    }

    #[test]
    fn scale_serialises_lowercase() {
        #[derive(Serialize, Deserialize)]
        struct Wrap {
            scale: Scale,
        }
        for (scale, text) in [(Scale::Linear, "linear"), (Scale::Log10p1, "log10p1")] {
            let toml = toml::to_string(&Wrap { scale }).expect("serialise a unit enum");
            assert_eq!(toml.trim(), format!("scale = \"{text}\""));
            let back: Wrap = toml::from_str(&toml).expect("parse what was written");
            assert_eq!(back.scale, scale);
        }
    }

    #[test]
    fn histogram_counts_and_uncounts() {
        let mut h = Histogram::new(linear(0.0, 4.0, 4));
        assert_eq!(h.counts, [0, 0, 0, 0]);
        assert_eq!(h.add(0.5), Some(0));
        assert_eq!(h.add(3.5), Some(3));
        assert_eq!(h.add(f64::NAN), None);
        h.add_index(3);
        assert_eq!(h.counts, [1, 0, 0, 2]);
        assert_eq!(h.total(), 3);

        h.remove_index(3);
        h.remove_index(1);
        assert_eq!(
            h.counts,
            [1, 0, 0, 1],
            "removing from an empty bin saturates"
        );
        assert_eq!(h.total(), 2);

        h.clear();
        assert_eq!(h.counts, [0, 0, 0, 0]);
        assert_eq!(h.total(), 0);
        assert_eq!(h.bins, linear(0.0, 4.0, 4));
    }

    #[test]
    #[should_panic]
    fn add_index_outside_the_bins_panics() {
        Histogram::new(linear(0.0, 1.0, 2)).add_index(2);
    }
}
