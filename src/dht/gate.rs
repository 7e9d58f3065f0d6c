//! The input gate: the checks every received datagram passes before a KRPC state machine
//! sees it, shared by the [`crate::dht::node::Node`] and the bootstrap
//! [`crate::dht::router::Router`].
//!
//! Why one function: the two used to carry their own copies, and the copies drifted (the
//! router dropped IPv4-mapped IPv6 sources that the node accepted). The order matters and is
//! the same for both: the cheap source checks first, then the per-IP rate limit (before
//! decoding, so a flood costs a hash lookup per packet, not a parse), then the decoder.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Instant;

use crate::dht::id::NodeAddr;
use crate::dht::krpc::{self, DecodeError, Message, Tid};
use crate::dht::limits::{self, RateLimiter, Verdict};

/// Why a datagram was dropped without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Port 0, a source of the other address family (an IPv4-mapped IPv6 source counts as
    /// IPv4), or a bogon source address.
    Source,
    /// The source IP is over its rate limit (or banned for having been).
    RateLimited,
    /// Not a KRPC message we can read or answer.
    Malformed,
}

/// What the gate made of one datagram.
///
/// The message stays inline, though it makes the enum large: this is the per-packet hot
/// path, and boxing it would cost an allocation per datagram to save a move of the stack.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Gated<A: NodeAddr = SocketAddrV4> {
    /// A message from this source.
    Message(A, Message),
    /// A query readable far enough to be answered with this error (BEP 5: 203 or 204; a
    /// BEP 44 put: 205 or 207).
    BadQuery {
        /// The source to send the error to.
        from: A,
        /// The query's transaction id, echoed in the error.
        tid: Tid,
        /// The KRPC error code.
        code: i64,
        /// The error message text.
        reason: &'static str,
    },
    /// Dropped; the caller counts it.
    Dropped(Dropped),
}

/// Passes one datagram from `from` through the source checks, the rate limiter (when
/// there is one) and the decoder.
pub fn admit<A: NodeAddr>(
    now: Instant,
    from: SocketAddr,
    data: &[u8],
    limiter: Option<&mut RateLimiter<A::Ip>>,
) -> Gated<A> {
    // A dual-stack socket reports IPv4 senders as ::ffff:a.b.c.d, which `from_socket` reads
    // as IPv4.
    let Some(from) = A::from_socket(from) else {
        return Gated::Dropped(Dropped::Source);
    };
    if from.port_number() == 0 || limits::is_bogon(from.ip_addr()) {
        return Gated::Dropped(Dropped::Source);
    }
    if let Some(limiter) = limiter {
        match limiter.check(from.host(), now) {
            Verdict::Allow => {}
            Verdict::NewBan => {
                tracing::debug!("rate limit: banning {} for a while", from.host());
                return Gated::Dropped(Dropped::RateLimited);
            }
            Verdict::Banned => return Gated::Dropped(Dropped::RateLimited),
        }
    }
    match krpc::decode(data) {
        Ok(m) => Gated::Message(from, m),
        Err(DecodeError::BadQuery { tid, code, reason }) => Gated::BadQuery {
            from,
            tid,
            code,
            reason,
        },
        Err(_) => Gated::Dropped(Dropped::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV6};
    use std::time::Duration;

    use super::*;
    use crate::dht::limits::RateLimit;

    const PING: &[u8] = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";

    fn v4(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(a), port))
    }

    #[test]
    fn a_good_query_passes_with_its_source() {
        let now = Instant::now();
        match admit::<SocketAddrV4>(now, v4([127, 0, 0, 2], 6881), PING, None) {
            Gated::Message(from, m) => {
                assert_eq!(from, "127.0.0.2:6881".parse().unwrap());
                assert_eq!(m.tid.as_slice(), b"aa");
            }
            other => panic!("{other:?}"),
        }
    }

    /// BEP 32: the IPv6 DHT's gate takes IPv6 sources and drops IPv4 ones (mapped forms
    /// included), link-local and multicast sources, and IPv6 port 0.
    #[test]
    fn the_ipv6_gate_takes_only_ipv6_sources() {
        let now = Instant::now();
        let v6 = |s: &str| SocketAddr::V6(s.parse().unwrap());
        match admit::<SocketAddrV6>(now, v6("[fd77::2]:6881"), PING, None) {
            Gated::Message(from, _) => assert_eq!(from, "[fd77::2]:6881".parse().unwrap()),
            other => panic!("{other:?}"),
        }
        for dropped in [
            v4([127, 0, 0, 2], 6881),
            v6("[::ffff:127.0.0.2]:6881"),
            v6("[fe80::1]:6881"),
            v6("[ff02::1]:6881"),
            v6("[2001:db8::1]:6881"),
            v6("[fd77::2]:0"),
        ] {
            assert!(
                matches!(
                    admit::<SocketAddrV6>(now, dropped, PING, None),
                    Gated::Dropped(Dropped::Source)
                ),
                "{dropped}"
            );
        }
    }

    #[test]
    fn an_ipv4_mapped_source_reads_as_ipv4_and_other_ipv6_is_dropped() {
        let now = Instant::now();
        let mapped = SocketAddr::V6(SocketAddrV6::new(
            Ipv4Addr::new(127, 0, 0, 3).to_ipv6_mapped(),
            7000,
            0,
            0,
        ));
        assert!(matches!(
            admit::<SocketAddrV4>(now, mapped, PING, None),
            Gated::Message(from, _) if from == "127.0.0.3:7000".parse().unwrap()
        ));
        let v6: SocketAddr = "[fd77::1]:7000".parse().unwrap();
        assert!(matches!(
            admit::<SocketAddrV4>(now, v6, PING, None),
            Gated::Dropped(Dropped::Source)
        ));
    }

    #[test]
    fn port_zero_and_bogon_sources_are_dropped_before_decoding() {
        let now = Instant::now();
        for from in [
            v4([127, 0, 0, 2], 0),
            v4([0, 1, 2, 3], 6881),
            v4([224, 0, 0, 1], 6881),
            v4([255, 255, 255, 255], 6881),
            v4([240, 0, 0, 1], 6881),
        ] {
            assert!(
                matches!(
                    admit::<SocketAddrV4>(now, from, PING, None),
                    Gated::Dropped(Dropped::Source)
                ),
                "{from}"
            );
        }
    }

    #[test]
    fn the_rate_limit_comes_before_the_decoder() {
        let now = Instant::now();
        let mut limiter = RateLimiter::new(RateLimit {
            packets: 2,
            window: Duration::from_secs(10),
            ban: Duration::from_secs(60),
            max_tracked: 100,
        });
        let from = v4([127, 0, 0, 9], 6881);
        for _ in 0..2 {
            assert!(matches!(
                admit::<SocketAddrV4>(now, from, b"junk", Some(&mut limiter)),
                Gated::Dropped(Dropped::Malformed)
            ));
        }
        // Over the limit: dropped as rate-limited, even a valid query.
        assert!(matches!(
            admit::<SocketAddrV4>(now, from, PING, Some(&mut limiter)),
            Gated::Dropped(Dropped::RateLimited)
        ));
        assert!(matches!(
            admit::<SocketAddrV4>(now, from, PING, Some(&mut limiter)),
            Gated::Dropped(Dropped::RateLimited)
        ));
        // Another IP is not affected.
        assert!(matches!(
            admit::<SocketAddrV4>(now, v4([127, 0, 0, 10], 6881), PING, Some(&mut limiter)),
            Gated::Message(..)
        ));
    }

    #[test]
    fn a_query_with_bad_arguments_gets_its_error_and_junk_is_dropped() {
        let now = Instant::now();
        // get_peers without an info_hash: answerable with 203.
        let bad = b"d1:ad2:id20:abcdefghij0123456789e1:q9:get_peers1:t2:bb1:y1:qe";
        match admit::<SocketAddrV4>(now, v4([127, 0, 0, 2], 6881), bad, None) {
            Gated::BadQuery { tid, code, .. } => {
                assert_eq!(tid.as_slice(), b"bb");
                assert_eq!(code, krpc::ERR_PROTOCOL);
            }
            other => panic!("{other:?}"),
        }
        for junk in [&b""[..], b"de", b"d1:t2:aa1:y1:re", b"\xff\xff"] {
            assert!(matches!(
                admit::<SocketAddrV4>(now, v4([127, 0, 0, 2], 6881), junk, None),
                Gated::Dropped(Dropped::Malformed)
            ));
        }
    }
}
