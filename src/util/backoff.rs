//! Doubling pauses between retries: one implementation for every "try again later" in the
//! crate (repeated swarm lookups, bootstrap router resolution).

use std::time::Duration;

/// Pauses that start at `first` and double after each use, up to `max`.
///
/// Why a cap per call ([`Backoff::next_capped`]) as well as `max`: a downloader wants a
/// swarm's newcomers within half a minute while a seed is content to look every few
/// minutes, so the cap follows the caller's state while the doubling carries on.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `first` (at most `max`).
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            next: first.min(max),
            max,
        }
    }

    /// The pause to wait now; the next one is twice as long, up to `max`.
    pub fn next_pause(&mut self) -> Duration {
        self.next_capped(self.max)
    }

    /// The pause to wait now, at most `cap`; the doubling goes on underneath, so a cap that
    /// is raised later lets the pauses grow at once.
    pub fn next_capped(&mut self, cap: Duration) -> Duration {
        let pause = self.next.min(cap);
        self.next = self.next.saturating_mul(2).min(self.max);
        pause
    }

    /// Back to the first pause (after a success).
    pub fn reset(&mut self) {
        self.next = self.first.min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn pauses_double_up_to_the_max_and_reset() {
        let mut b = Backoff::new(S, 5 * S);
        let got: Vec<_> = (0..5).map(|_| b.next_pause()).collect();
        assert_eq!(got, [S, 2 * S, 4 * S, 5 * S, 5 * S]);
        b.reset();
        assert_eq!(b.next_pause(), S);
    }

    #[test]
    fn a_cap_limits_one_pause_without_stopping_the_doubling() {
        let mut b = Backoff::new(S, 60 * S);
        assert_eq!(b.next_capped(3 * S), S);
        assert_eq!(b.next_capped(3 * S), 2 * S);
        assert_eq!(b.next_capped(3 * S), 3 * S);
        assert_eq!(b.next_capped(3 * S), 3 * S);
        // Raised: the doubling went on underneath (1, 2, 4, 8, now 16).
        assert_eq!(b.next_capped(60 * S), 16 * S);
    }

    #[test]
    fn a_first_pause_above_the_max_is_the_max() {
        let mut b = Backoff::new(10 * S, 2 * S);
        assert_eq!(b.next_pause(), 2 * S);
        b.reset();
        assert_eq!(b.next_pause(), 2 * S);
    }
}
