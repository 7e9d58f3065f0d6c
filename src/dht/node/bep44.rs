//! The node's BEP 44 server side: answering `get` and `put` from the [`ItemStore`]. Kept out
//! of `node.rs` so the query dispatch there stays a two-line hand-off.

use crate::dht::id::NodeAddr;
use std::time::Instant;

use super::{Node, OtherFamily, VERSION, emit};
use crate::dht::id::NodeId;
use crate::dht::items::ItemStore;
use crate::dht::krpc::{self, ERR_PROTOCOL, PutArgs, ResponseBody, Want};

impl<A: NodeAddr> Node<A> {
    /// The BEP 44 item store.
    pub fn items(&self) -> &ItemStore {
        &self.items
    }

    /// `get`: the closest nodes, a write token (as for `get_peers`), and the item when we hold
    /// it, unless the querier's `seq` says it already has this or a newer version.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn answer_get(
        &mut self,
        now: Instant,
        from: A,
        tid: &[u8],
        target: NodeId,
        seq: Option<i64>,
        want: Want,
        other: Option<&dyn OtherFamily>,
    ) {
        let mut contacts = std::mem::take(&mut self.scratch_contacts);
        let mut nodes = std::mem::take(&mut self.scratch_nodes);
        let mut nodes_other = std::mem::take(&mut self.scratch_nodes_other);
        let mut base = ResponseBody::id_only(&self.id);
        Self::fill_nodes(
            &self.table,
            self.config.routing.k,
            &target,
            want,
            other,
            &mut contacts,
            &mut nodes,
            &mut nodes_other,
            &mut base,
        );
        self.tokens.maybe_rotate(now, &mut self.rng);
        let token = self.tokens.make(from.host());
        let item = self.items.get(&target, now).filter(|i| {
            // `seq` only concerns mutable items; an immutable item never changes.
            match (&i.mutable, seq) {
                (Some(m), Some(s)) => m.seq > s,
                _ => true,
            }
        });
        let reply = item.map(|i| i.reply());
        base.token = Some(token.as_slice());
        let Node {
            outbox,
            stats,
            config,
            quota,
            ..
        } = self;
        if emit(
            outbox,
            stats,
            &config.allow,
            quota.as_mut(),
            now,
            from,
            |out| {
                krpc::encode_get_response(out, tid, base, reply, Some(from.into()), Some(VERSION))
            },
        ) {
            stats.replies_out += 1;
        }
        self.scratch_contacts = contacts;
        self.scratch_nodes = nodes;
        self.scratch_nodes_other = nodes_other;
    }

    /// `put`: token first (cheap, and it proves the querier's address), then the store's
    /// checks (signature, CAS, sequence number), each refusal with its BEP 44 error code.
    pub(super) fn answer_put(&mut self, now: Instant, from: A, tid: &[u8], args: &PutArgs) {
        self.tokens.maybe_rotate(now, &mut self.rng);
        if !self.tokens.verify(from.host(), args.token.as_slice()) {
            self.stats.bad_tokens += 1;
            self.send_error(now, from, tid, ERR_PROTOCOL, "bad token");
            return;
        }
        if let Err(e) = self.items.put(args, now) {
            self.send_error(now, from, tid, e.code(), e.message());
            return;
        }
        let Node {
            outbox,
            stats,
            config,
            quota,
            id,
            ..
        } = self;
        let body = ResponseBody::id_only(id);
        if emit(
            outbox,
            stats,
            &config.allow,
            quota.as_mut(),
            now,
            from,
            |out| krpc::encode_response(out, tid, &body, Some(from.into()), Some(VERSION)),
        ) {
            stats.replies_out += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

    use ed25519_dalek::{Signer, SigningKey};
    use serde_bencode::value::Value;

    use super::*;
    use crate::dht::items::{mutable_target, signable};
    use crate::dht::krpc::{Body, Message, Method, MutablePut, Query, Tid, Token};
    use crate::dht::node::Config;

    const FROM: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 6881);

    /// Sends `method` to `node` and returns the decoded reply as a bencode tree.
    fn ask(node: &mut Node, now: Instant, method: Method) -> Value {
        let msg = Message {
            tid: Tid::new(b"tt").unwrap(),
            body: Body::Query(Query {
                id: NodeId([9; 20]),
                method,
                want: Default::default(),
            }),
            ip: None,
            read_only: true,
            version: None,
        };
        let mut buf = Vec::new();
        krpc::encode_message(&mut buf, &msg);
        node.handle_datagram(now, SocketAddr::V4(FROM), &buf);
        let t = node.poll_transmit().expect("a reply");
        serde_bencode::from_bytes(t.payload).unwrap()
    }

    fn field<'a>(v: &'a Value, outer: &str, key: &str) -> Option<&'a Value> {
        let Value::Dict(d) = v else { return None };
        let Some(Value::Dict(r)) = d.get(outer.as_bytes()) else {
            return None;
        };
        r.get(key.as_bytes())
    }

    fn error_code(v: &Value) -> Option<i64> {
        let Value::Dict(d) = v else { return None };
        match d.get(&b"e"[..]) {
            Some(Value::List(l)) => match l.first() {
                Some(Value::Int(c)) => Some(*c),
                _ => None,
            },
            _ => None,
        }
    }

    fn token(v: &Value) -> Token {
        match field(v, "r", "token") {
            Some(Value::Bytes(b)) => Token::new(b).unwrap(),
            other => panic!("no token: {other:?}"),
        }
    }

    fn signed(key: &SigningKey, salt: &[u8], seq: i64, v: &[u8], cas: Option<i64>) -> MutablePut {
        let mut msg = Vec::new();
        signable(salt, seq, v, &mut msg);
        MutablePut {
            k: key.verifying_key().to_bytes(),
            salt: salt.to_vec(),
            seq,
            sig: key.sign(&msg).to_bytes(),
            cas,
        }
    }

    /// Over the wire: immutable and mutable put/get, `seq` in a get, and every refusal code.
    #[test]
    fn put_and_get_over_krpc() {
        let now = Instant::now();
        let mut node = Node::new(Config::loopback_testnet(), now);
        let key = SigningKey::from_bytes(&[3; 32]);
        let v = b"12:Hello World!".to_vec();
        let target = mutable_target(&key.verifying_key().to_bytes(), b"s");

        let r = ask(&mut node, now, Method::Get { target, seq: None });
        assert!(field(&r, "r", "v").is_none());
        assert!(field(&r, "r", "nodes").is_some());
        let tok = token(&r);

        let put = |tok: Token, v: &[u8], m: Option<MutablePut>| {
            Method::Put(Box::new(PutArgs {
                token: tok,
                v: v.to_vec(),
                mutable: m,
            }))
        };
        // Bad token: 203.
        let bad_tok = Token::new(b"nope").unwrap();
        let r = ask(&mut node, now, put(bad_tok, &v, None));
        assert_eq!(error_code(&r), Some(203));
        // Immutable.
        let r = ask(&mut node, now, put(tok, &v, None));
        assert!(field(&r, "r", "id").is_some(), "{r:?}");
        let imm = crate::dht::items::immutable_target(&v);
        let r = ask(
            &mut node,
            now,
            Method::Get {
                target: imm,
                seq: None,
            },
        );
        assert_eq!(
            field(&r, "r", "v"),
            Some(&Value::Bytes(b"Hello World!".to_vec()))
        );
        assert!(field(&r, "r", "k").is_none());

        // Mutable, salted.
        let r = ask(
            &mut node,
            now,
            put(tok, &v, Some(signed(&key, b"s", 2, &v, None))),
        );
        assert!(error_code(&r).is_none(), "{r:?}");
        let r = ask(&mut node, now, Method::Get { target, seq: None });
        assert_eq!(field(&r, "r", "seq"), Some(&Value::Int(2)));
        assert!(matches!(field(&r, "r", "sig"), Some(Value::Bytes(s)) if s.len() == 64));
        assert!(matches!(field(&r, "r", "k"), Some(Value::Bytes(k)) if k.len() == 32));
        // The querier already has seq 2: no value.
        let r = ask(
            &mut node,
            now,
            Method::Get {
                target,
                seq: Some(2),
            },
        );
        assert!(field(&r, "r", "v").is_none());
        assert!(field(&r, "r", "token").is_some());
        let r = ask(
            &mut node,
            now,
            Method::Get {
                target,
                seq: Some(1),
            },
        );
        assert!(field(&r, "r", "v").is_some());

        // Bad signature: 206; stale seq: 302; CAS mismatch: 301.
        let mut forged = signed(&key, b"s", 3, &v, None);
        forged.sig[10] ^= 0x40;
        let r = ask(&mut node, now, put(tok, &v, Some(forged)));
        assert_eq!(error_code(&r), Some(206));
        let r = ask(
            &mut node,
            now,
            put(tok, b"1:x", Some(signed(&key, b"s", 1, b"1:x", None))),
        );
        assert_eq!(error_code(&r), Some(302));
        let r = ask(
            &mut node,
            now,
            put(tok, b"1:x", Some(signed(&key, b"s", 3, b"1:x", Some(1)))),
        );
        assert_eq!(error_code(&r), Some(301));
        let r = ask(
            &mut node,
            now,
            put(tok, b"1:x", Some(signed(&key, b"s", 3, b"1:x", Some(2)))),
        );
        assert!(error_code(&r).is_none(), "{r:?}");
        assert_eq!(node.items().len(), 2);
        // What the metrics show: queries by method and the store's counters.
        let st = node.stats(now);
        assert_eq!((st.queries_by_method.get, st.queries_by_method.put), (5, 7));
        assert_eq!(st.queries_by_method.other, 0);
        assert_eq!((st.items, st.item_bytes), (2, node.items().bytes()));
        assert_eq!(st.item_counts.refused, 3, "{:?}", st.item_counts);
        assert_eq!(st.item_counts.stored + st.item_counts.refreshed, 3);
    }

    /// Size limits come from the decoder, with their own codes.
    #[test]
    fn oversized_value_and_salt_are_refused() {
        let now = Instant::now();
        let mut node = Node::new(Config::loopback_testnet(), now);
        let id = [b'a'; 20];
        let big = format!("1001:{}", "x".repeat(1001));
        let q = format!(
            "d1:ad2:id20:{}5:token2:tt1:v{}e1:q3:put1:t2:aa1:y1:qe",
            std::str::from_utf8(&id).unwrap(),
            big
        );
        node.handle_datagram(now, SocketAddr::V4(FROM), q.as_bytes());
        let t = node.poll_transmit().expect("a reply");
        let r: Value = serde_bencode::from_bytes(t.payload).unwrap();
        assert_eq!(error_code(&r), Some(205));
        let q = format!(
            "d1:ad2:id20:{}1:k32:{}4:salt65:{}3:seqi1e3:sig64:{}5:token2:tt1:v1:xe1:q3:put1:t2:aa1:y1:qe",
            std::str::from_utf8(&id).unwrap(),
            "k".repeat(32),
            "s".repeat(65),
            "g".repeat(64)
        );
        node.handle_datagram(now, SocketAddr::V4(FROM), q.as_bytes());
        let t = node.poll_transmit().expect("a reply");
        let r: Value = serde_bencode::from_bytes(t.payload).unwrap();
        assert_eq!(error_code(&r), Some(207));
        assert!(node.items().is_empty());
    }
}
