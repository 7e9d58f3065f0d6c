//! The serving side of BEP 9: a TCP listener that answers ut_metadata requests for the
//! torrents whose info dict we hold, and `reject` for anything else.
//!
//! Connections are bounded (a semaphore; excess connections are closed at once rather than
//! queued), every phase has a deadline, and nothing a peer sends can make the handler panic:
//! malformed frames end the connection, malformed extension payloads are ignored. The handler
//! is a message loop dispatching on message type ([`ServeConn::on_message`]).
//!
//! The listener is the one accept loop of a process: a torrent that is being downloaded or
//! seeded attaches a [`PeerHandoff`] to the registry, and connections for its info hash are
//! handed to it right after the handshake, so the same connection carries pieces and (from
//! the torrent's own peer handler, through [`answer_metadata`]) metadata.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::wire::message::FrameSink;
use bytes::Bytes;
use tokio::io::AsyncWrite;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::dht::allow::AllowList;
use crate::dht::driver::DhtHandle;
use crate::torrent::InfoHash;
use crate::wire::{
    EXT_HANDSHAKE_ID, ExtHandshake, Handshake, METADATA_BLOCK, Message, MetadataMsg,
    OUR_UT_METADATA_ID, PeerConn, PeerStream, PeerWriter, TransportKind, Transports, UT_METADATA,
    WireConfig, WireError, check_peer_allowed, handshake_incoming, metadata_block_len,
    note_accepted,
};

/// Takes over incoming connections for one torrent (a download or seeding session).
pub trait PeerHandoff: Send + Sync + std::fmt::Debug {
    /// Called once the peer's handshake was read and ours sent. The implementation owns the
    /// connection from here (and may simply drop it, e.g. when it is full).
    fn hand_off(&self, stream: PeerStream, peer: SocketAddr, theirs: Handshake);
}

/// Info dicts we can serve, by info hash, and the torrents that take their own connections.
/// Shared between the listener and whoever adds torrents (a seeder, a crawler that just
/// fetched one, a download).
#[derive(Debug, Default)]
pub struct MetadataRegistry {
    dicts: RwLock<HashMap<InfoHash, Bytes>>,
    handoffs: RwLock<HashMap<InfoHash, Arc<dyn PeerHandoff>>>,
}

impl MetadataRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a raw info dict and returns its info hash (the SHA-1 of exactly these bytes).
    pub fn insert(&self, info: impl Into<Bytes>) -> InfoHash {
        let info = info.into();
        let hash = InfoHash::of_info(&info);
        self.write().insert(hash, info);
        hash
    }

    /// Stops serving the dict of `info_hash` and returns it (attached handlers stay).
    pub fn remove(&self, info_hash: &InfoHash) -> Option<Bytes> {
        self.write().remove(info_hash)
    }

    /// The info dict of `info_hash`, if served (a cheap reference-counted clone).
    pub fn get(&self, info_hash: &InfoHash) -> Option<Bytes> {
        self.read().get(info_hash).cloned()
    }

    /// Number of info dicts served (attached handlers not counted).
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no info dict is served.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Routes connections for `info_hash` to `handler` (after the handshake) instead of
    /// serving them metadata only.
    pub fn attach(&self, info_hash: InfoHash, handler: Arc<dyn PeerHandoff>) {
        self.handoffs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(info_hash, handler);
    }

    /// Undoes [`Self::attach`].
    pub fn detach(&self, info_hash: &InfoHash) {
        self.handoffs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(info_hash);
    }

    /// Every info hash a connection may ask for (served dicts and attached torrents): the
    /// SKEYs an incoming MSE/PE handshake is matched against.
    pub fn info_hashes(&self) -> Vec<InfoHash> {
        let mut all: Vec<InfoHash> = self.read().keys().copied().collect();
        for h in self
            .handoffs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
        {
            if !all.contains(h) {
                all.push(*h);
            }
        }
        all
    }

    /// The handler attached for `info_hash`.
    pub fn handoff(&self, info_hash: &InfoHash) -> Option<Arc<dyn PeerHandoff>> {
        self.handoffs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(info_hash)
            .cloned()
    }

    // A poisoned lock only means another thread panicked mid-insert of a HashMap entry;
    // the map itself is still consistent, so keep serving.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<InfoHash, Bytes>> {
        self.dicts.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<InfoHash, Bytes>> {
        self.dicts.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Settings of the serving side.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Our peer id in handshakes.
    pub peer_id: crate::torrent::PeerId,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// Handshake and write timeouts; `read_timeout` is how long an idle peer is kept.
    pub wire: WireConfig,
    /// Peers outside this list are closed on accept, before a byte is sent to them.
    pub allow: AllowList,
    /// Our DHT node, pinged with the address of every PORT message received.
    pub dht: Option<DhtHandle>,
    /// Our DHT UDP port, sent in a PORT message to peers that set the DHT bit.
    pub dht_port: Option<u16>,
    /// Accept (and allow connecting out over) uTP on a UDP socket bound to the listener's
    /// ip:port, as peers expect both transports on one port number.
    pub utp: bool,
    /// Accept TCP connections (the listener is bound either way, to hold the port number).
    pub tcp: bool,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            peer_id: crate::torrent::PeerId::generate(),
            max_connections: 256,
            wire: WireConfig {
                handshake_timeout: Duration::from_secs(10),
                read_timeout: Duration::from_secs(120),
                write_timeout: Duration::from_secs(30),
                ..WireConfig::default()
            },
            allow: AllowList::any(),
            dht: None,
            dht_port: None,
            utp: false,
            tcp: true,
        }
    }
}

/// Counters of the serving side.
#[derive(Debug, Default)]
pub struct ServeStats {
    /// Connections accepted (TCP and uTP), counted before any check.
    pub accepted: AtomicU64,
    /// Accepted connections closed because the peer is outside the allow-list.
    pub refused_not_allowed: AtomicU64,
    /// Accepted connections closed because `max_connections` were already served.
    pub refused_full: AtomicU64,
    /// Handshakes for an info hash we neither serve nor have a handler for.
    pub unknown_info_hash: AtomicU64,
    /// Handshakes completed (including those handed off to a torrent's session).
    pub handshakes: AtomicU64,
    /// ut_metadata data messages sent.
    pub data_sent: AtomicU64,
    /// ut_metadata rejects sent (requests for a block that does not exist).
    pub rejects_sent: AtomicU64,
    /// Undecodable extension handshakes and ut_metadata messages received.
    pub malformed: AtomicU64,
    /// PORT messages received (BEP 5).
    pub ports_received: AtomicU64,
}

/// A snapshot of [`ServeStats`]; each field is the counter of the same name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeCounts {
    /// See [`ServeStats::accepted`].
    pub accepted: u64,
    /// See [`ServeStats::refused_not_allowed`].
    pub refused_not_allowed: u64,
    /// See [`ServeStats::refused_full`].
    pub refused_full: u64,
    /// See [`ServeStats::unknown_info_hash`].
    pub unknown_info_hash: u64,
    /// See [`ServeStats::handshakes`].
    pub handshakes: u64,
    /// See [`ServeStats::data_sent`].
    pub data_sent: u64,
    /// See [`ServeStats::rejects_sent`].
    pub rejects_sent: u64,
    /// See [`ServeStats::malformed`].
    pub malformed: u64,
    /// See [`ServeStats::ports_received`].
    pub ports_received: u64,
}

impl ServeStats {
    /// The current values of every counter.
    pub fn snapshot(&self) -> ServeCounts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServeCounts {
            accepted: g(&self.accepted),
            refused_not_allowed: g(&self.refused_not_allowed),
            refused_full: g(&self.refused_full),
            unknown_info_hash: g(&self.unknown_info_hash),
            handshakes: g(&self.handshakes),
            data_sent: g(&self.data_sent),
            rejects_sent: g(&self.rejects_sent),
            malformed: g(&self.malformed),
            ports_received: g(&self.ports_received),
        }
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// What a connection handler needs; shared by all connections of a listener.
#[derive(Debug)]
pub struct ServeContext {
    /// The dicts served and the torrents that take their own connections.
    pub registry: Arc<MetadataRegistry>,
    /// The listener's settings.
    pub config: ServeConfig,
    /// The listener's counters.
    pub stats: ServeStats,
    /// The port we listen on, advertised as `p`.
    pub listen_port: Option<u16>,
}

/// A running listener. Dropping it stops accepting and closes its connections.
pub struct MetadataServer {
    local_addrs: Vec<SocketAddr>,
    ctx: Arc<ServeContext>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    transports: Transports,
}

/// One address's sockets: the TCP listener and, with uTP, the UDP socket on the same port.
type Bound = (TcpListener, Option<Arc<librqbit_utp::UtpSocketUdp>>);

impl MetadataServer {
    /// Binds `addr` and serves on the current tokio runtime.
    pub async fn bind(
        addr: SocketAddr,
        registry: Arc<MetadataRegistry>,
        config: ServeConfig,
    ) -> io::Result<MetadataServer> {
        Self::bind_all(&[addr], registry, config).await
    }

    /// Binds every address of `addrs` (typically one per family) and serves them all from
    /// one registry and one pool of connection slots. All share one port number: a DHT
    /// announce carries a port but no address, so a peer of either family must find us on
    /// the same one. An address given with port 0 takes the first address's port (itself
    /// kernel-chosen when 0). `[::]` is bound dual-stack, so it also serves IPv4; a
    /// `0.0.0.0` given beside it is therefore dropped (the two could not share the port).
    /// Accepted IPv4-mapped addresses are reported as IPv4, so the allow-list and PEX see
    /// the peer's real address.
    pub async fn bind_all(
        addrs: &[SocketAddr],
        registry: Arc<MetadataRegistry>,
        config: ServeConfig,
    ) -> io::Result<MetadataServer> {
        let dual_stack = addrs.iter().any(|a| a.is_ipv6() && a.ip().is_unspecified());
        let addrs: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| !(dual_stack && a.is_ipv4() && a.ip().is_unspecified()))
            .collect();
        let Some(&first) = addrs.first() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no address to listen on",
            ));
        };
        // uTP needs the same port number over UDP, and the other addresses need it too.
        // With a kernel-chosen port (0) that port may be taken on another socket (e.g. by
        // our own DHT socket), so pick another port then.
        let mut tries = if first.port() == 0 { 8 } else { 1 };
        let bound = loop {
            tries -= 1;
            match Self::bind_each(&addrs, config.utp).await {
                Ok(b) => break b,
                Err(e) if tries == 0 => return Err(e),
                Err(e) => tracing::debug!("cannot bind every listener address ({e}); new port"),
            }
        };
        let local_addrs: Vec<SocketAddr> = bound
            .iter()
            .map(|(l, _)| l.local_addr())
            .collect::<io::Result<_>>()?;
        let ctx = Arc::new(ServeContext {
            registry,
            config,
            stats: ServeStats::default(),
            listen_port: Some(local_addrs[0].port()),
        });
        let slots = Arc::new(Semaphore::new(ctx.config.max_connections.max(1)));
        let mut transports = Transports {
            tcp: ctx.config.tcp,
            ..Transports::default()
        };
        let mut tasks = Vec::new();
        for (listener, utp) in bound {
            if let Some(sock) = utp {
                tasks.push(tokio::spawn(utp_accept_loop(
                    sock.clone(),
                    ctx.clone(),
                    slots.clone(),
                )));
                transports.utp.push(sock);
            }
            tasks.push(tokio::spawn(accept_loop(
                listener,
                ctx.clone(),
                slots.clone(),
            )));
        }
        Ok(MetadataServer {
            local_addrs,
            ctx,
            tasks,
            transports,
        })
    }

    /// One try of [`MetadataServer::bind_all`]: every address on the first one's port.
    async fn bind_each(addrs: &[SocketAddr], utp: bool) -> io::Result<Vec<Bound>> {
        let mut port = addrs[0].port();
        let mut bound = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            let addr = if addr.port() == 0 {
                SocketAddr::new(addr.ip(), port)
            } else {
                addr
            };
            let listener = tcp_listener(addr)?;
            let local = listener.local_addr()?;
            port = local.port();
            let sock = if utp {
                Some(
                    librqbit_utp::UtpSocketUdp::new_udp(local)
                        .await
                        .map_err(|e| {
                            io::Error::other(format!("cannot bind uTP on udp {local}: {e}"))
                        })?,
                )
            } else {
                None
            };
            bound.push((listener, sock));
        }
        Ok(bound)
    }

    /// The transports outgoing connections of this client should use: the uTP socket
    /// shares the listener's port, so peers see one identity whichever way we connect.
    pub fn transports(&self) -> Transports {
        self.transports.clone()
    }

    /// The first address the listener is bound to (its port as chosen by the kernel for
    /// port 0); every other address has the same port.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addrs[0]
    }

    /// Every address the listener is bound to, in the order given.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// A snapshot of the listener's counters.
    pub fn stats(&self) -> ServeCounts {
        self.ctx.stats.snapshot()
    }

    /// The registry this listener serves from.
    pub fn registry(&self) -> &Arc<MetadataRegistry> {
        &self.ctx.registry
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A TCP listener on `addr`; `[::]` explicitly dual-stack (whatever the host's
/// `bindv6only`), as librqbit-utp makes its UDP socket, so both transports of a listener
/// reach the same peers.
fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let SocketAddr::V6(a) = addr {
        socket.set_only_v6(!a.ip().is_unspecified())?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

async fn accept_loop(listener: TcpListener, ctx: Arc<ServeContext>, slots: Arc<Semaphore>) {
    // Owned here so that aborting the accept loop also aborts every connection.
    let mut conns = JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
            Ok((s, peer)) => (s, SocketAddr::new(peer.ip().to_canonical(), peer.port())),
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::debug!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if !ctx.config.tcp {
            while conns.try_join_next().is_some() {}
            bump(&ctx.stats.accepted);
            tracing::debug!(%peer, "tcp connection refused: tcp is disabled");
            continue;
        }
        let _ = stream.set_nodelay(true);
        admit(
            &mut conns,
            &ctx,
            &slots,
            stream.into(),
            peer,
            TransportKind::Tcp,
        );
    }
}

/// One accepted connection, whichever transport: counts it, applies the allow-list and the
/// shared connection slots, and serves it on a task of `conns`.
fn admit(
    conns: &mut JoinSet<()>,
    ctx: &Arc<ServeContext>,
    slots: &Arc<Semaphore>,
    stream: PeerStream,
    peer: SocketAddr,
    kind: TransportKind,
) {
    while conns.try_join_next().is_some() {}
    bump(&ctx.stats.accepted);
    if check_peer_allowed(peer, &ctx.config.allow).is_err() {
        bump(&ctx.stats.refused_not_allowed);
        return;
    }
    let Ok(permit) = slots.clone().try_acquire_owned() else {
        bump(&ctx.stats.refused_full);
        return;
    };
    let ctx = ctx.clone();
    conns.spawn(async move {
        let _permit = permit;
        note_accepted(kind, peer);
        if let Err(e) = serve_connection(stream, peer, &ctx).await {
            tracing::trace!(%peer, ?kind, "metadata connection ended: {e}");
        }
    });
}

/// Accepts uTP connections on the listener's port; same limits as TCP (shared slots).
async fn utp_accept_loop(
    sock: Arc<librqbit_utp::UtpSocketUdp>,
    ctx: Arc<ServeContext>,
    slots: Arc<Semaphore>,
) {
    let mut conns = JoinSet::new();
    loop {
        let stream = match sock.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("utp accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let peer = stream.remote_addr();
        admit(
            &mut conns,
            &ctx,
            &slots,
            stream.into(),
            peer,
            TransportKind::Utp,
        );
    }
}

/// Serves one accepted connection until the peer leaves, idles past the read timeout, or
/// breaks the protocol. The caller has already applied the allow-list.
pub async fn serve_connection(
    mut stream: PeerStream,
    peer: SocketAddr,
    ctx: &ServeContext,
) -> Result<(), WireError> {
    let mut info = None;
    let mut handoff = None;
    crate::wire::accept_incoming(&mut stream, &ctx.config.wire, || ctx.registry.info_hashes())
        .await?;
    let theirs = handshake_incoming(&mut stream, ctx.config.wire.handshake_timeout, |hs| {
        handoff = ctx.registry.handoff(&hs.info_hash);
        info = ctx.registry.get(&hs.info_hash);
        if info.is_none() && handoff.is_none() {
            bump(&ctx.stats.unknown_info_hash);
            return None;
        }
        // BEP 6 only where pieces are traded: a session takes the connection over.
        let ours = Handshake::new(hs.info_hash, ctx.config.peer_id);
        Some(if handoff.is_some() {
            ours
        } else {
            ours.without_fast()
        })
    })
    .await?;
    bump(&ctx.stats.handshakes);
    if let Some(h) = handoff {
        h.hand_off(stream, peer, theirs);
        return Ok(());
    }
    let Some(info) = info else {
        return Err(WireError::UnknownInfoHash(theirs.info_hash));
    };
    let PeerConn { mut reader, writer } = PeerConn::from_peer_stream(stream, &ctx.config.wire);
    let mut conn = ServeConn {
        writer,
        info,
        peer,
        peer_ext: ExtHandshake::default(),
        ctx,
    };
    if theirs.supports_extensions() {
        let mut ours = ExtHandshake::ours(ctx.listen_port, Some(conn.info.len() as u64));
        ours.yourip = Some(peer.ip());
        conn.writer.queue(&ours.to_message());
    }
    if theirs.supports_dht()
        && let Some(port) = ctx.config.dht_port
    {
        conn.writer.queue(&Message::Port(port));
    }
    conn.writer.flush().await?;
    loop {
        let msg = reader.recv().await?;
        conn.on_message(msg);
        // Answer in batches: keep decoding while whole messages are buffered, but never let
        // queued answers grow past a few blocks before writing them out.
        let more_ready = reader.decoder().missing() == 0 && reader.decoder().buffered() > 0;
        if !more_ready || conn.writer.pending() >= 4 * METADATA_BLOCK {
            conn.writer.flush().await?;
        }
    }
}

/// One served connection after the handshake.
pub struct ServeConn<'a, W> {
    writer: PeerWriter<W>,
    info: Bytes,
    peer: SocketAddr,
    peer_ext: ExtHandshake,
    ctx: &'a ServeContext,
}

impl<W: AsyncWrite + Unpin> ServeConn<'_, W> {
    /// Reacts to one message by queueing answers (the caller flushes).
    pub fn on_message(&mut self, msg: Message) {
        match msg {
            Message::Extended {
                id: EXT_HANDSHAKE_ID,
                payload,
            } => match ExtHandshake::decode(&payload) {
                Ok(hs) => self.peer_ext.update(hs),
                Err(_) => bump(&self.ctx.stats.malformed),
            },
            Message::Extended {
                id: OUR_UT_METADATA_ID,
                payload,
            } => self.on_metadata(&payload),
            Message::Port(port) => self.on_port(port),
            // Piece transfer (interested, request, ...) is not served yet; like every message
            // we do not act on, it is ignored rather than treated as an error.
            _ => {}
        }
    }

    fn on_metadata(&mut self, payload: &[u8]) {
        match answer_metadata(&mut self.writer, &self.peer_ext, &self.info, payload) {
            MetadataAnswer::Data => bump(&self.ctx.stats.data_sent),
            MetadataAnswer::Reject => bump(&self.ctx.stats.rejects_sent),
            MetadataAnswer::Malformed => bump(&self.ctx.stats.malformed),
            MetadataAnswer::Ignored => {}
        }
    }

    fn on_port(&mut self, port: u16) {
        bump(&self.ctx.stats.ports_received);
        if let (Some(dht), true) = (&self.ctx.config.dht, port != 0) {
            // At the peer's IP: an IPv6 peer's PORT names its IPv6 DHT node (BEP 32).
            let ip = self.peer.ip().to_canonical();
            let _ = dht.add_contacts([SocketAddr::new(ip, port)]);
        }
    }
}

/// What [`answer_metadata`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataAnswer {
    /// Queued the requested block.
    Data,
    /// Queued a reject (no such block).
    Reject,
    /// Nothing to answer: data or reject sent to us, or the peer gave no ut_metadata id.
    Ignored,
    /// The payload is not a ut_metadata message.
    Malformed,
}

/// Answers a ut_metadata message (the payload of an extended message sent to
/// [`OUR_UT_METADATA_ID`]) from the info dict `info`, queueing the reply on `writer`. Shared
/// by this listener and the download sessions' peer connections.
pub fn answer_metadata(
    writer: &mut impl FrameSink,
    peer_ext: &ExtHandshake,
    info: &[u8],
    payload: &[u8],
) -> MetadataAnswer {
    let Ok(msg) = MetadataMsg::decode(payload) else {
        return MetadataAnswer::Malformed;
    };
    let MetadataMsg::Request { piece } = msg else {
        // Data or reject sent to a seeder: nothing to do.
        return MetadataAnswer::Ignored;
    };
    // Without the peer's id for ut_metadata we cannot address an answer.
    let Some(id) = peer_ext.ext_id(UT_METADATA) else {
        return MetadataAnswer::Ignored;
    };
    let total_size = info.len() as u64;
    match metadata_block_len(piece, total_size) {
        Some(len) => {
            let start = piece as usize * METADATA_BLOCK;
            let data = &info[start..start + len];
            let msg = MetadataMsg::Data {
                piece,
                total_size,
                data,
            };
            writer.queue_extended_with(id, |out| msg.encode_into(out));
            MetadataAnswer::Data
        }
        None => {
            let msg = MetadataMsg::Reject { piece };
            writer.queue_extended_with(id, |out| msg.encode_into(out));
            MetadataAnswer::Reject
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `0.0.0.0` and `[::]` asked together bind one dual-stack listener (the two could not
    /// share a port), which IPv4 peers reach; two specific addresses share one port.
    #[tokio::test]
    async fn wildcards_together_bind_one_dual_stack_listener() {
        let addrs = ["0.0.0.0:0".parse().unwrap(), "[::]:0".parse().unwrap()];
        let config = || ServeConfig {
            utp: true,
            ..ServeConfig::default()
        };
        let s = MetadataServer::bind_all(&addrs, Arc::new(MetadataRegistry::new()), config())
            .await
            .unwrap();
        assert_eq!(s.local_addrs().len(), 1, "{:?}", s.local_addrs());
        let a = s.local_addr();
        assert!(a.is_ipv6() && a.ip().is_unspecified());
        tokio::net::TcpStream::connect(("127.0.0.1", a.port()))
            .await
            .expect("an IPv4 peer reaches the dual-stack listener");

        let specific = ["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()];
        let s = MetadataServer::bind_all(&specific, Arc::new(MetadataRegistry::new()), config())
            .await
            .unwrap();
        let [v4, v6] = s.local_addrs() else {
            panic!("{:?}", s.local_addrs())
        };
        assert_eq!(v4.port(), v6.port(), "one port for both families");
        assert_eq!(s.transports().utp.len(), 2);
    }
}
