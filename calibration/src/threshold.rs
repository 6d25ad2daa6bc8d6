//! Thresholds that keep a chosen fraction of a sample.

/// The threshold `t` that keeps at most `rate` of `values` under the rule `v >= t`, and as
/// many as ties allow.
///
/// `t` is the smallest value of the sample whose kept fraction is at most `rate`. Ties
/// are never split: equal values are all kept or all dropped, so when a run of equal
/// values straddles the cut the whole run is dropped and fewer than `rate` are kept. When
/// even the largest value occurs too often to keep (or `rate` × n < 1), `t` is the next
/// `f32` above the largest value and nothing is kept.
///
/// NaN values are ignored. `None` for a sample with no other values, for `rate` outside
/// (0, 1], and in the degenerate case where only a threshold above +∞ would do.
pub fn threshold_for_rate(values: &[f32], rate: f64) -> Option<f32> {
    if !(rate > 0.0 && rate <= 1.0) {
        return None;
    }
    let mut sorted: Vec<f32> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_unstable_by(f32::total_cmp);
    let n = sorted.len();
    let keep = most_kept(n, rate);
    if keep == n {
        return Some(sorted[0]);
    }
    // The largest value that must be dropped; everything equal to it goes too.
    let dropped = sorted[n - keep - 1];
    let first_kept = sorted.partition_point(|&v| v <= dropped);
    match sorted.get(first_kept) {
        Some(&t) => Some(t),
        None if dropped < f32::INFINITY => Some(dropped.next_up()),
        None => None,
    }
}

/// The largest k with k / n <= rate, decided the way the caller would check it, so that
/// 0.29 of 100 is 29 even though 0.29 × 100 rounds to 28.999…
fn most_kept(n: usize, rate: f64) -> usize {
    let fraction = |k: usize| k as f64 / n as f64;
    let mut k = ((rate * n as f64).floor() as usize).min(n);
    while k < n && fraction(k + 1) <= rate {
        k += 1;
    }
    while k > 0 && fraction(k) > rate {
        k -= 1;
    }
    k
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn kept(values: &[f32], t: f32) -> usize {
        values.iter().filter(|&&v| v >= t).count()
    }

    #[test]
    fn distinct_values_keep_exactly_the_rate() {
        // 1000 distinct values in a scrambled order.
        let values: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 / 10.0)
            .collect();
        let t = threshold_for_rate(&values, 0.02).expect("a threshold");
        assert_eq!(kept(&values, t), 20);
        assert_eq!(t, 98.0);
    }

    #[test]
    fn decimal_rates_are_not_lost_to_rounding() {
        // 0.29 × 100 is 28.999… in f64.
        let values: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let t = threshold_for_rate(&values, 0.29).expect("a threshold");
        assert_eq!(kept(&values, t), 29);
    }

    #[test]
    fn a_run_of_ties_at_the_cut_is_dropped_whole() {
        // Sorted: 1 2 3 3 3 4 5 6 7 8 (n = 10).
        let values = [3.0, 8.0, 1.0, 3.0, 5.0, 2.0, 7.0, 3.0, 6.0, 4.0];
        // Rate 0.5 keeps 5: the cut falls just above the run of 3s.
        assert_eq!(threshold_for_rate(&values, 0.5), Some(4.0));
        // Rate 0.6 would keep 6, but the sixth largest is a 3 whose run spans the
        // 6th to 8th largest; keeping it would keep 8 > 6, so it keeps 5.
        assert_eq!(threshold_for_rate(&values, 0.6), Some(4.0));
        // Rate 0.8 allows 8: the whole run of 3s fits.
        assert_eq!(threshold_for_rate(&values, 0.8), Some(3.0));
        assert_eq!(kept(&values, 3.0), 8);
        // Rate 0.7 allows 7: not enough for the run of 3s either.
        assert_eq!(threshold_for_rate(&values, 0.7), Some(4.0));
    }

    #[test]
    fn rate_one_is_the_minimum() {
        let values = [4.0, -2.5, 9.0, -2.5, 0.0];
        assert_eq!(threshold_for_rate(&values, 1.0), Some(-2.5));
    }

    #[test]
    fn nothing_can_be_kept() {
        // Rate × n < 1.
        let values = [1.0, 2.0, 3.0];
        let t = threshold_for_rate(&values, 0.1).expect("a threshold");
        assert!(t > 3.0 && kept(&values, t) == 0, "{t}");
        assert_eq!(t, 3.0_f32.next_up());
        // The maximum is tied too often.
        let flat = [5.0; 10];
        assert_eq!(threshold_for_rate(&flat, 0.5), Some(5.0_f32.next_up()));
        // Nothing lies above +∞.
        assert_eq!(threshold_for_rate(&[f32::INFINITY; 4], 0.5), None);
    }

    #[test]
    fn nan_is_ignored() {
        let values = [f32::NAN, 1.0, 2.0, f32::NAN, 3.0, 4.0];
        assert_eq!(threshold_for_rate(&values, 0.5), Some(3.0));
        assert_eq!(threshold_for_rate(&values, 1.0), Some(1.0));
        assert_eq!(threshold_for_rate(&[f32::NAN; 3], 0.5), None);
    }

    #[test]
    fn bad_inputs_have_no_threshold() {
        assert_eq!(threshold_for_rate(&[], 0.5), None);
        for rate in [0.0, -0.1, 1.01, f64::NAN, f64::INFINITY] {
            assert_eq!(threshold_for_rate(&[1.0, 2.0], rate), None, "rate {rate}");
        }
    }

    proptest! {
        #[test]
        fn keeps_at_most_rate_and_any_lower_sample_value_keeps_more(
            values in prop::collection::vec(prop_oneof![-5_i32..5, -1000_i32..1000], 1..300),
            rate in 0.001_f64..=1.0,
        ) {
            // Small integers make ties common.
            let values: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
            let n = values.len() as f64;
            let t = threshold_for_rate(&values, rate).expect("finite sample");
            prop_assert!(kept(&values, t) as f64 / n <= rate);
            for &lower in values.iter().filter(|&&v| v < t) {
                prop_assert!(kept(&values, lower) as f64 / n > rate);
            }
        }
    }
}
