//! Outstanding queries (transactions): matching replies and timing them out.
//!
//! A reply counts only if its transaction id *and* source IP match a query we sent, and its
//! node id matches the one we expected when we knew it, so an off-path attacker has to guess a
//! random id for a specific IP and cannot inject replies into lookups. The port is not
//! compared: NATs rewrite source ports, and libtorrent matches on the IP for the same reason.
//! A reply with the wrong id still *ends* its transaction (as a failure): every query we send
//! ends exactly once, by a reply, an error, a wrong-id reply or a timeout.
//! Each query has a short timeout (after which a lookup may use its slot for another query,
//! while a late reply is still welcome) and a hard one (after which the node failed).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddrV4;

use crate::dht::id::NodeAddr;
use std::time::{Duration, Instant};

use rand::{Rng, RngExt};

use crate::dht::id::NodeId;

/// Transaction ids we send are 2 random bytes, like libtorrent's.
pub const TID_LEN: usize = 2;

/// A query waiting for its reply.
#[derive(Debug, Clone)]
pub struct Pending<T, A = SocketAddrV4> {
    /// Where the query went; only a reply from this IP matches.
    pub addr: A,
    /// The id we expect the reply to carry, when we know it.
    pub expected_id: Option<NodeId>,
    /// When the query was sent (both timeouts count from here).
    pub sent: Instant,
    /// Whether the short timeout already fired.
    pub slow: bool,
    seq: u64,
    /// What the caller needs to resolve the query (e.g. which lookup it belongs to).
    pub data: T,
}

/// Why a reply was not matched to a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    /// No query with that transaction id is outstanding (or the id is not ours).
    UnknownTid,
    /// The transaction exists but was sent to another IP.
    WrongAddress,
}

/// A reply matched to its query: the transaction is gone from the table either way, so the
/// caller must resolve it (as a success or as a failure) exactly once.
#[derive(Debug)]
pub enum Matched<T, A = SocketAddrV4> {
    /// The reply carries the id we expected (or any id, when we expected none).
    Expected(Pending<T, A>),
    /// The reply came from the right IP but with an unexpected node id: that address no
    /// longer speaks for the node we asked, so the query failed.
    WrongId(Pending<T, A>),
}

impl<T, A> Matched<T, A> {
    /// The query, whichever way it matched.
    pub fn pending(&self) -> &Pending<T, A> {
        match self {
            Matched::Expected(p) | Matched::WrongId(p) => p,
        }
    }
}

/// The bounded table of outstanding queries.
#[derive(Debug)]
pub struct Transactions<T, A = SocketAddrV4> {
    pending: HashMap<u16, Pending<T, A>>,
    /// (deadline base, tid, seq) in send order; entries of answered queries are skipped lazily.
    short_queue: VecDeque<(Instant, u16, u64)>,
    hard_queue: VecDeque<(Instant, u16, u64)>,
    capacity: usize,
    short_timeout: Duration,
    hard_timeout: Duration,
    next_seq: u64,
}

impl<T, A: NodeAddr> Transactions<T, A> {
    /// `capacity` is capped at half the 16-bit id space so a free id is found quickly.
    pub fn new(capacity: usize, short_timeout: Duration, hard_timeout: Duration) -> Self {
        Transactions {
            pending: HashMap::new(),
            short_queue: VecDeque::new(),
            hard_queue: VecDeque::new(),
            capacity: capacity.min(1 << 15),
            short_timeout,
            hard_timeout,
            next_seq: 0,
        }
    }

    /// Queries outstanding.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no query is outstanding.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether the table is at capacity: [`Transactions::insert`] would return `None`.
    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.capacity
    }

    /// Registers a query and returns its transaction id, or `None` when the table is full.
    pub fn insert<R: Rng + ?Sized>(
        &mut self,
        rng: &mut R,
        addr: A,
        expected_id: Option<NodeId>,
        now: Instant,
        data: T,
    ) -> Option<[u8; TID_LEN]> {
        if self.is_full() {
            return None;
        }
        let tid = loop {
            let t: u16 = rng.random();
            if !self.pending.contains_key(&t) {
                break t;
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.insert(
            tid,
            Pending {
                addr,
                expected_id,
                sent: now,
                slow: false,
                seq,
                data,
            },
        );
        self.short_queue.push_back((now, tid, seq));
        self.hard_queue.push_back((now, tid, seq));
        Some(tid.to_be_bytes())
    }

    /// Matches a reply by transaction id and source IP. `reply_id` is the id the reply
    /// carries (`None` for error replies, which carry none). A matched transaction is removed
    /// whether or not the id is the expected one.
    pub fn take(
        &mut self,
        tid: &[u8],
        from: A,
        reply_id: Option<&NodeId>,
    ) -> Result<Matched<T, A>, Unmatched> {
        let tid: [u8; TID_LEN] = tid.try_into().map_err(|_| Unmatched::UnknownTid)?;
        let key = u16::from_be_bytes(tid);
        let p = self.pending.get(&key).ok_or(Unmatched::UnknownTid)?;
        // The IP, not the port: NATs rewrite source ports (issue 12, defect 6).
        if p.addr.host() != from.host() {
            return Err(Unmatched::WrongAddress);
        }
        let wrong_id = matches!((p.expected_id, reply_id), (Some(want), Some(got)) if want != *got);
        let p = self.pending.remove(&key).expect("just found");
        Ok(if wrong_id {
            Matched::WrongId(p)
        } else {
            Matched::Expected(p)
        })
    }

    /// Queries sent before `t` that are still pending (an invariant check: none may outlive
    /// its hard timeout).
    pub fn count_sent_before(&self, t: Instant) -> usize {
        self.pending.values().filter(|p| p.sent < t).count()
    }

    /// When the next timeout may fire.
    pub fn next_deadline(&self) -> Option<Instant> {
        let s = self
            .short_queue
            .front()
            .map(|(t, ..)| *t + self.short_timeout);
        let h = self
            .hard_queue
            .front()
            .map(|(t, ..)| *t + self.hard_timeout);
        match (s, h) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires due timeouts: calls `on_slow` for queries whose short timeout passed (they stay
    /// pending), and moves queries whose hard timeout passed into `failed`.
    pub fn expire(
        &mut self,
        now: Instant,
        mut on_slow: impl FnMut(&Pending<T, A>),
        failed: &mut Vec<Pending<T, A>>,
    ) {
        while let Some(&(sent, tid, seq)) = self.short_queue.front() {
            if sent + self.short_timeout > now {
                break;
            }
            self.short_queue.pop_front();
            if let Some(p) = self.pending.get_mut(&tid).filter(|p| p.seq == seq) {
                p.slow = true;
                on_slow(p);
            }
        }
        while let Some(&(sent, tid, seq)) = self.hard_queue.front() {
            if sent + self.hard_timeout > now {
                break;
            }
            self.hard_queue.pop_front();
            if self.pending.get(&tid).is_some_and(|p| p.seq == seq) {
                failed.push(self.pending.remove(&tid).expect("just checked"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn setup() -> (Transactions<u32>, StdRng, Instant) {
        (
            Transactions::new(4, Duration::from_secs(1), Duration::from_secs(5)),
            StdRng::seed_from_u64(1),
            Instant::now(),
        )
    }

    #[test]
    fn reply_must_match_tid_address_and_id() {
        let (mut t, mut rng, now) = setup();
        let a: SocketAddrV4 = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddrV4 = "127.0.0.2:1000".parse().unwrap();
        let a_natted: SocketAddrV4 = "127.0.0.1:40000".parse().unwrap();
        let id = NodeId([1; 20]);
        // Same IP, another port (a NAT rewrote it): the reply matches.
        let tid = t.insert(&mut rng, a, Some(id), now, 6).unwrap();
        assert!(
            matches!(t.take(&tid, a_natted, Some(&id)), Ok(Matched::Expected(p)) if p.data == 6 && p.addr == a)
        );
        let tid = t.insert(&mut rng, a, Some(id), now, 7).unwrap();
        assert_eq!(
            t.take(&[0, 0, 0], a, Some(&id)).unwrap_err(),
            Unmatched::UnknownTid
        );
        assert_eq!(
            t.take(&tid, b, Some(&id)).unwrap_err(),
            Unmatched::WrongAddress
        );
        assert!(matches!(t.take(&tid, a, Some(&id)), Ok(Matched::Expected(p)) if p.data == 7));
        assert_eq!(
            t.take(&tid, a, Some(&id)).unwrap_err(),
            Unmatched::UnknownTid
        );
        let tid = t.insert(&mut rng, a, Some(id), now, 8).unwrap();
        // A wrong id consumes the transaction and hands it back, so the caller can fail it.
        assert!(matches!(
            t.take(&tid, a, Some(&NodeId([2; 20]))),
            Ok(Matched::WrongId(p)) if p.data == 8
        ));
        assert!(t.is_empty());
        // Unknown expected id: any id is fine.
        let tid = t.insert(&mut rng, a, None, now, 9).unwrap();
        assert!(matches!(
            t.take(&tid, a, Some(&NodeId([2; 20]))),
            Ok(Matched::Expected(p)) if p.data == 9
        ));
    }

    #[test]
    fn table_is_bounded() {
        let (mut t, mut rng, now) = setup();
        let a: SocketAddrV4 = "127.0.0.1:1000".parse().unwrap();
        assert!(t.is_empty() && !t.is_full());
        for i in 0..4 {
            assert!(!t.is_full());
            assert!(t.insert(&mut rng, a, None, now, i).is_some());
            assert_eq!(t.len(), i as usize + 1);
            assert!(!t.is_empty());
        }
        assert!(t.is_full());
        assert!(t.insert(&mut rng, a, None, now, 5).is_none());
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn count_sent_before_counts_strictly_earlier_pending_queries() {
        let (mut t, mut rng, now) = setup();
        let a: SocketAddrV4 = "127.0.0.1:1000".parse().unwrap();
        let later = now + Duration::from_secs(2);
        t.insert(&mut rng, a, None, now, 1).unwrap();
        let answered = t.insert(&mut rng, a, None, now, 2).unwrap();
        t.insert(&mut rng, a, None, later, 3).unwrap();
        t.take(&answered, a, None).unwrap();
        assert_eq!(t.count_sent_before(now), 0);
        assert_eq!(t.count_sent_before(later), 1);
        assert_eq!(t.count_sent_before(later + Duration::from_nanos(1)), 2);
    }

    /// A transaction id can be drawn again once its query ended; the old query's queue
    /// entries must not time out the new one (the sequence number tells them apart).
    #[test]
    fn a_reused_tid_is_not_timed_out_by_its_previous_query() {
        let (mut t, mut rng, now) = setup();
        let mut same_draws = StdRng::seed_from_u64(1); // the seed setup() uses
        let a: SocketAddrV4 = "127.0.0.1:1000".parse().unwrap();
        let first = t.insert(&mut rng, a, None, now, 1).unwrap();
        t.take(&first, a, None).unwrap();
        let later = now + Duration::from_millis(4500);
        let second = t.insert(&mut same_draws, a, None, later, 2).unwrap();
        assert_eq!(first, second, "the same id, drawn again");
        let mut slow = Vec::new();
        let mut failed = Vec::new();
        t.expire(
            now + Duration::from_secs(5),
            |p| slow.push(p.data),
            &mut failed,
        );
        assert!(slow.is_empty() && failed.is_empty(), "{slow:?}");
        assert_eq!(t.len(), 1);
        t.expire(
            later + Duration::from_secs(5),
            |p| slow.push(p.data),
            &mut failed,
        );
        assert_eq!((slow, failed.len()), (vec![2], 1));
    }

    #[test]
    fn short_then_hard_timeouts() {
        let (mut t, mut rng, now) = setup();
        let a: SocketAddrV4 = "127.0.0.1:1000".parse().unwrap();
        let answered = t.insert(&mut rng, a, None, now, 1).unwrap();
        t.insert(&mut rng, a, None, now, 2).unwrap();
        assert!(t.take(&answered, a, None).is_ok());
        assert_eq!(t.next_deadline(), Some(now + Duration::from_secs(1)));
        let mut slow = Vec::new();
        let mut failed = Vec::new();
        t.expire(
            now + Duration::from_millis(999),
            |p| slow.push(p.data),
            &mut failed,
        );
        assert!(slow.is_empty());
        t.expire(
            now + Duration::from_secs(1),
            |p| slow.push(p.data),
            &mut failed,
        );
        assert_eq!(slow, vec![2]);
        assert!(failed.is_empty());
        assert_eq!(t.len(), 1);
        t.expire(
            now + Duration::from_secs(5),
            |p| slow.push(p.data),
            &mut failed,
        );
        assert_eq!(failed.iter().map(|p| p.data).collect::<Vec<_>>(), vec![2]);
        assert!(failed[0].slow);
        assert!(t.is_empty());
        assert_eq!(t.next_deadline(), None);
    }
}
