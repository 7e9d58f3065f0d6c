//! The node's BEP 44 client side: `get` and `put` lookups. The search is an ordinary
//! [`Lookup`] (so candidates, α, timeouts, the one-answer-per-query rule and the
//! [`super::LOOKUP_DEADLINE`] all hold as for get_peers); what is particular to items (checking
//! values, stopping early, signing, per-node put results) lives in [`ItemSlot`].

use std::net::SocketAddrV4;
use std::time::Instant;

use super::{LookupId, Node, Owner, PingError, Purpose};
use crate::dht::id::NodeId;
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
pub struct ItemSlot {
    pub(super) search: ItemSearch,
    /// What to put once the search ends (put lookups only).
    put: Option<PutRequest>,
    /// The signed arguments, made once when the first put is sent.
    prepared: Option<PutArgs>,
    report: PutReport,
    /// Put targets whose first attempt timed out (they get one resend).
    timed_out_once: Vec<SocketAddrV4>,
}

impl ItemSlot {
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
    pub(super) fn on_search_reply(&mut self, lookup: &mut Lookup, from: SocketAddrV4, r: &Response) {
        let fields = ItemFields {
            v: r.v.as_deref(),
            k: r.k.as_deref(),
            seq: r.seq,
            sig: r.sig.as_deref(),
        };
        self.search.on_reply(from, fields);
        // A put must reach the closest token holders, so only a get stops early.
        if self.put.is_none() && self.search.satisfied() {
            lookup.finish();
        }
    }

    /// A node stored the put.
    pub(super) fn on_put_stored(&mut self, from: SocketAddrV4) {
        self.report.nodes.push((from, PutOutcome::Stored));
    }

    /// A put failed: an error reply, a wrong-id answer or a timeout.
    pub(super) fn on_put_failure(
        &mut self,
        lookup: &mut Lookup,
        from: SocketAddrV4,
        why: &PingError,
    ) {
        match why {
            PingError::Timeout if !self.timed_out_once.contains(&from) => {
                // Resent once to the same node (see `Lookup::on_announce_timeout`).
                self.timed_out_once.push(from);
                lookup.on_announce_timeout(from);
            }
            PingError::Remote(code, message) => {
                self.report.nodes.push((
                    from,
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
                self.report.nodes.push((from, PutOutcome::NoAnswer));
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
            put: is_put.then(|| PutReport {
                seq,
                nodes: self.report.nodes,
            }),
        }
    }
}

impl Node {
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
        to: &mut Vec<(SocketAddrV4, NodeId, Token)>,
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
                    item.report.nodes.push((addr, PutOutcome::NoAnswer));
                }
                slot.lookup.announce_unsent();
            }
        }
    }
}
