//! Abuse defenses: a per-IP packet rate limit with temporary bans, a global reply-bandwidth
//! quota, and the source addresses a public node must never answer.
//!
//! A DHT node answers anyone, so without limits it is a free amplifier and an easy target:
//! a single host can make it spend all its CPU and upload on replies. The defaults follow
//! libtorrent (more than 5 packets/s sustained over 10 s bans an IP for 5 minutes).

use crate::util::TokenBucket;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Per-IP rate limit settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Packets one IP may send per window.
    pub packets: u32,
    /// The counting window: an IP's count restarts with its first packet after the window
    /// that began with its previous count.
    pub window: Duration,
    /// How long an IP that went over stays ignored.
    pub ban: Duration,
    /// IPs tracked at most; beyond it new IPs are not limited (fail open rather than
    /// letting the limiter itself become a memory sink).
    pub max_tracked: usize,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            packets: 50,
            window: Duration::from_secs(10),
            ban: Duration::from_secs(5 * 60),
            max_tracked: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    window_start: Instant,
    count: u32,
    banned_until: Option<Instant>,
}

/// What the rate limiter says about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit (or not counted: the IP is new and the tracker is full).
    Allow,
    /// This packet pushed the IP over its limit: it is banned from now on.
    NewBan,
    /// The IP is banned.
    Banned,
}

/// Counts packets per source IP (`K` is `Ipv4Addr` or `Ipv6Addr`: one limiter per family).
#[derive(Debug)]
pub struct RateLimiter<K = Ipv4Addr> {
    config: RateLimit,
    slots: HashMap<K, Slot>,
}

impl<K: Copy + Eq + std::hash::Hash> RateLimiter<K> {
    /// A limiter that has seen no packet yet.
    pub fn new(config: RateLimit) -> Self {
        RateLimiter {
            config,
            slots: HashMap::new(),
        }
    }

    /// Accounts one packet from `ip`.
    pub fn check(&mut self, ip: K, now: Instant) -> Verdict {
        let cfg = self.config;
        if !self.slots.contains_key(&ip) && self.slots.len() >= cfg.max_tracked {
            return Verdict::Allow;
        }
        let slot = self.slots.entry(ip).or_insert(Slot {
            window_start: now,
            count: 0,
            banned_until: None,
        });
        if let Some(until) = slot.banned_until {
            if now < until {
                return Verdict::Banned;
            }
            *slot = Slot {
                window_start: now,
                count: 0,
                banned_until: None,
            };
        }
        if now.saturating_duration_since(slot.window_start) >= cfg.window {
            slot.window_start = now;
            slot.count = 0;
        }
        slot.count += 1;
        if slot.count > cfg.packets {
            slot.banned_until = Some(now + cfg.ban);
            return Verdict::NewBan;
        }
        Verdict::Allow
    }

    /// Forgets IPs that are neither banned nor inside a current window.
    pub fn sweep(&mut self, now: Instant) {
        let window = self.config.window;
        self.slots.retain(|_, s| {
            s.banned_until.is_some_and(|u| now < u)
                || now.saturating_duration_since(s.window_start) < window
        });
    }

    /// IPs currently banned.
    pub fn banned(&self, now: Instant) -> usize {
        self.slots
            .values()
            .filter(|s| s.banned_until.is_some_and(|u| now < u))
            .count()
    }
}

/// A token bucket on reply bytes: replies beyond the quota are not sent.
#[derive(Debug, Clone)]
pub struct ByteQuota {
    /// Up to one second of burst.
    bucket: TokenBucket,
}

impl ByteQuota {
    /// A quota of `bytes_per_sec`, starting full (one second's worth of burst).
    pub fn new(bytes_per_sec: u64, now: Instant) -> Self {
        let rate = bytes_per_sec as f64;
        ByteQuota {
            bucket: TokenBucket::new(rate, rate, now),
        }
    }

    /// Takes `bytes` from the quota; false when there is not enough left.
    pub fn take(&mut self, bytes: usize, now: Instant) -> bool {
        self.bucket.try_take(bytes as f64, now)
    }
}

/// Source addresses no honest packet comes from: unspecified, "this network", multicast,
/// broadcast and reserved (240/4). Replying to them could only reflect traffic somewhere
/// unintended. Loopback and private ranges stay allowed (LANs and test networks use them).
pub fn is_bogon_source(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_unspecified() || o[0] == 0 || ip.is_multicast() || ip.is_broadcast() || o[0] >= 240
}

/// [`is_bogon_source`] for either family. IPv6: unspecified, multicast (`ff00::/8`),
/// link-local unicast (`fe80::/10`: meaningless without the scope id only its own host
/// knows) and documentation (`2001:db8::/32`); an IPv4-mapped address (`::ffff:a.b.c.d`) is
/// judged as the IPv4 address it carries. Loopback and unique-local (`fc00::/7`) stay
/// allowed, like IPv4's private ranges: test networks use them.
pub fn is_bogon(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => is_bogon_source(v4),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_bogon_source(v4),
            None => {
                let s = v6.segments();
                v6.is_unspecified()
                    || v6.is_multicast()
                    || s[0] & 0xffc0 == 0xfe80
                    || (s[0] == 0x2001 && s[1] == 0x0db8)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bogons_of_both_families() {
        let b = |s: &str| is_bogon(s.parse().unwrap());
        for bad in [
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::",
            "ff02::1",
            "fe80::1",
            "febf::1",
            "2001:db8::7",
            "::ffff:224.0.0.1",
            "::ffff:0.0.0.0",
        ] {
            assert!(b(bad), "{bad}");
        }
        for good in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "8.8.8.8",
            "::1",
            "fd77::1",
            "fc00::1",
            "2001:db9::1",
            "2a00:1450::1",
            "fec0::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!b(good), "{good}");
        }
    }

    #[test]
    fn heavy_hitter_is_banned_then_forgiven() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(RateLimit {
            packets: 5,
            ..Default::default()
        });
        let a = Ipv4Addr::new(127, 1, 1, 1);
        let b = Ipv4Addr::new(127, 1, 1, 2);
        for _ in 0..5 {
            assert_eq!(rl.check(a, t0), Verdict::Allow);
        }
        assert_eq!(rl.check(a, t0), Verdict::NewBan);
        assert_eq!(rl.check(a, t0 + Duration::from_secs(60)), Verdict::Banned);
        assert_eq!(rl.check(b, t0), Verdict::Allow, "others unaffected");
        assert_eq!(rl.banned(t0), 1);
        assert_eq!(rl.check(a, t0 + Duration::from_secs(301)), Verdict::Allow);
        // A steady 5 per 10 s is fine forever.
        let mut t = t0 + Duration::from_secs(400);
        for _ in 0..100 {
            t += Duration::from_secs(2);
            assert_eq!(rl.check(b, t), Verdict::Allow);
        }
    }

    #[test]
    fn tracking_is_bounded_and_swept() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(RateLimit {
            packets: 1,
            max_tracked: 10,
            ..Default::default()
        });
        for i in 0..100u32 {
            rl.check(Ipv4Addr::from(0x7f00_0000 + i), t0);
        }
        assert_eq!(rl.slots.len(), 10);
        rl.sweep(t0 + Duration::from_secs(11));
        assert!(rl.slots.is_empty());
    }

    #[test]
    fn quota_refills_over_time() {
        let t0 = Instant::now();
        let mut q = ByteQuota::new(1000, t0);
        assert!(q.take(600, t0));
        assert!(!q.take(600, t0));
        assert!(q.take(600, t0 + Duration::from_millis(300)));
        assert!(
            !q.take(2000, t0 + Duration::from_secs(10)),
            "burst is capped at one second"
        );
    }

    #[test]
    fn bogons() {
        for b in [
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
        ] {
            assert!(is_bogon_source(b.parse().unwrap()), "{b}");
        }
        for ok in ["127.0.0.1", "10.0.0.1", "8.8.8.8"] {
            assert!(!is_bogon_source(ok.parse().unwrap()), "{ok}");
        }
    }
}
