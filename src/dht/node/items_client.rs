//! The node's BEP 44 client side: `get` and `put` lookups. The search is an ordinary
//! [`Lookup`] (so candidates, α, timeouts, the one-answer-per-query rule and the
//! [`super::LOOKUP_DEADLINE`] all hold as for get_peers); what is particular to items (checking
//! values, stopping early, signing, per-node put results) lives in [`ItemSlot`].

use std::net::SocketAddrV4;
use std::time::Instant;

use super::{LookupId, Node, Owner, PingError, Purpose};
use crate::dht::id::{NodeAddr, NodeId};
use crate::dht::item_search::{
    ItemFields, ItemQuery, ItemResult, ItemSearch, PutOutcome, PutReport, PutRequest,
};
use crate::dht::krpc::{
    ERR_BAD_SIGNATURE, ERR_CAS_MISMATCH, ERR_SALT_TOO_BIG, ERR_SEQ_TOO_OLD, ERR_VALUE_TOO_BIG,
    PutArgs, QueryArgs, Response, Token,
};
use crate::dht::lookup::{Lookup, LookupKind};

/// The item state of one lookup.
#[derive(Debug)]
pub struct ItemSlot<A: NodeAddr = SocketAddrV4> {
    pub(super) search: ItemSearch,
    /// What to put once the search ends (put lookups only).
    put: Option<PutRequest>,
    /// The signed arguments, made once when the first put is sent.
    prepared: Option<PutArgs>,
    report: PutReport,
    /// Put targets whose first attempt timed out (they get one resend).
    timed_out_once: Vec<A>,
}

impl<A: NodeAddr> ItemSlot<A> {
    fn new(search: ItemSearch, put: Option<PutRequest>) -> Self {
        ItemSlot {
            search,
            put,
            prepared: None,
            report: PutReport::default(),
            timed_out_once: Vec::new(),
        }
    }

    /// A reply to one of the search's `get` queries: check its value; a `get` whose value is
    /// proven ends here (the queries still in flight end on their own).
    pub(super) fn on_search_reply(&mut self, lookup: &mut Lookup<A>, from: A, r: &Response) {
        let fields = ItemFields {
            v: r.v.as_deref(),
            k: r.k.as_deref(),
            seq: r.seq,
            sig: r.sig.as_deref(),
        };
        self.search.on_reply(from.into(), fields);
        // A put must reach the closest token holders, so only a get stops early.
        if self.put.is_none() && self.search.satisfied() {
            lookup.finish();
        }
    }

    /// A node stored the put.
    pub(super) fn on_put_stored(&mut self, from: A) {
        self.report.nodes.push((from.into(), PutOutcome::Stored));
    }

    /// A put failed: an error reply, a wrong-id answer or a timeout.
    pub(super) fn on_put_failure(&mut self, lookup: &mut Lookup<A>, from: A, why: &PingError) {
        match why {
            PingError::Timeout if !self.timed_out_once.contains(&from) => {
                // Resent once to the same node (see `Lookup::on_announce_timeout`).
                self.timed_out_once.push(from);
                lookup.on_announce_timeout(from);
            }
            PingError::Remote(code, message) => {
                self.report.nodes.push((
                    from.into(),
                    PutOutcome::Refused {
                        code: *code,
                        message: message.clone(),
                    },
                ));
                if matches!(
                    *code,
                    ERR_CAS_MISMATCH
                        | ERR_SEQ_TOO_OLD
                        | ERR_BAD_SIGNATURE
                        | ERR_VALUE_TOO_BIG
                        | ERR_SALT_TOO_BIG
                ) {
                    lookup.on_store_refused();
                } else {
                    // A bad token or a server error is about that node: try a spare.
                    lookup.on_announce_result(false);
                }
            }
            _ => {
                self.report.nodes.push((from.into(), PutOutcome::NoAnswer));
                lookup.on_announce_result(false);
            }
        }
    }

    pub(super) fn into_result(self) -> ItemResult {
        let seq = self
            .prepared
            .as_ref()
            .and_then(|p| p.mutable.as_ref())
            .map(|m| m.seq);
        let is_put = self.put.is_some();
        let target = self.search.target;
        let (found, confirmations, forged) = self.search.into_result();
        ItemResult {
            target,
            found,
            confirmations,
            forged,
            put: is_put.then_some(PutReport {
                seq,
                nodes: self.report.nodes,
            }),
        }
    }
}

impl<A: NodeAddr> Node<A> {
    /// Looks up a BEP 44 item: immutable under `target`, or mutable as described by `query`
    /// (whose key and salt determine the target; `target` is then ignored). Ends with
    /// [`super::Event::Item`] then [`super::Event::LookupDone`].
    pub fn get_item(&mut self, now: Instant, target: NodeId, query: ItemQuery) -> LookupId {
        let target = match &query {
            ItemQuery::Immutable => target,
            ItemQuery::Mutable { k, salt, .. } => crate::dht::items::mutable_target(k, salt),
        };
        let lookup = self.new_lookup(target, LookupKind::GetItem);
        let slot = ItemSlot::new(ItemSearch::new(target, query), None);
        self.start_lookup(now, lookup, Owner::User, Some(Box::new(slot)))
    }

    /// Puts a BEP 44 item: a `get` search (which also reads a mutable item's current `seq`),
    /// then `put` to the K closest nodes that gave a token. The caller validates the request
    /// first ([`PutRequest::validate`]); nodes refuse what is invalid anyway.
    pub fn put_item(&mut self, now: Instant, request: PutRequest) -> LookupId {
        let target = request.target();
        let lookup = self.new_lookup(target, LookupKind::PutItem);
        let slot = ItemSlot::new(ItemSearch::new(target, request.query()), Some(request));
        self.start_lookup(now, lookup, Owner::User, Some(Box::new(slot)))
    }

    /// Sends `put` to the nodes a finished put lookup chose.
    pub(super) fn send_puts(
        &mut self,
        now: Instant,
        id: LookupId,
        to: &mut Vec<(A, NodeId, Token)>,
    ) {
        let Some(args) = self.lookups.get_mut(&id).and_then(|s| {
            let item = s.item.as_mut()?;
            if item.prepared.is_none() {
                let put = item.put.as_ref()?;
                item.prepared = Some(put.prepare(item.search.best()));
            }
            item.prepared.clone()
        }) else {
            // Not a put lookup after all: nothing to send, every slot ends.
            for _ in to.drain(..) {
                if let Some(slot) = self.lookups.get_mut(&id) {
                    slot.lookup.announce_unsent();
                }
            }
            return;
        };
        for (addr, node, token) in to.drain(..) {
            let q = QueryArgs::Put {
                token: token.as_slice(),
                v: &args.v,
                mutable: args.mutable.as_ref(),
            };
            if !self.send_query(now, addr, Some(node), q, Purpose::Announce(id))
                && let Some(slot) = self.lookups.get_mut(&id)
            {
                if let Some(item) = &mut slot.item {
                    item.report.nodes.push((addr.into(), PutOutcome::NoAnswer));
                }
                slot.lookup.announce_unsent();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use ed25519_dalek::{Signer, SigningKey};

    use super::*;
    use crate::dht::item_search::{FoundItem, ItemResult};
    use crate::dht::items::{immutable_target, mutable_target, signable};
    use crate::dht::krpc::{self, Body, ItemReply, Method, ResponseBody};
    use crate::dht::node::{Config, Event};

    /// Key, seq and signature of a mutable item.
    type Signed = ([u8; 32], i64, [u8; 64]);

    /// What a scripted remote node holds and how it answers.
    struct Fake {
        addr: SocketAddrV4,
        id: NodeId,
        /// `(v, Some((k, seq, sig)))` returned to `get`.
        item: Option<(Vec<u8>, Option<Signed>)>,
        /// Error code to answer `put` with (`None`: stored).
        put_error: Option<i64>,
        /// Puts received.
        puts: Vec<PutArgs>,
    }

    fn fake(i: u8) -> Fake {
        Fake {
            addr: SocketAddrV4::new([127, 0, 9, i].into(), 6881),
            // Spread over several buckets of a node whose id is all zeros, so ten fit.
            id: NodeId([i * 16; 20]),
            item: None,
            put_error: None,
            puts: Vec::new(),
        }
    }

    /// Delivers every datagram the node sent to the fakes and their answers back, until quiet.
    fn exchange(node: &mut Node, now: Instant, fakes: &mut [Fake]) {
        loop {
            let mut sent = Vec::new();
            node.drain_transmits(|to, b| sent.push((to, b.to_vec())));
            if sent.is_empty() {
                return;
            }
            for (to, data) in sent {
                let Some(f) = fakes.iter_mut().find(|f| f.addr == to) else {
                    continue;
                };
                let Ok(msg) = krpc::decode(&data) else {
                    continue;
                };
                let Body::Query(q) = msg.body else { continue };
                let tid = msg.tid.as_slice();
                let mut out = Vec::new();
                match q.method {
                    Method::Put(args) => {
                        f.puts.push(*args);
                        match f.put_error {
                            Some(code) => krpc::encode_error(&mut out, tid, code, "no", None, None),
                            None => krpc::encode_response(
                                &mut out,
                                tid,
                                &krpc::ResponseBody::id_only(&f.id),
                                None,
                                None,
                            ),
                        }
                    }
                    _ => {
                        let reply = f.item.as_ref().map(|(v, m)| ItemReply {
                            v,
                            mutable: m.as_ref().map(|(k, s, sig)| (k, *s, sig)),
                        });
                        let base = ResponseBody {
                            nodes: Some(&[]),
                            token: Some(b"tok"),
                            ..ResponseBody::id_only(&f.id)
                        };
                        krpc::encode_get_response(&mut out, tid, base, reply, None, None);
                    }
                }
                node.handle_datagram(now, SocketAddr::V4(f.addr), &out);
            }
        }
    }

    /// A node whose table holds exactly the fakes (verified by ping).
    fn node_knowing(fakes: &mut [Fake], now: Instant) -> Node {
        let config = Config {
            id: Some(NodeId([0; 20])),
            ..Config::loopback_testnet()
        };
        let mut node = Node::new(config, now);
        node.add_contacts(now, fakes.iter().map(|f| f.addr).collect::<Vec<_>>());
        node.handle_timeout(now);
        exchange(&mut node, now, fakes);
        assert_eq!(node.table().len(), fakes.len());
        while node.poll_event().is_some() {}
        node
    }

    fn item_result(node: &mut Node, id: LookupId) -> ItemResult {
        let mut got = None;
        let mut done = false;
        while let Some(e) = node.poll_event() {
            match e {
                Event::Item { lookup, result } if lookup == id => {
                    assert!(!done, "Item comes before LookupDone");
                    got = Some(*result);
                }
                Event::LookupDone { lookup, .. } if lookup == id => done = true,
                _ => {}
            }
        }
        assert!(done, "the lookup ended");
        got.expect("an Item event")
    }

    fn signed(key: &SigningKey, salt: &[u8], seq: i64, v: &[u8]) -> Signed {
        let mut msg = Vec::new();
        signable(salt, seq, v, &mut msg);
        (
            key.verifying_key().to_bytes(),
            seq,
            key.sign(&msg).to_bytes(),
        )
    }

    /// A node answering with a value whose hash is not the target is not believed; the
    /// honest node's value is, and the lookup stops on it.
    #[test]
    fn a_forged_immutable_value_is_not_believed() {
        let now = Instant::now();
        let v = b"12:Hello World!".to_vec();
        let mut fakes: Vec<Fake> = (1..=4).map(fake).collect();
        for f in &mut fakes {
            f.item = Some((b"5:forge".to_vec(), None));
        }
        fakes[2].item = Some((v.clone(), None));
        let mut node = node_knowing(&mut fakes, now);
        let id = node.get_item(now, immutable_target(&v), ItemQuery::Immutable);
        exchange(&mut node, now, &mut fakes);
        let r = item_result(&mut node, id);
        assert_eq!(r.found.map(|f| f.v), Some(v));
        assert!(r.forged >= 1, "the first round reaches at least one forger");

        // Only forgers hold a value: nothing is found.
        fakes[2].item = None;
        let id = node.get_item(now, immutable_target(b"3:abc"), ItemQuery::Immutable);
        exchange(&mut node, now, &mut fakes);
        let r = item_result(&mut node, id);
        assert_eq!((r.found, r.forged), (None, 3));
    }

    /// The highest valid `seq` wins; a higher `seq` with a bad signature is ignored.
    #[test]
    fn get_mutable_keeps_the_highest_valid_seq() {
        let now = Instant::now();
        let key = SigningKey::from_bytes(&[5; 32]);
        let salt = b"salt".to_vec();
        let mut fakes: Vec<Fake> = (1..=5).map(fake).collect();
        let (k, _, sig1) = signed(&key, &salt, 1, b"1:a");
        let (_, _, sig2) = signed(&key, &salt, 2, b"1:b");
        fakes[0].item = Some((b"1:a".to_vec(), Some((k, 1, sig1))));
        fakes[1].item = Some((b"1:b".to_vec(), Some((k, 2, sig2))));
        // A forger claims seq 9 with seq 2's signature.
        fakes[2].item = Some((b"1:z".to_vec(), Some((k, 9, sig2))));
        let mut node = node_knowing(&mut fakes, now);
        let q = ItemQuery::Mutable {
            k,
            salt: salt.clone(),
            min_seq: None,
        };
        let id = node.get_item(now, NodeId([0; 20]), q);
        exchange(&mut node, now, &mut fakes);
        let r = item_result(&mut node, id);
        assert_eq!(r.target, mutable_target(&k, &salt));
        let found = r.found.expect("a value");
        assert_eq!(found.v, b"1:b");
        assert_eq!(found.mutable.map(|m| m.seq), Some(2));
        assert_eq!((r.forged, r.confirmations), (1, 1));
    }

    /// A mutable put reads the current `seq` and signs the next one; it goes to the K
    /// closest token holders; refusals are reported per node with their code and do not
    /// pass the slot on.
    #[test]
    fn put_mutable_continues_the_seq_and_reports_each_node() {
        let now = Instant::now();
        let key = SigningKey::from_bytes(&[6; 32]);
        let mut fakes: Vec<Fake> = (1..=10).map(fake).collect();
        let (k, _, sig) = signed(&key, b"", 4, b"1:a");
        fakes[0].item = Some((b"1:a".to_vec(), Some((k, 4, sig))));
        let mut node = node_knowing(&mut fakes, now);
        let target = mutable_target(&k, b"");
        let request = PutRequest::Mutable {
            key: Box::new(key.clone()),
            salt: Vec::new(),
            v: b"1:b".to_vec(),
            seq: None,
            cas: Some(4),
        };
        // The two closest to the target refuse: one with a CAS mismatch, one stale.
        let mut order: Vec<usize> = (0..fakes.len()).collect();
        order.sort_by_key(|&i| fakes[i].id.distance(&target));
        fakes[order[0]].put_error = Some(ERR_CAS_MISMATCH);
        fakes[order[1]].put_error = Some(ERR_SEQ_TOO_OLD);
        let id = node.put_item(now, request);
        exchange(&mut node, now, &mut fakes);
        let r = item_result(&mut node, id);
        let put = r.put.expect("a put report");
        assert_eq!(put.seq, Some(5));
        let k_nodes = node.config().routing.k;
        assert_eq!(
            put.nodes.len(),
            k_nodes,
            "the K closest, no spares for refusals"
        );
        assert_eq!(put.stored(), k_nodes - 2);
        assert_eq!(put.refused_with(ERR_CAS_MISMATCH), 1);
        assert_eq!(put.refused_with(ERR_SEQ_TOO_OLD), 1);
        let farthest = fakes[order[fakes.len() - 1]].addr;
        assert!(put.nodes.iter().all(|(a, _)| *a != farthest.into()));
        let sent = &fakes[order[2]].puts[0];
        let m = sent.mutable.as_ref().unwrap();
        assert_eq!((m.seq, m.cas), (5, Some(4)));
        assert_eq!(sent.token.as_slice(), b"tok");
        assert!(crate::dht::items::verify(&k, b"", 5, b"1:b", &m.sig));
        assert_eq!(
            r.found,
            Some(FoundItem {
                v: b"1:a".to_vec(),
                mutable: Some(crate::dht::items::MutableMeta { k, seq: 4, sig })
            })
        );
    }

    /// A lookup with nobody to ask still ends, with an empty result.
    #[test]
    fn an_item_lookup_without_candidates_ends_at_once() {
        let now = Instant::now();
        let mut node = Node::new(Config::loopback_testnet(), now);
        let id = node.get_item(now, NodeId([1; 20]), ItemQuery::Immutable);
        let r = item_result(&mut node, id);
        assert!(r.found.is_none() && r.put.is_none());
    }

    /// Unanswered puts are resent once, then reported as no answer; the lookup ends.
    #[test]
    fn unanswered_puts_end_the_lookup() {
        let mut now = Instant::now();
        let mut fakes: Vec<Fake> = (1..=3).map(fake).collect();
        let mut node = node_knowing(&mut fakes, now);
        let id = node.put_item(now, PutRequest::Immutable { v: b"1:x".to_vec() });
        // Searches are answered; every put is swallowed.
        let mut swallowed = 0;
        loop {
            let mut sent = Vec::new();
            node.drain_transmits(|to, b| sent.push((to, b.to_vec())));
            let mut answered = false;
            for (to, data) in sent {
                let msg = krpc::decode(&data).unwrap();
                let Body::Query(q) = msg.body else { continue };
                if matches!(q.method, Method::Put(_)) {
                    swallowed += 1;
                    continue;
                }
                let f = fakes.iter().find(|f| f.addr == to).unwrap();
                let mut out = Vec::new();
                let base = ResponseBody {
                    nodes: Some(&[]),
                    token: Some(b"tok"),
                    ..ResponseBody::id_only(&f.id)
                };
                krpc::encode_get_response(&mut out, msg.tid.as_slice(), base, None, None, None);
                node.handle_datagram(now, SocketAddr::V4(to), &out);
                answered = true;
            }
            if !answered {
                match node.poll_timeout() {
                    Some(t) if node.stats(now).lookups > 0 => {
                        now = t.max(now);
                        node.handle_timeout(now);
                    }
                    _ => break,
                }
            }
        }
        let r = item_result(&mut node, id);
        let put = r.put.unwrap();
        assert_eq!(put.nodes.len(), 3);
        assert!(put.nodes.iter().all(|(_, o)| *o == PutOutcome::NoAnswer));
        assert_eq!(swallowed, 6, "each put sent twice");
    }
}
