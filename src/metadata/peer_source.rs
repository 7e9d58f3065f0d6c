//! Where a metadata fetch's candidate peers come from: a magnet's `x.pe` list, DHT lookups,
//! a channel. Kept apart from the coordinator so the coordinator sees only "peer found" and
//! "source ended" inputs and can be driven without a DHT in its unit tests.

use std::collections::VecDeque;
use std::net::SocketAddr;

use tokio::sync::mpsc;

use crate::dht::driver::PeerStream;
use crate::dht::peer_feed::PeerFeed;

/// Where candidate peers come from, in priority order: an initial list (a magnet's `x.pe`
/// peers), then any number of DHT lookups, repeated-lookup feeds and/or a channel,
/// interleaved as they produce.
#[derive(Default)]
pub struct PeerSource {
    initial: VecDeque<SocketAddr>,
    streams: Vec<PeerStream>,
    feeds: Vec<PeerFeed>,
    channel: Option<mpsc::UnboundedReceiver<SocketAddr>>,
}

impl PeerSource {
    /// A source that yields `initial` and then ends.
    pub fn new(initial: impl IntoIterator<Item = SocketAddr>) -> Self {
        PeerSource {
            initial: initial.into_iter().collect(),
            ..Default::default()
        }
    }

    /// Adds the peers of a DHT lookup.
    pub fn with_dht(mut self, stream: PeerStream) -> Self {
        self.streams.push(stream);
        self
    }

    /// Adds the peers of repeated DHT lookups ([`crate::dht::driver::DhtHandle::peers`]);
    /// the lookups stop when the source is dropped.
    pub fn with_feed(mut self, feed: PeerFeed) -> Self {
        self.feeds.push(feed);
        self
    }

    /// Adds peers sent on a channel (e.g. by a task repeating lookups); the source ends
    /// only when every sender is dropped.
    pub fn with_channel(mut self, rx: mpsc::UnboundedReceiver<SocketAddr>) -> Self {
        self.channel = Some(rx);
        self
    }

    /// The next candidate, `None` when every input has ended. Cancel-safe.
    pub async fn next(&mut self) -> Option<SocketAddr> {
        if let Some(a) = self.initial.pop_front() {
            return Some(a);
        }
        loop {
            if self.streams.is_empty() && self.feeds.is_empty() && self.channel.is_none() {
                return None;
            }
            // Polls every input fairly; an input that ends is removed.
            let ended = std::future::poll_fn(|cx| {
                for (i, s) in self.streams.iter_mut().enumerate() {
                    if let std::task::Poll::Ready(r) = s.poll_next(cx) {
                        return std::task::Poll::Ready(match r {
                            Some(a) => Ok(a),
                            None => Err(Source::Stream(i)),
                        });
                    }
                }
                for (i, f) in self.feeds.iter_mut().enumerate() {
                    if let std::task::Poll::Ready(r) = f.poll_next(cx) {
                        return std::task::Poll::Ready(match r {
                            Some(a) => Ok(a),
                            None => Err(Source::Feed(i)),
                        });
                    }
                }
                if let Some(rx) = &mut self.channel
                    && let std::task::Poll::Ready(r) = rx.poll_recv(cx)
                {
                    return std::task::Poll::Ready(r.ok_or(Source::Channel));
                }
                std::task::Poll::Pending
            })
            .await;
            match ended {
                Ok(addr) => return Some(addr),
                Err(Source::Stream(i)) => {
                    self.streams.swap_remove(i);
                }
                Err(Source::Feed(i)) => {
                    self.feeds.swap_remove(i);
                }
                Err(Source::Channel) => self.channel = None,
            }
        }
    }
}

/// Which input ended.
enum Source {
    Stream(usize),
    Feed(usize),
    Channel,
}
