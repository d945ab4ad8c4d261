//! Sample statistics of NTK entries over initializations (DESIGN §6): mean, variance,
//! dispersion `D = E[T^2] / E[T]^2` with a deterministic bootstrap interval, log-moments.
//!
//! All functions are allocation-free; the bootstrap takes a caller-owned table of resampling
//! counts so that one table serves every cell of a sweep (common random numbers: each cell's
//! interval is still an ordinary percentile bootstrap of that cell's samples).

use crate::rng;

/// Moments of one sample `t_1..t_n`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Moments {
    /// Number of values n.
    pub n: usize,
    /// `m1 = (1/n) sum t_i`.
    pub mean: f64,
    /// Unbiased variance `(1/(n-1)) sum (t_i - m1)^2` (0 for n = 1).
    pub var: f64,
    /// Standard error of the mean `sqrt(var / n)`.
    pub sem: f64,
    /// Plug-in dispersion `D = m2 / m1^2`, `m2 = (1/n) sum t_i^2`; `D >= 1` by Cauchy–Schwarz.
    pub dispersion: f64,
    /// Mean of `ln t_i`; NaN if some `t_i <= 0`.
    pub log_mean: f64,
    /// Unbiased variance of `ln t_i`; NaN if some `t_i <= 0`.
    pub log_var: f64,
}

/// Mean and unbiased variance by the two-pass formula (exact for constant data).
fn mean_var(n: usize, f: impl Fn(usize) -> f64) -> (f64, f64) {
    let nf = n as f64;
    let mean = (0..n).map(&f).sum::<f64>() / nf;
    let ss = (0..n).map(|i| (f(i) - mean) * (f(i) - mean)).sum::<f64>();
    (mean, if n > 1 { ss / (nf - 1.0) } else { 0.0 })
}

/// The [`Moments`] of `x`.
///
/// ```
/// let m = ntk_core::stats::moments(&[1.0, 2.0, 3.0]);
/// assert_eq!(m.mean, 2.0);
/// assert_eq!(m.var, 1.0);
/// assert!((m.dispersion - 14.0 / 3.0 / 4.0).abs() < 1e-15);
/// ```
///
/// # Panics
/// If `x` is empty.
#[track_caller]
pub fn moments(x: &[f64]) -> Moments {
    assert!(!x.is_empty(), "moments: empty sample");
    let n = x.len();
    let (mean, var) = mean_var(n, |i| x[i]);
    let m2 = x.iter().map(|v| v * v).sum::<f64>() / n as f64;
    let (log_mean, log_var) = if x.iter().all(|&v| v > 0.0) {
        mean_var(n, |i| libm::log(x[i]))
    } else {
        (f64::NAN, f64::NAN)
    };
    Moments {
        n,
        mean,
        var,
        sem: libm::sqrt(var / n as f64),
        dispersion: m2 / (mean * mean),
        log_mean,
        log_var,
    }
}

/// Fills `counts` (`b` rows of `n`) with bootstrap multiplicities: row `k` counts how often
/// each index appears among `n` draws with replacement, index `j` of row `k` being
/// `floor(u n)` for the 32-bit uniform word `j` of Philox stream `k` under `seed`.
///
/// # Panics
/// If `counts.len() != b * n`.
#[track_caller]
pub fn bootstrap_counts(counts: &mut [f64], seed: u64, n: usize, b: usize) {
    assert_eq!(counts.len(), b * n, "bootstrap_counts: shape");
    counts.fill(0.0);
    for (k, row) in counts.chunks_exact_mut(n.max(1)).enumerate().take(b) {
        for j in 0..n {
            let w = rng::block(seed, k as u64, (j / 4) as u64)[j % 4];
            let idx = ((w as u64 * n as u64) >> 32) as usize;
            row[idx] += 1.0;
        }
    }
}

/// Percentile bootstrap interval of the dispersion at confidence `level` (e.g. 0.95):
/// for each row of `counts` (from [`bootstrap_counts`]) the resampled
/// `D* = (sum c_i t_i^2 / n) / (sum c_i t_i / n)^2`, then the `(1 - level)/2` and
/// `(1 + level)/2` quantiles (linear interpolation) of the `b` values. `work` holds `b`.
///
/// # Panics
/// If `counts.len() != b * x.len()`, `work.len() < b` or `b == 0`.
#[track_caller]
pub fn bootstrap_dispersion(
    work: &mut [f64],
    x: &[f64],
    counts: &[f64],
    b: usize,
    level: f64,
) -> (f64, f64) {
    let n = x.len();
    assert!(b > 0 && counts.len() == b * n && work.len() >= b, "bootstrap_dispersion: shapes");
    let work = &mut work[..b];
    for (w, row) in work.iter_mut().zip(counts.chunks_exact(n)) {
        let (mut s1, mut s2) = (0.0, 0.0);
        for (&c, &t) in row.iter().zip(x) {
            s1 += c * t;
            s2 += c * t * t;
        }
        let nf = n as f64;
        *w = (s2 / nf) / ((s1 / nf) * (s1 / nf));
    }
    work.sort_unstable_by(f64::total_cmp);
    let alpha = (1.0 - level) / 2.0;
    (quantile_sorted(work, alpha), quantile_sorted(work, 1.0 - alpha))
}

/// Quantile `p` of sorted data by linear interpolation between order statistics
/// (type 7 of Hyndman & Fan, NumPy's default).
///
/// # Panics
/// If `sorted` is empty.
#[track_caller]
pub fn quantile_sorted(sorted: &[f64], p: f64) -> f64 {
    assert!(!sorted.is_empty(), "quantile_sorted: empty");
    let h = (sorted.len() - 1) as f64 * p.clamp(0.0, 1.0);
    let lo = libm::floor(h) as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    #[test]
    fn moments_match_direct_formulas() {
        let x = [0.5, 2.0, 4.0, 1.5, 3.0];
        let m = moments(&x);
        let n = 5.0;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
        let m2 = x.iter().map(|v| v * v).sum::<f64>() / n;
        assert!((m.mean - 2.2).abs() < 1e-15);
        assert!((m.var - var).abs() < 1e-14);
        assert!((m.dispersion - m2 / (mean * mean)).abs() < 1e-14);
        // D = 1 + (n-1)/n Var / mean^2 for the plug-in estimator.
        assert!((m.dispersion - (1.0 + (n - 1.0) / n * var / (mean * mean))).abs() < 1e-14);
        let l: Vec<f64> = x.iter().map(|v| v.ln()).collect();
        let lm = l.iter().sum::<f64>() / n;
        assert!((m.log_mean - lm).abs() < 1e-15);
        assert!(moments(&[1.0, -1.0]).log_mean.is_nan());
        assert_eq!(moments(&[3.0; 4]).dispersion, 1.0);
    }

    #[test]
    fn bootstrap_counts_sum_to_n_and_are_uniform() {
        let (n, b) = (50, 400);
        let mut c = vec![0.0; n * b];
        bootstrap_counts(&mut c, 3, n, b);
        for row in c.chunks(n) {
            assert_eq!(row.iter().sum::<f64>(), n as f64);
        }
        // Each index: count ~ Binomial(n b, 1/n) summed over rows: mean b, sd ~ sqrt(b).
        for j in 0..n {
            let t: f64 = (0..b).map(|k| c[k * n + j]).sum();
            assert!((t - b as f64).abs() < 5.0 * (b as f64).sqrt(), "index {j}: {t}");
        }
        let mut c2 = vec![0.0; n * b];
        bootstrap_counts(&mut c2, 3, n, b);
        assert_eq!(c, c2);
    }

    /// For log-normal data the interval covers the true D = exp(s^2) and is ordered.
    #[test]
    fn bootstrap_interval_covers_lognormal_dispersion() {
        let (n, b, s) = (2000, 500, 0.5);
        let x: Vec<f64> = (0..n).map(|i| libm::exp(s * rng::normal(11, 0, i as u64))).collect();
        let mut c = vec![0.0; n * b];
        bootstrap_counts(&mut c, 5, n, b);
        let mut w = vec![0.0; b];
        let (lo, hi) = bootstrap_dispersion(&mut w, &x, &c, b, 0.95);
        let d = moments(&x).dispersion;
        let truth = libm::exp(s * s);
        assert!(lo < d && d < hi, "{lo} {d} {hi}");
        assert!(lo < truth && truth < hi, "{lo} {truth} {hi}");
        assert!(lo >= 1.0);
    }

    #[test]
    fn quantiles_interpolate() {
        let s = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile_sorted(&s, 0.0), 1.0);
        assert_eq!(quantile_sorted(&s, 1.0), 5.0);
        assert_eq!(quantile_sorted(&s, 0.5), 3.0);
        assert_eq!(quantile_sorted(&s, 0.125), 1.5);
    }
}
