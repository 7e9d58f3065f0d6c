//! Progress output for the command-line tools: an `indicatif` bar when stdout is a
//! terminal, otherwise one plain line per second (for logs, pipes and tests).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::session::{Phase, Progress};

pub use crate::util::fmt::{bytes as human_bytes, duration as human_duration};

/// One status line: percent, bytes, rates, peers, ETA.
pub fn status_line(p: &Progress) -> String {
    let pct = if p.total_bytes == 0 {
        100.0
    } else {
        p.verified_bytes as f64 * 100.0 / p.total_bytes as f64
    };
    let head = match &p.phase {
        Phase::Checking => {
            return format!("checking {}/{} pieces on disk", p.checked.0, p.checked.1);
        }
        Phase::Downloading => "downloading",
        Phase::Seeding => "seeding",
        Phase::Stopped(_) => "stopped",
    };
    let mut line = format!(
        "{head} {pct:5.1}% {}/{} down {} up {} peers {} ({} seeds)",
        human_bytes(p.verified_bytes),
        human_bytes(p.total_bytes),
        crate::util::fmt::rate(p.download_rate),
        crate::util::fmt::rate(p.upload_rate),
        p.peers,
        p.seeds,
    );
    if matches!(p.phase, Phase::Downloading) {
        let left = p.total_bytes.saturating_sub(p.verified_bytes);
        if p.download_rate > 1.0 {
            let eta = Duration::from_secs_f64(left as f64 / p.download_rate);
            line.push_str(&format!(" eta {}", human_duration(eta)));
        } else {
            line.push_str(" eta ?");
        }
    }
    if p.hash_failures > 0 {
        line.push_str(&format!(
            " | {} hash failures, {} banned",
            p.hash_failures, p.banned
        ));
    }
    line
}

/// Shows progress as a bar (terminal) or as a line per second (anything else).
pub struct ProgressDisplay {
    bar: Option<ProgressBar>,
    lines: LinePacer,
}

/// When the next plain status line is due: one per `interval` on average, whatever the
/// caller's tick. Comparing "time since the last line" with the interval skipped every other
/// line when the caller ticked at that same interval and a tick came a millisecond early
/// (dht-seed printed ~0.67 lines a second); a schedule with a little slack does not.
#[derive(Debug, Clone)]
struct LinePacer {
    next: Option<Instant>,
    interval: Duration,
}

impl LinePacer {
    fn new(interval: Duration) -> Self {
        LinePacer {
            next: None,
            interval,
        }
    }

    /// Whether a line is due at `now` (and if so, schedules the next one).
    fn due(&mut self, now: Instant) -> bool {
        let slack = self.interval / 10;
        match self.next {
            Some(next) if now + slack < next => false,
            Some(next) => {
                // Behind by more than a period (the caller stalled): restart from now.
                let after = next + self.interval;
                self.next = Some(if after + slack < now {
                    now + self.interval
                } else {
                    after
                });
                true
            }
            None => {
                self.next = Some(now + self.interval);
                true
            }
        }
    }
}

impl ProgressDisplay {
    /// A display for a torrent of `total` bytes; a bar if stdout is a terminal.
    pub fn new(total: u64) -> ProgressDisplay {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stdout());
            let style = ProgressStyle::with_template(
                "{spinner} [{bar:32}] {percent:>3}% {bytes}/{total_bytes} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar
        });
        ProgressDisplay {
            bar,
            lines: LinePacer::new(Duration::from_secs(1)),
        }
    }

    /// Whether progress is drawn as a bar (stdout is a terminal) rather than printed as
    /// lines.
    pub fn is_bar(&self) -> bool {
        self.bar.is_some()
    }

    /// Updates the display (call often; plain lines are rate-limited to one per second).
    pub fn update(&mut self, p: &Progress) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(p.total_bytes);
                bar.set_position(p.verified_bytes);
                let msg = match &p.phase {
                    Phase::Checking => format!("checking {}/{}", p.checked.0, p.checked.1),
                    _ => {
                        let full = status_line(p);
                        // The bar shows percent and bytes already.
                        full.split_once(" down ")
                            .map(|(_, rest)| format!("down {rest}"))
                            .unwrap_or(full)
                    }
                };
                bar.set_message(msg);
                bar.tick();
            }
            None => {
                if self.lines.due(Instant::now()) {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{}", status_line(p));
                    let _ = out.flush();
                }
            }
        }
    }

    /// Removes the bar (so the final lines print cleanly).
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// Prints a line above the bar (or plainly).
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        }
    }
}

#[cfg(test)]
mod tests {

    /// Status lines keep their stated period: one a second whether the caller ticks every
    /// second (a millisecond early or late) or ten times a second, and one per tick again
    /// after a stall.
    #[test]
    fn lines_keep_their_period() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let count = |ticks: &[i64]| {
            let mut p = LinePacer::new(Duration::from_secs(1));
            ticks
                .iter()
                .filter(|&&ms| {
                    let at = if ms >= 0 {
                        t0 + Duration::from_millis(ms as u64)
                    } else {
                        t0 - Duration::from_millis(ms.unsigned_abs())
                    };
                    p.due(at)
                })
                .count()
        };
        // Every second, alternately a millisecond early and late.
        let jittered: Vec<i64> = (0..60)
            .map(|k| k * 1000 + if k % 2 == 1 { -1 } else { 1 })
            .collect();
        assert_eq!(count(&jittered), 60);
        // Ten ticks a second, 0 to 59.9 s: a line at once, then one each second (the
        // tick within a tenth of a second of its due time takes it).
        let fast: Vec<i64> = (0..600).map(|k| k * 100).collect();
        assert_eq!(count(&fast), 61);
        assert_eq!(count(&[0, 1000, 9000, 10000, 11000]), 5);
    }

    use super::*;

    #[test]
    fn lines_read_well() {
        let p = Progress {
            phase: Phase::Downloading,
            total_bytes: 1 << 30,
            verified_bytes: 1 << 29,
            pieces: 1024,
            verified_pieces: 512,
            checked: (0, 0),
            downloaded: 1 << 29,
            uploaded: 0,
            wasted: 0,
            download_rate: f64::from(1u32 << 20) * 8.0,
            upload_rate: 0.0,
            peers: 3,
            seeds: 1,
            hash_failures: 0,
            banned: 0,
        };
        assert_eq!(
            status_line(&p),
            "downloading  50.0% 512.0 MiB/1.0 GiB down 8.0 MiB/s up 0.0 B/s peers 3 (1 seeds) eta 1m04s"
        );
        assert_eq!(human_duration(Duration::from_secs(3725)), "1h02m");
        assert_eq!(human_bytes(512), "512 B");
    }
}
