//! The metadata fetcher: info hash + candidate peers in, verified info dict out.
//!
//! This module holds the fetch's public settings, reports and errors, and [`fetch_metadata`].
//! The work is split three ways: [`super::peer_source`] yields candidate peers,
//! [`super::coordinator`] makes every decision (which peer, which piece, when to give up,
//! who lied) without I/O or a clock, and a thin tokio driver runs one task per peer
//! connection (connect, handshakes, PORT, forwarding ut_metadata messages) and carries
//! events and actions between them. Keeping every decision in one sans-IO place makes the lie
//! handling (see [`super::assemble`]) testable without sockets.
//!
//! Strategy: blocks are requested from whichever peers are ready, spread so that each piece
//! is first asked of one peer only (a slow request is duplicated to a second peer after
//! [`FetchConfig::steal_after`]). That is the fast path: with several honest peers the dict
//! arrives in parallel. If the assembled dict fails the hash check, every peer is asked for
//! every piece it has not sent, so per-peer copies identify the liars; see the assemble
//! module for why this always terminates with the liars and only the liars dropped.
//!
//! Peers are validated before anything is buffered: `metadata_size` must be in
//! 1..=[`MAX_METADATA_SIZE`](crate::wire::MAX_METADATA_SIZE), every data message must carry
//! `total_size` equal to it and a block of exactly the expected length, and all candidate
//! blocks together are capped by [`FetchConfig::max_buffered`].

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use super::assemble::BlockError;
use crate::dht::allow::AllowList;
use crate::dht::driver::DhtHandle;
use crate::wire::WireConfig;

pub use super::driver::fetch_metadata;
pub use super::peer_source::PeerSource;

/// Unrequested data messages tolerated from one peer. A few are normal (an answer to a
/// request that already came from elsewhere, a duplicate); a stream of them only costs us
/// bandwidth and coordinator time.
pub const MAX_UNREQUESTED: u32 = 32;

/// Default for [`FetchConfig::max_window`]. libtorrent queues up to 1024 incoming metadata
/// requests and answers them as its send buffer drains, so a deeper pipeline is safe; 16
/// covers a 256 KiB dict (about 5,000 files) in one round trip.
pub const MAX_WINDOW: usize = 16;

/// Distinct metadata sizes tracked at once. Honest peers all advertise the same size; each
/// further size is a liar's, and each costs an assembly, so their number is capped.
pub const MAX_SIZE_GROUPS: usize = 4;

/// Settings of one fetch.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Our peer id in handshakes.
    pub peer_id: crate::torrent::PeerId,
    /// Outbound allow-list: peers outside it are never connected to.
    pub allow: AllowList,
    /// Connect, handshake, read and write timeouts of each connection.
    pub wire: WireConfig,
    /// Peer connections open (or opening) at once.
    pub max_connections: usize,
    /// Requests in flight to one peer at most (also bounded by the peer's `reqq`).
    pub max_window: usize,
    /// How long a handshaken peer has to send its extension handshake.
    pub ext_handshake_timeout: Duration,
    /// How long a requested block may take before the peer is given up as too slow.
    pub request_timeout: Duration,
    /// How long a block request may be outstanding before the same block is also asked of a
    /// second peer.
    pub steal_after: Duration,
    /// Overall deadline; `None` waits until the peer source is exhausted.
    pub timeout: Option<Duration>,
    /// Cap on candidate block bytes held (distinct blocks, all peers).
    pub max_buffered: usize,
    /// Connection attempts per peer address. A peer that failed for a reason that may pass
    /// (connection refused or reset, "torrent not ready", rejected requests, too slow) is
    /// retried after `retry_delay`, doubled for each further attempt; a liar never is.
    pub max_attempts: u32,
    /// Wait before the first retry of a peer; doubled for each further attempt.
    pub retry_delay: Duration,
    /// Our DHT node: PORT messages received from peers make it ping them.
    pub dht: Option<DhtHandle>,
    /// Our DHT UDP port, sent in a PORT message to peers that set the DHT bit.
    pub dht_port: Option<u16>,
    /// Our TCP listen port, advertised as `p` in the extension handshake.
    pub listen_port: Option<u16>,
    /// Transports for outgoing connections (the listener's, so uTP leaves from its port).
    pub transports: crate::wire::Transports,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            peer_id: crate::torrent::PeerId::generate(),
            allow: AllowList::any(),
            wire: WireConfig::with_timeout_secs(3, 5, 30, 10),
            max_connections: 12,
            max_window: MAX_WINDOW,
            ext_handshake_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(8),
            steal_after: Duration::from_millis(500),
            timeout: None,
            max_buffered: 64 << 20,
            max_attempts: 3,
            retry_delay: Duration::from_secs(1),
            dht: None,
            dht_port: None,
            transports: crate::wire::Transports::default(),
            listen_port: None,
        }
    }
}

/// How a peer misbehaved; each gets the peer dropped and never contacted again in this fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misbehavior {
    /// Blocks it sent are not part of the dict whose SHA-1 is the info hash.
    HashMismatch,
    /// Its `metadata_size` is 0 or above the cap.
    AbsurdMetadataSize(u64),
    /// Its `metadata_size` is not the size of the verified dict.
    WrongMetadataSize {
        /// The peer's `metadata_size`.
        advertised: u64,
        /// The size of the verified dict.
        actual: u64,
    },
    /// A data message's `total_size` differs from the peer's `metadata_size`.
    WrongTotalSize {
        /// The peer's `metadata_size`.
        advertised: u64,
        /// The `total_size` of its data message.
        got: u64,
    },
    /// A block of the wrong length (or for a piece that does not exist).
    BadBlock(BlockError),
    /// A later extension handshake changed `metadata_size`.
    SizeChanged {
        /// The size the peer was grouped under.
        from: u64,
        /// The size its later handshake claims.
        to: u64,
    },
    /// An undecodable ut_metadata message.
    Malformed,
    /// Kept sending blocks nobody asked for (more than [`MAX_UNREQUESTED`]).
    Unrequested,
}

impl fmt::Display for Misbehavior {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Misbehavior::HashMismatch => write!(f, "sent metadata failing the hash check"),
            Misbehavior::AbsurdMetadataSize(s) => write!(f, "advertised absurd metadata_size {s}"),
            Misbehavior::WrongMetadataSize { advertised, actual } => write!(
                f,
                "advertised metadata_size {advertised}, the verified dict has {actual}"
            ),
            Misbehavior::WrongTotalSize { advertised, got } => write!(
                f,
                "sent total_size {got} after advertising metadata_size {advertised}"
            ),
            Misbehavior::BadBlock(e) => write!(f, "{e}"),
            Misbehavior::SizeChanged { from, to } => {
                write!(f, "changed metadata_size from {from} to {to}")
            }
            Misbehavior::Malformed => write!(f, "sent a malformed ut_metadata message"),
            Misbehavior::Unrequested => write!(f, "flooded us with unrequested blocks"),
        }
    }
}

/// What became of one peer address we tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerOutcome {
    /// Still connected when the fetch ended, without having contributed.
    Unused,
    /// Sent blocks of the verified dict.
    Supplied,
    /// Dropped for lying or breaking the protocol.
    Dropped(Misbehavior),
    /// Could not be used: unreachable, no ut_metadata, rejected our requests, too slow...
    Failed(String),
}

/// One tried peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerReport {
    /// The peer's address.
    pub addr: SocketAddr,
    /// How the attempt ended.
    pub outcome: PeerOutcome,
    /// Blocks it sent that passed the size checks.
    pub blocks: u32,
}

/// What a fetch did.
#[derive(Debug, Clone, Default)]
pub struct FetchStats {
    /// Distinct peer addresses offered by the source.
    pub found: usize,
    /// Connection attempts made (a retried peer counts each time).
    pub tried: usize,
    /// Attempts that completed the BitTorrent handshake.
    pub connected: usize,
    /// Final state of each attempt, in order of attempt.
    pub peers: Vec<PeerReport>,
    /// PORT messages received (each made our DHT node ping the sender).
    pub ports_received: usize,
    /// Hash checks of assembled or per-peer copies that failed.
    pub hash_failures: usize,
    /// Time from the start of the fetch to its end (success, timeout or exhaustion).
    pub elapsed: Duration,
}

impl FetchStats {
    /// Peers dropped for misbehaving, with the reason.
    pub fn dropped(&self) -> impl Iterator<Item = (SocketAddr, &Misbehavior)> {
        self.peers.iter().filter_map(|p| match &p.outcome {
            PeerOutcome::Dropped(m) => Some((p.addr, m)),
            _ => None,
        })
    }

    /// Peers whose blocks make up the verified dict.
    pub fn suppliers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.peers
            .iter()
            .filter(|p| p.outcome == PeerOutcome::Supplied)
            .map(|p| p.addr)
    }

    /// A one-line summary: "found 3 peers, tried 3 (connected 2, 1 dropped: ...)".
    pub fn summary(&self) -> String {
        let mut s = format!(
            "found {} peer{}, tried {} (connected {}",
            self.found,
            if self.found == 1 { "" } else { "s" },
            self.tried,
            self.connected
        );
        let dropped: Vec<String> = self
            .dropped()
            .map(|(addr, why)| format!("{addr} {why}"))
            .collect();
        if !dropped.is_empty() {
            s.push_str(&format!(
                ", {} dropped: {}",
                dropped.len(),
                dropped.join("; ")
            ));
        }
        let mut failures: Vec<String> = self
            .peers
            .iter()
            .filter_map(|p| match &p.outcome {
                PeerOutcome::Failed(why) => Some(why.clone()),
                _ => None,
            })
            .collect();
        if !failures.is_empty() {
            failures.sort();
            failures.dedup();
            failures.truncate(3);
            s.push_str(&format!(", failures: {}", failures.join("; ")));
        }
        s.push(')');
        s
    }
}

/// A verified info dict.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The bencoded info dict; its SHA-1 is the info hash.
    pub info: Bytes,
    /// What the fetch did.
    pub stats: FetchStats,
}

/// Why no metadata was obtained.
#[derive(Debug, Clone)]
pub enum FetchError {
    /// The deadline passed.
    Timeout(FetchStats),
    /// The peer source ended and every peer was used up.
    Exhausted(FetchStats),
}

impl FetchError {
    /// What the fetch did before it failed.
    pub fn stats(&self) -> &FetchStats {
        match self {
            FetchError::Timeout(s) | FetchError::Exhausted(s) => s,
        }
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Timeout(s) => write!(
                f,
                "no verified metadata after {:.1} s: {}",
                s.elapsed.as_secs_f64(),
                s.summary()
            ),
            FetchError::Exhausted(s) => {
                write!(f, "no peer supplied verified metadata: {}", s.summary())
            }
        }
    }
}

impl std::error::Error for FetchError {}
