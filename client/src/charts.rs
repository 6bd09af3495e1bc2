//! The SVG charts (plotters): throughput over time in 1-second and
//! 10-second buckets, marked with the run's phases (warm-up, main, or each
//! open-loop stage), error bursts and outages ([`Marks`]), and the latency
//! percentile distribution of ack and delivery latency on the usual
//! "nines" axis (90%, 99%, 99.9%, ...), where the tail a user feels is as
//! wide as the median.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};

const SIZE: (u32, u32) = (1200, 700);

fn chart_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Chart {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// A white canvas of the charts' size that draws into `path`.
fn canvas(path: &Path) -> Result<DrawingArea<SVGBackend<'_>, Shift>> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| chart_error(path, e))?;
    Ok(root)
}

/// What every chart shares: the title, margins and room for axis labels.
fn layout<'a, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    title: &str,
) -> ChartBuilder<'a, 'static, DB> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(90);
    builder
}

/// Draws the legend (where it hides the least of the curves) and writes
/// the file.
fn finish<'a, DB, CT>(
    root: &DrawingArea<DB, Shift>,
    chart: &mut ChartContext<'a, DB, CT>,
    legend: SeriesLabelPosition,
    path: &Path,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(legend)
        .draw()
        .map_err(|e| chart_error(path, e))?;
    root.present().map_err(|e| chart_error(path, e))
}

/// What the throughput chart marks besides the acks; times are seconds
/// since the run's start.
#[derive(Clone, Debug, Default)]
pub struct Marks {
    /// Periods a server refused messages: (start, end).
    pub outages: Vec<(f64, f64)>,
    /// The run's phases, in order: (start, end, label), e.g. `warm-up`,
    /// `main`, or `stage 2: 5,000/s`.
    pub phases: Vec<(f64, f64, String)>,
    /// Failed attempts per second (index = second).
    pub errors: Vec<u64>,
}

/// Runs of consecutive seconds with failed attempts: (start, end, count).
pub fn bursts(errors: &[u64]) -> Vec<(f64, f64, u64)> {
    let mut out: Vec<(f64, f64, u64)> = Vec::new();
    for (i, &n) in errors.iter().enumerate() {
        if n == 0 {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1 == i as f64 => {
                last.1 += 1.0;
                last.2 += n;
            }
            _ => out.push((i as f64, i as f64 + 1.0, n)),
        }
    }
    out
}

/// Acked messages per second (`per_second[i]` = second i of the run),
/// drawn as a 1-second line and 10-second averages, over the run's phases
/// (alternately shaded, labelled at the top), the periods when a server
/// refused messages, and error bursts (red, with their count).
pub fn throughput(path: &Path, per_second: &[u64], marks: &Marks, title: &str) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| chart_error(path, e);
    let root = canvas(path)?;
    let phase_end = marks.phases.iter().map(|p| p.1).fold(0.0, f64::max);
    let seconds = (per_second.len() as f64)
        .max(marks.errors.len() as f64)
        .max(phase_end)
        .max(1.0);
    let tens: Vec<(f64, f64)> = per_second
        .chunks(10)
        .enumerate()
        .map(|(i, c)| {
            (
                i as f64 * 10.0,
                c.iter().sum::<u64>() as f64 / c.len() as f64,
            )
        })
        .collect();
    let peak = per_second.iter().copied().max().unwrap_or(0).max(1) as f64;
    let mut chart = layout(&root, title)
        .build_cartesian_2d(0.0..seconds, 0.0..peak * 1.1)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .x_desc("seconds since start")
        .y_desc("acked messages / s")
        .y_label_formatter(&|v| crate::progress::group(*v as u64))
        .draw()
        .map_err(|e| err(&e))?;
    let top = peak * 1.1;
    // Phases: every other one shaded, a line where each begins, its label
    // at the top.
    let band = RGBColor(120, 120, 160).mix(0.08);
    chart
        .draw_series(
            marks
                .phases
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 2 == 1)
                .map(|(_, (start, end, _))| {
                    Rectangle::new([(*start, 0.0), (end.min(seconds), top)], band.filled())
                }),
        )
        .map_err(|e| err(&e))?;
    chart
        .draw_series(
            marks
                .phases
                .iter()
                .filter(|p| p.0 > 0.0)
                .map(|p| PathElement::new(vec![(p.0, 0.0), (p.0, top)], BLACK.mix(0.5))),
        )
        .map_err(|e| err(&e))?;
    chart
        .draw_series(marks.phases.iter().map(|(start, _, label)| {
            Text::new(
                label.clone(),
                (*start + seconds * 0.004, top * 0.985),
                ("sans-serif", 14).into_font().color(&BLACK.mix(0.8)),
            )
        }))
        .map_err(|e| err(&e))?;
    let errors = bursts(&marks.errors);
    if !errors.is_empty() {
        let red = RGBColor(220, 0, 0);
        chart
            .draw_series(errors.iter().map(|&(start, end, _)| {
                Rectangle::new(
                    [(start, 0.0), (end.min(seconds), top)],
                    red.mix(0.15).filled(),
                )
            }))
            .map_err(|e| err(&e))?
            .label("error burst (failed attempts)")
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 20, y + 5)], red.mix(0.3).filled())
            });
        chart
            .draw_series(errors.iter().map(|&(start, _, n)| {
                Text::new(
                    format!("{} err", crate::progress::group(n)),
                    (start, top * 0.93),
                    ("sans-serif", 13).into_font().color(&red),
                )
            }))
            .map_err(|e| err(&e))?;
    }
    if !marks.outages.is_empty() {
        let shade = RGBColor(255, 160, 0).mix(0.25);
        chart
            .draw_series(marks.outages.iter().map(|&(start, end)| {
                Rectangle::new(
                    [(start.max(0.0), 0.0), (end.min(seconds), peak * 1.1)],
                    shade.filled(),
                )
            }))
            .map_err(|e| err(&e))?
            .label("a server refusing (UNAVAILABLE)")
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], shade.filled()));
    }
    chart
        .draw_series(LineSeries::new(
            per_second
                .iter()
                .enumerate()
                .map(|(i, &v)| (i as f64 + 0.5, v as f64)),
            BLUE.mix(0.6).stroke_width(1),
        ))
        .map_err(|e| err(&e))?
        .label("1-second buckets")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    // Steps: each 10-second bucket is flat over its ten seconds.
    let steps: Vec<(f64, f64)> = tens
        .iter()
        .flat_map(|&(start, v)| [(start, v), ((start + 10.0).min(seconds), v)])
        .collect();
    chart
        .draw_series(LineSeries::new(steps, RED.stroke_width(3)))
        .map_err(|e| err(&e))?
        .label("10-second buckets")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(3)));
    finish(&root, &mut chart, SeriesLabelPosition::LowerRight, path)
}

/// Deepest percentile shown: 99.9999%.
const MAX_NINES: f64 = 6.0;

/// Percentile → x on the nines axis: 0% → 0, 90% → 1, 99% → 2, 99.9% → 3.
fn nines(percentile: f64) -> f64 {
    let rest = (1.0 - percentile / 100.0).max(10f64.powf(-MAX_NINES));
    -rest.log10()
}

/// One curve per named series: (percentile 0..=100, latency ms).
pub fn latency(path: &Path, series: &[(&str, Vec<(f64, f64)>)], title: &str) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| chart_error(path, e);
    let root = canvas(path)?;
    let points = series.iter().flat_map(|(_, c)| c.iter());
    let (mut lo, mut hi, mut right) = (f64::INFINITY, 0.0f64, 3.0f64);
    for &(p, ms) in points {
        lo = lo.min(ms);
        hi = hi.max(ms);
        right = right.max(nines(p).ceil());
    }
    if !lo.is_finite() {
        (lo, hi) = (0.1, 1.0);
    }
    let lo = (lo * 0.8).max(0.001);
    let hi = (hi * 1.25).max(lo * 10.0);
    let mut chart = layout(&root, title)
        .build_cartesian_2d(0.0..right.min(MAX_NINES), (lo..hi).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .x_desc("percentile")
        .y_desc("latency (ms, log scale)")
        .x_labels(right as usize + 1)
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() > 1e-6 {
                return String::new();
            }
            let p = 100.0 * (1.0 - 10f64.powf(-x.round()));
            let digits = (x.round() as usize).saturating_sub(2);
            format!("{p:.digits$}%")
        })
        .y_label_formatter(&|v| format!("{v}"))
        .draw()
        .map_err(|e| err(&e))?;
    let colors = [BLUE, RED, GREEN, MAGENTA];
    for (i, (name, curve)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let label = if curve.is_empty() {
            format!("{name} (none observed)")
        } else {
            name.to_string()
        };
        chart
            .draw_series(LineSeries::new(
                curve.iter().map(|&(p, ms)| (nines(p), ms)),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    finish(&root, &mut chart, SeriesLabelPosition::UpperLeft, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nines_axis() {
        assert!((nines(0.0) - 0.0).abs() < 1e-9);
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-6);
        assert!((nines(100.0) - MAX_NINES).abs() < 1e-9);
    }

    #[test]
    fn consecutive_seconds_with_errors_make_one_burst() {
        assert_eq!(
            bursts(&[0, 3, 1, 0, 0, 2]),
            vec![(1.0, 3.0, 4), (5.0, 6.0, 2)]
        );
        assert!(bursts(&[0, 0]).is_empty());
    }

    #[test]
    fn charts_are_written_with_their_series() {
        // Both charts render to SVG with a polyline per series and the legend.
        let dir = std::env::temp_dir().join(format!("chatflow-charts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = dir.join("t.svg");
        let marks = Marks {
            outages: vec![(3.0, 5.5)],
            phases: vec![
                (0.0, 2.0, "warm-up".into()),
                (2.0, 7.0, "stage 1: 1,000/s".into()),
                (7.0, 12.0, "stage 2: 5,000/s".into()),
            ],
            errors: vec![0, 0, 0, 4, 2, 0, 0, 0, 0, 1],
        };
        throughput(
            &t,
            &[5, 10, 8, 0, 12, 11, 9, 10, 10, 10, 7, 3],
            &marks,
            "throughput",
        )
        .unwrap();
        let svg = std::fs::read_to_string(&t).unwrap();
        assert!(svg.contains("<polyline") && svg.contains("10-second buckets"));
        assert!(svg.contains("a server refusing"), "the outage is marked");
        for label in ["warm-up", "stage 1: 1,000/s", "stage 2: 5,000/s"] {
            assert!(svg.contains(label), "phase {label} is labelled");
        }
        assert!(svg.contains("error burst") && svg.contains("6 err") && svg.contains("1 err"));
        let l = dir.join("l.svg");
        let curve = vec![(0.0, 0.5), (50.0, 1.0), (99.0, 4.0), (100.0, 9.0)];
        latency(&l, &[("ack", curve), ("delivery", Vec::new())], "latency").unwrap();
        let svg = std::fs::read_to_string(&l).unwrap();
        assert!(svg.contains("<polyline") && svg.contains("delivery (none observed)"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
