//! Plain-text building blocks for the metrics tables: a column-aligned
//! [`Table`], text made safe and short for a terminal ([`clean`], [`fit`]),
//! a [`sparkline`], and number formats. Everything shown from the document
//! goes through [`clean`]: stored messages are user input, and a control
//! character or an ANSI escape in one must not reach the terminal.

use std::fmt::Write as _;

use crate::progress::group;

/// Width the message lines are cut to: fits an 100-column terminal with
/// the table's indent.
pub const LINE_WIDTH: usize = 96;

/// Widest table cell; ids and reasons beyond it are cut with `…`.
const MAX_CELL: usize = 40;

/// Column alignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table of text cells under a header row, columns padded to their
/// widest cell.
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; cells are cleaned and cut to the widest cell allowed,
    /// except the last column, which the caller sizes (message text).
    pub fn row(&mut self, cells: Vec<String>) {
        let last = self.columns.len().saturating_sub(1);
        let cells = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let c = clean(&c);
                if i < last {
                    fit(&c, MAX_CELL)
                } else {
                    c
                }
            })
            .collect();
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Writes the header and the rows, each line starting with `indent`.
    pub fn write(&self, out: &mut String, indent: &str) {
        self.write_within(out, indent, usize::MAX);
    }

    /// As [`write`](Self::write), the last column cut so that each line
    /// stays within `width` characters (but keeps at least 16 of it).
    pub fn write_within(&self, out: &mut String, indent: &str, width: usize) {
        let n = self.columns.len();
        let mut widths: Vec<usize> = self
            .columns
            .iter()
            .map(|(h, _)| h.chars().count())
            .collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(n) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        if n > 0 && width != usize::MAX {
            let before: usize = widths[..n - 1].iter().sum::<usize>() + 2 * (n - 1);
            let room = width
                .saturating_sub(indent.chars().count() + before)
                .max(16);
            widths[n - 1] = widths[n - 1].min(room);
        }
        let cut = |i: usize, cell: &str| -> String {
            if i + 1 == n {
                fit(cell, widths[i])
            } else {
                cell.to_string()
            }
        };
        let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
            let mut text = String::from(indent);
            for (i, cell) in cells.enumerate().take(n) {
                if i > 0 {
                    text.push_str("  ");
                }
                let cell = cut(i, cell);
                let pad = widths[i].saturating_sub(cell.chars().count());
                match self.columns[i].1 {
                    Align::Right => {
                        text.extend(std::iter::repeat_n(' ', pad));
                        text.push_str(&cell);
                    }
                    Align::Left => {
                        text.push_str(&cell);
                        text.extend(std::iter::repeat_n(' ', pad));
                    }
                }
            }
            let _ = writeln!(out, "{}", text.trim_end());
        };
        line(out, &mut self.columns.iter().map(|(h, _)| *h));
        for row in &self.rows {
            line(out, &mut row.iter().map(String::as_str));
        }
    }
}

/// `text` with every control character (newlines, tabs, ESC of an ANSI
/// sequence, NUL, C1 controls) shown as a space, so one cell stays on one
/// line and cannot drive the terminal.
pub fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `text` cut to `width` characters, the last one `…` when cut.
pub fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Eight levels, lowest to highest.
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// `counts` as a one-line bar chart of at most `width` columns (groups of
/// neighbouring buckets averaged when there are more), scaled to the
/// largest column; empty for no counts.
pub fn sparkline(counts: &[u64], width: usize) -> String {
    if counts.is_empty() || width == 0 {
        return String::new();
    }
    let per = counts.len().div_ceil(width);
    let columns: Vec<f64> = counts
        .chunks(per)
        .map(|c| c.iter().sum::<u64>() as f64 / c.len() as f64)
        .collect();
    let max = columns.iter().cloned().fold(0.0, f64::max);
    columns
        .iter()
        .map(|&v| {
            if max <= 0.0 {
                BARS[0]
            } else {
                BARS[((v / max) * 7.0).round() as usize]
            }
        })
        .collect()
}

/// An optional id (room, user), as is (`4711`), or `-`.
pub fn id(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// An optional count, grouped (`183,000`), or `-`.
pub fn count(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), group)
}

/// A rate or a small real number: grouped whole numbers from 100 up, one
/// decimal below; `-` when absent.
pub fn real(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if !v.is_finite() => v.to_string(),
        Some(v) if v.abs() >= 100.0 => {
            let sign = if v < 0.0 { "-" } else { "" };
            format!("{sign}{}", group(v.abs().round() as u64))
        }
        Some(v) => format!("{v:.1}"),
    }
}

/// Milliseconds with two decimals (latencies), or `-`.
pub fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

/// `part` of `whole` as a percentage with one decimal, or `-`.
pub fn percent(part: Option<u64>, whole: u64) -> String {
    match part {
        Some(p) if whole > 0 => format!("{:.1}%", p as f64 * 100.0 / whole as f64),
        _ => "-".into(),
    }
}

/// An optional text (cleaned), or `-`.
pub fn opt(v: Option<&str>) -> String {
    v.map_or_else(|| "-".into(), clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_clean_cells() {
        let mut t = Table::new(&[
            ("id", Align::Left),
            ("n", Align::Right),
            ("text", Align::Left),
        ]);
        t.row(vec!["a".into(), "1,000".into(), "hi\nthere\x1b[31m".into()]);
        t.row(vec!["bb".into(), "7".into(), "".into()]);
        let mut out = String::new();
        t.write(&mut out, "  ");
        assert_eq!(
            out,
            "  id      n  text\n  a   1,000  hi there [31m\n  bb      7\n"
        );
    }

    #[test]
    fn the_last_column_is_cut_to_the_line_width() {
        let mut t = Table::new(&[("time", Align::Left), ("text", Align::Left)]);
        t.row(vec!["21:10".into(), "x".repeat(200)]);
        let mut out = String::new();
        t.write_within(&mut out, "  ", 40);
        let line = out.lines().nth(1).unwrap();
        assert_eq!(line.chars().count(), 40, "{line}");
        assert!(line.ends_with('…'));
    }

    #[test]
    fn fit_cuts_on_characters_not_bytes() {
        assert_eq!(fit("héllo wörld", 5), "héll…");
        assert_eq!(fit("short", 5), "short");
        assert_eq!(fit("ab", 0), "…");
    }

    #[test]
    fn sparklines_scale_to_the_highest_column_and_fit_the_width() {
        assert_eq!(sparkline(&[0, 1, 2, 4, 8], 10), "▁▂▃▅█");
        assert_eq!(sparkline(&[0, 0], 10), "▁▁");
        assert_eq!(sparkline(&[], 10), "");
        // 100 buckets in 10 columns: averaged groups of 10.
        let counts: Vec<u64> = (0..100).collect();
        assert_eq!(sparkline(&counts, 10).chars().count(), 10);
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(real(Some(256_000.4)), "256,000");
        assert_eq!(real(Some(50.84)), "50.8");
        assert_eq!(real(None), "-");
        assert_eq!(count(Some(83_012)), "83,012");
        assert_eq!(percent(Some(1), 3), "33.3%");
        assert_eq!(percent(Some(1), 0), "-");
        assert_eq!(ms(Some(4.1)), "4.10");
    }
}
