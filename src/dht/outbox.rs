//! Outgoing datagrams of a sans-IO core, and the one gate they pass on the way out.
//!
//! Datagrams are encoded back to back into one buffer, so queueing allocates nothing once the
//! buffer has grown to its working size; [`Outbox::emit`] is the single place a datagram
//! enters it, after the outbound allow-list and (for replies) the reply-bandwidth quota.

use std::collections::VecDeque;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Instant;

use crate::dht::allow::AllowList;
use crate::dht::id::NodeAddr;
use crate::dht::limits::ByteQuota;

/// One datagram to send, borrowed from its core until the next call.
#[derive(Debug)]
pub struct Transmit<'a> {
    /// The destination (of the core's address family).
    pub to: SocketAddr,
    /// The encoded KRPC message.
    pub payload: &'a [u8],
}

/// What [`Outbox::emit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emitted {
    /// Queued, this many bytes.
    Queued(usize),
    /// The allow-list refuses the destination.
    NotAllowed,
    /// Over the reply quota.
    OverQuota,
}

/// Datagrams waiting to be sent.
#[derive(Debug)]
pub struct Outbox<A = SocketAddrV4> {
    bytes: Vec<u8>,
    queue: VecDeque<(A, usize, usize)>,
}

impl<A> Default for Outbox<A> {
    fn default() -> Self {
        Outbox {
            bytes: Vec::new(),
            queue: VecDeque::new(),
        }
    }
}

impl<A: NodeAddr> Outbox<A> {
    /// Encodes one datagram to `to` through the allow-list and, when given, the quota.
    pub fn emit(
        &mut self,
        allow: &AllowList,
        quota: Option<&mut ByteQuota>,
        now: Instant,
        to: A,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Emitted {
        if !allow.allows(to.into()) {
            return Emitted::NotAllowed;
        }
        if self.queue.is_empty() {
            self.bytes.clear();
        }
        let start = self.bytes.len();
        encode(&mut self.bytes);
        let len = self.bytes.len() - start;
        if let Some(q) = quota
            && !q.take(len, now)
        {
            self.bytes.truncate(start);
            return Emitted::OverQuota;
        }
        self.queue.push_back((to, start, len));
        Emitted::Queued(len)
    }

    /// The next datagram; its payload borrows the outbox until the next call.
    pub fn poll(&mut self) -> Option<Transmit<'_>> {
        let Some((to, start, len)) = self.queue.pop_front() else {
            self.bytes.clear();
            return None;
        };
        Some(Transmit {
            to: to.into(),
            payload: &self.bytes[start..start + len],
        })
    }

    /// Every waiting datagram at once (for batched sends), then empties the outbox.
    pub fn drain_all(&mut self, mut f: impl FnMut(A, &[u8])) {
        for &(to, start, len) in &self.queue {
            f(to, &self.bytes[start..start + len]);
        }
        self.queue.clear();
        self.bytes.clear();
    }

    /// Datagrams waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no datagram is waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_and_order() {
        let now = Instant::now();
        let mut o = Outbox::default();
        let allow = AllowList::loopback();
        let a: SocketAddrV4 = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            o.emit(&allow, None, now, a, |b| b.extend_from_slice(b"one")),
            Emitted::Queued(3)
        );
        let off: SocketAddrV4 = "10.0.0.1:1".parse().unwrap();
        assert_eq!(
            o.emit(&allow, None, now, off, |b| b.push(1)),
            Emitted::NotAllowed
        );
        let mut q = ByteQuota::new(4, now);
        assert_eq!(
            o.emit(&allow, Some(&mut q), now, a, |b| b
                .extend_from_slice(b"two")),
            Emitted::Queued(3)
        );
        assert_eq!(
            o.emit(&allow, Some(&mut q), now, a, |b| b.extend_from_slice(b"xx")),
            Emitted::OverQuota
        );
        assert_eq!(o.poll().unwrap().payload, b"one");
        let mut rest = Vec::new();
        o.drain_all(|_, p| rest.push(p.to_vec()));
        assert_eq!(rest, vec![b"two".to_vec()]);
        assert!(o.poll().is_none());
    }
}
