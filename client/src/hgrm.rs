//! HdrHistogram's percentile-distribution text (`.hgrm`), the format its
//! plotter (hdrhistogram.github.io/HdrHistogram/plotFiles.html), wrk2 and
//! HistogramLogAnalyzer read. The `hdrhistogram` crate does not write it,
//! so this module does, line for line as Java's
//! `AbstractHistogram.outputPercentileDistribution` (plain-text form).
//! The percentile steps follow Java's `PercentileIterator` in its own
//! arithmetic (percent levels, 0, 10, 20, ... 50, 55, ... 75, 77.5, ...):
//! the crate's `iter_quantiles` steps in quantiles, whose float sums
//! (0.1 + 0.2 ...) can land a step on the next value where Java's does not.
//!
//! ```text
//!        Value     Percentile TotalCount 1/(1-Percentile)
//!
//!        0.100 0.000000000000          1           1.00
//!        ...
//!        0.400 1.000000000000          4
//! #[Mean    =        0.250, StdDeviation   =        0.112]
//! #[Max     =        0.400, Total count    =            4]
//! #[Buckets =           16, SubBuckets     =         2048]
//! ```
//!
//! Values are divided by `scale` (1000 turns recorded microseconds into
//! milliseconds) and printed with as many decimals as the histogram has
//! significant digits; the last line (percentile 1.0) has no
//! `1/(1-Percentile)` column, as in Java.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// The distribution of `hist` with `ticks` percentile steps per half
/// distance to 100% (HdrHistogram's default is 5), values divided by
/// `scale`. An empty histogram gives the header and footer only.
pub fn percentile_distribution(hist: &Histogram<u64>, ticks: u32, scale: f64) -> String {
    let digits = usize::from(hist.sigfig());
    let mut out = String::new();
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let total = hist.len();
    let mut line = |value: u64, percent: f64, count: u64| {
        let value = value as f64 / scale;
        let q = percent / 100.0;
        if percent < 100.0 {
            let _ = writeln!(
                out,
                "{value:12.digits$} {q:2.12} {count:10} {:14.2}",
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(out, "{value:12.digits$} {q:2.12} {count:10}");
        }
    };
    // Java's iterator: each step reports the first recorded value whose
    // share reaches the level; in the last bucket it takes one step, then
    // jumps to 100%.
    let mut level = 0.0f64;
    let mut below = 0u64;
    for v in hist.iter_recorded() {
        below += v.count_at_value();
        let reached = 100.0 * below as f64 / total as f64;
        let last = below >= total;
        while level <= reached {
            line(v.value_iterated_to(), level, below);
            level = next_level(level, ticks);
            if last {
                break;
            }
        }
        if last {
            line(v.value_iterated_to(), 100.0, below);
            break;
        }
    }
    let (mean, stdev, max) = if total > 0 {
        (hist.mean(), hist.stdev(), hist.max() as f64)
    } else {
        (0.0, 0.0, 0.0)
    };
    let _ = writeln!(
        out,
        "#[Mean    = {:12.digits$}, StdDeviation   = {:12.digits$}]",
        mean / scale,
        stdev / scale
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.digits$}, Total count    = {total:12}]",
        max / scale
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        hist.buckets(),
        sub_buckets(hist.sigfig())
    );
    out
}

/// The level after `level` (percent): `ticks` steps per half of the
/// distance left to 100%, as Java's `PercentileIterator` computes it.
fn next_level(level: f64, ticks: u32) -> f64 {
    let halvings = ((100.0 / (100.0 - level)).ln() / 2f64.ln()) as u32;
    let steps = u64::from(ticks) << (halvings + 1).min(62);
    level + 100.0 / steps as f64
}

/// Java's `subBucketCount`: the power of two that resolves
/// `2 × 10^digits` values (2,048 for 3 digits).
fn sub_buckets(digits: u8) -> u64 {
    (2 * 10u64.pow(u32::from(digits))).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100, 200, 300 and 400 µs: values below 2,048 are stored exactly, so
    /// every line can be worked out by hand from Java's percentile
    /// iterator: ticks of 10% up to 50%, 5% up to 75%, 2.5% up to 87.5%...;
    /// each tick reports the smallest value whose share reaches it; once
    /// the last value is reached the iterator jumps to 1.0.
    const KNOWN: &str = "       Value     Percentile TotalCount 1/(1-Percentile)

       0.100 0.000000000000          1           1.00
       0.100 0.100000000000          1           1.11
       0.100 0.200000000000          1           1.25
       0.200 0.300000000000          2           1.43
       0.200 0.400000000000          2           1.67
       0.200 0.500000000000          2           2.00
       0.300 0.550000000000          3           2.22
       0.300 0.600000000000          3           2.50
       0.300 0.650000000000          3           2.86
       0.300 0.700000000000          3           3.33
       0.300 0.750000000000          3           4.00
       0.400 0.775000000000          4           4.44
       0.400 1.000000000000          4
#[Mean    =        0.250, StdDeviation   =        0.112]
#[Max     =        0.400, Total count    =            4]
#[Buckets =           16, SubBuckets     =         2048]
";

    fn histogram() -> Histogram<u64> {
        // The client's own bounds (1 µs .. 60 s, 3 digits): 16 buckets.
        Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
    }

    #[test]
    fn a_known_distribution_is_written_as_hdrhistogram_writes_it() {
        let mut h = histogram();
        for us in [100, 200, 300, 400] {
            h.record(us).unwrap();
        }
        let text = percentile_distribution(&h, 5, 1000.0);
        assert_eq!(text, KNOWN, "\n{text}");
    }

    #[test]
    fn the_columns_parse_as_the_plotter_reads_them() {
        // 10,000 values 1..=10,000 µs plus one 1 s outlier: every data line
        // has 4 numeric columns (the last 3), counts and percentiles never
        // fall, the last line is percentile 1.0 at the total, and the footer
        // holds the mean, max and count.
        let mut h = histogram();
        for us in 1..=10_000 {
            h.record(us).unwrap();
        }
        h.record(1_000_000).unwrap();
        let text = percentile_distribution(&h, 5, 1000.0);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "");
        let data: Vec<Vec<f64>> = lines[2..]
            .iter()
            .take_while(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().map(|c| c.parse().unwrap()).collect())
            .collect();
        assert!(data.len() > 50, "{}", data.len());
        let (last, body) = data.split_last().unwrap();
        assert!(body.iter().all(|row| row.len() == 4));
        assert!(data
            .windows(2)
            .all(|w| w[0][0] <= w[1][0] && w[0][1] <= w[1][1] && w[0][2] <= w[1][2]));
        assert_eq!(last.len(), 3);
        assert_eq!((last[1], last[2]), (1.0, 10_001.0));
        assert!((last[0] - 1000.0).abs() < 1.0, "max ≈ 1000 ms: {last:?}");
        // The median of 1..=10,000 µs is 5 ms, within the 0.1% resolution.
        let median = body.iter().find(|row| row[1] >= 0.5).unwrap();
        assert!((median[0] - 5.0).abs() < 0.01, "{median:?}");
        let footer = &lines[lines.len() - 3..];
        assert!(footer[0].starts_with("#[Mean    =        5.") && footer[0].ends_with(']'));
        assert_eq!(
            footer[1],
            "#[Max     =     1000.447, Total count    =        10001]"
        );
        assert_eq!(
            footer[2],
            "#[Buckets =           16, SubBuckets     =         2048]"
        );
    }

    #[test]
    fn an_empty_histogram_has_the_header_and_a_zero_footer() {
        let text = percentile_distribution(&histogram(), 5, 1000.0);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[3].contains("Total count    =            0"));
        assert_eq!(sub_buckets(2), 256);
        assert_eq!(sub_buckets(3), 2048);
    }
}
