//! Opening a peer connection under the `--encryption` policy: outgoing (connect, then a
//! plain or MSE/PE handshake, with libtorrent's one fallback) and incoming (sniff the first
//! bytes, run the MSE responder when they are not a plain handshake).
//!
//! The decisions are [`EncryptionPolicy`](super::EncryptionPolicy)'s pure functions and the
//! MSE protocol is the sans-IO [`MseHandshake`]; this module only moves bytes and counts, so
//! the download session, the metadata fetcher and the listener share one path.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::io::AsyncReadExt;

use super::conn::{Phase, WireConfig, WireError, handshake_outgoing};
use super::enc_policy::{Attempt, Next, Outcome};
use super::handshake::Handshake;
use super::mse::{self, Incoming, MseError, MseHandshake, MseSecrets, Role};
use super::mse_io::{MseIoError, drive};
use super::transport::{PeerStream, StreamCrypto, Transports, connect_peer};
use crate::dht::allow::AllowList;
use crate::torrent::InfoHash;

static OUT: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
static IN: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
static MSE_FAILED: AtomicU64 = AtomicU64::new(0);
static REFUSED_BY_POLICY: AtomicU64 = AtomicU64::new(0);
static FALLBACKS: AtomicU64 = AtomicU64::new(0);

fn slot(c: StreamCrypto) -> usize {
    match c {
        StreamCrypto::Plain => 0,
        StreamCrypto::MsePlaintext => 1,
        StreamCrypto::Rc4 => 2,
    }
}

/// Peer connections by how their bytes travel, since start (process-wide).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CryptoCounts {
    /// Outgoing connections whose handshake completed: plain, MSE then plaintext, RC4.
    pub out: [u64; 3],
    /// The same for incoming connections.
    pub incoming: [u64; 3],
    /// MSE handshakes that failed (either direction).
    pub mse_failed: u64,
    /// Connections refused or abandoned because of the policy (a plain peer under
    /// `require`, an MSE peer under `disable`).
    pub refused_by_policy: u64,
    /// Outgoing connections retried with the other handshake kind.
    pub fallbacks: u64,
}

/// Snapshot of the per-method counters.
pub fn crypto_counts() -> CryptoCounts {
    let load = |a: &[AtomicU64; 3]| {
        [
            a[0].load(Ordering::Relaxed),
            a[1].load(Ordering::Relaxed),
            a[2].load(Ordering::Relaxed),
        ]
    };
    CryptoCounts {
        out: load(&OUT),
        incoming: load(&IN),
        mse_failed: MSE_FAILED.load(Ordering::Relaxed),
        refused_by_policy: REFUSED_BY_POLICY.load(Ordering::Relaxed),
        fallbacks: FALLBACKS.load(Ordering::Relaxed),
    }
}

impl std::fmt::Display for CryptoCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "out plain {} mse-plaintext {} rc4 {}; in plain {} mse-plaintext {} rc4 {}; \
             mse failed {}; refused by policy {}; fallbacks {}",
            self.out[0],
            self.out[1],
            self.out[2],
            self.incoming[0],
            self.incoming[1],
            self.incoming[2],
            self.mse_failed,
            self.refused_by_policy,
            self.fallbacks
        )
    }
}

/// Whether a failed attempt is worth retrying with the other handshake kind: the peer
/// closed or reset the stream while we were handshaking, which is what a plain-only peer
/// does with an MSE public key and what a `require` peer does with a plain handshake.
fn refused(e: &WireError) -> bool {
    match e {
        WireError::Closed | WireError::ClosedMidFrame => true,
        WireError::Io(e) | WireError::Encryption(MseIoError::Io(e)) => matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionAborted
        ),
        WireError::Encryption(MseIoError::Mse(MseError::Eof)) => true,
        // A plain peer reading our public key as a handshake may answer with its own
        // handshake bytes before closing: the MSE side then finds no sync pattern.
        WireError::Encryption(MseIoError::Mse(MseError::NoSync)) => true,
        _ => false,
    }
}

async fn attempt_once(
    addr: SocketAddr,
    local: Option<IpAddr>,
    allow: &AllowList,
    cfg: &WireConfig,
    transports: &Transports,
    ours: &Handshake,
    attempt: Attempt,
) -> Result<(PeerStream, Handshake), WireError> {
    let mut s = connect_peer(addr, local, allow, cfg.connect_timeout, transports).await?;
    if let Attempt::Mse(provide) = attempt {
        let hs = MseHandshake::new(
            Role::Initiator {
                info_hash: ours.info_hash,
                ia: Vec::new(),
            },
            provide,
            MseSecrets::random(),
            Instant::now(),
            cfg.handshake_timeout,
        )
        .map_err(|e| WireError::Encryption(MseIoError::Mse(e)))?;
        match drive(&mut s, hs).await {
            Ok(outcome) => s.set_encryption(outcome),
            Err(e) => {
                MSE_FAILED.fetch_add(1, Ordering::Relaxed);
                return Err(WireError::Encryption(e));
            }
        }
    }
    let theirs = handshake_outgoing(&mut s, ours, cfg.handshake_timeout).await?;
    Ok((s, theirs))
}

/// Connects to `addr` (over the allowed transports) and completes the BitTorrent
/// handshake under `cfg.encryption`: plain or MSE first as the policy says, and at most one
/// more connection with the other kind when the peer hangs up during the first.
pub async fn open_outgoing(
    addr: SocketAddr,
    local: Option<IpAddr>,
    allow: &AllowList,
    cfg: &WireConfig,
    transports: &Transports,
    ours: &Handshake,
) -> Result<(PeerStream, Handshake), WireError> {
    let policy = cfg.encryption;
    let mut attempt = policy.first_attempt();
    loop {
        let res = attempt_once(addr, local, allow, cfg, transports, ours, attempt).await;
        let outcome = match &res {
            Ok(_) => Outcome::Done,
            Err(e) if refused(e) => Outcome::RefusedDuringHandshake,
            Err(_) => Outcome::Failed,
        };
        match policy.next(attempt, outcome) {
            Next::Try(next) => {
                FALLBACKS.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    peer = %addr,
                    "peer hung up during the {} handshake ({}), retrying with {}",
                    describe(attempt),
                    res.as_ref().err().map(|e| e.to_string()).unwrap_or_default(),
                    describe(next)
                );
                attempt = next;
            }
            Next::Stop => {
                if let Ok((s, _)) = &res {
                    OUT[slot(s.crypto())].fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(peer = %addr, crypto = %s.crypto(), "peer handshake done");
                }
                return res;
            }
            Next::EncryptionRequiredButRefused => {
                REFUSED_BY_POLICY.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %addr, "{}", super::enc_policy::ENCRYPTION_REQUIRED_MSG);
                return Err(WireError::EncryptionRequired);
            }
        }
    }
}

fn describe(a: Attempt) -> &'static str {
    match a {
        Attempt::Plain => "plain",
        Attempt::Mse(_) => "encrypted (MSE/PE)",
    }
}

/// How many first bytes the sniffer needs at most: the plain handshake's 20-byte prefix.
const SNIFF: usize = 20;

/// Readies an accepted connection for `handshake_incoming`: reads its first bytes; a plain
/// handshake is put back and passes (unless the policy requires encryption); anything else
/// runs the MSE responder for the info hashes `serving` returns (read only then, so a
/// torrent added a moment ago is found), and the stream continues decrypted.
pub async fn accept_incoming(
    stream: &mut PeerStream,
    cfg: &WireConfig,
    serving: impl FnOnce() -> Vec<InfoHash>,
) -> Result<(), WireError> {
    let policy = cfg.encryption;
    let mut first = Vec::with_capacity(SNIFF);
    let deadline = tokio::time::Instant::now() + cfg.handshake_timeout;
    let kind = loop {
        match mse::classify_incoming(&first) {
            Incoming::NeedMore => {}
            k => break k,
        }
        let mut buf = [0u8; SNIFF];
        let want = SNIFF - first.len();
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf[..want]))
            .await
            .map_err(|_| WireError::Timeout(Phase::Handshake))??;
        if n == 0 {
            return Err(if first.is_empty() {
                WireError::Closed
            } else {
                WireError::ClosedMidFrame
            });
        }
        first.extend_from_slice(&buf[..n]);
        // A connection that sent nothing yet classifies as NeedMore; one byte decides.
    };
    if !policy.accepts_incoming(kind) {
        REFUSED_BY_POLICY.fetch_add(1, Ordering::Relaxed);
        return Err(WireError::RefusedByPolicy(policy));
    }
    stream.unread(first);
    if kind == Incoming::Plain {
        IN[0].fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    let hashes = serving();
    let hs = MseHandshake::new(
        Role::responder(hashes.iter()),
        policy.incoming_methods(),
        MseSecrets::random(),
        Instant::now(),
        cfg.handshake_timeout,
    )
    .map_err(|e| WireError::Encryption(MseIoError::Mse(e)))?;
    match drive(stream, hs).await {
        Ok(outcome) => {
            stream.set_encryption(outcome);
            IN[slot(stream.crypto())].fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => {
            MSE_FAILED.fetch_add(1, Ordering::Relaxed);
            Err(WireError::Encryption(e))
        }
    }
}
