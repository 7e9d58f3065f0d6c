//! BEP 11 peer exchange (`ut_pex` over BEP 10): the message codec, the per-peer rate
//! rules and the per-peer send state ([`PexSender`]), free of sockets. The download
//! session's peer connections (`download::peer`) drive them.
//!
//! Both families are read and written: `added`, `added.f`, `dropped` hold 6-byte IPv4
//! entries and `added6`, `added6.f`, `dropped6` 18-byte IPv6 ones (BEP 11); a message carries
//! them as one list of socket addresses. Every count is bounded (per list and family) so a
//! hostile peer cannot make us buffer or dial an unbounded list, and malformed input is an
//! error, never a panic.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::benc::{self, DictEntries};
use crate::bencode::{self, MAX_DEPTH};

/// The extension name in the BEP 10 `m` dict.
pub const UT_PEX: &str = "ut_pex";

/// Entries per list and family in one message, sent or accepted (libtorrent sends at most
/// 50 too).
pub const MAX_PEX_ENTRIES: usize = 50;

/// Minimum spacing of messages in one direction (BEP 11: at most one a minute).
pub const PEX_INTERVAL: Duration = Duration::from_secs(60);

/// Received messages closer together than this are ignored (a little slack under a minute,
/// for timer jitter on the sender's side).
pub const PEX_MIN_RECEIVE_GAP: Duration = Duration::from_secs(45);

/// `added.f` flag bits (BEP 11).
pub mod flags {
    /// The peer prefers MSE/PE encrypted connections.
    pub const PREFERS_ENCRYPTION: u8 = 0x01;
    /// The peer is a seed (has every piece).
    pub const SEED: u8 = 0x02;
    /// The peer speaks uTP (BEP 29).
    pub const UTP: u8 = 0x04;
    /// The peer supports the `ut_holepunch` extension (BEP 55).
    pub const HOLEPUNCH: u8 = 0x08;
    /// The sender reached the peer with an outgoing connection, so it accepts connections.
    pub const REACHABLE: u8 = 0x10;
}

/// One `ut_pex` message, both families.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PexMsg {
    /// Peers the sender connected to since its last message, with their flags.
    pub added: Vec<(SocketAddr, u8)>,
    /// Peers the sender disconnected from.
    pub dropped: Vec<SocketAddr>,
}

/// Why a `ut_pex` payload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PexError {
    /// The payload is not valid bencode (the decoder's error, as text).
    Bencode(String),
    /// The payload is bencode but not a dict.
    NotADict,
    /// A compact list whose length is not a multiple of its entry size (6 bytes for IPv4,
    /// 18 for IPv6).
    BadCompactLength {
        /// The list's length in bytes.
        len: usize,
        /// The entry size it should be a multiple of.
        entry: usize,
    },
}

impl std::fmt::Display for PexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PexError::Bencode(e) => write!(f, "ut_pex is not valid bencode: {e}"),
            PexError::NotADict => f.write_str("ut_pex is not a dict"),
            PexError::BadCompactLength { len, entry } => {
                write!(
                    f,
                    "ut_pex compact peer list of {len} bytes (not a multiple of {entry})"
                )
            }
        }
    }
}

impl std::error::Error for PexError {}

/// The entries of a compact list: 6-byte IPv4 or 18-byte IPv6 (address, then port).
fn compact(raw: &[u8], v6: bool) -> Result<impl Iterator<Item = SocketAddr> + '_, PexError> {
    let entry = if v6 { 18 } else { 6 };
    if !raw.len().is_multiple_of(entry) {
        return Err(PexError::BadCompactLength {
            len: raw.len(),
            entry,
        });
    }
    Ok(raw.chunks_exact(entry).map(move |c| {
        let port = u16::from_be_bytes([c[entry - 2], c[entry - 1]]);
        if v6 {
            let ip: [u8; 16] = c[..16].try_into().expect("18-byte entry");
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, 0))
        } else {
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::new(c[0], c[1], c[2], c[3]),
                port,
            ))
        }
    }))
}

impl PexMsg {
    /// Parses a payload, keeping at most [`MAX_PEX_ENTRIES`] of each list and family.
    /// Missing flags read as 0; port-0 entries are skipped.
    pub fn decode(payload: &[u8]) -> Result<Self, PexError> {
        bencode::validate(payload, MAX_DEPTH).map_err(|e| PexError::Bencode(format!("{e:?}")))?;
        let entries = DictEntries::new(payload).ok_or(PexError::NotADict)?;
        // Per family (IPv4, IPv6): added, added flags, dropped.
        let mut lists: [(&[u8], &[u8], &[u8]); 2] = [(b"", b"", b""); 2];
        for (key, raw) in entries {
            let Some(bytes) = benc::as_bytes(raw) else {
                continue;
            };
            match key {
                b"added" => lists[0].0 = bytes,
                b"added.f" => lists[0].1 = bytes,
                b"dropped" => lists[0].2 = bytes,
                b"added6" => lists[1].0 = bytes,
                b"added6.f" => lists[1].1 = bytes,
                b"dropped6" => lists[1].2 = bytes,
                _ => {}
            }
        }
        let mut msg = PexMsg::default();
        for (family, (added, added_f, dropped)) in lists.into_iter().enumerate() {
            let v6 = family == 1;
            let mut kept = 0;
            for (i, a) in compact(added, v6)?.enumerate() {
                if kept == MAX_PEX_ENTRIES {
                    break;
                }
                if a.port() != 0 {
                    msg.added.push((a, added_f.get(i).copied().unwrap_or(0)));
                    kept += 1;
                }
            }
            msg.dropped.extend(
                compact(dropped, v6)?
                    .filter(|a| a.port() != 0)
                    .take(MAX_PEX_ENTRIES),
            );
        }
        Ok(msg)
    }

    /// Appends the bencoded message (keys sorted), truncating each list to
    /// [`MAX_PEX_ENTRIES`] per family. The IPv6 keys appear only when there are IPv6
    /// entries, so an IPv4-only message is what IPv4-only clients always got.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let pick_added = |v6: bool| -> Vec<&(SocketAddr, u8)> {
            self.added
                .iter()
                .filter(|(a, _)| a.is_ipv6() == v6)
                .take(MAX_PEX_ENTRIES)
                .collect()
        };
        let pick_dropped = |v6: bool| -> Vec<&SocketAddr> {
            self.dropped
                .iter()
                .filter(|a| a.is_ipv6() == v6)
                .take(MAX_PEX_ENTRIES)
                .collect()
        };
        let (added4, added6) = (pick_added(false), pick_added(true));
        let (dropped4, dropped6) = (pick_dropped(false), pick_dropped(true));
        let put_list = |out: &mut Vec<u8>, key: &[u8], entry: usize, addrs: &[&SocketAddr]| {
            benc::put_bytes(out, key);
            crate::bencode::put_uint(out, (addrs.len() * entry) as u64);
            out.push(b':');
            for a in addrs {
                put_compact(out, a);
            }
        };
        let put_flags = |out: &mut Vec<u8>, key: &[u8], added: &[&(SocketAddr, u8)]| {
            benc::put_bytes(out, key);
            crate::bencode::put_uint(out, added.len() as u64);
            out.push(b':');
            out.extend(added.iter().map(|(_, f)| f));
        };
        fn addrs<'a>(added: &[&'a (SocketAddr, u8)]) -> Vec<&'a SocketAddr> {
            added.iter().map(|(a, _)| a).collect()
        }
        let v6 = !added6.is_empty() || !dropped6.is_empty();
        // Keys in byte order: added, added.f, added6, added6.f, dropped, dropped6.
        out.push(b'd');
        put_list(out, b"added", 6, &addrs(&added4));
        put_flags(out, b"added.f", &added4);
        if v6 {
            put_list(out, b"added6", 18, &addrs(&added6));
            put_flags(out, b"added6.f", &added6);
        }
        put_list(out, b"dropped", 6, &dropped4);
        if v6 {
            put_list(out, b"dropped6", 18, &dropped6);
        }
        out.push(b'e');
    }
}

/// The compact form: 4 or 16 address bytes, then the port (big-endian).
fn put_compact(out: &mut Vec<u8>, a: &SocketAddr) {
    match a.ip() {
        std::net::IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        std::net::IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
    out.extend_from_slice(&a.port().to_be_bytes());
}

/// Per-connection PEX timing: when we may send next, and whether a received message is
/// accepted or ignored as too frequent.
#[derive(Debug, Default, Clone)]
pub struct PexRate {
    last_sent: Option<Instant>,
    last_received: Option<Instant>,
}

impl PexRate {
    /// Whether a message may go out at `now`; if so, records it as sent.
    pub fn try_send(&mut self, now: Instant) -> bool {
        if self
            .last_sent
            .is_some_and(|t| now.saturating_duration_since(t) < PEX_INTERVAL)
        {
            return false;
        }
        self.last_sent = Some(now);
        true
    }

    /// Whether a message received at `now` is acted on (the first always is); a flood is
    /// ignored without resetting the clock, so a steady once-a-minute sender is never cut.
    pub fn accept(&mut self, now: Instant) -> bool {
        if self
            .last_received
            .is_some_and(|t| now.saturating_duration_since(t) < PEX_MIN_RECEIVE_GAP)
        {
            return false;
        }
        self.last_received = Some(now);
        true
    }
}

/// How long after the extension handshake our first message to a peer waits: long enough
/// for the connections a session opens at start to settle (so the first message is not
/// nearly empty), short enough that a new peer learns the swarm at once (BEP 11 allows the
/// first message right away; libtorrent sends its first within seconds too).
pub const PEX_FIRST_DELAY: Duration = Duration::from_secs(2);

/// What we send one peer: the connected peers it has been told about, so each message
/// carries only the change (BEP 11 `added` / `dropped`), at most one message per
/// [`PEX_INTERVAL`], never the recipient's own address, at most [`MAX_PEX_ENTRIES`] per
/// list (the rest goes in later messages). Sans-IO: the caller passes the time and the
/// current set of connected peers.
#[derive(Debug, Clone)]
pub struct PexSender {
    to: SocketAddr,
    first_at: Instant,
    rate: PexRate,
    /// Addresses the recipient was told are connected (added and not yet dropped).
    told: HashSet<SocketAddr>,
}

impl PexSender {
    /// Send state for the peer listening at (or connected from) `to`, whose extension
    /// handshake (advertising `ut_pex`) arrived at `now`.
    pub fn new(to: SocketAddr, now: Instant) -> Self {
        PexSender {
            to,
            first_at: now + PEX_FIRST_DELAY,
            rate: PexRate::default(),
            told: HashSet::new(),
        }
    }

    /// Whether a message may go out at `now` (so the caller gathers the connected peers
    /// only then).
    pub fn due(&self, now: Instant) -> bool {
        now >= self.first_at
            && self
                .rate
                .last_sent
                .is_none_or(|t| now.saturating_duration_since(t) >= PEX_INTERVAL)
    }

    /// The message to send at `now`, given the peers connected now (listen address and
    /// `added.f` flags), or `None` when it is not yet time or nothing changed. A returned
    /// message counts as sent.
    pub fn poll(&mut self, now: Instant, connected: &[(SocketAddr, u8)]) -> Option<PexMsg> {
        if !self.due(now) {
            return None;
        }
        let mut added = Vec::new();
        let mut per_family = [0usize; 2];
        let mut seen = HashSet::with_capacity(connected.len());
        for &(a, f) in connected {
            if a == self.to || a.port() == 0 || !seen.insert(a) {
                continue;
            }
            let n = &mut per_family[usize::from(a.is_ipv6())];
            if !self.told.contains(&a) && *n < MAX_PEX_ENTRIES {
                added.push((a, f));
                *n += 1;
            }
        }
        let mut dropped: Vec<SocketAddr> = self
            .told
            .iter()
            .filter(|a| !seen.contains(a))
            .copied()
            .collect();
        dropped.sort_unstable();
        let mut per_family = [0usize; 2];
        dropped.retain(|a| {
            let n = &mut per_family[usize::from(a.is_ipv6())];
            *n += 1;
            *n <= MAX_PEX_ENTRIES
        });
        if added.is_empty() && dropped.is_empty() {
            return None;
        }
        if !self.rate.try_send(now) {
            return None;
        }
        for (a, _) in &added {
            self.told.insert(*a);
        }
        for a in &dropped {
            self.told.remove(a);
        }
        Some(PexMsg { added, dropped })
    }
}

crate::util::counters::process_counters! {
    /// PEX activity since start (process-wide, like
    /// [`transport_counts`](super::transport_counts)).
    pub struct PexCounts;
    /// Snapshot of the PEX counters.
    pub fn pex_counts;
    /// Messages received and acted on.
    msgs_in = MSGS_IN,
    /// Messages sent.
    msgs_out = MSGS_OUT,
    /// Messages ignored for arriving too soon after the previous one from that peer.
    ignored_flood = IGNORED_FLOOD,
    /// Messages that did not decode (dropped).
    malformed = MALFORMED,
    /// Addresses from received messages that were new to the session's candidates.
    peers_learned = PEERS_LEARNED,
}

impl std::fmt::Display for PexCounts {
    /// The one-line form the binaries print (and scripts and tests parse).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pex: messages in {} out {}, ignored {} too frequent {} malformed, peers learned {}",
            self.msgs_in, self.msgs_out, self.ignored_flood, self.malformed, self.peers_learned
        )
    }
}

/// Which counter an event bumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PexEvent {
    /// A message was received and acted on ([`PexCounts::msgs_in`]).
    In,
    /// A message was sent ([`PexCounts::msgs_out`]).
    Out,
    /// A message arrived too soon after the previous one from that peer and was ignored
    /// ([`PexCounts::ignored_flood`]).
    IgnoredFlood,
    /// A message did not decode and was dropped ([`PexCounts::malformed`]).
    Malformed,
    /// `n` new candidate addresses.
    Learned(u64),
}

/// Counts one PEX event.
pub fn note(ev: PexEvent) {
    let (c, n) = match ev {
        PexEvent::In => (&MSGS_IN, 1),
        PexEvent::Out => (&MSGS_OUT, 1),
        PexEvent::IgnoredFlood => (&IGNORED_FLOOD, 1),
        PexEvent::Malformed => (&MALFORMED, 1),
        PexEvent::Learned(n) => (&PEERS_LEARNED, n),
    };
    c.fetch_add(n, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(last: u8, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, last), port))
    }

    fn a6(last: u16, port: u16) -> SocketAddr {
        SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, last),
            port,
            0,
            0,
        ))
    }

    #[test]
    fn round_trip_with_flags() {
        let msg = PexMsg {
            added: vec![(a(1, 6881), flags::SEED | flags::REACHABLE), (a(2, 1), 0)],
            dropped: vec![a(3, 51413)],
        };
        let mut out = Vec::new();
        msg.encode_into(&mut out);
        assert!(out.starts_with(b"d5:added12:"));
        assert_eq!(PexMsg::decode(&out), Ok(msg));
    }

    #[test]
    fn bounds_on_both_sides() {
        let many: Vec<_> = (0..200u16).map(|i| (a(1, 1000 + i), 0)).collect();
        let msg = PexMsg {
            added: many.clone(),
            dropped: many.iter().map(|(x, _)| *x).collect(),
        };
        let mut out = Vec::new();
        msg.encode_into(&mut out);
        let back = PexMsg::decode(&out).unwrap();
        assert_eq!(back.added.len(), MAX_PEX_ENTRIES);
        assert_eq!(back.dropped.len(), MAX_PEX_ENTRIES);
        // A hostile list of 200 entries is cut on receipt too.
        let mut raw = b"d5:added1200:".to_vec();
        for (x, _) in &many {
            put_compact(&mut raw, x);
        }
        raw.push(b'e');
        assert_eq!(PexMsg::decode(&raw).unwrap().added.len(), MAX_PEX_ENTRIES);
    }

    #[test]
    fn malformed_is_an_error_not_a_panic() {
        assert!(PexMsg::decode(b"").is_err());
        assert!(PexMsg::decode(b"le").is_err());
        assert_eq!(
            PexMsg::decode(b"d5:added5:abcdee"),
            Err(PexError::BadCompactLength { len: 5, entry: 6 })
        );
        // Wrong types are ignored, missing flags read as 0, port 0 skipped.
        let m =
            PexMsg::decode(b"d5:addedi3e7:dropped12:\x7f\0\0\x01\0\0\x7f\0\0\x02\0\x05e").unwrap();
        assert!(m.added.is_empty());
        assert_eq!(m.dropped, [a(2, 5)]);
        for n in 0..40 {
            let junk: Vec<u8> = (0..n).map(|i| (i * 37 + n) as u8).collect();
            let _ = PexMsg::decode(&junk);
        }
    }

    #[test]
    fn ipv6_entries_travel_in_their_own_keys() {
        let msg = PexMsg {
            added: vec![(a(1, 6881), flags::SEED), (a6(2, 51413), flags::UTP)],
            dropped: vec![a6(3, 7), a(4, 8)],
        };
        let mut out = Vec::new();
        msg.encode_into(&mut out);
        // BEP 11's layout: 18-byte entries under added6 / dropped6, flags in added6.f, keys
        // in byte order.
        let mut want = b"d5:added6:\x7f\0\0\x01\x1a\xe17:added.f1:\x02".to_vec();
        want.extend_from_slice(b"6:added618:\xfd\x77");
        want.extend_from_slice(&[0; 13]);
        want.extend_from_slice(b"\x02\xc8\xd58:added6.f1:\x047:dropped6:\x7f\0\0\x04\0\x08");
        want.extend_from_slice(b"8:dropped618:\xfd\x77");
        want.extend_from_slice(&[0; 13]);
        want.extend_from_slice(b"\x03\0\x07e");
        assert_eq!(out, want);
        let back = PexMsg::decode(&out).unwrap();
        assert_eq!(back.added, msg.added);
        let mut dropped = back.dropped.clone();
        dropped.sort();
        let mut expected = msg.dropped.clone();
        expected.sort();
        assert_eq!(dropped, expected);
        // An IPv4-only message has no IPv6 keys (what IPv4-only clients always got).
        let v4 = PexMsg {
            added: vec![(a(1, 1), 0)],
            dropped: vec![],
        };
        let mut out = Vec::new();
        v4.encode_into(&mut out);
        assert_eq!(
            out,
            b"d5:added6:\x7f\0\0\x01\0\x017:added.f1:\x007:dropped0:e"
        );
        // Each IPv6 list must be whole 18-byte entries.
        assert_eq!(
            PexMsg::decode(b"d6:added66:abcdefe"),
            Err(PexError::BadCompactLength { len: 6, entry: 18 })
        );
        // Caps hold per family: 60 of each in, 50 of each out.
        let mut raw = b"d5:added360:".to_vec();
        for i in 0..60 {
            put_compact(&mut raw, &a(i, 1000));
        }
        raw.extend_from_slice(b"6:added61080:");
        for i in 0..60 {
            put_compact(&mut raw, &a6(i, 1000));
        }
        raw.push(b'e');
        let m = PexMsg::decode(&raw).unwrap();
        assert_eq!(
            m.added.iter().filter(|(x, _)| x.is_ipv4()).count(),
            MAX_PEX_ENTRIES
        );
        assert_eq!(
            m.added.iter().filter(|(x, _)| x.is_ipv6()).count(),
            MAX_PEX_ENTRIES
        );
    }

    #[test]
    fn sender_tells_both_families_and_caps_each() {
        let t0 = Instant::now();
        let to = a6(9, 9);
        let mut s = PexSender::new(to, t0);
        let mut conn: Vec<(SocketAddr, u8)> = (0..60u16).map(|i| (a6(100 + i, 1), 0)).collect();
        conn.push((a(1, 1), 0));
        conn.push((to, 0));
        let m = s.poll(t0 + PEX_FIRST_DELAY, &conn).unwrap();
        assert_eq!(
            m.added.iter().filter(|(x, _)| x.is_ipv6()).count(),
            MAX_PEX_ENTRIES
        );
        assert!(
            m.added.contains(&(a(1, 1), 0)),
            "IPv4 has its own allowance"
        );
        assert!(
            !m.added.iter().any(|(x, _)| *x == to),
            "never the recipient itself"
        );
    }

    #[test]
    fn at_most_one_message_a_minute() {
        let t0 = Instant::now();
        let mut r = PexRate::default();
        assert!(r.try_send(t0));
        assert!(!r.try_send(t0 + Duration::from_secs(59)));
        assert!(r.try_send(t0 + Duration::from_secs(60)));
        assert!(r.accept(t0));
        assert!(!r.accept(t0 + Duration::from_secs(10)));
        assert!(!r.accept(t0 + Duration::from_secs(30)));
        assert!(r.accept(t0 + Duration::from_secs(61)));
    }

    #[test]
    fn sender_sends_the_diff_once_a_minute_never_echoing() {
        let t0 = Instant::now();
        let to = a(9, 9);
        let mut s = PexSender::new(to, t0);
        let conn = [(a(1, 1), flags::SEED), (to, 0), (a(2, 2), flags::UTP)];
        // Not before the first delay.
        assert!(!s.due(t0));
        assert_eq!(s.poll(t0, &conn), None);
        let t1 = t0 + PEX_FIRST_DELAY;
        let m = s.poll(t1, &conn).unwrap();
        assert_eq!(m.added, [(a(1, 1), flags::SEED), (a(2, 2), flags::UTP)]);
        assert!(m.dropped.is_empty());
        // A change within the minute waits for the minute.
        let later = [(a(2, 2), flags::UTP), (a(3, 3), 0)];
        assert_eq!(s.poll(t1 + Duration::from_secs(59), &later), None);
        let m = s.poll(t1 + PEX_INTERVAL, &later).unwrap();
        assert_eq!(m.added, [(a(3, 3), 0)]);
        assert_eq!(m.dropped, [a(1, 1)]);
        // Nothing changed: nothing sent, and the slot is not used up.
        let t2 = t1 + 3 * PEX_INTERVAL;
        assert_eq!(s.poll(t2, &later), None);
        let m = s
            .poll(t2 + Duration::from_secs(1), &[(a(3, 3), 0)])
            .unwrap();
        assert_eq!((m.added.len(), m.dropped.as_slice()), (0, &[a(2, 2)][..]));
    }

    #[test]
    fn sender_caps_each_list_and_sends_the_rest_later() {
        let t0 = Instant::now();
        let mut s = PexSender::new(a(200, 1), t0);
        let many: Vec<_> = (0..120u16).map(|i| (a(1, 1000 + i), 0)).collect();
        let t1 = t0 + PEX_FIRST_DELAY;
        let m1 = s.poll(t1, &many).unwrap();
        assert_eq!(m1.added.len(), MAX_PEX_ENTRIES);
        let m2 = s.poll(t1 + PEX_INTERVAL, &many).unwrap();
        assert_eq!(m2.added.len(), MAX_PEX_ENTRIES);
        let m3 = s.poll(t1 + 2 * PEX_INTERVAL, &many).unwrap();
        assert_eq!(m3.added.len(), 20);
        let mut all: Vec<_> = m1.added.iter().chain(&m2.added).chain(&m3.added).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 120);
        // Everyone leaves: dropped is capped too.
        let m4 = s.poll(t1 + 3 * PEX_INTERVAL, &[]).unwrap();
        assert_eq!(m4.dropped.len(), MAX_PEX_ENTRIES);
        assert!(m4.added.is_empty());
    }

    #[test]
    fn never_echoes_a_peer_to_itself() {
        let c = [(a(1, 1), 0), (a(2, 2), 0)];
        let t0 = Instant::now();
        let mut s = PexSender::new(a(1, 1), t0);
        let m = s.poll(t0 + PEX_FIRST_DELAY, &c).unwrap();
        assert_eq!(m.added, [(a(2, 2), 0)]);
        // Only the recipient connected: nothing to say at all.
        let mut alone = PexSender::new(a(1, 1), t0);
        assert_eq!(alone.poll(t0 + PEX_FIRST_DELAY, &c[..1]), None);
    }
}
