//! How far a window's histogram is from the reference's: PSI and Jensen–Shannon distance.
//!
//! Both take raw counts so that a caller can keep an integer rolling window, and both
//! smooth the counts the same way, so they measure the same pair of distributions.

use std::f64::consts::LN_2;

/// The pseudo-count added to every bin of the smaller histogram (the window) before it
/// is normalised; the larger one (the reference) gets the same share of uniform mass.
///
/// PSI has ln(p/q), which is infinite when a bin is empty in either histogram, and a
/// short window always has empty bins. Adding ½ (the Jeffreys, or Krichevsky–Trofimov,
/// estimate, the standard minimax choice for a multinomial from counts) keeps every
/// term finite, and its pull towards uniform, ½·bins / (n + ½·bins), fades as the window
/// grows. Adding ½ to the reference as well would give it a far smaller share (its n is
/// larger), so two samples of one distribution would differ by the smoothing alone (at
/// 32 bins and a 500-frame window, JS ≈ 0.1 — a false alarm); mixing both with uniform
/// at the window's share keeps equal shapes at exactly 0.
pub const PSEUDO_COUNT: f64 = 0.5;

/// Population stability index between two histograms over the same bins:
/// Σ (cᵢ − rᵢ)·ln(cᵢ / rᵢ) on the smoothed probabilities. 0 for equal histograms, never
/// negative, unbounded above.
///
/// # Panics
/// If the slices differ in length.
pub fn psi(reference: &[u64], current: &[u64]) -> f64 {
    pairs(reference, current)
        .map(|(r, c)| (c - r) * (c / r).ln())
        .sum::<f64>()
        .max(0.0)
}

/// Jensen–Shannon distance between two histograms over the same bins: the square root of
/// the Jensen–Shannon divergence in bits, on the smoothed probabilities. In [0, 1]: 0 for
/// equal histograms, 1 for disjoint ones (approached, never reached, with smoothing).
/// Unlike PSI it is symmetric and bounded, and it is a metric.
///
/// # Panics
/// If the slices differ in length.
pub fn js_distance(reference: &[u64], current: &[u64]) -> f64 {
    let divergence_nats: f64 = pairs(reference, current)
        .map(|(r, c)| {
            let m = (r + c) / 2.0;
            (r * (r / m).ln() + c * (c / m).ln()) / 2.0
        })
        .sum();
    // Rounding can leave a tiny negative for equal histograms.
    (divergence_nats / LN_2).clamp(0.0, 1.0).sqrt()
}

/// The JS distance that matches a PSI value for small shifts, to set JS alert bands from
/// the PSI bands people know (0.1 moderate, 0.25 significant).
///
/// To second order in the shift, PSI (the symmetrised KL divergence) and the χ² distance
/// agree, and the JS divergence in nats is χ²/8; so the JS distance in bits is
/// √(PSI / (8 ln 2)).
pub fn js_matching_psi(psi: f64) -> f64 {
    (psi.max(0.0) / (8.0 * LN_2)).sqrt()
}

/// Smoothed probabilities of the two histograms, bin by bin: each mixed with uniform
/// at λ = ½·bins / (n + ½·bins), n the smaller total ([`PSEUDO_COUNT`]).
fn pairs<'a>(reference: &'a [u64], current: &'a [u64]) -> impl Iterator<Item = (f64, f64)> + 'a {
    assert_eq!(
        reference.len(),
        current.len(),
        "histograms over different bins"
    );
    let bins = reference.len() as f64;
    let total = |counts: &[u64]| counts.iter().sum::<u64>() as f64;
    let (r_total, c_total) = (total(reference), total(current));
    let pseudo = PSEUDO_COUNT * bins;
    let lambda = pseudo / (r_total.min(c_total) + pseudo);
    let share = move |count: u64, total: f64| {
        let p = if total > 0.0 {
            count as f64 / total
        } else {
            1.0 / bins
        };
        (1.0 - lambda) * p + lambda / bins
    };
    reference
        .iter()
        .zip(current)
        .map(move |(&r, &c)| (share(r, r_total), share(c, c_total)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn close(got: f64, want: f64, tolerance: f64) -> bool {
        (got - want).abs() <= tolerance
    }

    #[test]
    fn disjoint_two_bin_histograms() {
        // reference [10, 0], current [0, 10]; with ½ added each total is 11:
        //   r = (10.5/11, 0.5/11) = (21/22, 1/22), c = (1/22, 21/22).
        // PSI = (1/22 − 21/22)·ln(1/21) + (21/22 − 1/22)·ln(21) = (40/22)·ln 21
        //     = (20/11)·3.0445224377 = 5.5354953413.
        // JS: m = (½, ½); KL(r‖m) = (21/22)·log2(21/11) + (1/22)·log2(1/11)
        //     = 0.9545454545·0.9328858 − 0.0454545455·3.4594316 = 0.7332350;
        //     KL(c‖m) is the same by symmetry, so JSD = 0.7332350 bits and the
        //     distance is √0.7332350 = 0.8562914.
        let (r, c) = ([10, 0], [0, 10]);
        assert!(close(psi(&r, &c), 5.535_495_341_3, 1e-9), "{}", psi(&r, &c));
        assert!(
            close(js_distance(&r, &c), 0.856_291_4, 1e-7),
            "{}",
            js_distance(&r, &c)
        );
    }

    #[test]
    fn three_bins_with_an_empty_one() {
        // reference [3, 1, 0], current [1, 1, 2]; ½ added to 3 bins, totals 5.5:
        //   r = (7/11, 3/11, 1/11), c = (3/11, 3/11, 5/11).
        // PSI = (−4/11)·ln(3/7) + 0 + (4/11)·ln 5 = (4/11)·ln(35/3)
        //     = 0.3636363636·2.4567357 = 0.8933585.
        // JS: m = (5/11, 3/11, 3/11);
        //   KL(r‖m) = (7/11)·log2(7/5) + (1/11)·log2(1/3) = 0.3089083 − 0.1440876
        //   KL(c‖m) = (3/11)·log2(3/5) + (5/11)·log2(5/3) = −0.2009907 + 0.3349845
        //   JSD = ½·(0.1648207 + 0.1339938) = 0.1494071 bits, distance 0.3865322.
        let (r, c) = ([3, 1, 0], [1, 1, 2]);
        assert!(close(psi(&r, &c), 0.893_358_5, 1e-7), "{}", psi(&r, &c));
        assert!(
            close(js_distance(&r, &c), 0.386_532_2, 1e-7),
            "{}",
            js_distance(&r, &c)
        );
    }

    #[test]
    fn identical_histograms_are_at_zero() {
        for counts in [&[5_u64, 0, 7, 1][..], &[0, 0, 0], &[1_000_000], &[]] {
            assert_eq!(psi(counts, counts), 0.0, "{counts:?}");
            assert_eq!(js_distance(counts, counts), 0.0, "{counts:?}");
        }
    }

    #[test]
    fn equal_shapes_of_different_sizes_are_at_zero() {
        // A small window of the reference's shape, empty bins included, is not drift.
        let large = [1_000_000, 0, 0, 1_000_000];
        for n in [1, 20, 200, 2000] {
            let window = [n, 0, 0, n];
            assert!(js_distance(&large, &window) < 1e-7, "n = {n}");
            assert!(psi(&large, &window) < 1e-12, "n = {n}");
        }
    }

    #[test]
    fn smoothing_fades_as_the_window_grows() {
        // The reference fills a bin the window leaves empty: with ½ added to the
        // window's empty bin its PSI is finite, and it grows towards the unsmoothed
        // (infinite) value as the window grows — the smoothing's pull shrinks.
        let reference = [1_000, 1_000, 1_000];
        let psis: Vec<f64> = [2, 20, 200, 2000]
            .iter()
            .map(|&n| psi(&reference, &[n, 0, n]))
            .collect();
        assert!(psis.iter().all(|p| p.is_finite()), "{psis:?}");
        assert!(psis.windows(2).all(|p| p[1] > p[0]), "{psis:?}");
    }

    #[test]
    #[should_panic(expected = "different bins")]
    fn different_lengths_panic() {
        psi(&[1, 2], &[1, 2, 3]);
    }

    #[test]
    fn js_matching_psi_at_the_usual_bands() {
        // √(0.1 / (8 ln 2)) = √(0.1 / 5.5451774) = √0.0180337 = 0.1342896
        // √(0.25 / 5.5451774) = √0.0450842 = 0.2123305
        assert!(close(js_matching_psi(0.1), 0.134_289_6, 1e-7));
        assert!(close(js_matching_psi(0.25), 0.212_330_5, 1e-7));
        assert_eq!(js_matching_psi(0.0), 0.0);
        assert_eq!(js_matching_psi(-1.0), 0.0);
    }

    /// Counts of a unit normal with the given mean and spread over 40 bins on [-5, 5],
    /// large enough that smoothing is negligible.
    fn normal_counts(mean: f64, sd: f64) -> Vec<u64> {
        let bins = 40;
        let density: Vec<f64> = (0..bins)
            .map(|i| {
                let x = -5.0 + 10.0 * (i as f64 + 0.5) / bins as f64;
                (-((x - mean) / sd).powi(2) / 2.0).exp()
            })
            .collect();
        let total: f64 = density.iter().sum();
        density
            .iter()
            .map(|d| (d / total * 1e8).round() as u64)
            .collect()
    }

    #[test]
    fn js_matching_psi_holds_for_small_shifts() {
        // Within 3% on these shifts (PSI 0.01 to 0.25); 5% leaves room.
        let reference = normal_counts(0.0, 1.0);
        let shifts = [
            ("mean 0.1", normal_counts(0.1, 1.0)),
            ("mean 0.3", normal_counts(0.3, 1.0)),
            ("mean 0.5", normal_counts(0.5, 1.0)),
            ("spread 1.2", normal_counts(0.0, 1.2)),
            ("mean 0.3 spread 0.85", normal_counts(0.3, 0.85)),
        ];
        for (name, current) in shifts {
            let p = psi(&reference, &current);
            let js = js_distance(&reference, &current);
            let predicted = js_matching_psi(p);
            let error = (predicted - js).abs() / js;
            assert!(
                error < 0.05,
                "{name}: PSI {p:.4}, JS {js:.4}, predicted {predicted:.4}"
            );
        }
    }

    fn histogram_pair() -> impl Strategy<Value = (Vec<u64>, Vec<u64>)> {
        (1_usize..20).prop_flat_map(|bins| {
            (
                prop::collection::vec(0_u64..1000, bins),
                prop::collection::vec(0_u64..1000, bins),
            )
        })
    }

    proptest! {
        #[test]
        fn js_is_a_bounded_symmetric_distance((r, c) in histogram_pair()) {
            let d = js_distance(&r, &c);
            prop_assert!((0.0..=1.0).contains(&d), "{}", d);
            prop_assert!(close(d, js_distance(&c, &r), 1e-12));
            prop_assert_eq!(js_distance(&r, &r), 0.0);
        }

        #[test]
        fn psi_is_non_negative_and_symmetric((r, c) in histogram_pair()) {
            let p = psi(&r, &c);
            prop_assert!(p >= 0.0 && p.is_finite(), "{}", p);
            prop_assert!(close(p, psi(&c, &r), 1e-9 * p.max(1.0)));
        }
    }
}
