//! Peer streams over either transport: TCP or uTP (BEP 29).
//!
//! libtorrent, Transmission and most clients behind NATs prefer uTP, and some speak only
//! uTP; so everything above the byte stream (handshake, messages, metadata, pieces) works on
//! a [`PeerStream`] and does not care which transport carries it. uTP's congestion control
//! (LEDBAT) comes from the `librqbit-utp` crate; we only choose the transport and count.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use librqbit_utp::{UtpSocketUdp, UtpStream, UtpStreamReadHalf, UtpStreamWriteHalf};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::conn::{Phase, WireError, check_peer_allowed, connect_from};
use super::mse::{Method, MseOutcome};
use super::mse_io::{Rc4Reader, Rc4Writer};
use crate::dht::allow::AllowList;

/// Which transport carries a connection (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// A TCP connection.
    Tcp,
    /// A uTP connection (BEP 29, over UDP).
    Utp,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Utp => "utp",
        })
    }
}

/// The raw transport under a [`PeerStream`].
enum Raw {
    Tcp(TcpStream),
    Utp(UtpStream),
}

/// A byte stream to a peer over TCP or uTP, plaintext or (after an MSE/PE handshake) RC4.
///
/// Held as two halves from the start, each behind an RC4 adapter that is a plain
/// pass-through until [`PeerStream::set_encryption`] installs a cipher: so the handshake
/// code, the message codec and the split reader/writer tasks all see plaintext whatever
/// the method, and a plaintext connection pays one branch per read or write.
pub struct PeerStream {
    kind: TransportKind,
    crypto: StreamCrypto,
    read: Rc4Reader<RawRead>,
    write: Rc4Writer<RawWrite>,
}

/// What the bytes of a connection look like on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamCrypto {
    /// No MSE handshake: a plain BitTorrent connection.
    Plain,
    /// MSE handshake, then plaintext (crypto_select = 0x01): obfuscated header only.
    MsePlaintext,
    /// MSE handshake, then RC4 both ways.
    Rc4,
}

impl fmt::Display for StreamCrypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StreamCrypto::Plain => "plain",
            StreamCrypto::MsePlaintext => "mse-plaintext",
            StreamCrypto::Rc4 => "rc4",
        })
    }
}

impl fmt::Debug for PeerStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerStream({}, {})", self.kind, self.crypto)
    }
}

impl From<Raw> for PeerStream {
    fn from(raw: Raw) -> Self {
        let (kind, r, w) = match raw {
            Raw::Tcp(s) => {
                let (r, w) = s.into_split();
                (TransportKind::Tcp, RawRead::Tcp(r), RawWrite::Tcp(w))
            }
            Raw::Utp(s) => {
                let (r, w) = s.split();
                (TransportKind::Utp, RawRead::Utp(r), RawWrite::Utp(w))
            }
        };
        PeerStream {
            kind,
            crypto: StreamCrypto::Plain,
            read: Rc4Reader::new(r, None, Vec::new()),
            write: Rc4Writer::new(w, None),
        }
    }
}

impl From<TcpStream> for PeerStream {
    fn from(s: TcpStream) -> Self {
        Raw::Tcp(s).into()
    }
}

impl From<UtpStream> for PeerStream {
    fn from(s: UtpStream) -> Self {
        Raw::Utp(s).into()
    }
}

impl PeerStream {
    /// Which transport carries this stream.
    pub fn kind(&self) -> TransportKind {
        self.kind
    }

    /// Plain, or which method an MSE handshake chose.
    pub fn crypto(&self) -> StreamCrypto {
        self.crypto
    }

    /// Bytes already read off the socket (while sniffing the first bytes, or past the end
    /// of an MSE handshake) to be read again before the socket: they were consumed by the
    /// caller but belong to what follows.
    pub fn unread(&mut self, bytes: Vec<u8>) {
        self.read.unread(bytes);
    }

    /// Switches to what a completed MSE handshake chose: RC4 both ways (positioned after
    /// the handshake's own bytes) or plaintext, with `outcome.initial_payload` read first.
    pub fn set_encryption(&mut self, outcome: MseOutcome) {
        self.crypto = match outcome.method {
            Method::Rc4 => StreamCrypto::Rc4,
            Method::Plain => StreamCrypto::MsePlaintext,
        };
        let (enc, dec) = match outcome.ciphers {
            Some(c) if outcome.method == Method::Rc4 => (Some(c.enc), Some(c.dec)),
            _ => (None, None),
        };
        self.read.set_cipher(dec);
        self.read.unread(outcome.initial_payload);
        self.write.set_cipher(enc);
    }

    /// Splits into halves owned by separate tasks; neither transport needs a lock for it.
    pub fn into_split(self) -> (PeerReadHalf, PeerWriteHalf) {
        (PeerReadHalf(self.read), PeerWriteHalf(self.write))
    }
}

/// The raw read half of a transport.
enum RawRead {
    Tcp(OwnedReadHalf),
    Utp(UtpStreamReadHalf),
}

/// The raw write half of a transport.
enum RawWrite {
    Tcp(OwnedWriteHalf),
    Utp(UtpStreamWriteHalf),
}

/// The read half of a [`PeerStream`] (decrypting, if the stream is RC4).
pub struct PeerReadHalf(Rc4Reader<RawRead>);

/// The write half of a [`PeerStream`] (encrypting, if the stream is RC4).
pub struct PeerWriteHalf(Rc4Writer<RawWrite>);

impl fmt::Debug for PeerReadHalf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerReadHalf")
    }
}

impl fmt::Debug for PeerWriteHalf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerWriteHalf")
    }
}

impl AsyncRead for RawRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RawRead::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            RawRead::Utp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for RawWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            RawWrite::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            RawWrite::Utp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RawWrite::Tcp(s) => Pin::new(s).poll_flush(cx),
            RawWrite::Utp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RawWrite::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            RawWrite::Utp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().read).poll_read(cx, buf)
    }
}

impl AsyncRead for PeerReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

macro_rules! delegate_write {
    ($t:ty, $($field:tt)+) => {
        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.get_mut().$($field)+).poll_write(cx, buf)
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().$($field)+).poll_flush(cx)
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().$($field)+).poll_shutdown(cx)
            }
        }
    };
}

delegate_write!(PeerStream, write);
delegate_write!(PeerWriteHalf, 0);

crate::util::counters::process_counters! {
    /// Connections established per transport and direction since start (process-wide).
    pub struct TransportCounts;
    /// Snapshot of the per-transport connection counters.
    pub fn transport_counts;
    /// Outgoing TCP connections established (counted before the handshake).
    tcp_out = TCP_CONNECTS,
    /// Outgoing uTP connections established (counted before the handshake).
    utp_out = UTP_CONNECTS,
    /// Incoming TCP connections accepted ([`note_accepted`]).
    tcp_in = TCP_ACCEPTS,
    /// Incoming uTP connections accepted ([`note_accepted`]).
    utp_in = UTP_ACCEPTS,
}

/// Counts and logs an accepted connection.
pub fn note_accepted(kind: TransportKind, peer: SocketAddr) {
    match kind {
        TransportKind::Tcp => &TCP_ACCEPTS,
        TransportKind::Utp => &UTP_ACCEPTS,
    }
    .fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%peer, transport = %kind, "incoming peer connection");
}

fn note_connected(kind: TransportKind, peer: SocketAddr) {
    match kind {
        TransportKind::Tcp => &TCP_CONNECTS,
        TransportKind::Utp => &UTP_CONNECTS,
    }
    .fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%peer, transport = %kind, "outgoing peer connection");
}

/// How long an outgoing uTP attempt runs alone before TCP is tried too. libtorrent waits
/// ~3.6 s; a peer that answers uTP at all answers its SYN within a round trip, so a short
/// head start keeps uTP preferred without making TCP-only peers wait.
pub const DEFAULT_UTP_HEAD_START: Duration = Duration::from_millis(800);

/// The transports outgoing connections may use. Cheap to clone.
#[derive(Clone)]
pub struct Transports {
    /// The uTP sockets (one per listener address, each on its ip:port), empty when uTP is
    /// off. A peer is dialled from the socket of its own family, or else from a dual-stack
    /// `[::]` one: a socket of the other family cannot reach it at all.
    pub utp: Vec<Arc<UtpSocketUdp>>,
    /// Whether outgoing TCP is allowed.
    pub tcp: bool,
    /// See [`DEFAULT_UTP_HEAD_START`].
    pub utp_head_start: Duration,
}

impl Default for Transports {
    /// TCP only: what every caller had before uTP, and what needs no socket.
    fn default() -> Self {
        Transports {
            utp: Vec::new(),
            tcp: true,
            utp_head_start: DEFAULT_UTP_HEAD_START,
        }
    }
}

impl Transports {
    /// The uTP socket to dial `addr` from: one of its family, else a dual-stack `[::]` one
    /// (librqbit-utp makes an unspecified IPv6 socket dual-stack and maps IPv4 for it).
    pub fn utp_for(&self, addr: SocketAddr) -> Option<&Arc<UtpSocketUdp>> {
        let own = |s: &&Arc<UtpSocketUdp>| s.bind_addr().is_ipv4() == addr.is_ipv4();
        let dual = |s: &&Arc<UtpSocketUdp>| match s.bind_addr() {
            SocketAddr::V6(a) => a.ip().is_unspecified(),
            SocketAddr::V4(_) => false,
        };
        self.utp
            .iter()
            .find(own)
            .or_else(|| self.utp.iter().find(dual))
    }
}

impl fmt::Debug for Transports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transports")
            .field(
                "utp",
                &self.utp.iter().map(|s| s.bind_addr()).collect::<Vec<_>>(),
            )
            .field("tcp", &self.tcp)
            .field("utp_head_start", &self.utp_head_start)
            .finish()
    }
}

async fn connect_utp(
    sock: &Arc<UtpSocketUdp>,
    addr: SocketAddr,
    connect_timeout: Duration,
) -> Result<PeerStream, WireError> {
    match tokio::time::timeout(connect_timeout, sock.connect(addr)).await {
        Err(_) => Err(WireError::Timeout(Phase::Connect)),
        Ok(Err(e)) => Err(WireError::Io(io::Error::other(format!("utp: {e}")))),
        Ok(Ok(s)) => Ok(PeerStream::from(s)),
    }
}

/// Connects to a peer over the allowed transports: uTP first when enabled, TCP once uTP has
/// failed or had its head start (the first to connect wins, the other is dropped).
/// The allow-list is checked before either sends anything.
pub async fn connect_peer(
    addr: SocketAddr,
    local: Option<IpAddr>,
    allow: &AllowList,
    connect_timeout: Duration,
    transports: &Transports,
) -> Result<PeerStream, WireError> {
    check_peer_allowed(addr, allow)?;
    let utp = transports.utp_for(addr);
    let tcp = async {
        connect_from(addr, local, allow, connect_timeout)
            .await
            .map(PeerStream::from)
    };
    let res = match (utp, transports.tcp) {
        (None, false) => Err(WireError::Io(io::Error::other(
            "no transport enabled for this peer",
        ))),
        (None, true) => tcp.await,
        (Some(sock), false) => connect_utp(sock, addr, connect_timeout).await,
        (Some(sock), true) => {
            let utp = connect_utp(sock, addr, connect_timeout);
            tokio::pin!(utp);
            let head = tokio::time::sleep(transports.utp_head_start);
            tokio::pin!(head);
            // uTP alone until it fails or its head start is over...
            let first = tokio::select! {
                r = &mut utp => Some(r),
                _ = &mut head => None,
            };
            match first {
                Some(Ok(s)) => Ok(s),
                Some(Err(e)) => {
                    tracing::debug!(%addr, "utp connect failed ({e}), trying tcp");
                    tcp.await
                }
                None => {
                    // ...then both; the first success wins.
                    tokio::pin!(tcp);
                    tokio::select! {
                        r = &mut utp => match r {
                            Ok(s) => Ok(s),
                            Err(_) => tcp.await,
                        },
                        r = &mut tcp => match r {
                            Ok(s) => Ok(s),
                            Err(_) => utp.await,
                        },
                    }
                }
            }
        }
    };
    if let Ok(s) = &res {
        note_connected(s.kind(), addr);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn utp_only(sock: Arc<UtpSocketUdp>) -> Transports {
        Transports {
            utp: vec![sock],
            tcp: false,
            utp_head_start: DEFAULT_UTP_HEAD_START,
        }
    }

    /// Bytes cross a uTP connection made by `connect_peer` both ways, through split halves,
    /// and the connection is counted as outgoing uTP.
    #[tokio::test]
    async fn utp_connect_carries_bytes_both_ways() {
        let a = UtpSocketUdp::new_udp("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let b = UtpSocketUdp::new_udp("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let b_addr = b.bind_addr();
        let accept = tokio::spawn(async move { b.accept().await.map(PeerStream::from) });
        let before = transport_counts().utp_out;
        let s = connect_peer(
            b_addr,
            None,
            &AllowList::any(),
            Duration::from_secs(10),
            &utp_only(a),
        )
        .await
        .unwrap();
        assert_eq!(s.kind(), TransportKind::Utp);
        assert!(transport_counts().utp_out > before);
        let mut theirs = accept.await.unwrap().unwrap();
        let (mut r, mut w) = s.into_split();
        w.write_all(b"hello over utp").await.unwrap();
        w.flush().await.unwrap();
        let mut buf = [0u8; 14];
        theirs.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello over utp");
        theirs.write_all(b"back").await.unwrap();
        theirs.flush().await.unwrap();
        let mut buf = [0u8; 4];
        r.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"back");
    }

    /// A peer is dialled from the uTP socket of its family; a dual-stack `[::]` socket
    /// serves either family when no socket of the peer's own family exists; an IPv4
    /// socket never serves an IPv6 peer.
    #[tokio::test]
    async fn utp_socket_is_chosen_by_the_peer_family() {
        let v4 = UtpSocketUdp::new_udp("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let dual = UtpSocketUdp::new_udp("[::]:0".parse().unwrap())
            .await
            .unwrap();
        let peer4: SocketAddr = "127.0.0.2:6881".parse().unwrap();
        let peer6: SocketAddr = "[::1]:6881".parse().unwrap();
        let only_v4 = utp_only(v4.clone());
        assert!(Arc::ptr_eq(only_v4.utp_for(peer4).unwrap(), &v4));
        assert!(only_v4.utp_for(peer6).is_none());
        let both = Transports {
            utp: vec![dual.clone(), v4.clone()],
            ..only_v4.clone()
        };
        assert!(Arc::ptr_eq(both.utp_for(peer4).unwrap(), &v4));
        assert!(Arc::ptr_eq(both.utp_for(peer6).unwrap(), &dual));
        let only_dual = utp_only(dual.clone());
        assert!(Arc::ptr_eq(only_dual.utp_for(peer4).unwrap(), &dual));
    }

    /// A dual-stack `[::]` uTP socket reaches an IPv4 peer (the listener's default when
    /// the DHT runs both families).
    #[tokio::test]
    async fn dual_stack_utp_socket_connects_to_an_ipv4_peer() {
        let dual = UtpSocketUdp::new_udp("[::]:0".parse().unwrap())
            .await
            .unwrap();
        let b = UtpSocketUdp::new_udp("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let b_addr = b.bind_addr();
        let accept = tokio::spawn(async move { b.accept().await.map(PeerStream::from) });
        let s = connect_peer(
            b_addr,
            None,
            &AllowList::any(),
            Duration::from_secs(10),
            &utp_only(dual),
        )
        .await
        .unwrap();
        assert_eq!(s.kind(), TransportKind::Utp);
        accept.await.unwrap().unwrap();
    }

    /// With neither transport usable the attempt fails at once instead of hanging.
    #[tokio::test]
    async fn no_transport_is_an_error() {
        let t = Transports {
            utp: Vec::new(),
            tcp: false,
            utp_head_start: DEFAULT_UTP_HEAD_START,
        };
        let r = connect_peer(
            "127.0.0.1:9".parse().unwrap(),
            None,
            &AllowList::any(),
            Duration::from_secs(1),
            &t,
        )
        .await;
        assert!(r.is_err());
    }

    /// The allow-list is checked before any uTP packet is sent.
    #[tokio::test]
    async fn refused_address_never_connects() {
        let a = UtpSocketUdp::new_udp("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let allow = AllowList::only(vec!["127.1.0.0/16".parse().unwrap()]);
        let r = connect_peer(
            "127.0.0.1:9".parse().unwrap(),
            None,
            &allow,
            Duration::from_secs(1),
            &utp_only(a),
        )
        .await;
        assert!(matches!(r, Err(WireError::Refused(_))), "{r:?}");
    }
}
