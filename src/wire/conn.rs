//! The tokio side of the peer wire: allow-listed connect, handshakes, and a connection that
//! splits into an independently owned reader and writer.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::enc_policy::{ENCRYPTION_REQUIRED_MSG, EncryptionPolicy};
use super::handshake::{HANDSHAKE_LEN, Handshake, HandshakeError};
use super::message::{DEFAULT_MAX_FRAME, FrameDecoder, FrameError, Message};
use super::mse_io::MseIoError;
use super::ut_metadata::MetadataMsg;
use crate::dht::allow::AllowList;
use crate::torrent::InfoHash;

/// Timeouts and limits of one peer connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireConfig {
    /// Largest frame accepted from the peer; see [`DEFAULT_MAX_FRAME`].
    pub max_frame: u32,
    /// TCP connect timeout. Most dead DHT-announced peers never answer the SYN, so this
    /// bounds how long a connection slot is wasted on them.
    pub connect_timeout: Duration,
    /// Time allowed for the whole 68-byte handshake exchange.
    pub handshake_timeout: Duration,
    /// Time [`PeerReader::recv`] waits for a complete message. Peers send a keep-alive at
    /// least every 2 minutes, so silence well beyond that means the peer is gone.
    pub read_timeout: Duration,
    /// Time a flush may take. A peer that stops reading must not stall our writer forever.
    pub write_timeout: Duration,
    /// Plain or MSE/PE handshakes, both directions (`--encryption`).
    pub encryption: EncryptionPolicy,
}

impl Default for WireConfig {
    fn default() -> Self {
        WireConfig {
            max_frame: DEFAULT_MAX_FRAME,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(150),
            write_timeout: Duration::from_secs(60),
            encryption: EncryptionPolicy::Default,
        }
    }
}

impl WireConfig {
    /// The defaults with these four timeouts, in seconds (connect, handshake, read,
    /// write): each user has its own patience (a metadata fetch gives up on a silent peer
    /// sooner than a download does).
    pub fn with_timeout_secs(connect: u64, handshake: u64, read: u64, write: u64) -> Self {
        WireConfig {
            connect_timeout: Duration::from_secs(connect),
            handshake_timeout: Duration::from_secs(handshake),
            read_timeout: Duration::from_secs(read),
            write_timeout: Duration::from_secs(write),
            ..WireConfig::default()
        }
    }
}

/// What was being waited for when a timeout fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The TCP connect ([`WireConfig::connect_timeout`]).
    Connect,
    /// The BitTorrent handshake exchange, or the sniffing of an incoming one that decides
    /// between plain and MSE/PE ([`WireConfig::handshake_timeout`]).
    Handshake,
    /// A complete message from the peer ([`WireConfig::read_timeout`]).
    Read,
    /// A flush of queued messages ([`WireConfig::write_timeout`]).
    Write,
}

/// Why a peer connection failed. Every variant means the connection is (to be) closed.
#[derive(Debug)]
pub enum WireError {
    /// The peer address is outside the allow-list; for an outgoing connection, no socket
    /// was created.
    Refused(SocketAddr),
    /// A deadline passed.
    Timeout(Phase),
    /// The socket failed.
    Io(io::Error),
    /// The peer's first 20 bytes were not a BitTorrent handshake.
    Handshake(HandshakeError),
    /// We connected for one torrent and the peer answered for another.
    InfoHashMismatch {
        /// The info hash the connection is for (ours when connecting, the peer's when
        /// accepting).
        expected: InfoHash,
        /// The other handshake's info hash (the peer's when connecting, our reply's when
        /// accepting).
        got: InfoHash,
    },
    /// An incoming peer asked for a torrent we do not serve.
    UnknownInfoHash(InfoHash),
    /// The peer broke framing (oversized or mis-sized message).
    Frame(FrameError),
    /// The peer closed the connection cleanly (between messages).
    Closed,
    /// The peer closed the connection in the middle of a message or handshake.
    ClosedMidFrame,
    /// The MSE/PE handshake failed.
    Encryption(MseIoError),
    /// `--encryption require`, and the peer did not speak MSE/PE.
    EncryptionRequired,
    /// An incoming handshake of a kind the policy refuses (plain under `require`, MSE
    /// under `disable`).
    RefusedByPolicy(EncryptionPolicy),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Refused(addr) => {
                write!(
                    f,
                    "refusing to connect to {addr}: not in the outbound allow-list"
                )
            }
            WireError::Timeout(phase) => write!(f, "peer {phase:?} timed out"),
            WireError::Io(e) => write!(f, "peer connection I/O error: {e}"),
            WireError::Handshake(e) => write!(f, "bad peer handshake: {e}"),
            WireError::InfoHashMismatch { expected, got } => {
                write!(f, "peer answered for info hash {got} instead of {expected}",)
            }
            WireError::UnknownInfoHash(h) => {
                write!(f, "incoming peer wants unknown info hash {h}")
            }
            WireError::Frame(e) => write!(f, "peer protocol error: {e}"),
            WireError::Closed => write!(f, "peer closed the connection"),
            WireError::ClosedMidFrame => write!(f, "peer closed the connection mid-message"),
            WireError::Encryption(e) => write!(f, "MSE/PE handshake failed: {e}"),
            WireError::EncryptionRequired => f.write_str(ENCRYPTION_REQUIRED_MSG),
            WireError::RefusedByPolicy(p) => write!(
                f,
                "refused an incoming {} handshake (--encryption {})",
                if *p == EncryptionPolicy::Require {
                    "plain"
                } else {
                    "encrypted"
                },
                clap::ValueEnum::to_possible_value(p)
                    .map(|v| v.get_name().to_string())
                    .unwrap_or_default()
            ),
        }
    }
}

impl std::error::Error for WireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WireError::Io(e) => Some(e),
            WireError::Handshake(e) => Some(e),
            WireError::Frame(e) => Some(e),
            WireError::Encryption(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            WireError::ClosedMidFrame
        } else {
            WireError::Io(e)
        }
    }
}

impl From<FrameError> for WireError {
    fn from(e: FrameError) -> Self {
        WireError::Frame(e)
    }
}

impl From<HandshakeError> for WireError {
    fn from(e: HandshakeError) -> Self {
        WireError::Handshake(e)
    }
}

/// Process-wide count of connects refused by the allow-list, so an operator (or a test) can
/// see that the guard is doing work rather than trusting silence.
static REFUSED_CONNECTS: AtomicU64 = AtomicU64::new(0);

/// How many peer connections the allow-list has refused in this process.
pub fn refused_connects() -> u64 {
    REFUSED_CONNECTS.load(Ordering::Relaxed)
}

/// The allow-list gate for peer connections: `Err(Refused)` (counted in
/// [`refused_connects`]) unless `allow` permits `addr`.
///
/// [`connect`] calls it before creating a socket; accept loops should call it with the
/// remote address of each inbound connection before answering its handshake, so that a
/// restricted process never sends peer-wire bytes outside its allowed networks either way.
pub fn check_peer_allowed(addr: SocketAddr, allow: &AllowList) -> Result<(), WireError> {
    if allow.allows(addr) {
        return Ok(());
    }
    REFUSED_CONNECTS.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%addr, "peer connection refused by the allow-list");
    Err(WireError::Refused(addr))
}

/// Opens a TCP connection to a peer, but only if `allow` permits `addr`.
///
/// This is the only way the crate opens peer connections: peer addresses come from DHT
/// responses and PEX, i.e. from strangers, and the allow-list check has to come before any
/// socket exists so a refused address never sees even a SYN.
pub async fn connect(
    addr: SocketAddr,
    allow: &AllowList,
    connect_timeout: Duration,
) -> Result<TcpStream, WireError> {
    check_peer_allowed(addr, allow)?;
    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| WireError::Timeout(Phase::Connect))??;
    // Requests and haves are tiny and latency-bound; Nagle would hold them back.
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Like [`connect`], but from `local` (port 0 = any) when given: a client that listens on
/// one address of a multi-homed host (or one loopback address of many, in tests) connects
/// out from it too, so peers see one identity and can ban or reconnect to it.
pub async fn connect_from(
    addr: SocketAddr,
    local: Option<std::net::IpAddr>,
    allow: &AllowList,
    connect_timeout: Duration,
) -> Result<TcpStream, WireError> {
    let Some(ip) = local.filter(|ip| !ip.is_unspecified() && ip.is_ipv4() == addr.is_ipv4()) else {
        return connect(addr, allow, connect_timeout).await;
    };
    check_peer_allowed(addr, allow)?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(ip, 0))?;
    let stream = tokio::time::timeout(connect_timeout, socket.connect(addr))
        .await
        .map_err(|_| WireError::Timeout(Phase::Connect))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Reads a 68-byte handshake, rejecting non-BitTorrent streams after 20 bytes instead of
/// waiting (until the timeout) for 48 more that may never come.
async fn read_handshake<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Handshake, WireError> {
    let mut buf = [0u8; HANDSHAKE_LEN];
    stream
        .read_exact(&mut buf[..20])
        .await
        .map_err(eof_is_closed)?;
    if let Err(HandshakeError::BadProtocol) = Handshake::decode(&buf[..20]) {
        return Err(WireError::Handshake(HandshakeError::BadProtocol));
    }
    stream
        .read_exact(&mut buf[20..])
        .await
        .map_err(eof_is_closed)?;
    Ok(Handshake::decode(&buf)?)
}

/// A peer hanging up during the handshake is a refusal, not a broken message.
fn eof_is_closed(e: io::Error) -> WireError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        WireError::Closed
    } else {
        WireError::Io(e)
    }
}

/// The initiating side: sends `ours`, reads the peer's handshake and checks it is for
/// `ours.info_hash`. Returns the peer's handshake (its reserved bits and peer id).
pub async fn handshake_outgoing<S>(
    stream: &mut S,
    ours: &Handshake,
    timeout: Duration,
) -> Result<Handshake, WireError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        stream.write_all(&ours.encode()).await?;
        let theirs = read_handshake(stream).await?;
        if theirs.info_hash != ours.info_hash {
            return Err(WireError::InfoHashMismatch {
                expected: ours.info_hash,
                got: theirs.info_hash,
            });
        }
        Ok(theirs)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| WireError::Timeout(Phase::Handshake))?
}

/// The accepting side: reads the peer's handshake first (only it tells us which torrent the
/// peer wants), asks `respond` for our reply, and sends it.
///
/// `respond` returns our handshake for the peer's info hash, or `None` for a torrent we do not
/// serve, in which case nothing is sent and [`WireError::UnknownInfoHash`] is returned. Our
/// reply must carry the peer's info hash ([`WireError::InfoHashMismatch`] otherwise).
pub async fn handshake_incoming<S, F>(
    stream: &mut S,
    timeout: Duration,
    respond: F,
) -> Result<Handshake, WireError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Handshake) -> Option<Handshake>,
{
    let exchange = async {
        let theirs = read_handshake(stream).await?;
        let ours = respond(&theirs).ok_or(WireError::UnknownInfoHash(theirs.info_hash))?;
        if ours.info_hash != theirs.info_hash {
            return Err(WireError::InfoHashMismatch {
                expected: theirs.info_hash,
                got: ours.info_hash,
            });
        }
        stream.write_all(&ours.encode()).await?;
        Ok(theirs)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| WireError::Timeout(Phase::Handshake))?
}

/// Read spare capacity kept available so that runs of small messages arrive in one syscall.
const READ_CHUNK: usize = 8 * 1024;

/// Extra spare capacity while a large frame (a `piece`) is incomplete: a peer streaming
/// blocks then hands over several per `recv` instead of one, and the buffer is allocated once
/// per few blocks rather than once per block (blocks are split off and sent to the disk, so
/// every refill allocates). Only connections mid-transfer pay for it.
const BULK_CHUNK: usize = 64 * 1024;

/// The receiving half of a peer connection; owns the frame decoder and its buffer.
#[derive(Debug)]
pub struct PeerReader<R> {
    io: R,
    decoder: FrameDecoder,
    read_timeout: Duration,
}

impl<R: AsyncRead + Unpin> PeerReader<R> {
    /// Wraps the read half of a handshaken stream, with `config`'s frame limit and read
    /// timeout.
    pub fn new(io: R, config: &WireConfig) -> Self {
        PeerReader {
            io,
            decoder: FrameDecoder::new(config.max_frame),
            read_timeout: config.read_timeout,
        }
    }

    /// The next message, waiting at most the read timeout for it to arrive completely.
    ///
    /// Cancel-safe: bytes read before the future is dropped stay in the decoder, so `recv`
    /// can sit in a `select!` next to a keep-alive timer or a command channel.
    pub async fn recv(&mut self) -> Result<Message, WireError> {
        tokio::time::timeout(self.read_timeout, self.recv_untimed())
            .await
            .map_err(|_| WireError::Timeout(Phase::Read))?
    }

    /// Like [`Self::recv`] but without a deadline; the caller supplies its own.
    pub async fn recv_untimed(&mut self) -> Result<Message, WireError> {
        loop {
            if let Some(msg) = self.decoder.decode()? {
                return Ok(msg);
            }
            // `missing` is bounded by the frame limit (an oversized prefix already failed in
            // `decode`), so this never reserves what a hostile length asks for.
            let missing = self.decoder.missing();
            let want = if missing > READ_CHUNK {
                missing + BULK_CHUNK
            } else {
                READ_CHUNK
            };
            let buf = self.decoder.buf_mut();
            buf.reserve(want);
            if self.io.read_buf(buf).await? == 0 {
                return Err(if self.decoder.buffered() == 0 {
                    WireError::Closed
                } else {
                    WireError::ClosedMidFrame
                });
            }
        }
    }

    /// Changes the read timeout (e.g. a short one while waiting for the extension handshake).
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.read_timeout = timeout;
    }

    /// The decoder, for inspecting buffer use.
    pub fn decoder(&self) -> &FrameDecoder {
        &self.decoder
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &R {
        &self.io
    }
}

/// The sending half of a peer connection; owns a reusable encode buffer.
///
/// Messages are queued into the buffer and written by [`Self::flush`], so a batch of
/// requests goes out in one write, and steady-state sending allocates nothing.
#[derive(Debug)]
pub struct PeerWriter<W> {
    io: W,
    buf: Vec<u8>,
    /// How much of `buf` is already written, so a cancelled flush resumes where it stopped
    /// instead of re-sending (or dropping) half a frame.
    written: usize,
    write_timeout: Duration,
}

impl<W: AsyncWrite + Unpin> PeerWriter<W> {
    /// Wraps the write half of a handshaken stream, with `config`'s write timeout.
    pub fn new(io: W, config: &WireConfig) -> Self {
        PeerWriter {
            io,
            buf: Vec::new(),
            written: 0,
            write_timeout: config.write_timeout,
        }
    }

    /// Appends a message to the outgoing buffer.
    pub fn queue(&mut self, msg: &Message) {
        msg.encode(&mut self.buf);
    }

    /// Appends an extended message whose payload `fill` writes straight into the buffer,
    /// so extension handshakes and ut_metadata messages need no intermediate vector.
    ///
    /// `ext_id` is the id the *peer* advertised for the extension (0 for the handshake).
    pub fn queue_extended_with(&mut self, ext_id: u8, fill: impl FnOnce(&mut Vec<u8>)) {
        super::message::encode_extended_with(&mut self.buf, ext_id, fill);
    }

    /// Appends a ut_metadata message, addressed with the peer's ut_metadata id.
    pub fn queue_metadata(&mut self, peer_ut_metadata_id: u8, msg: &MetadataMsg<'_>) {
        self.queue_extended_with(peer_ut_metadata_id, |out| msg.encode_into(out));
    }

    /// Appends bytes that already hold whole frames (a sans-IO connection's output). When
    /// nothing is queued the vector becomes the buffer, so a batch of blocks is not copied
    /// a second time on its way to the socket.
    pub fn queue_owned(&mut self, frames: Vec<u8>) {
        if self.written == self.buf.len() {
            self.buf = frames;
            self.written = 0;
        } else {
            self.buf.extend_from_slice(&frames);
        }
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.written
    }

    /// Writes everything queued, within the write timeout.
    ///
    /// Cancel-safe: if the future is dropped, what was not written stays queued.
    pub async fn flush(&mut self) -> Result<(), WireError> {
        tokio::time::timeout(self.write_timeout, self.flush_untimed())
            .await
            .map_err(|_| WireError::Timeout(Phase::Write))?
    }

    async fn flush_untimed(&mut self) -> Result<(), WireError> {
        while self.written < self.buf.len() {
            let n = self.io.write(&self.buf[self.written..]).await?;
            if n == 0 {
                return Err(WireError::Io(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        self.io.flush().await?;
        Ok(())
    }

    /// Queues and flushes one message.
    pub async fn send(&mut self, msg: &Message) -> Result<(), WireError> {
        self.queue(msg);
        self.flush().await
    }

    /// Sends a keep-alive. Scheduling them (every ~2 minutes of send silence) is the
    /// caller's job, as only it knows when it last sent something.
    pub async fn send_keepalive(&mut self) -> Result<(), WireError> {
        self.send(&Message::KeepAlive).await
    }

    /// Flushes and shuts down the write direction, so the peer sees a clean close.
    pub async fn shutdown(&mut self) -> Result<(), WireError> {
        self.flush().await?;
        self.io.shutdown().await?;
        Ok(())
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &W {
        &self.io
    }
}

impl<W: AsyncWrite + Unpin> super::message::FrameSink for PeerWriter<W> {
    fn queue(&mut self, msg: &Message) {
        PeerWriter::queue(self, msg);
    }

    fn queue_extended_with(&mut self, ext_id: u8, fill: impl FnOnce(&mut Vec<u8>)) {
        PeerWriter::queue_extended_with(self, ext_id, fill);
    }
}

/// A handshaken peer connection: a reader and a writer that can be split apart.
#[derive(Debug)]
pub struct PeerConn<R, W> {
    /// Receives and decodes the peer's messages.
    pub reader: PeerReader<R>,
    /// Queues and flushes our messages to the peer.
    pub writer: PeerWriter<W>,
}

impl PeerConn<OwnedReadHalf, OwnedWriteHalf> {
    /// Wraps a TCP stream (after the handshake). TCP halves are split without a lock.
    pub fn from_tcp(stream: TcpStream, config: &WireConfig) -> Self {
        let (r, w) = stream.into_split();
        PeerConn {
            reader: PeerReader::new(r, config),
            writer: PeerWriter::new(w, config),
        }
    }
}

impl PeerConn<super::PeerReadHalf, super::PeerWriteHalf> {
    /// Wraps a TCP or uTP stream (after the handshake), split without a lock.
    pub fn from_peer_stream(stream: super::PeerStream, config: &WireConfig) -> Self {
        let (r, w) = stream.into_split();
        PeerConn {
            reader: PeerReader::new(r, config),
            writer: PeerWriter::new(w, config),
        }
    }
}

impl<S: AsyncRead + AsyncWrite> PeerConn<ReadHalf<S>, WriteHalf<S>> {
    /// Wraps any stream (in-memory duplex pipes in tests, TLS, ...) after the handshake.
    pub fn from_stream(stream: S, config: &WireConfig) -> Self {
        let (r, w) = tokio::io::split(stream);
        PeerConn {
            reader: PeerReader::new(r, config),
            writer: PeerWriter::new(w, config),
        }
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> PeerConn<R, W> {
    /// See [`PeerReader::recv`].
    pub async fn recv(&mut self) -> Result<Message, WireError> {
        self.reader.recv().await
    }

    /// See [`PeerWriter::send`].
    pub async fn send(&mut self, msg: &Message) -> Result<(), WireError> {
        self.writer.send(msg).await
    }

    /// See [`PeerWriter::send_keepalive`].
    pub async fn send_keepalive(&mut self) -> Result<(), WireError> {
        self.writer.send_keepalive().await
    }

    /// Separates the halves so a reader task and a writer task can run concurrently.
    pub fn into_split(self) -> (PeerReader<R>, PeerWriter<W>) {
        (self.reader, self.writer)
    }
}
