//! The one token bucket: reply quotas (DHT), query pacing (crawler) and upload limits
//! (downloads) all meter "so many units per second, with some burst" on a clock that the
//! caller passes in, so the same code runs under tokio and under the simulator.

use std::time::{Duration, Instant};

/// Units (bytes, queries) that refill at `rate` per second up to `burst`.
///
/// The balance may go negative: [`TokenBucket::charge`] and [`TokenBucket::take_or_wait`]
/// leave it in debt, which later callers wait out. That is how work that has already
/// happened (a crawler's outside lookups, an oversized block) is paid for without refusing
/// it, and without a request larger than the burst stalling forever.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling `rate` units per second up to `burst`.
    pub fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        let rate = rate.max(f64::MIN_POSITIVE);
        let burst = burst.max(0.0);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Units per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The balance after refilling up to `now` (negative while in debt).
    pub fn tokens(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    fn refill(&mut self, now: Instant) {
        if now > self.last {
            let dt = (now - self.last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
            self.last = now;
        }
    }

    /// Whether `n` units are there, without taking them.
    pub fn available(&mut self, n: f64, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= n - 1e-9
    }

    /// Takes `n` units if the balance covers them; otherwise takes nothing and says no.
    pub fn try_take(&mut self, n: f64, now: Instant) -> bool {
        self.refill(now);
        // A hair of slack so that refills computed in floating point do not miss by 1e-12.
        if self.tokens >= n - 1e-9 {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Takes `n` units, or says how long until they are there.
    ///
    /// A request larger than the burst is let through once the bucket is full and leaves it
    /// in debt; asking for more than the bucket can ever hold would otherwise stall forever.
    pub fn take_or_wait(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let need = n.min(self.burst);
        if self.tokens >= need - 1e-9 {
            self.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((need - self.tokens) / self.rate))
        }
    }

    /// Charges `n` units unconditionally, keeping the debt above `-floor` so that one burst
    /// of outside work cannot silence the bucket for an unbounded time.
    pub fn charge(&mut self, n: f64, floor: f64, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens - n).max(-floor.abs());
    }

    /// When `n` units will be there (now, if they already are).
    pub fn ready_at(&mut self, n: f64, now: Instant) -> Instant {
        self.refill(now);
        if self.tokens >= n - 1e-9 {
            now
        } else {
            // One microsecond late rather than early, so a caller that sleeps until then
            // finds the units there and does not spin.
            now + Duration::from_secs_f64((n - self.tokens) / self.rate) + Duration::from_micros(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_full_and_refills_at_rate_up_to_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100.0, 50.0, t0);
        assert!(b.try_take(50.0, t0));
        assert!(!b.try_take(1.0, t0));
        assert!(b.try_take(10.0, t0 + Duration::from_millis(100)));
        assert!(!b.try_take(1.0, t0 + Duration::from_millis(100)));
        // A long idle spell refills only up to the burst.
        assert!((b.tokens(t0 + Duration::from_secs(60)) - 50.0).abs() < 1e-6);
    }

    #[test]
    fn try_take_refuses_without_charging() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5.0, t0);
        assert!(!b.try_take(6.0, t0));
        assert!((b.tokens(t0) - 5.0).abs() < 1e-9);
    }

    #[test]
    fn oversized_request_goes_through_in_debt_and_the_next_waits() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000.0, 100.0, t0);
        assert_eq!(b.take_or_wait(300.0, t0), Ok(()));
        assert!((b.tokens(t0) + 200.0).abs() < 1e-9);
        let wait = b.take_or_wait(100.0, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(300));
        assert_eq!(b.take_or_wait(100.0, t0 + wait), Ok(()));
    }

    #[test]
    fn charge_is_floored_and_ready_at_waits_out_the_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, 4.0, t0);
        b.charge(1000.0, 10.0, t0);
        assert!((b.tokens(t0) + 10.0).abs() < 1e-9);
        let at = b.ready_at(1.0, t0);
        assert!(at > t0 + Duration::from_millis(5500) && at < t0 + Duration::from_millis(5501));
        assert!(b.try_take(1.0, at));
        assert_eq!(b.ready_at(0.0, at), at);
    }

    #[test]
    fn clock_going_backwards_changes_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(1.0, 1.0, t0);
        assert!(b.try_take(1.0, t0));
        assert!(!b.try_take(1.0, t0 - Duration::from_secs(5)));
        assert!(b.try_take(1.0, t0 + Duration::from_secs(1)));
    }
}
