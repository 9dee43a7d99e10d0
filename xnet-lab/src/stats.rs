//! Figures from repeated benchmark runs: the median, the spread, a ratio of two medians with the
//! range the runs allow, and the order in which rounds take the modes.

/// One figure over several runs: NaN values (a run that does not measure the figure) are left out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// How many runs measured the figure.
    pub runs: usize,
}

impl Summary {
    /// `None` when no run measured the figure.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Summary { median, min: v[0], max: v[n - 1], runs: n })
    }

    /// (max - min) / median: 0.1 when the runs lie within 10% of the median's size of each other.
    pub fn relative_spread(&self) -> f64 {
        (self.max - self.min) / self.median
    }

    /// The same figure scaled (units: bit/s to Gbit/s, say).
    pub fn scaled(&self, by: f64) -> Summary {
        Summary { median: self.median * by, min: self.min * by, max: self.max * by, runs: self.runs }
    }

    /// `median (min..max, spread%)` with `decimals` decimals, the spread as a whole percentage.
    pub fn describe(&self, decimals: usize) -> String {
        format!(
            "{:.d$} ({:.d$}..{:.d$}, {:.0}%)",
            self.median,
            self.min,
            self.max,
            self.relative_spread() * 100.0,
            d = decimals
        )
    }
}

/// The median of the measured values (NaN, not measured, left out); NaN if there are none.
pub fn median(values: &[f64]) -> f64 {
    Summary::of(values).map_or(f64::NAN, |s| s.median)
}

/// A ratio of two figures measured over runs: the ratio of their medians, and the lowest and
/// highest ratio any run of the one and any run of the other give.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ratio {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

impl Ratio {
    pub fn of(numerator: &Summary, denominator: &Summary) -> Ratio {
        Ratio {
            value: numerator.median / denominator.median,
            low: numerator.min / denominator.max,
            high: numerator.max / denominator.min,
        }
    }
}

/// The order of the modes (indices into a list of `modes`) in round `round` (from 0): every
/// round takes every mode once, each round starting one mode later than the one before, so that
/// no mode always runs first, or always right after the machine was busy with the same other one
/// at the same point of the run.
pub fn round_order(modes: usize, round: usize) -> Vec<usize> {
    (0..modes).map(|i| (i + round) % modes.max(1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts_leaves_out_not_measured() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[f64::NAN, 5.0, 1.0, f64::NAN, 3.0]), 3.0);
        assert!(median(&[f64::NAN]).is_nan());
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn summary_gives_range_and_relative_spread() {
        let s = Summary::of(&[10.0, 12.0, 9.0, 11.0, 10.0]).expect("measured");
        assert_eq!(s, Summary { median: 10.0, min: 9.0, max: 12.0, runs: 5 });
        assert!((s.relative_spread() - 0.3).abs() < 1e-12);
        assert_eq!(s.describe(1), "10.0 (9.0..12.0, 30%)");
        assert_eq!(s.scaled(0.5).describe(2), "5.00 (4.50..6.00, 30%)");
        assert_eq!(Summary::of(&[f64::NAN, f64::NAN]), None);
        let one = Summary::of(&[7.0]).expect("measured");
        assert_eq!(one.relative_spread(), 0.0);
    }

    #[test]
    fn ratio_spans_every_pairing_of_runs() {
        let x = Summary::of(&[18.0, 20.0, 22.0]).expect("measured");
        let k = Summary::of(&[9.0, 10.0, 11.0]).expect("measured");
        let r = Ratio::of(&x, &k);
        assert_eq!(r.value, 2.0);
        assert!((r.low - 18.0 / 11.0).abs() < 1e-12);
        assert!((r.high - 22.0 / 9.0).abs() < 1e-12);
    }

    #[test]
    fn rounds_take_every_mode_once_in_rotated_order() {
        assert_eq!(round_order(4, 0), vec![0, 1, 2, 3]);
        assert_eq!(round_order(4, 1), vec![1, 2, 3, 0]);
        assert_eq!(round_order(4, 5), vec![1, 2, 3, 0]);
        // Over as many rounds as modes, every mode runs once in every position.
        for position in 0..5 {
            let mut seen: Vec<usize> = (0..5).map(|r| round_order(5, r)[position]).collect();
            seen.sort();
            assert_eq!(seen, vec![0, 1, 2, 3, 4]);
        }
        assert_eq!(round_order(1, 3), vec![0]);
        assert!(round_order(0, 2).is_empty());
    }
}
