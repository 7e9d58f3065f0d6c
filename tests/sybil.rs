//! Sybil attack on the routing table (issue 6, part 4): 1,000 node ids, all from one /24,
//! try to fill a node's table while 200 honest nodes (each on its own /24) are in it.
//!
//! The node under attack is the sans-IO core with the default (public-internet) settings:
//! one entry per /24 per bucket, one entry per IP, rate limit and reply quota on. Only the
//! allow-list is loopback. Around it runs a small scripted network in virtual time: honest
//! nodes answer every query with their own id and the honest contacts closest to the target;
//! sybils answer with their id and the *sybil* contacts closest to the target (poisoning the
//! node's lookups with more sybils), and every sybil also queries the node every minute, which
//! makes the node verify and try to admit it. The sybil ids are chosen to land in every bucket
//! from the top one down to 40 bits deep, including the ones closest to the node's own id,
//! where an honest table is thin.
//!
//! With the subnet rule on, at most one sybil may hold an entry in any bucket and every honest
//! node that was in the table before the attack must still be there after it. The same attack
//! against a node with the rule off (a private-testnet setting) shows what the rule prevents.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use trackerless::dht::allow::AllowList;
use trackerless::dht::id::{Contact, InfoHash, NodeId};
use trackerless::dht::krpc::{self, Body, Method, QueryArgs, ResponseBody};
use trackerless::dht::node::{Config, Node};

const HONEST: usize = 200;
const SYBILS: usize = 1000;
/// Deepest bucket the sybil ids aim at.
const SYBIL_DEPTH: usize = 40;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Honest,
    Sybil,
}

/// The sybils' /24.
fn is_sybil_addr(a: &SocketAddrV4) -> bool {
    a.ip().octets()[..3] == [127, 122, 5]
}

/// A datagram on its way to the node under attack.
struct Packet {
    at: Instant,
    seq: u64,
    from: SocketAddrV4,
    data: Vec<u8>,
}

impl PartialEq for Packet {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Packet {}
impl PartialOrd for Packet {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Packet {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// The node under attack and the scripted nodes around it.
struct Net {
    node: Node,
    now: Instant,
    rng: StdRng,
    actors: HashMap<SocketAddrV4, (NodeId, Kind)>,
    honest: Vec<Contact>,
    sybils: Vec<Contact>,
    queue: BinaryHeap<Reverse<Packet>>,
    seq: u64,
    /// Whether the sybils are active yet (before the attack they do not answer at all).
    attacking: bool,
}

impl Net {
    fn new(config: Config, seed: u64) -> Net {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(seed);
        let node = Node::new(
            Config {
                seed: Some(rng.random()),
                ..config
            },
            t0,
        );
        let own = node.id();
        let mut actors = HashMap::new();
        let honest: Vec<Contact> = (0..HONEST)
            .map(|i| {
                // Each honest node on its own /24.
                let ip = Ipv4Addr::new(127, 123 + (i / 250) as u8, (i % 250) as u8, 1);
                Contact::new(NodeId::random(&mut rng), SocketAddrV4::new(ip, 6881))
            })
            .collect();
        let sybils: Vec<Contact> = (0..SYBILS)
            .map(|k| {
                // 250 addresses in 127.122.5.0/24, four ports (ids) each.
                let ip = Ipv4Addr::new(127, 122, 5, (k % 250) as u8 + 1);
                let port = 20_000 + (k / 250) as u16;
                let id = own.random_at_depth(k % SYBIL_DEPTH, &mut rng);
                Contact::new(id, SocketAddrV4::new(ip, port))
            })
            .collect();
        for c in &honest {
            actors.insert(c.addr, (c.id, Kind::Honest));
        }
        for c in &sybils {
            actors.insert(c.addr, (c.id, Kind::Sybil));
        }
        Net {
            node,
            now: t0,
            rng,
            actors,
            honest,
            sybils,
            queue: BinaryHeap::new(),
            seq: 0,
            attacking: false,
        }
    }

    fn send_to_node(&mut self, from: SocketAddrV4, data: Vec<u8>) {
        let latency = Duration::from_millis(self.rng.random_range(5..40));
        self.seq += 1;
        self.queue.push(Reverse(Packet {
            at: self.now + latency,
            seq: self.seq,
            from,
            data,
        }));
    }

    /// The 8 contacts of `pool` closest to `target`, compact.
    fn closest(pool: &[Contact], target: &NodeId) -> Vec<u8> {
        let mut sorted: Vec<&Contact> = pool.iter().collect();
        sorted.sort_by_key(|c| c.id.distance(target));
        let mut out = Vec::new();
        for c in sorted.into_iter().take(8) {
            c.write_compact(&mut out);
        }
        out
    }

    /// Answers what the node sent, as the addressed actor would.
    fn answer(&mut self, to: SocketAddrV4, data: &[u8]) {
        let Some(&(id, kind)) = self.actors.get(&to) else {
            return;
        };
        if kind == Kind::Sybil && !self.attacking {
            return;
        }
        let Ok(msg) = krpc::decode(data) else {
            panic!("the node sent an undecodable datagram");
        };
        let Body::Query(q) = msg.body else {
            return; // a reply to one of the sybils' queries
        };
        let target = match q.method {
            Method::FindNode { target }
            | Method::SampleInfohashes { target }
            | Method::Unknown { target }
            | Method::Get { target, .. } => Some(target),
            Method::GetPeers { info_hash, .. } => Some(info_hash.to_node_id()),
            Method::Ping | Method::AnnouncePeer { .. } | Method::Put(_) => None,
        };
        let pool = match kind {
            Kind::Honest => &self.honest,
            Kind::Sybil => &self.sybils,
        };
        let nodes = target.map(|t| Self::closest(pool, &t));
        let token = matches!(q.method, Method::GetPeers { .. }).then_some(&b"tok"[..]);
        let mut reply = Vec::new();
        krpc::encode_response(
            &mut reply,
            msg.tid.as_slice(),
            &ResponseBody {
                nodes: nodes.as_deref(),
                token,
                ..ResponseBody::id_only(&id)
            },
            None,
            None,
        );
        self.send_to_node(to, reply);
    }

    /// Moves what the node queued onto the network.
    fn after(&mut self) {
        let mut out = Vec::new();
        while let Some(t) = self.node.poll_transmit() {
            let SocketAddr::V4(to) = t.to else {
                panic!("IPv6 destination")
            };
            assert!(to.ip().is_loopback(), "the node sent off loopback: {to}");
            out.push((to, t.payload.to_vec()));
        }
        for (to, data) in out {
            self.answer(to, &data);
        }
        while self.node.poll_event().is_some() {}
    }

    /// Runs the node and the network until `until`; `each_minute` runs once per virtual
    /// minute boundary crossed (the sybils' query schedule).
    fn run_until(&mut self, until: Instant, mut each_minute: impl FnMut(&mut Net)) {
        let mut next_minute = self.now + Duration::from_secs(60);
        loop {
            let packet = self.queue.peek().map(|Reverse(p)| p.at);
            let timer = self.node.poll_timeout();
            let next = [packet, timer, Some(next_minute)]
                .into_iter()
                .flatten()
                .min()
                .expect("the minute tick is always there");
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            if packet == Some(next) {
                let Reverse(p) = self.queue.pop().expect("peeked");
                self.node
                    .handle_datagram(self.now, SocketAddr::V4(p.from), &p.data);
            } else if timer == Some(next) {
                self.node.handle_timeout(self.now);
            } else {
                next_minute += Duration::from_secs(60);
                each_minute(self);
            }
            self.after();
        }
        self.now = until;
    }

    /// Every sybil sends the node a query (spread over the minute by latency jitter):
    /// a find_node for a random target, so the node answers and then verifies the stranger.
    fn sybils_query(&mut self) {
        for k in 0..self.sybils.len() {
            let c = self.sybils[k];
            let target = NodeId::random(&mut self.rng);
            let mut q = Vec::new();
            krpc::encode_query(
                &mut q,
                &(k as u32).to_be_bytes(),
                &c.id,
                &QueryArgs::FindNode { target: &target },
                false,
                None,
            );
            self.send_to_node(c.addr, q);
        }
    }

    /// Per bucket: (entries, sybil entries).
    fn buckets(&self) -> Vec<(usize, usize)> {
        let table = self.node.table();
        let own = table.own_id();
        let mut b = vec![(0, 0); table.num_buckets()];
        for e in table.entries() {
            let i = own
                .common_prefix_len(&e.contact.id)
                .min(table.num_buckets() - 1);
            b[i].0 += 1;
            b[i].1 += usize::from(is_sybil_addr(&e.contact.addr));
        }
        b
    }
}

/// Runs the attack; returns (honest ids in the table before, sybils per bucket after,
/// honest ids still there after).
fn attack(config: Config) -> (Vec<NodeId>, Vec<(usize, usize)>, usize) {
    let mut net = Net::new(config, 9);
    // Join through three honest nodes (as contacts: nodes given as bootstrap routers are
    // kept out of the table, BEP 5) and settle for ten minutes.
    let contacts: Vec<SocketAddrV4> = net.honest[..3].iter().map(|c| c.addr).collect();
    let t = net.now;
    net.node.add_contacts(t, contacts);
    net.node.bootstrap(t, &[]);
    net.after();
    let until = net.now + Duration::from_secs(600);
    net.run_until(until, |_| {});
    let before: Vec<NodeId> = net
        .node
        .table()
        .entries()
        .map(|e| e.contact.id)
        .filter(|id| net.honest.iter().any(|h| h.id == *id))
        .collect();
    assert!(
        before.len() >= 24,
        "the node should know many honest nodes before the attack: {}",
        before.len()
    );

    // The attack: 30 minutes of sybil queries, while the node keeps looking things up (as a
    // client does), so the sybils' poisoned replies reach it too.
    net.attacking = true;
    let until = net.now + Duration::from_secs(30 * 60);
    net.run_until(until, |net| {
        net.sybils_query();
        let target = NodeId::random(&mut net.rng);
        let now = net.now;
        net.node.find_node(now, target);
        let ih = InfoHash::random(&mut net.rng);
        net.node.get_peers(now, ih);
    });
    let stats = net.node.stats(net.now);
    let buckets = net.buckets();
    let kept = before
        .iter()
        .filter(|id| net.node.table().contains(id))
        .count();
    println!(
        "sybil attack: {} honest in table before; after: {} buckets, {} entries, {} sybil \
         entries, {}/{} honest kept; node saw {} queries in, sent {} queries, rate-limited {}",
        before.len(),
        buckets.len(),
        buckets.iter().map(|b| b.0).sum::<usize>(),
        buckets.iter().map(|b| b.1).sum::<usize>(),
        kept,
        before.len(),
        stats.queries_in,
        stats.queries_out,
        stats.dropped_rate_limited,
    );
    (before, buckets, kept)
}

#[test]
fn sybils_from_one_subnet_get_at_most_one_entry_per_bucket() {
    let (before, buckets, kept) = attack(Config {
        allow: AllowList::loopback(),
        ..Config::default()
    });
    for (i, (entries, sybils)) in buckets.iter().enumerate() {
        assert!(
            *sybils <= 1,
            "bucket {i} holds {sybils} sybils out of {entries} entries"
        );
    }
    let sybils: usize = buckets.iter().map(|b| b.1).sum();
    assert!(sybils > 0, "the sybils must actually have been verified");
    assert_eq!(kept, before.len(), "honest nodes were pushed out");
}

/// The control: without the subnet rule the same attack takes over whole buckets, so the
/// test above can fail.
#[test]
fn without_the_subnet_rule_sybils_flood_the_buckets() {
    let (before, buckets, _) = attack(Config {
        allow: AllowList::loopback(),
        routing: trackerless::dht::routing::RoutingConfig {
            restrict_subnets: false,
            ..Default::default()
        },
        ..Config::default()
    });
    let worst = buckets.iter().map(|b| b.1).max().unwrap_or(0);
    let sybils: usize = buckets.iter().map(|b| b.1).sum();
    assert!(
        worst >= 4 && sybils > buckets.len(),
        "{sybils} sybils, at most {worst} in a bucket"
    );
    assert!(!before.is_empty());
}
