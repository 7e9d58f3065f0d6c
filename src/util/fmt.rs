//! Human-readable sizes, rates and durations for status lines and progress bars: binary
//! units (KiB = 1024 B, as libtorrent, rqbit and aria2 print them), one decimal.

use std::time::Duration;

const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];

/// `v` scaled down by 1024 until below 1024 (or out of units), with its unit's index.
fn scale(mut v: f64) -> (f64, usize) {
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    (v, u)
}

/// `512 B`, `1.5 KiB`, `3.2 GiB`: whole bytes below a KiB, one decimal above.
pub fn bytes(n: u64) -> String {
    match scale(n as f64) {
        (_, 0) => format!("{n} B"),
        (v, u) => format!("{v:.1} {}", UNITS[u]),
    }
}

/// `0.0 B/s`, `2.0 KiB/s`: always one decimal, so a status line keeps its width.
pub fn rate(bytes_per_sec: f64) -> String {
    let (v, u) = scale(bytes_per_sec.max(0.0));
    format!("{v:.1} {}/s", UNITS[u])
}

/// `42s`, `3m05s`, `1h02m`: the two most significant units.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(bytes(u64::MAX), "16777216.0 TiB");
    }

    #[test]
    fn rates() {
        assert_eq!(rate(0.0), "0.0 B/s");
        assert_eq!(rate(-5.0), "0.0 B/s");
        assert_eq!(rate(2048.0), "2.0 KiB/s");
        assert_eq!(rate(225.6 * 1024.0 * 1024.0), "225.6 MiB/s");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::from_secs(42)), "42s");
        assert_eq!(duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(duration(Duration::from_secs(3725)), "1h02m");
    }
}
