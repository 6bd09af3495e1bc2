//! Live progress: an indicatif bar with the current msgs/s on a terminal,
//! plain periodic lines otherwise (logs, CI), or nothing. It only reads the
//! senders' published counters; it never touches the send path.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::ProgressMode;

enum Display {
    Bar(ProgressBar),
    Plain { every: Duration, next: Instant },
    Off,
}

pub struct Progress {
    display: Display,
    planned: u64,
    start: Instant,
    /// (when, acked) over the last few seconds, for the current rate.
    samples: VecDeque<(Instant, u64)>,
}

/// The rate shown is over this much recent history: long enough to be
/// steady, short enough to show a stall at once.
const RATE_WINDOW: Duration = Duration::from_secs(2);

impl Progress {
    pub fn new(mode: ProgressMode, every: Duration, planned: u64) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Plain,
            m => m,
        };
        let start = Instant::now();
        let display = match mode {
            ProgressMode::Bar => {
                let bar =
                    ProgressBar::with_draw_target(Some(planned), ProgressDrawTarget::stderr());
                let style = ProgressStyle::with_template(
                    "{prefix:>8} [{elapsed_precise}] {wide_bar:.cyan/blue} {human_pos}/{human_len} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                Display::Bar(bar)
            }
            ProgressMode::Plain => Display::Plain {
                every,
                next: start + every,
            },
            _ => Display::Off,
        };
        Progress {
            display,
            planned,
            start,
            samples: VecDeque::new(),
        }
    }

    /// Updates the display with the current totals.
    pub fn update(&mut self, phase: &str, acked: u64, failed: u64) {
        let now = Instant::now();
        self.samples.push_back((now, acked));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        let rate = match self.samples.front() {
            Some(&(t, a)) if now > t => (acked - a) as f64 / now.duration_since(t).as_secs_f64(),
            _ => 0.0,
        };
        match &mut self.display {
            Display::Bar(bar) => {
                bar.set_prefix(phase.to_string());
                bar.set_position(acked + failed);
                bar.set_message(format!("{:>9} msgs/s  {failed} failed", group(rate as u64)));
            }
            Display::Plain { every, next } => {
                if now >= *next {
                    *next = now + *every;
                    let done = acked + failed;
                    eprintln!(
                        "[{:>7.1}s] {phase}: {}/{} done ({:.1}%), {} acked, {} failed, {} msgs/s",
                        now.duration_since(self.start).as_secs_f64(),
                        group(done),
                        group(self.planned),
                        done as f64 * 100.0 / self.planned.max(1) as f64,
                        group(acked),
                        group(failed),
                        group(rate as u64),
                    );
                }
            }
            Display::Off => {}
        }
    }

    /// A one-off line (phase changes, waiting for deliveries).
    pub fn note(&self, text: &str) {
        match &self.display {
            Display::Bar(bar) => bar.println(text),
            Display::Plain { .. } => eprintln!("{text}"),
            Display::Off => {}
        }
    }

    pub fn finish(&self) {
        if let Display::Bar(bar) = &self.display {
            bar.finish_and_clear();
        }
    }
}

/// `1234567` → `1,234,567`.
pub fn group(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
    }
}
