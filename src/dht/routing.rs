//! The Kademlia routing table (BEP 5): K-buckets over the XOR distance to our own id.
//!
//! Policy choices, each made to keep the table honest and useful:
//! - Only nodes that answered one of *our* queries enter a bucket ([`RoutingTable::heard_response`]).
//!   A query's claimed id is cheap to forge, so it only makes a node a candidate that the core
//!   may verify with a ping.
//! - One entry per IP address in the whole table, and (optionally) one per /24 per bucket, so a
//!   single host or subnet cannot fill our view of the keyspace.
//! - A node keeps its id: a different id at the same address evicts the old entry, and a known
//!   id showing up from another address is ignored (no hijacking an entry by claiming its id).
//! - Full buckets keep a replacement cache of verified nodes; a main entry that fails
//!   repeatedly is swapped for the freshest replacement.

use std::collections::HashSet;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::dht::bep42;
use crate::dht::id::{Contact, ID_LEN, NodeAddr, NodeId};

/// BEP 5 bucket size.
pub const K: usize = 8;
/// A node not heard from for this long is questionable (BEP 5).
pub const QUESTIONABLE_AFTER: Duration = Duration::from_secs(15 * 60);
/// A bucket nothing happened in for this long gets a refresh lookup (BEP 5).
pub const BUCKET_REFRESH_AFTER: Duration = Duration::from_secs(15 * 60);

/// Routing table settings.
#[derive(Debug, Clone)]
pub struct RoutingConfig {
    /// Entries per bucket.
    pub k: usize,
    /// Replacement cache size per bucket.
    pub replacements: usize,
    /// Allow at most one node per /24 in each bucket. Turn off only for private test
    /// networks where every node lives in one subnet.
    pub restrict_subnets: bool,
    /// Consecutive failed queries after which a node is bad.
    pub max_failures: u8,
    /// Refuse nodes whose id is not valid for their IP under BEP 42 (exempt addresses
    /// pass). Off by default: it locks out honest users behind NAT; without it, valid ids
    /// are only *preferred* when a full bucket has to choose.
    pub enforce_node_id: bool,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            k: K,
            replacements: K,
            restrict_subnets: true,
            max_failures: 3,
            enforce_node_id: false,
        }
    }
}

/// BEP 5 node states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    /// No failed query, and it answered or queried us within the last 15 minutes.
    Good,
    /// Neither good nor bad: silent for 15 minutes, or some failed queries; worth a ping.
    Questionable,
    /// Failed [`RoutingConfig::max_failures`] queries in a row.
    Bad,
}

/// One routing table entry.
#[derive(Debug, Clone)]
pub struct Entry<A: NodeAddr = SocketAddrV4> {
    /// The node's id and address.
    pub contact: Contact<A>,
    /// When it last answered one of our queries.
    pub last_response: Instant,
    /// When it last sent us a query.
    pub last_query: Option<Instant>,
    /// When we last sent it a maintenance ping.
    pub last_pinged: Option<Instant>,
    /// Consecutive queries it failed to answer.
    pub failures: u8,
    /// Whether its id is valid for its IP under BEP 42.
    pub valid_id: bool,
}

impl<A: NodeAddr> Entry<A> {
    fn new(contact: Contact<A>, now: Instant) -> Self {
        Entry {
            contact,
            last_response: now,
            last_query: None,
            last_pinged: None,
            failures: 0,
            valid_id: bep42::is_valid(&contact.id, contact.addr.host()),
        }
    }

    /// BEP 5: good if it answered us within 15 minutes, or answered us ever and queried us
    /// within 15 minutes; bad after repeated failures; otherwise questionable.
    pub fn status(&self, now: Instant, max_failures: u8) -> NodeStatus {
        if self.failures >= max_failures {
            return NodeStatus::Bad;
        }
        let recent = |t: Instant| now.saturating_duration_since(t) < QUESTIONABLE_AFTER;
        if self.failures == 0 && (recent(self.last_response) || self.last_query.is_some_and(recent))
        {
            NodeStatus::Good
        } else {
            NodeStatus::Questionable
        }
    }

    /// The latest of: answered us, queried us, was pinged by us.
    pub fn last_activity(&self) -> Instant {
        let mut t = self.last_response;
        for x in [self.last_query, self.last_pinged].into_iter().flatten() {
            t = t.max(x);
        }
        t
    }
}

#[derive(Debug, Clone)]
struct Bucket<A: NodeAddr = SocketAddrV4> {
    nodes: Vec<Entry<A>>,
    replacements: Vec<Entry<A>>,
    last_changed: Instant,
}

impl<A: NodeAddr> Bucket<A> {
    fn new(now: Instant) -> Self {
        Bucket {
            nodes: Vec::new(),
            replacements: Vec::new(),
            last_changed: now,
        }
    }
}

/// What [`RoutingTable::heard_response`] did with a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// Now in a main bucket.
    Added,
    /// Already there; its timestamps were refreshed.
    Refreshed,
    /// Kept in the bucket's replacement cache.
    Replacement,
    /// Refused (our id, address conflict, subnet limit).
    Rejected,
}

/// The routing table.
#[derive(Debug, Clone)]
pub struct RoutingTable<A: NodeAddr = SocketAddrV4> {
    own: NodeId,
    config: RoutingConfig,
    /// Bucket `i` (except the last) holds nodes sharing exactly `i` leading bits with `own`;
    /// the last holds everything sharing at least `len - 1` bits, including our own id's range.
    buckets: Vec<Bucket<A>>,
    /// IPs of main entries, for the one-entry-per-IP rule.
    ips: HashSet<A::Ip>,
}

/// An id as (first 16 bytes, last 4 bytes), big-endian: XOR of two of these pairs compares
/// like [`NodeId::distance`].
fn distance_halves(id: &NodeId) -> (u128, u32) {
    let [hi @ .., l0, l1, l2, l3] = id.0;
    (
        u128::from_be_bytes(hi),
        u32::from_be_bytes([l0, l1, l2, l3]),
    )
}

impl<A: NodeAddr> RoutingTable<A> {
    /// An empty table around our id `own`: one bucket covering the whole keyspace.
    pub fn new(own: NodeId, config: RoutingConfig, now: Instant) -> Self {
        RoutingTable {
            own,
            config,
            buckets: vec![Bucket::new(now)],
            ips: HashSet::new(),
        }
    }

    /// The id the buckets are arranged around.
    pub fn own_id(&self) -> NodeId {
        self.own
    }

    /// The settings the table was made with.
    pub fn config(&self) -> &RoutingConfig {
        &self.config
    }

    fn bucket_index(&self, id: &NodeId) -> usize {
        self.own.common_prefix_len(id).min(self.buckets.len() - 1)
    }

    fn find(&self, id: &NodeId) -> Option<(usize, usize)> {
        let b = self.bucket_index(id);
        self.buckets[b]
            .nodes
            .iter()
            .position(|e| e.contact.id == *id)
            .map(|i| (b, i))
    }

    fn find_addr(&self, addr: A) -> Option<(usize, usize)> {
        if !self.ips.contains(&addr.host()) {
            return None;
        }
        self.buckets.iter().enumerate().find_map(|(b, bucket)| {
            bucket
                .nodes
                .iter()
                .position(|e| e.contact.addr == addr)
                .map(|i| (b, i))
        })
    }

    fn remove_at(&mut self, b: usize, i: usize) -> Entry<A> {
        let e = self.buckets[b].nodes.swap_remove(i);
        self.ips.remove(&e.contact.addr.host());
        e
    }

    /// Records that `contact` answered one of our queries: the only way into a bucket.
    pub fn heard_response(&mut self, contact: Contact<A>, now: Instant) -> Insert {
        if contact.id == self.own {
            return Insert::Rejected;
        }
        if let Some((b, i)) = self.find(&contact.id) {
            let e = &mut self.buckets[b].nodes[i];
            if e.contact.addr != contact.addr {
                // Someone else claiming a known id: keep the original.
                return Insert::Rejected;
            }
            e.last_response = now;
            e.failures = 0;
            self.buckets[b].last_changed = now;
            return Insert::Refreshed;
        }
        let entry = Entry::new(contact, now);
        if self.config.enforce_node_id && !entry.valid_id {
            return Insert::Rejected;
        }
        if let Some((b, i)) = self.find_addr(contact.addr) {
            // Same address, new id: the old identity is gone.
            self.remove_at(b, i);
        } else if self.ips.contains(&contact.addr.host()) {
            return Insert::Rejected;
        }
        self.insert_verified(entry, now)
    }

    fn subnet_taken(&self, b: usize, addr: &A, ignore: Option<usize>) -> bool {
        if !self.config.restrict_subnets {
            return false;
        }
        let net = addr.subnet();
        self.buckets[b]
            .nodes
            .iter()
            .enumerate()
            .any(|(i, e)| Some(i) != ignore && e.contact.addr.subnet() == net)
    }

    fn insert_verified(&mut self, entry: Entry<A>, now: Instant) -> Insert {
        loop {
            let b = self.bucket_index(&entry.contact.id);
            let addr = entry.contact.addr;
            let bucket = &self.buckets[b];
            if bucket.nodes.len() < self.config.k {
                if self.subnet_taken(b, &addr, None) {
                    return Insert::Rejected;
                }
                self.ips.insert(addr.host());
                let bucket = &mut self.buckets[b];
                bucket.nodes.push(entry);
                bucket.last_changed = now;
                bucket.replacements.retain(|r| r.contact.addr != addr);
                return Insert::Added;
            }
            let max_failures = self.config.max_failures;
            if let Some(bad) = bucket
                .nodes
                .iter()
                .position(|e| e.status(now, max_failures) == NodeStatus::Bad)
            {
                if self.subnet_taken(b, &addr, Some(bad)) {
                    return Insert::Rejected;
                }
                self.remove_at(b, bad);
                continue;
            }
            if b == self.buckets.len() - 1 && self.buckets.len() < ID_LEN * 8 {
                self.split_last(now);
                continue;
            }
            if self.subnet_taken(b, &addr, None) {
                return Insert::Rejected;
            }
            // Full of live nodes: a BEP 42-valid newcomer displaces the least recently active
            // node with an invalid id, which becomes a replacement.
            if entry.valid_id
                && let Some(i) = bucket
                    .nodes
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| !e.valid_id)
                    .min_by_key(|(_, e)| e.last_activity())
                    .map(|(i, _)| i)
            {
                let displaced = self.remove_at(b, i);
                self.ips.insert(addr.host());
                let cap = self.config.replacements;
                let bucket = &mut self.buckets[b];
                bucket.nodes.push(entry);
                bucket.last_changed = now;
                if bucket.replacements.len() >= cap {
                    bucket.replacements.remove(0);
                }
                bucket.replacements.push(displaced);
                return Insert::Added;
            }
            let cap = self.config.replacements;
            let bucket = &mut self.buckets[b];
            bucket
                .replacements
                .retain(|r| r.contact.id != entry.contact.id && r.contact.addr != addr);
            if bucket.replacements.len() >= cap {
                bucket.replacements.remove(0);
            }
            bucket.replacements.push(entry);
            return Insert::Replacement;
        }
    }

    /// Splits the last bucket: entries that share one more bit with our id move to a new one.
    fn split_last(&mut self, now: Instant) {
        let depth = self.buckets.len() - 1;
        let own = self.own;
        let last = self.buckets.last_mut().expect("table has a bucket");
        let (stay, go): (Vec<Entry<A>>, Vec<Entry<A>>) = last
            .nodes
            .drain(..)
            .partition(|e| own.common_prefix_len(&e.contact.id) == depth);
        let (rstay, rgo): (Vec<Entry<A>>, Vec<Entry<A>>) = last
            .replacements
            .drain(..)
            .partition(|e| own.common_prefix_len(&e.contact.id) == depth);
        last.nodes = stay;
        last.replacements = rstay;
        let mut next = Bucket::new(now);
        next.nodes = go;
        next.replacements = rgo;
        self.buckets.push(next);
    }

    /// Records a query from `contact`. Returns `true` when the node is already in the table
    /// (and refreshes it). A query never removes or replaces an entry, even one at the same
    /// address with another id: anyone can forge a query from an address our `find_node`
    /// replies publish. A restarted node with a new id gets in once the old entry fails to
    /// answer our own query (or answers it with the new id, see [`RoutingTable::wrong_id`]).
    pub fn heard_query(&mut self, contact: Contact<A>, now: Instant) -> bool {
        if let Some((b, i)) = self.find(&contact.id) {
            let e = &mut self.buckets[b].nodes[i];
            if e.contact.addr == contact.addr {
                e.last_query = Some(now);
                return true;
            }
        }
        false
    }

    /// Whether a verified `contact` would get a main-bucket slot now, i.e. whether it is
    /// worth a verification ping.
    pub fn would_accept(&self, contact: &Contact<A>, now: Instant) -> bool {
        if contact.id == self.own || self.ips.contains(&contact.addr.host()) {
            return false;
        }
        let b = self.bucket_index(&contact.id);
        let bucket = &self.buckets[b];
        if self.subnet_taken(b, &contact.addr, None) && bucket.nodes.len() < self.config.k {
            return false;
        }
        bucket.nodes.len() < self.config.k
            || (b == self.buckets.len() - 1 && self.buckets.len() < ID_LEN * 8)
            || bucket
                .nodes
                .iter()
                .any(|e| e.status(now, self.config.max_failures) != NodeStatus::Good)
    }

    /// Records that a query to `contact` timed out. A node that becomes bad is replaced by the
    /// freshest verified replacement, when there is one.
    pub fn failed(&mut self, contact: &Contact<A>, now: Instant) {
        let Some((b, i)) = self.find(&contact.id) else {
            return;
        };
        if self.buckets[b].nodes[i].contact.addr != contact.addr {
            return;
        }
        let e = &mut self.buckets[b].nodes[i];
        e.failures = e.failures.saturating_add(1);
        if e.status(now, self.config.max_failures) != NodeStatus::Bad {
            return;
        }
        self.promote_replacement(b, i, now);
    }

    /// Records that `contact`'s address answered one of *our* queries with another id: that
    /// address no longer speaks for the node, so its entry goes (a replacement takes its
    /// place when one fits). Only this and [`RoutingTable::failed`] remove a confirmed
    /// entry; a query never does, since anyone can forge one from a published address.
    pub fn wrong_id(&mut self, contact: &Contact<A>, now: Instant) {
        let Some((b, i)) = self.find(&contact.id) else {
            return;
        };
        if self.buckets[b].nodes[i].contact.addr != contact.addr {
            return;
        }
        if !self.promote_replacement(b, i, now) {
            self.remove_at(b, i);
        }
    }

    /// Swaps entry `i` of bucket `b` for the freshest replacement that fits; `false` when none
    /// does (the entry stays).
    fn promote_replacement(&mut self, b: usize, i: usize, now: Instant) -> bool {
        while let Some(r) = self.buckets[b].replacements.pop() {
            if !self.ips.contains(&r.contact.addr.host())
                && !self.subnet_taken(b, &r.contact.addr, Some(i))
            {
                self.remove_at(b, i);
                self.ips.insert(r.contact.addr.host());
                let bucket = &mut self.buckets[b];
                bucket.nodes.push(r);
                bucket.last_changed = now;
                return true;
            }
        }
        false
    }

    /// Marks that we just pinged `contact` for maintenance, so the next pick moves on.
    pub fn pinged(&mut self, id: &NodeId, now: Instant) {
        if let Some((b, i)) = self.find(id) {
            self.buckets[b].nodes[i].last_pinged = Some(now);
        }
    }

    /// The entry we have heard from (or pinged) least recently: pinging one such node every
    /// few seconds keeps the whole table fresh without bursts (libtorrent's approach).
    pub fn least_recently_seen(&self) -> Option<&Entry<A>> {
        self.buckets
            .iter()
            .flat_map(|b| b.nodes.iter())
            .min_by_key(|e| e.last_activity())
    }

    /// Buckets idle for [`BUCKET_REFRESH_AFTER`], each with a random target inside it.
    pub fn stale_buckets<R: Rng + ?Sized>(&mut self, now: Instant, rng: &mut R) -> Vec<NodeId> {
        self.refresh_targets(now, rng, true)
    }

    /// A random target at every depth the table has, including a random id in the last
    /// bucket's far half: looking them all up right after joining fills the far buckets at
    /// once instead of waiting for strangers to query us (a self-lookup alone only finds the
    /// nodes nearest to us).
    pub fn all_bucket_targets<R: Rng + ?Sized>(
        &mut self,
        now: Instant,
        rng: &mut R,
    ) -> Vec<NodeId> {
        let mut targets = self.refresh_targets(now, rng, false);
        let last = self.buckets.len() - 1;
        if let Some(t) = targets.last_mut() {
            *t = self.own.random_at_depth(last, rng);
        }
        targets
    }

    fn refresh_targets<R: Rng + ?Sized>(
        &mut self,
        now: Instant,
        rng: &mut R,
        only_stale: bool,
    ) -> Vec<NodeId> {
        let last = self.buckets.len() - 1;
        let mut targets = Vec::new();
        for (i, b) in self.buckets.iter_mut().enumerate() {
            if !only_stale || now.saturating_duration_since(b.last_changed) >= BUCKET_REFRESH_AFTER
            {
                // Resetting here keeps one refresh per interval even if the lookup finds nothing.
                b.last_changed = now;
                let depth = if i == last {
                    (i + 1).min(ID_LEN * 8)
                } else {
                    i
                };
                targets.push(self.own.random_at_depth(depth, rng));
            }
        }
        targets
    }

    /// The `count` closest usable (not failing) contacts to `target`, closest first, into `out`.
    ///
    /// Walks buckets from the one `target` falls into outwards (a bucket's nodes are all
    /// closer to the target than those of the next group), so a reply costs a few buckets'
    /// worth of distance computations rather than the whole table.
    ///
    /// This runs for every find_node and get_peers query we answer, so it allocates nothing
    /// and computes each candidate's distance once: the XOR distance as a (high 128 bits,
    /// low 32 bits) pair orders exactly like the 20-byte big-endian distance and compares in
    /// a few instructions (`NodeId::distance` builds an array and compares with memcmp). For
    /// the usual small `count`, candidates go straight into a sorted stack array of the best
    /// `count` so far; a larger `count` collects them all, drops the excess with a
    /// linear-time selection and sorts the rest.
    pub fn closest(&self, target: &NodeId, count: usize, out: &mut Vec<Contact<A>>) {
        out.clear();
        if count == 0 {
            return;
        }
        let (t_hi, t_lo) = distance_halves(target);
        let key = |c: &Contact<A>| {
            let (hi, lo) = distance_halves(&c.id);
            (hi ^ t_hi, lo ^ t_lo)
        };
        const KEYED: usize = 16;
        if count > KEYED {
            self.closest_candidates(target, count, |c| out.push(*c));
            if out.len() > count {
                out.select_nth_unstable_by_key(count, key);
                out.truncate(count);
            }
            out.sort_unstable_by_key(key);
            return;
        }
        // References, not copies: an IPv6 contact is 48 bytes, and shifting copies of them
        // through the array showed in the IPv6 node's profile.
        let blank = Contact::new(NodeId([0; 20]), A::unspecified());
        let mut keys = [(0u128, 0u32); KEYED];
        let mut best = [&blank; KEYED];
        let mut kept = 0;
        self.closest_candidates(target, count, |c| {
            let k = key(c);
            // Insertion into keys[..kept], sorted; when full, the farthest falls off.
            let mut j = if kept < count {
                kept += 1;
                kept - 1
            } else if k < keys[count - 1] {
                count - 1
            } else {
                return;
            };
            while j > 0 && keys[j - 1] > k {
                keys[j] = keys[j - 1];
                best[j] = best[j - 1];
                j -= 1;
            }
            keys[j] = k;
            best[j] = c;
        });
        out.extend(best[..kept].iter().map(|c| **c));
    }

    /// Calls `f` with every candidate for [`RoutingTable::closest`]: the usable contacts of
    /// the target's bucket, then, while fewer than `count` were seen, of all deeper buckets
    /// and then of shallower ones, nearest first.
    fn closest_candidates<'a>(
        &'a self,
        target: &NodeId,
        count: usize,
        mut f: impl FnMut(&'a Contact<A>),
    ) {
        let mut seen = 0;
        let mut visit = |b: &'a Bucket<A>| {
            for e in b.nodes.iter().filter(|e| e.failures == 0) {
                seen += 1;
                f(&e.contact);
            }
            seen
        };
        let start = self.bucket_index(target);
        let mut seen_now = visit(&self.buckets[start]);
        if seen_now < count {
            for b in &self.buckets[start + 1..] {
                seen_now = visit(b);
            }
        }
        let mut next = start;
        while seen_now < count && next > 0 {
            next -= 1;
            seen_now = visit(&self.buckets[next]);
        }
    }

    /// Every main entry.
    pub fn entries(&self) -> impl Iterator<Item = &Entry<A>> {
        self.buckets.iter().flat_map(|b| b.nodes.iter())
    }

    /// Main entries then replacements: what is worth persisting.
    pub fn all_contacts(&self) -> Vec<Contact<A>> {
        let mut v: Vec<Contact<A>> = self.entries().map(|e| e.contact).collect();
        v.extend(
            self.buckets
                .iter()
                .flat_map(|b| b.replacements.iter().map(|e| e.contact)),
        );
        v
    }

    /// Whether a main entry has this id (replacements do not count).
    pub fn contains(&self, id: &NodeId) -> bool {
        self.find(id).is_some()
    }

    /// Number of main entries.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.nodes.len()).sum()
    }

    /// Whether there is no main entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of buckets (BEP 5: only the one covering our own id splits, when full).
    pub fn num_buckets(&self) -> usize {
        self.buckets.len()
    }

    /// (good, questionable, bad) counts.
    pub fn counts(&self, now: Instant) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for e in self.entries() {
            match e.status(now, self.config.max_failures) {
                NodeStatus::Good => c.0 += 1,
                NodeStatus::Questionable => c.1 += 1,
                NodeStatus::Bad => c.2 += 1,
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn addr(i: u32) -> SocketAddrV4 {
        // Distinct /24s so the subnet rule does not interfere unless a test wants it.
        SocketAddrV4::new(Ipv4Addr::from(0x7f00_0001 + (i << 8)), 6881)
    }

    fn id_with_prefix(own: &NodeId, depth: usize, rng: &mut StdRng) -> NodeId {
        own.random_at_depth(depth, rng)
    }

    fn table() -> (RoutingTable, Instant, StdRng) {
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(7);
        let own = NodeId::random(&mut rng);
        (
            RoutingTable::new(own, RoutingConfig::default(), now),
            now,
            rng,
        )
    }

    /// A node that answers from a known address with a new id has restarted with another
    /// identity: the old entry goes and the new one takes its place.
    #[test]
    fn a_known_address_answering_with_a_new_id_replaces_its_entry() {
        let (mut t, now, mut rng) = table();
        let own = t.own_id();
        let (old, new) = (
            id_with_prefix(&own, 0, &mut rng),
            id_with_prefix(&own, 0, &mut rng),
        );
        assert!(matches!(
            t.heard_response(Contact::new(old, addr(1)), now),
            Insert::Added
        ));
        assert!(matches!(
            t.heard_response(Contact::new(new, addr(1)), now),
            Insert::Added
        ));
        assert!(t.contains(&new) && !t.contains(&old));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn splits_only_the_bucket_holding_our_id() {
        let (mut t, now, mut rng) = table();
        let own = t.own_id();
        // 8 far nodes (depth 0) fill bucket 0 once it exists.
        for i in 0..8 {
            let id = id_with_prefix(&own, 0, &mut rng);
            assert_eq!(
                t.heard_response(Contact::new(id, addr(i)), now),
                Insert::Added
            );
        }
        // A 9th near node forces a split, the far ones stay in bucket 0.
        let near = id_with_prefix(&own, 5, &mut rng);
        assert_eq!(
            t.heard_response(Contact::new(near, addr(100)), now),
            Insert::Added
        );
        assert_eq!(t.num_buckets(), 2);
        // More far nodes can no longer split: they become replacements.
        let far = id_with_prefix(&own, 0, &mut rng);
        assert_eq!(
            t.heard_response(Contact::new(far, addr(200)), now),
            Insert::Replacement
        );
        assert_eq!(t.len(), 9);
    }

    #[test]
    fn one_entry_per_ip_and_per_subnet_in_a_bucket() {
        let (mut t, now, mut rng) = table();
        let a = SocketAddrV4::new(Ipv4Addr::new(127, 0, 5, 1), 1000);
        let same_ip = SocketAddrV4::new(Ipv4Addr::new(127, 0, 5, 1), 1001);
        let same_net = SocketAddrV4::new(Ipv4Addr::new(127, 0, 5, 2), 1000);
        let id1 = id_with_prefix(&t.own_id(), 0, &mut rng);
        let id2 = id_with_prefix(&t.own_id(), 0, &mut rng);
        let id3 = id_with_prefix(&t.own_id(), 0, &mut rng);
        assert_eq!(t.heard_response(Contact::new(id1, a), now), Insert::Added);
        assert_eq!(
            t.heard_response(Contact::new(id2, same_ip), now),
            Insert::Rejected
        );
        assert_eq!(
            t.heard_response(Contact::new(id3, same_net), now),
            Insert::Rejected
        );
        let mut open = RoutingTable::new(
            t.own_id(),
            RoutingConfig {
                restrict_subnets: false,
                ..Default::default()
            },
            now,
        );
        open.heard_response(Contact::new(id1, a), now);
        assert_eq!(
            open.heard_response(Contact::new(id3, same_net), now),
            Insert::Added
        );
    }

    #[test]
    fn id_change_needs_our_own_query_and_id_hijack_is_refused() {
        let (mut t, now, mut rng) = table();
        let id1 = NodeId::random(&mut rng);
        let id2 = NodeId::random(&mut rng);
        t.heard_response(Contact::new(id1, addr(1)), now);
        // A (forgeable) query with a new id from the same address changes nothing.
        assert!(!t.heard_query(Contact::new(id2, addr(1)), now));
        assert!(t.contains(&id1));
        assert!(t.heard_query(Contact::new(id1, addr(1)), now));
        // Our own query answered with another id is what evicts the old identity.
        t.wrong_id(&Contact::new(id1, addr(1)), now);
        assert!(!t.contains(&id1));
        t.heard_response(Contact::new(id2, addr(1)), now);
        // Someone else claiming id2 from another address changes nothing.
        assert_eq!(
            t.heard_response(Contact::new(id2, addr(9)), now),
            Insert::Rejected
        );
        let mut out = Vec::new();
        t.closest(&NodeId::random(&mut rng), 8, &mut out);
        assert_eq!(out, vec![Contact::new(id2, addr(1))]);
    }

    #[test]
    fn own_id_is_never_added() {
        let (mut t, now, _) = table();
        let own = t.own_id();
        assert_eq!(
            t.heard_response(Contact::new(own, addr(1)), now),
            Insert::Rejected
        );
        assert!(!t.would_accept(&Contact::new(own, addr(1)), now));
    }

    #[test]
    fn failing_node_is_replaced_by_a_replacement() {
        let (mut t, now, mut rng) = table();
        let own = t.own_id();
        // Fill the near bucket first so bucket 0 cannot split any more.
        t.heard_response(
            Contact::new(id_with_prefix(&own, 3, &mut rng), addr(50)),
            now,
        );
        let mut far = Vec::new();
        for i in 0..8 {
            let c = Contact::new(id_with_prefix(&own, 0, &mut rng), addr(i));
            t.heard_response(c, now);
            far.push(c);
        }
        // Force a split so bucket 0 is no longer the last one.
        for i in 0..8 {
            t.heard_response(
                Contact::new(id_with_prefix(&own, 2, &mut rng), addr(60 + i)),
                now,
            );
        }
        let spare = Contact::new(id_with_prefix(&own, 0, &mut rng), addr(99));
        assert_eq!(t.heard_response(spare, now), Insert::Replacement);
        for _ in 0..3 {
            t.failed(&far[0], now);
        }
        assert!(!t.contains(&far[0].id));
        assert!(t.contains(&spare.id));
    }

    /// A full bucket that is not the last one takes newcomers as replacements (no split),
    /// and keeps one replacement per id and per address (the latest).
    #[test]
    fn a_full_inner_bucket_keeps_one_replacement_per_id_and_per_address() {
        let (mut t, now, mut rng) = table();
        let own = t.own_id();
        for i in 0..9 {
            let c = Contact::new(id_with_prefix(&own, 0, &mut rng), addr(i));
            t.heard_response(c, now);
        }
        assert_eq!(
            t.num_buckets(),
            2,
            "the ninth far node split the only bucket"
        );
        let spare = Contact::new(id_with_prefix(&own, 0, &mut rng), addr(20));
        assert_eq!(t.heard_response(spare, now), Insert::Replacement);
        assert_eq!(t.num_buckets(), 2, "an inner bucket never splits");
        // The same id at a new address, then a new id at that address.
        let moved = Contact::new(spare.id, addr(21));
        assert_eq!(t.heard_response(moved, now), Insert::Replacement);
        let reused = Contact::new(id_with_prefix(&own, 0, &mut rng), addr(21));
        assert_eq!(t.heard_response(reused, now), Insert::Replacement);
        let all = t.all_contacts();
        let with_id = |id| all.iter().filter(|c| c.id == id).count();
        let at = |a| all.iter().filter(|c| c.addr == a).count();
        assert_eq!(
            (with_id(spare.id), at(addr(20)), at(addr(21))),
            (0, 0, 1),
            "{all:?}"
        );
        assert_eq!(with_id(reused.id), 1);
    }

    /// A table as `failing_node_is_replaced_by_a_replacement` builds it: bucket 0 (depth 0)
    /// full and no longer the last bucket, so newcomers there become replacements. Returns
    /// the table and bucket 0's entries.
    fn full_inner_bucket() -> (RoutingTable, Instant, StdRng, Vec<Contact>) {
        let (mut t, now, mut rng) = table();
        let own = t.own_id();
        t.heard_response(
            Contact::new(id_with_prefix(&own, 3, &mut rng), addr(50)),
            now,
        );
        let mut far = Vec::new();
        for i in 0..8 {
            let c = Contact::new(id_with_prefix(&own, 0, &mut rng), addr(i));
            t.heard_response(c, now);
            far.push(c);
        }
        for i in 0..8 {
            t.heard_response(
                Contact::new(id_with_prefix(&own, 2, &mut rng), addr(60 + i)),
                now,
            );
        }
        (t, now, rng, far)
    }

    /// Replacements are kept side by side (one per id and per address, not one in all),
    /// and a replacement that enters the bucket leaves the others waiting.
    #[test]
    fn replacements_wait_side_by_side_and_stay_when_one_is_promoted() {
        let (mut t, now, mut rng, far) = full_inner_bucket();
        let own = t.own_id();
        let spares: Vec<Contact> = (0..3)
            .map(|i| Contact::new(id_with_prefix(&own, 0, &mut rng), addr(90 + i)))
            .collect();
        for s in &spares {
            assert_eq!(t.heard_response(*s, now), Insert::Replacement);
        }
        assert_eq!(t.all_contacts().len(), t.len() + 3, "three replacements");
        // far[0] fails: the freshest replacement (the last) takes its place.
        for _ in 0..3 {
            t.failed(&far[0], now);
        }
        assert!(t.contains(&spares[2].id) && !t.contains(&far[0].id));
        // far[1] fails: the next replacement is still there to take its place.
        for _ in 0..3 {
            t.failed(&far[1], now);
        }
        assert!(t.contains(&spares[1].id) && !t.contains(&far[1].id));
    }

    /// A newcomer that takes a bad entry's slot leaves the bucket's replacements waiting
    /// (only a replacement at the newcomer's own address is dropped).
    #[test]
    fn a_newcomer_taking_a_bad_entrys_slot_leaves_the_replacements_waiting() {
        let (mut t, now, mut rng, far) = full_inner_bucket();
        let own = t.own_id();
        let spares: Vec<Contact> = (0..2)
            .map(|i| Contact::new(id_with_prefix(&own, 0, &mut rng), addr(90 + i)))
            .collect();
        for s in &spares {
            assert_eq!(t.heard_response(*s, now), Insert::Replacement);
        }
        // far[0] goes bad without a promotion (as when no replacement fitted).
        let (b, i) = t.find(&far[0].id).unwrap();
        t.buckets[b].nodes[i].failures = t.config.max_failures;
        let newcomer = Contact::new(id_with_prefix(&own, 0, &mut rng), addr(95));
        assert_eq!(t.heard_response(newcomer, now), Insert::Added);
        assert!(!t.contains(&far[0].id));
        let all = t.all_contacts();
        for s in &spares {
            assert!(all.iter().any(|c| c.id == s.id), "{s:?} still waits");
        }
    }

    /// A node that answers again from its address makes room in a bucket for itself when
    /// it was waiting as a replacement, without taking the other replacements with it.
    #[test]
    fn entering_a_bucket_removes_only_its_own_replacement_entry() {
        let (mut t, now, mut rng) = table();
        let own = t.own_id();
        for i in 0..8 {
            t.heard_response(
                Contact::new(id_with_prefix(&own, 0, &mut rng), addr(i)),
                now,
            );
        }
        // One far node more splits the bucket; now bucket 0 (far) is inner and full.
        t.heard_response(
            Contact::new(id_with_prefix(&own, 0, &mut rng), addr(8)),
            now,
        );
        let waiting: Vec<Contact> = (0..2)
            .map(|i| Contact::new(id_with_prefix(&own, 0, &mut rng), addr(80 + i)))
            .collect();
        for w in &waiting {
            assert_eq!(t.heard_response(*w, now), Insert::Replacement);
        }
        let before = t.all_contacts().len();
        // A wrong-id answer from a main entry frees a slot: the freshest replacement moves
        // in, the other one keeps waiting.
        let main = t
            .entries()
            .find(|e| e.contact.id.common_prefix_len(&own) == 0)
            .map(|e| e.contact)
            .unwrap();
        t.wrong_id(&main, now);
        assert!(!t.contains(&main.id));
        assert!(t.contains(&waiting[1].id));
        assert_eq!(
            t.all_contacts().len(),
            before - 1,
            "the other replacement stays"
        );
    }

    /// A timeout counts only against the entry at the address that timed out: a query to
    /// another address claiming a known id proves nothing about the entry.
    #[test]
    fn failures_count_only_at_the_entrys_own_address() {
        let (mut t, now, mut rng, far) = full_inner_bucket();
        let own = t.own_id();
        let spare = Contact::new(id_with_prefix(&own, 0, &mut rng), addr(99));
        assert_eq!(t.heard_response(spare, now), Insert::Replacement);
        let elsewhere = Contact::new(far[0].id, addr(98));
        for _ in 0..5 {
            t.failed(&elsewhere, now);
        }
        assert!(t.contains(&far[0].id), "not its address");
        // One timeout does not make a node bad: it keeps its slot until max_failures.
        t.failed(&far[0], now);
        assert!(t.contains(&far[0].id) && !t.contains(&spare.id));
        for _ in 0..2 {
            t.failed(&far[0], now);
        }
        assert!(!t.contains(&far[0].id) && t.contains(&spare.id));
    }

    /// A replacement whose IP already has an entry (in another bucket) is not promoted:
    /// one entry per IP in the whole table.
    #[test]
    fn a_replacement_whose_ip_is_taken_is_not_promoted() {
        let (mut t, now, mut rng, far) = full_inner_bucket();
        let own = t.own_id();
        let spare = Contact::new(id_with_prefix(&own, 0, &mut rng), addr(99));
        assert_eq!(t.heard_response(spare, now), Insert::Replacement);
        // The spare's IP, another port, enters a deeper bucket as a main entry.
        let mut same_ip = addr(99);
        same_ip.set_port(7000);
        let deep = Contact::new(id_with_prefix(&own, 4, &mut rng), same_ip);
        assert_eq!(t.heard_response(deep, now), Insert::Added);
        for _ in 0..3 {
            t.failed(&far[0], now);
        }
        assert!(!t.contains(&spare.id), "its IP is taken");
        assert!(
            t.contains(&far[0].id),
            "no replacement fits: the entry stays"
        );
    }

    /// An inner bucket with room accepts a newcomer; an empty table says it is empty.
    #[test]
    fn an_inner_bucket_with_room_accepts_and_emptiness_is_reported() {
        let (mut t, now, mut rng) = table();
        assert!(t.is_empty());
        let own = t.own_id();
        // Nine near nodes split the table; the far bucket (0) is then inner and empty.
        for i in 0..9 {
            t.heard_response(
                Contact::new(id_with_prefix(&own, 1 + i % 3, &mut rng), addr(i as u32)),
                now,
            );
        }
        assert!(!t.is_empty());
        assert!(t.num_buckets() > 1);
        let far = Contact::new(id_with_prefix(&own, 0, &mut rng), addr(40));
        assert!(t.would_accept(&far, now), "an inner bucket with room");
    }

    /// A maintenance ping moves the least-recently-seen pick on to the next entry.
    #[test]
    fn a_pinged_entry_is_not_picked_again_next() {
        let (mut t, now, mut rng) = table();
        let own = t.own_id();
        for i in 0..3 {
            t.heard_response(
                Contact::new(id_with_prefix(&own, 0, &mut rng), addr(i)),
                now + Duration::from_secs(u64::from(i)),
            );
        }
        let first = t.least_recently_seen().unwrap().contact;
        t.pinged(&first.id, now + Duration::from_secs(10));
        let second = t.least_recently_seen().unwrap().contact;
        assert_ne!(first.id, second.id);
    }

    /// A full last bucket splits for a newcomer even when the newcomer's /24 is already in
    /// it (the split may separate them), and the table stops splitting at 160 buckets.
    #[test]
    fn would_accept_at_the_split_limits() {
        let (mut t, now, mut rng) = table();
        let own = t.own_id();
        for i in 0..8 {
            t.heard_response(
                Contact::new(id_with_prefix(&own, 0, &mut rng), addr(i)),
                now,
            );
        }
        let mut neighbour = addr(3);
        neighbour.set_ip(Ipv4Addr::from(u32::from(*neighbour.ip()) + 1));
        let newcomer = Contact::new(id_with_prefix(&own, 0, &mut rng), neighbour);
        assert!(t.would_accept(&newcomer, now), "a full last bucket splits");

        // k = 1: one entry per bucket, one split per depth, down to the 160th bucket.
        let mut t = RoutingTable::new(
            own,
            RoutingConfig {
                k: 1,
                restrict_subnets: false,
                ..RoutingConfig::default()
            },
            now,
        );
        let mut checked_at_40 = false;
        for d in 0..160u32 {
            t.heard_response(
                Contact::new(id_with_prefix(&own, d as usize, &mut rng), addr(100 + d)),
                now,
            );
            let n = t.num_buckets();
            if n == 40 {
                // A full last bucket deep in the table still splits, and its refresh
                // target lies inside it.
                let deeper = Contact::new(id_with_prefix(&own, 45, &mut rng), addr(500));
                assert!(t.would_accept(&deeper, now), "40 buckets split further");
                let targets = t.all_bucket_targets(now, &mut rng);
                assert!(own.common_prefix_len(targets.last().unwrap()) >= 39);
                // The same for the refresh of a stale last bucket.
                let stale = t.stale_buckets(now + BUCKET_REFRESH_AFTER, &mut rng);
                assert_eq!(stale.len(), 40);
                assert!(own.common_prefix_len(stale.last().unwrap()) >= 40);
                checked_at_40 = true;
            }
        }
        assert!(checked_at_40);
        assert_eq!(t.num_buckets(), 160);
        let deepest = id_with_prefix(&own, 159, &mut rng);
        assert!(t.contains(&deepest));
        let again = Contact::new(deepest, addr(400));
        assert!(!t.would_accept(&again, now), "no split past 160 buckets");
    }

    /// `would_accept` (is a verification ping worth it?) says what an insertion would do.
    #[test]
    fn would_accept_matches_what_an_insertion_would_do() {
        let (mut t, now, mut rng) = table();
        let own = t.own_id();
        for i in 0..8 {
            t.heard_response(
                Contact::new(id_with_prefix(&own, 0, &mut rng), addr(i)),
                now,
            );
        }
        assert_eq!(t.num_buckets(), 1);
        let newcomer = Contact::new(id_with_prefix(&own, 0, &mut rng), addr(30));
        assert!(t.would_accept(&newcomer, now), "a full last bucket splits");
        t.heard_response(
            Contact::new(id_with_prefix(&own, 1, &mut rng), addr(40)),
            now,
        );
        assert_eq!(t.num_buckets(), 2);
        assert!(
            !t.would_accept(&newcomer, now),
            "a full inner bucket of good nodes"
        );
        assert!(
            t.would_accept(&newcomer, now + QUESTIONABLE_AFTER),
            "a questionable entry can make room"
        );
        let near = Contact::new(id_with_prefix(&own, 1, &mut rng), addr(41));
        assert!(t.would_accept(&near, now), "room in the last bucket");
        let same_subnet = Contact::new(
            id_with_prefix(&own, 1, &mut rng),
            SocketAddrV4::new(Ipv4Addr::new(127, 0, 40, 2), 6881),
        );
        assert!(
            !t.would_accept(&same_subnet, now),
            "its /24 already has an entry there"
        );
        assert!(!t.would_accept(&Contact::new(own, addr(50)), now));
        // Deeper: the last of several buckets, full, still splits.
        for i in 0..7 {
            t.heard_response(
                Contact::new(id_with_prefix(&own, 1, &mut rng), addr(60 + i)),
                now,
            );
        }
        assert_eq!(t.num_buckets(), 2);
        let deeper = Contact::new(id_with_prefix(&own, 1, &mut rng), addr(70));
        assert!(
            t.would_accept(&deeper, now),
            "a full last bucket splits at any depth"
        );
    }

    #[test]
    fn valid_ids_are_preferred_and_can_be_required() {
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(9);
        // Public addresses: only ever handed to a sans-IO table, never sent to.
        let public = |i: u8| SocketAddrV4::new(Ipv4Addr::new(203, 0, i, 1), 6881);
        let own = NodeId([0; 20]);
        let mut t = RoutingTable::new(own, RoutingConfig::default(), now);
        // Fill the far bucket (ids starting with bit 1) with invalid ids, after a near node
        // so bucket 0 cannot split.
        t.heard_response(Contact::new(NodeId([0x01; 20]), public(200)), now);
        let mut invalid = Vec::new();
        for i in 0..8u8 {
            let mut id = NodeId::random(&mut rng);
            id.0[0] |= 0x80;
            let c = Contact::new(id, public(i));
            assert!(!bep42::is_valid(&id, *c.addr.ip()));
            t.heard_response(c, now + Duration::from_secs(u64::from(i)));
            invalid.push(c);
        }
        // Force the split so bucket 0 is full and not the last.
        for i in 0..8u8 {
            let mut id = NodeId::random(&mut rng);
            id.0[0] = 0x40 | (id.0[0] & 0x3f);
            t.heard_response(Contact::new(id, public(100 + i)), now);
        }
        let ip = Ipv4Addr::new(198, 51, 100, 9);
        let mut valid = bep42::id_for_ip(ip, &mut rng);
        while valid.0[0] & 0x80 == 0 {
            valid = bep42::id_for_ip(ip, &mut rng);
        }
        let c = Contact::new(valid, SocketAddrV4::new(ip, 6881));
        assert_eq!(
            t.heard_response(c, now + Duration::from_secs(20)),
            Insert::Added
        );
        assert!(
            !t.contains(&invalid[0].id),
            "the least recently active invalid id made room"
        );
        assert!(t.contains(&invalid[1].id));

        let mut strict = RoutingTable::new(
            own,
            RoutingConfig {
                enforce_node_id: true,
                ..Default::default()
            },
            now,
        );
        assert_eq!(strict.heard_response(invalid[3], now), Insert::Rejected);
        assert_eq!(strict.heard_response(c, now), Insert::Added);
        // Loopback is exempt.
        assert_eq!(
            strict.heard_response(Contact::new(NodeId([7; 20]), addr(1)), now),
            Insert::Added
        );
    }

    #[test]
    fn statuses_follow_bep5() {
        let now = Instant::now();
        let c = Contact::new(NodeId([1; 20]), addr(1));
        let mut e = Entry::new(c, now);
        assert_eq!(e.status(now, 3), NodeStatus::Good);
        let later = now + QUESTIONABLE_AFTER + Duration::from_secs(1);
        assert_eq!(e.status(later, 3), NodeStatus::Questionable);
        e.last_query = Some(later);
        assert_eq!(e.status(later, 3), NodeStatus::Good);
        e.failures = 3;
        assert_eq!(e.status(later, 3), NodeStatus::Bad);
        // BEP 5's 15 minutes, to the second.
        assert_eq!(QUESTIONABLE_AFTER, Duration::from_secs(15 * 60));
        let e = Entry::new(c, now);
        let edge = now + Duration::from_secs(15 * 60);
        assert_eq!(e.status(edge - Duration::from_secs(1), 3), NodeStatus::Good);
        assert_eq!(e.status(edge, 3), NodeStatus::Questionable);
    }

    #[test]
    fn counts_split_entries_by_status() {
        let (mut t, now, mut rng) = table();
        let own = t.own_id();
        let mut cs = Vec::new();
        for i in 0..3 {
            let c = Contact::new(id_with_prefix(&own, i, &mut rng), addr(i as u32));
            t.heard_response(c, now);
            cs.push(c);
        }
        let later = now + QUESTIONABLE_AFTER;
        t.heard_response(cs[0], later);
        for _ in 0..t.config().max_failures {
            t.failed(&cs[2], later);
        }
        assert_eq!(t.counts(later), (1, 1, 1));
    }

    #[test]
    fn the_table_keeps_the_config_it_was_given() {
        let now = Instant::now();
        let cfg = RoutingConfig {
            k: 5,
            max_failures: 7,
            ..RoutingConfig::default()
        };
        let t: RoutingTable = RoutingTable::new(NodeId([3; 20]), cfg, now);
        assert_eq!((t.config().k, t.config().max_failures), (5, 7));
        assert_eq!(t.own_id(), NodeId([3; 20]));
    }

    #[test]
    fn closest_matches_a_brute_force_sort() {
        let (mut t, now, mut rng) = table();
        let mut all = Vec::new();
        for i in 0..400 {
            let c = Contact::new(NodeId::random(&mut rng), addr(i));
            if t.heard_response(c, now) == Insert::Added {
                all.push(c);
            }
        }
        let own = t.own_id();
        for depth in [0, 1, 2, 5, 12] {
            all.push(Contact::new(
                id_with_prefix(&own, depth, &mut rng),
                addr(1000 + depth as u32),
            ));
            t.heard_response(*all.last().unwrap(), now);
        }
        let in_table: Vec<Contact> = t.entries().map(|e| e.contact).collect();
        let mut out = Vec::new();
        for _ in 0..200 {
            let target = if rng.random::<bool>() {
                NodeId::random(&mut rng)
            } else {
                own.random_at_depth(rng.random_range(0..20), &mut rng)
            };
            let mut sorted = in_table.clone();
            sorted.sort_by_key(|c| c.id.distance(&target));
            // Both paths: the stack array (count <= 16) and the selection (count > 16).
            for count in [0, 1, 7, 8, 9, 16, 17, 40, 1000] {
                t.closest(&target, count, &mut out);
                assert_eq!(out, sorted[..count.min(sorted.len())], "count {count}");
            }
        }
    }

    /// Contacts that agree with the target on the first 128 bits: only the low 32 bits of
    /// the distance order them, on both of `closest`'s paths.
    #[test]
    fn closest_orders_by_the_low_bits_when_the_high_ones_tie() {
        let (mut t, now, _) = table();
        let own = t.own_id();
        let mut all = Vec::new();
        for j in 0..24u32 {
            let mut id = own;
            let low = u32::from_be_bytes(id.0[16..].try_into().unwrap()) ^ (1 << j) ^ (j * 7919);
            id.0[16..].copy_from_slice(&low.to_be_bytes());
            let c = Contact::new(id, addr(j));
            if t.heard_response(c, now) == Insert::Added {
                all.push(c);
            }
        }
        assert!(all.len() > 17, "{}", all.len());
        all.sort_by_key(|c| c.id.distance(&own));
        let mut out = Vec::new();
        for count in [5, 16, 17, all.len()] {
            t.closest(&own, count, &mut out);
            assert_eq!(out, all[..count], "count {count}");
        }
    }

    /// Joining looks up one target per bucket (the last one in its far half); a refresh of
    /// the last bucket looks one level deeper, where the nodes nearest to us are.
    #[test]
    fn refresh_targets_cover_every_bucket_at_its_depth() {
        let (mut t, now, mut rng) = table();
        let own = t.own_id();
        for depth in 0..6 {
            for i in 0..9 {
                let c = Contact::new(
                    id_with_prefix(&own, depth, &mut rng),
                    addr(depth as u32 * 20 + i),
                );
                t.heard_response(c, now);
            }
        }
        let n = t.num_buckets();
        assert!(n >= 4, "{n}");
        let targets = t.all_bucket_targets(now, &mut rng);
        let depths: Vec<usize> = targets.iter().map(|x| own.common_prefix_len(x)).collect();
        assert_eq!(depths, (0..n).collect::<Vec<_>>());
        let stale = t.stale_buckets(now + BUCKET_REFRESH_AFTER, &mut rng);
        let depths: Vec<usize> = stale.iter().map(|x| own.common_prefix_len(x)).collect();
        let mut want: Vec<usize> = (0..n - 1).collect();
        want.push(n);
        assert_eq!(depths, want);
    }

    #[test]
    fn stale_buckets_get_targets_inside_them() {
        let (mut t, now, mut rng) = table();
        let own = t.own_id();
        for i in 0..40 {
            t.heard_response(Contact::new(NodeId::random(&mut rng), addr(i)), now);
        }
        assert!(t.stale_buckets(now, &mut rng).is_empty());
        // BEP 5: 15 minutes without activity, not less.
        assert_eq!(BUCKET_REFRESH_AFTER, Duration::from_secs(15 * 60));
        let almost = now + BUCKET_REFRESH_AFTER - Duration::from_secs(1);
        assert!(t.stale_buckets(almost, &mut rng).is_empty());
        let later = now + BUCKET_REFRESH_AFTER;
        let targets = t.stale_buckets(later, &mut rng);
        assert_eq!(targets.len(), t.num_buckets());
        for (i, target) in targets.iter().enumerate().take(t.num_buckets() - 1) {
            assert_eq!(own.common_prefix_len(target), i);
        }
        assert!(t.stale_buckets(later, &mut rng).is_empty());
    }
}
