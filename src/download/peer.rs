//! One peer connection of a session, after the BitTorrent handshake: the message loop for
//! both directions of piece transfer, plus BEP 9 metadata serving, BEP 5 PORT and BEP 11
//! peer exchange (received addresses go to the session's candidates; ours go out at most
//! once a minute, see [`crate::wire::pex::PexSender`]).
//!
//! Downloading: our interest follows exactly whether the peer has a piece we lack; while it
//! unchokes us, a pipeline of block requests is kept full, sized from the rate the peer
//! delivers at (about two seconds' worth, at least a few blocks, at most its `reqq` and
//! [`SessionConfig::max_pipeline`](super::session::SessionConfig::max_pipeline)). Until
//! the first rate measurement (one second), the pipeline grows by one block per block
//! received, doubling every round trip like TCP's slow start, so a fast peer is not held
//! to the initial depth for a whole second. Arrived
//! blocks go to the picker and the disk threads under the session lock, which keeps a
//! piece's writes ordered before its hash check.
//!
//! Uploading: requests (up to 128 KiB; larger ones are refused) are honoured only while we
//! unchoke the peer, queued up to our advertised `reqq`, read by the disk threads a few at
//! a time, and sent as the socket drains; `cancel` removes a queued request and choking
//! drops them all. The optional session-wide rate limit paces the reads.
//!
//! One task does both directions with `select!` over the socket's read side, its write
//! side (flushing never stops us from reading, so two peers writing to each other cannot
//! deadlock), session commands, disk read completions and a one-second tick.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::wire::{PeerStream, PeerWriteHalf};
use bytes::Bytes;
use tokio::sync::mpsc;

use super::bitfield::Bitfield;
use super::picker::{BLOCK, BlockRef, BlockResult, PeerKey};
use super::session::{PeerStats, Shared, release_all, v4};
use super::storage::ReadDone;
use crate::metadata::answer_metadata;
use crate::wire::pex::{self, PexEvent, PexMsg, PexRate, PexSender, UT_PEX};
use crate::wire::{
    EXT_HANDSHAKE_ID, ExtHandshake, Handshake, Message, OUR_UT_METADATA_ID, OUR_UT_PEX_ID,
    PeerConn, PeerWriter, WireError,
};

/// Largest request we serve; BEP 3 clients ask for 16 KiB, some allow up to 128 KiB.
pub const MAX_REQUEST: u32 = 128 * 1024;
/// Requests from one peer we queue; advertised as our `reqq`. Further ones are dropped.
pub const MAX_QUEUED_REQUESTS: usize = 500;
/// Disk reads in flight for one peer.
const MAX_READS: usize = 8;
/// Bytes queued on the socket before we stop reading more blocks for it.
const WRITE_HIGH_WATER: usize = 512 * 1024;
/// Initial pipeline, before the peer's rate is known (it then grows by slow start).
const INITIAL_PIPELINE: usize = 32;
/// Smallest pipeline.
const MIN_PIPELINE: usize = 4;
/// The pipeline holds about this much time's worth of blocks at the peer's rate.
const PIPELINE_TIME: f64 = 2.0;
/// Blocks nobody asked for (and not recently cancelled) before the peer is dropped.
const MAX_UNREQUESTED: u32 = 64;
/// Cancelled requests remembered, so their late answers are not held against the peer.
const CANCEL_MEMORY: usize = 1024;
/// Keep-alive after this much send silence (peers drop connections idle for 2 minutes).
const KEEPALIVE: Duration = Duration::from_secs(90);
/// A peer that accepts no bytes for this long while we have data queued is gone.
const WRITE_STALL: Duration = Duration::from_secs(60);

/// What the session tells a connection.
#[derive(Debug)]
pub(super) enum PeerCmd {
    /// We verified this piece: send `have`, update interest.
    Have(u32),
    Choke,
    Unchoke,
    /// Another peer delivered this block first (endgame): cancel our request.
    Cancel(BlockRef),
    /// The picker took this block back because we were too slow: cancel it.
    Reclaimed(BlockRef),
    /// We have every piece now: drop the connection if the peer has too.
    Complete,
    /// Disconnect (the peer is banned, or the session ends).
    Close,
}

/// Why a connection ended with an error.
#[derive(Debug)]
pub(super) enum PeerError {
    Wire(WireError),
    Protocol(String),
    /// We hang up on purpose, with nothing wrong (e.g. two seeds).
    Done(&'static str),
}

/// Who ended a peer connection, for the one debug line logged per connection: the next
/// interop stall should be diagnosable from our side alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EndedBy {
    /// We closed it (on purpose, or because the peer broke a rule or went silent).
    Us,
    /// The peer closed it (EOF) or reset it.
    Peer,
    /// The socket failed some other way.
    Error,
}

impl fmt::Display for EndedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndedBy::Us => "we closed",
            EndedBy::Peer => "peer closed",
            EndedBy::Error => "error",
        })
    }
}

/// Sorts a connection's outcome into who ended it and why (`Ok` carries our reason for a
/// deliberate close).
pub(super) fn end_reason(r: &Result<&'static str, PeerError>) -> (EndedBy, String) {
    use std::io::ErrorKind as K;
    match r {
        Ok(reason) | Err(PeerError::Done(reason)) => (EndedBy::Us, (*reason).to_owned()),
        Err(e @ PeerError::Protocol(_)) => (EndedBy::Us, e.to_string()),
        Err(PeerError::Wire(w)) => match w {
            WireError::Closed => (EndedBy::Peer, "EOF".into()),
            WireError::ClosedMidFrame => (EndedBy::Peer, "EOF in the middle of a message".into()),
            WireError::Io(e)
                if matches!(
                    e.kind(),
                    K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe
                ) =>
            {
                (EndedBy::Peer, format!("reset ({e})"))
            }
            WireError::Timeout(crate::wire::Phase::Write) => (
                EndedBy::Us,
                format!("the peer stopped reading for {}s", WRITE_STALL.as_secs()),
            ),
            WireError::Timeout(phase) => (EndedBy::Us, format!("timeout while {phase:?}")),
            WireError::Frame(e) => (EndedBy::Us, format!("protocol violation: {e}")),
            other => (EndedBy::Error, other.to_string()),
        },
    }
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerError::Wire(e) => write!(f, "{e}"),
            PeerError::Protocol(e) => write!(f, "protocol violation: {e}"),
            PeerError::Done(why) => f.write_str(why),
        }
    }
}

impl From<WireError> for PeerError {
    fn from(e: WireError) -> Self {
        PeerError::Wire(e)
    }
}

struct Conn {
    shared: Arc<Shared>,
    key: PeerKey,
    addr: SocketAddr,
    stats: Arc<PeerStats>,
    writer: PeerWriter<PeerWriteHalf>,
    /// The peer's pieces, and whether (and how) the picker counts it: `Some(seed?)`.
    bits: Bitfield,
    registered: Option<bool>,
    /// Pieces the peer has that we lack.
    wanted: usize,
    am_choking: bool,
    am_interested: bool,
    peer_choking: bool,
    peer_interested: bool,
    /// Our requests to the peer, oldest first.
    outstanding: VecDeque<BlockRef>,
    /// Recently cancelled requests (their answers may still arrive).
    cancelled: VecDeque<BlockRef>,
    unrequested: u32,
    /// The peer's requests waiting to be read, and reads in flight.
    uploads: VecDeque<BlockRef>,
    reads: Vec<BlockRef>,
    read_tx: mpsc::UnboundedSender<ReadDone>,
    rate_wait: Option<tokio::time::Instant>,
    peer_ext: ExtHandshake,
    /// Bytes of blocks received this second, and the smoothed rate.
    window_bytes: u64,
    down_rate: f64,
    /// The pipeline depth while `down_rate` is still unmeasured (slow start).
    slow_start: usize,
    last_send: Instant,
    stall: (usize, Instant),
    pick_buf: Vec<BlockRef>,
    /// Both handshakes set the BEP 6 bit: every request gets a piece or a reject, and the
    /// Fast messages are valid. Without it a Fast message is a protocol violation.
    fast: bool,
    /// The pieces we let this peer fetch while we choke it (BEP 6 allowed-fast set).
    allowed_out: Vec<u32>,
    /// The pieces the peer lets us fetch while it chokes us (bounded by the torrent size).
    allowed_in: Vec<u32>,
    /// BEP 11 is on for this torrent (config, and never for a private one).
    pex_on: bool,
    /// Spacing of the peer's PEX messages to us.
    pex_in: PexRate,
    /// What we tell the peer, once its extension handshake advertised `ut_pex`.
    pex_out: Option<PexSender>,
}

/// Runs the connection until it ends, then returns its requests and availability to the
/// session. `stats` and the session's entry for `key` were registered by the caller.
/// `Ok` carries our reason for closing a healthy connection.
pub(super) async fn run(
    shared: Arc<Shared>,
    key: PeerKey,
    addr: SocketAddr,
    stream: PeerStream,
    theirs: Handshake,
    stats: Arc<PeerStats>,
    mut cmds: mpsc::UnboundedReceiver<PeerCmd>,
) -> Result<&'static str, PeerError> {
    let PeerConn { mut reader, writer } = PeerConn::from_peer_stream(stream, &shared.cfg.wire);
    let n = shared.info.num_pieces();
    let (read_tx, mut read_rx) = mpsc::unbounded_channel();
    let now = Instant::now();
    let mut conn = Conn {
        shared: shared.clone(),
        key,
        addr,
        stats,
        writer,
        bits: Bitfield::new(n),
        registered: None,
        wanted: 0,
        am_choking: true,
        am_interested: false,
        peer_choking: true,
        peer_interested: false,
        outstanding: VecDeque::new(),
        cancelled: VecDeque::new(),
        unrequested: 0,
        uploads: VecDeque::new(),
        reads: Vec::new(),
        read_tx,
        rate_wait: None,
        peer_ext: ExtHandshake::default(),
        window_bytes: 0,
        down_rate: 0.0,
        slow_start: INITIAL_PIPELINE,
        last_send: now,
        stall: (0, now),
        pick_buf: Vec::new(),
        // Every piece-trading connection sends `Handshake::new`, which claims BEP 6 (the
        // session's dials, and the listener's reply when it hands a connection over).
        fast: theirs.supports_fast(),
        allowed_out: Vec::new(),
        allowed_in: Vec::new(),
        pex_on: shared.cfg.pex && !shared.info.private,
        pex_in: PexRate::default(),
        pex_out: None,
    };
    conn.greet(&theirs);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result: Result<&'static str, PeerError> = async {
        loop {
            let wait = conn.rate_wait;
            tokio::select! {
                msg = reader.recv() => conn.on_message(msg?)?,
                r = conn.writer.flush(), if conn.writer.pending() > 0 => r?,
                cmd = cmds.recv() => match cmd {
                    None => return Ok("the session ended"),
                    Some(PeerCmd::Close) => {
                        return Ok("the session closed it (peer banned, or stopping)")
                    }
                    Some(c) => if !conn.on_cmd(c) {
                        return Ok("both sides complete: nothing to trade")
                    },
                },
                Some(done) = read_rx.recv() => conn.on_read(done)?,
                _ = tick.tick() => conn.on_tick()?,
                _ = tokio::time::sleep_until(wait.unwrap_or_else(tokio::time::Instant::now)), if wait.is_some() => {
                    conn.rate_wait = None;
                }
            }
            conn.maybe_request();
            conn.maybe_read();
        }
    }
    .await;
    conn.leave();
    result
}

impl Conn {
    /// Our opening messages: bitfield (nothing when we have no piece; with BEP 6, have_all
    /// or have_none where they fit, then our allowed-fast set), extension handshake, DHT
    /// port.
    fn greet(&mut self, theirs: &Handshake) {
        let cfg = &self.shared.cfg;
        {
            let st = self.shared.lock();
            let have = st.picker.have();
            if self.fast && have.is_full() {
                self.writer.queue(&Message::HaveAll);
            } else if self.fast && have.count() == 0 {
                self.writer.queue(&Message::HaveNone);
            } else if have.count() > 0 {
                self.writer
                    .queue(&Message::Bitfield(Bytes::copy_from_slice(have.as_bytes())));
            }
        }
        if self.fast
            && let Some(a) = v4(self.addr)
        {
            self.allowed_out = crate::wire::fast::allowed_fast_set(
                *a.ip(),
                &self.shared.info_hash,
                self.bits.len() as u32,
                crate::wire::fast::ALLOWED_FAST_COUNT,
            );
            for i in 0..self.allowed_out.len() {
                let piece = self.allowed_out[i];
                self.writer.queue(&Message::AllowedFast { piece });
            }
        }
        if theirs.supports_extensions() {
            let mut ours =
                ExtHandshake::ours(cfg.listen_port, Some(self.shared.info_bytes.len() as u64));
            ours.yourip = Some(self.addr.ip());
            ours.reqq = Some(MAX_QUEUED_REQUESTS as u32);
            if self.pex_on {
                ours.m.insert(UT_PEX.to_owned(), OUR_UT_PEX_ID);
            }
            self.writer.queue(&ours.to_message());
        }
        if theirs.supports_dht()
            && let Some(port) = cfg.dht_port
        {
            self.writer.queue(&Message::Port(port));
        }
    }

    /// The peer announced `pieces` (a `have`, or the new bits of a late bitfield): record
    /// them and keep the picker's availability counts in step, under one lock.
    fn add_pieces(&mut self, pieces: &[u32]) {
        let mut changed = false;
        let mut st = self.shared.lock();
        for &piece in pieces {
            if !self.bits.set(piece as usize) {
                continue;
            }
            changed = true;
            if self.registered.is_none() {
                self.registered = Some(false);
                let mut only = Bitfield::new(self.bits.len());
                only.set(piece as usize);
                st.picker.add_peer(&only);
            } else if self.registered == Some(false) {
                st.picker.peer_has(piece);
            }
            if !st.picker.have().get(piece as usize) {
                self.wanted += 1;
            }
        }
        drop(st);
        if changed {
            self.stats
                .seed
                .store(self.bits.is_full(), Ordering::Relaxed);
            self.update_interest();
        }
    }

    fn on_message(&mut self, msg: Message) -> Result<(), PeerError> {
        match msg {
            Message::KeepAlive => {}
            Message::Choke => {
                self.peer_choking = true;
                // BEP 3: a choke discards our pending requests. BEP 6: not with Fast; the
                // peer answers each one with the piece (allowed-fast pieces) or a reject,
                // and a request it never answers is caught by the stall check like any.
                if !self.fast {
                    let dropped: Vec<BlockRef> = self.outstanding.drain(..).collect();
                    if !dropped.is_empty() {
                        self.shared.lock().picker.release(self.key, &dropped);
                    }
                }
            }
            Message::Unchoke => self.peer_choking = false,
            Message::Interested => {
                self.peer_interested = true;
                self.stats.interested.store(true, Ordering::Relaxed);
                let unchoke = self.am_choking && self.shared.lock().choker.on_interested(self.key);
                if unchoke {
                    self.am_choking = false;
                    self.send(&Message::Unchoke);
                }
            }
            Message::NotInterested => {
                self.peer_interested = false;
                self.stats.interested.store(false, Ordering::Relaxed);
            }
            Message::Have { piece } => {
                if piece as usize >= self.bits.len() {
                    return Err(PeerError::Protocol(format!("have for piece {piece}")));
                }
                self.add_pieces(&[piece]);
            }
            Message::SuggestPiece { .. }
            | Message::HaveAll
            | Message::HaveNone
            | Message::RejectRequest { .. }
            | Message::AllowedFast { .. }
                if !self.fast =>
            {
                return Err(PeerError::Protocol(format!(
                    "fast-extension message {:?} without both handshakes setting the fast bit",
                    msg.id()
                )));
            }
            Message::SuggestPiece { piece } => {
                // A hint only; our picker keeps its own order. Still checked, like `have`.
                if piece as usize >= self.bits.len() {
                    return Err(PeerError::Protocol(format!("suggest for piece {piece}")));
                }
            }
            Message::HaveAll => {
                let mut all = Bitfield::new(self.bits.len());
                for i in 0..self.bits.len() {
                    all.set(i);
                }
                return self.on_bitfield(all);
            }
            Message::HaveNone => {
                if self.registered.is_none() {
                    let none = Bitfield::new(self.bits.len());
                    return self.on_bitfield(none);
                }
            }
            Message::RejectRequest {
                index,
                begin,
                length,
            } => {
                // The block goes straight back to the picker for another peer (or a later
                // request), with no timeout to wait out. A reject for something we did not
                // ask for (or already cancelled) is harmless and ignored.
                let r = BlockRef {
                    piece: index,
                    begin,
                    length,
                };
                if let Some(i) = self.outstanding.iter().position(|x| *x == r) {
                    self.outstanding.remove(i);
                    self.shared.lock().picker.release(self.key, &[r]);
                }
            }
            Message::AllowedFast { piece } => {
                if (piece as usize) < self.bits.len()
                    && !self.allowed_in.contains(&piece)
                    && self.allowed_in.len()
                        < self.bits.len().min(crate::wire::fast::MAX_ALLOWED_IN)
                {
                    self.allowed_in.push(piece);
                }
            }
            Message::Bitfield(raw) => {
                let bits = Bitfield::from_bytes(&raw, self.bits.len())
                    .map_err(|e| PeerError::Protocol(e.to_string()))?;
                return self.on_bitfield(bits);
            }
            Message::Request {
                index,
                begin,
                length,
            } => self.on_request(BlockRef {
                piece: index,
                begin,
                length,
            }),
            Message::Piece {
                index,
                begin,
                block,
            } => self.on_piece(index, begin, block)?,
            Message::Cancel {
                index,
                begin,
                length,
            } => {
                let r = BlockRef {
                    piece: index,
                    begin,
                    length,
                };
                self.uploads.retain(|x| *x != r);
            }
            Message::Port(port) => {
                if let (Some(dht), Some(a), true) = (&self.shared.cfg.dht, v4(self.addr), port != 0)
                {
                    let _ = dht.add_contacts(vec![std::net::SocketAddrV4::new(*a.ip(), port)]);
                }
            }
            Message::Extended {
                id: EXT_HANDSHAKE_ID,
                payload,
            } => {
                if let Ok(hs) = ExtHandshake::decode(&payload) {
                    self.peer_ext.update(hs);
                    self.on_ext_handshake();
                }
            }
            Message::Extended {
                id: OUR_UT_METADATA_ID,
                payload,
            } => {
                answer_metadata(
                    &mut self.writer,
                    &self.peer_ext,
                    &self.shared.info_bytes,
                    &payload,
                );
            }
            Message::Extended {
                id: OUR_UT_PEX_ID,
                payload,
            } if self.pex_on => self.on_pex(&payload),
            // Extensions we did not advertise, unknown ids: ignored rather than fatal.
            Message::Extended { .. } | Message::Unknown { .. } => {}
        }
        Ok(())
    }

    /// After the peer's extension handshake: an incoming peer's listen address becomes
    /// known (its IP and `p`), so others may hear of it by PEX; and if the peer speaks
    /// `ut_pex` (and we do), our messages to it start.
    fn on_ext_handshake(&mut self) {
        let mut listen = None;
        {
            let mut st = self.shared.lock();
            if let Some(e) = st.peers.get_mut(&self.key) {
                if e.listen.is_none()
                    && let (Some(a), Some(p)) = (v4(self.addr), self.peer_ext.p)
                {
                    e.listen = Some(std::net::SocketAddrV4::new(*a.ip(), p));
                }
                listen = e.listen;
            }
        }
        if self.pex_on && self.pex_out.is_none() && self.peer_ext.ext_id(UT_PEX).is_some() {
            // Never echoing the peer to itself: its listen address is how others know it.
            if let Some(to) = listen.or_else(|| v4(self.addr)) {
                self.pex_out = Some(PexSender::new(to, Instant::now()));
            }
        }
    }

    /// BEP 11 message from the peer: its `added` peers go to the session's candidates.
    /// One more than about a minute after the last is ignored (counted), so is a malformed
    /// one; neither ends the connection.
    fn on_pex(&mut self, payload: &[u8]) {
        if !self.pex_in.accept(Instant::now()) {
            pex::note(PexEvent::IgnoredFlood);
            tracing::debug!(peer = %self.addr, "ignoring ut_pex: too soon after the last");
            return;
        }
        let msg = match PexMsg::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                pex::note(PexEvent::Malformed);
                tracing::debug!(peer = %self.addr, "ignoring ut_pex: {e}");
                return;
            }
        };
        pex::note(PexEvent::In);
        tracing::debug!(
            peer = %self.addr,
            added = msg.added.len(),
            dropped = msg.dropped.len(),
            "ut_pex received"
        );
        let mut st = self.shared.lock();
        let room = super::session::MAX_PEX_INBOX.saturating_sub(st.pex_inbox.len());
        let addr = self.addr;
        st.pex_inbox.extend(
            msg.added
                .iter()
                .map(|(a, _)| SocketAddr::V4(*a))
                .filter(|a| *a != addr)
                .take(room),
        );
    }

    /// Our PEX message to the peer when one is due: the connected peers whose listen
    /// address we know, with their flags, as a change since the last message.
    fn maybe_send_pex(&mut self, now: Instant) {
        let Some(sender) = &mut self.pex_out else {
            return;
        };
        // The peer may have switched ut_pex off with a later handshake (id 0).
        let Some(id) = self.peer_ext.ext_id(UT_PEX) else {
            return;
        };
        if !sender.due(now) {
            return;
        }
        let connected: Vec<(std::net::SocketAddrV4, u8)> = {
            let st = self.shared.lock();
            st.peers
                .iter()
                .filter(|(k, _)| **k != self.key)
                .filter_map(|(_, e)| {
                    let seed = if e.stats.seed.load(Ordering::Relaxed) {
                        pex::flags::SEED
                    } else {
                        0
                    };
                    e.listen.map(|a| (a, e.pex_flags | seed))
                })
                .collect()
        };
        if let Some(msg) = sender.poll(now, &connected) {
            let mut payload = Vec::with_capacity(32 + 7 * msg.added.len());
            msg.encode_into(&mut payload);
            tracing::debug!(
                peer = %self.addr,
                added = msg.added.len(),
                dropped = msg.dropped.len(),
                "ut_pex sent"
            );
            self.send(&Message::Extended {
                id,
                payload: Bytes::from(payload),
            });
            pex::note(PexEvent::Out);
        }
    }

    /// A full picture of the peer's pieces (bitfield, or BEP 6 have_all / have_none).
    fn on_bitfield(&mut self, bits: Bitfield) -> Result<(), PeerError> {
        if self.registered.is_some() {
            // A bitfield after `have`s, or a second one: aria2 sends a fresh full
            // bitfield instead of many `have`s when that is shorter. BEP 3 only
            // allows it first, but dropping such peers costs real clients their
            // downloads; read it as a batch of `have`s (pieces are never lost, so
            // bits it clears are ignored).
            let new: Vec<u32> = bits
                .ones()
                .filter(|&i| !self.bits.get(i))
                .map(|i| i as u32)
                .collect();
            self.add_pieces(&new);
            return Ok(());
        }
        let mut st = self.shared.lock();
        self.registered = Some(st.picker.add_peer(&bits));
        self.wanted = st.picker.count_wanted(&bits);
        let both_complete = bits.is_full() && st.picker.is_complete();
        drop(st);
        self.bits = bits;
        self.stats
            .seed
            .store(self.bits.is_full(), Ordering::Relaxed);
        if both_complete {
            // Two seeds have nothing to trade.
            return Err(PeerError::Done("both sides are seeds: nothing to trade"));
        }
        self.update_interest();
        Ok(())
    }

    fn on_request(&mut self, r: BlockRef) {
        // BEP 3: requests while choked are dropped; so are oversized or out-of-range ones
        // and those for pieces we do not have. With BEP 6 each of them is answered with a
        // reject instead, and pieces of the peer's allowed-fast set are served while choked.
        let served_while_choked = self.fast && self.allowed_out.contains(&r.piece);
        let acceptable = (!self.am_choking || served_while_choked)
            && r.length != 0
            && r.length <= MAX_REQUEST
            && self.uploads.len() < MAX_QUEUED_REQUESTS
            && {
                let st = self.shared.lock();
                st.picker.have().get(r.piece as usize)
                    && u64::from(r.begin) + u64::from(r.length)
                        <= u64::from(st.picker.piece_size(r.piece))
            };
        if acceptable {
            if !self.uploads.contains(&r) {
                self.uploads.push_back(r);
            }
        } else {
            self.reject(r);
        }
    }

    /// BEP 6: tells the peer we will not serve `r` (nothing without the extension, where
    /// dropping silently is the rule).
    fn reject(&mut self, r: BlockRef) {
        if self.fast {
            self.send(&Message::RejectRequest {
                index: r.piece,
                begin: r.begin,
                length: r.length,
            });
        }
    }

    fn on_piece(&mut self, piece: u32, begin: u32, block: Bytes) -> Result<(), PeerError> {
        let len = block.len() as u32;
        let r = BlockRef {
            piece,
            begin,
            length: len,
        };
        // Answers come in request order, so this is nearly always the front.
        match self.outstanding.iter().position(|x| *x == r) {
            Some(i) => {
                self.outstanding.remove(i);
            }
            None => {
                if let Some(i) = self.cancelled.iter().position(|x| *x == r) {
                    self.cancelled.remove(i);
                } else {
                    self.unrequested += 1;
                    if self.unrequested > MAX_UNREQUESTED {
                        return Err(PeerError::Protocol("sends blocks nobody asked for".into()));
                    }
                    self.shared
                        .wasted
                        .fetch_add(u64::from(len), Ordering::Relaxed);
                    return Ok(());
                }
            }
        }
        let now = Instant::now();
        let mut st = self.shared.lock();
        match st.picker.on_block(self.key, piece, begin, len, now) {
            BlockResult::Accepted { complete, cancel } => {
                // Under the lock, so this piece's writes are queued before its check.
                self.shared.storage.write(piece, begin, block);
                if complete {
                    let crcs = st.suspects.contains_key(&piece);
                    self.shared.storage.verify(piece, crcs);
                }
                for k in cancel {
                    if let Some(p) = st.peers.get(&k) {
                        let _ = p.cmd.send(PeerCmd::Cancel(r));
                    }
                }
                drop(st);
                self.shared
                    .downloaded
                    .fetch_add(u64::from(len), Ordering::Relaxed);
                self.stats.down.fetch_add(u64::from(len), Ordering::Relaxed);
                self.stats
                    .last_block_ms
                    .store(self.shared.now_ms().max(1), Ordering::Relaxed);
                self.window_bytes += u64::from(len);
                if self.down_rate == 0.0 {
                    self.slow_start += 1;
                }
            }
            BlockResult::Duplicate | BlockResult::NotWanted => {
                drop(st);
                self.shared
                    .wasted
                    .fetch_add(u64::from(len), Ordering::Relaxed);
            }
            BlockResult::Invalid => {
                return Err(PeerError::Protocol(format!(
                    "block {piece}:{begin}+{len} does not fit the torrent"
                )));
            }
        }
        Ok(())
    }

    /// Handles a session command; `false` ends the connection.
    fn on_cmd(&mut self, cmd: PeerCmd) -> bool {
        match cmd {
            PeerCmd::Have(piece) => {
                self.send(&Message::Have { piece });
                if self.bits.get(piece as usize) {
                    self.wanted = self.wanted.saturating_sub(1);
                    self.update_interest();
                }
            }
            PeerCmd::Choke => {
                if !self.am_choking {
                    self.am_choking = true;
                    // Choking discards the peer's queued requests (BEP 3), and the reads
                    // in flight too: forgetting them makes their answers drop in
                    // `on_read`, even if we unchoke again before they arrive.
                    self.send(&Message::Choke);
                    if self.fast {
                        // BEP 6: choking no longer discards requests silently; each one
                        // not in the allowed-fast set gets a reject.
                        let keep = std::mem::take(&mut self.allowed_out);
                        let (mut dropped, mut kept) = (Vec::new(), VecDeque::new());
                        for r in self.uploads.drain(..).chain(self.reads.drain(..)) {
                            if keep.contains(&r.piece) {
                                kept.push_back(r);
                            } else {
                                dropped.push(r);
                            }
                        }
                        self.allowed_out = keep;
                        // Kept reads re-enter the upload queue; their completions in
                        // flight are dropped in `on_read` (forgotten), then re-read.
                        self.uploads = kept;
                        for r in dropped {
                            self.reject(r);
                        }
                    }
                    if !self.fast {
                        self.uploads.clear();
                        self.reads.clear();
                    }
                }
            }
            PeerCmd::Unchoke => {
                if self.am_choking {
                    self.am_choking = false;
                    self.send(&Message::Unchoke);
                }
            }
            PeerCmd::Cancel(r) | PeerCmd::Reclaimed(r) => {
                if let Some(i) = self.outstanding.iter().position(|x| *x == r) {
                    self.outstanding.remove(i);
                    self.send(&Message::Cancel {
                        index: r.piece,
                        begin: r.begin,
                        length: r.length,
                    });
                    if self.cancelled.len() >= CANCEL_MEMORY {
                        self.cancelled.pop_front();
                    }
                    self.cancelled.push_back(r);
                }
            }
            PeerCmd::Complete => {
                if self.bits.is_full() {
                    return false;
                }
            }
            PeerCmd::Close => return false,
        }
        true
    }

    fn on_read(&mut self, done: ReadDone) -> Result<(), PeerError> {
        let Some(i) = self
            .reads
            .iter()
            .position(|r| r.piece == done.piece && r.begin == done.begin)
        else {
            return Ok(());
        };
        self.reads.swap_remove(i);
        if self.am_choking && !(self.fast && self.allowed_out.contains(&done.piece)) {
            return Ok(());
        }
        match done.data {
            Ok(block) => {
                let len = block.len() as u64;
                self.send(&Message::Piece {
                    index: done.piece,
                    begin: done.begin,
                    block,
                });
                self.shared.uploaded.fetch_add(len, Ordering::Relaxed);
                self.stats.up.fetch_add(len, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!("cannot read a block to upload: {e}"),
        }
        Ok(())
    }

    fn on_tick(&mut self) -> Result<(), PeerError> {
        let now = Instant::now();
        self.down_rate = 0.6 * self.down_rate + 0.4 * self.window_bytes as f64;
        self.window_bytes = 0;
        let pending = self.writer.pending();
        if pending == 0 || pending < self.stall.0 {
            self.stall = (pending, now);
        } else if now.saturating_duration_since(self.stall.1) > WRITE_STALL {
            return Err(PeerError::Wire(WireError::Timeout(
                crate::wire::Phase::Write,
            )));
        }
        if now.saturating_duration_since(self.last_send) >= KEEPALIVE && pending == 0 {
            self.send(&Message::KeepAlive);
        }
        self.maybe_send_pex(now);
        Ok(())
    }

    fn send(&mut self, msg: &Message) {
        self.writer.queue(msg);
        self.last_send = Instant::now();
    }

    fn update_interest(&mut self) {
        let want = self.wanted > 0;
        if want != self.am_interested {
            self.am_interested = want;
            self.send(if want {
                &Message::Interested
            } else {
                &Message::NotInterested
            });
        }
    }

    /// The pipeline depth for this peer now.
    fn pipeline_target(&self) -> usize {
        pipeline_depth(
            self.down_rate,
            self.slow_start,
            self.shared.cfg.max_pipeline,
            self.peer_ext.reqq,
        )
    }

    fn maybe_request(&mut self) {
        if !self.am_interested || self.registered.is_none() {
            return;
        }
        // Choked: only with Fast and an allowed-fast set (checked again below).
        if self.peer_choking && (!self.fast || self.allowed_in.is_empty()) {
            return;
        }
        let target = self.pipeline_target();
        let have = self.outstanding.len();
        if have >= target {
            return;
        }
        // Refill in batches rather than one lock per block.
        let room = target - have;
        if have > 0 && room < (target / 4).max(1) {
            return;
        }
        if self.shared.storage.backlog() > self.shared.cfg.max_disk_backlog {
            return;
        }
        // BEP 6: while the peer chokes us, only the pieces of its allowed-fast set that it
        // has may be requested. Built only when there is room to fill, so a full pipeline
        // costs no allocation per message.
        let allowed_only = if self.peer_choking {
            let mut only = Bitfield::new(self.bits.len());
            for &p in &self.allowed_in {
                if self.bits.get(p as usize) {
                    only.set(p as usize);
                }
            }
            if only.count() == 0 {
                return;
            }
            Some(only)
        } else {
            None
        };
        let now = Instant::now();
        // A restricted set is not a seed's, whatever the peer has.
        let (bits, seed) = match &allowed_only {
            Some(only) => (only, false),
            None => (&self.bits, self.registered.unwrap_or(false)),
        };
        let mut buf = std::mem::take(&mut self.pick_buf);
        buf.clear();
        self.shared
            .lock()
            .picker
            .pick(self.key, bits, seed, room, now, &mut buf);
        for r in &buf {
            self.writer.queue(&Message::Request {
                index: r.piece,
                begin: r.begin,
                length: r.length,
            });
            self.outstanding.push_back(*r);
        }
        if !buf.is_empty() {
            self.last_send = now;
        }
        self.pick_buf = buf;
    }

    fn maybe_read(&mut self) {
        if (self.am_choking && !self.fast) || self.rate_wait.is_some() {
            return;
        }
        while self.reads.len() < MAX_READS
            && self.writer.pending() + self.reads.len() * (BLOCK as usize) < WRITE_HIGH_WATER
        {
            let Some(&r) = self.uploads.front() else {
                return;
            };
            if let Some(limit) = &self.shared.upload_limit {
                let now = Instant::now();
                let taken = limit
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take_or_wait(f64::from(r.length), now);
                if let Err(wait) = taken {
                    self.rate_wait = Some(tokio::time::Instant::now() + wait);
                    return;
                }
            }
            self.uploads.pop_front();
            self.reads.push(r);
            self.shared
                .storage
                .read(r.piece, r.begin, r.length, self.read_tx.clone());
        }
    }

    /// Returns our requests and the peer's availability to the picker, frees its slot.
    fn leave(&mut self) {
        let outstanding: Vec<BlockRef> = self.outstanding.drain(..).collect();
        let mut st = self.shared.lock();
        release_all(&mut st, self.key, &self.bits, self.registered, &outstanding);
    }
}

/// Requests to keep in flight to a peer that delivers `down_rate` bytes per second (0 while
/// unmeasured: then the slow-start depth), at most our `max_pipeline` and the peer's `reqq`.
fn pipeline_depth(
    down_rate: f64,
    slow_start: usize,
    max_pipeline: usize,
    reqq: Option<u32>,
) -> usize {
    let cap = max_pipeline
        .min(reqq.map_or(usize::MAX, |q| q as usize))
        .max(1);
    let by_rate = if down_rate > 0.0 {
        (down_rate * PIPELINE_TIME / f64::from(BLOCK)) as usize + MIN_PIPELINE
    } else {
        slow_start
    };
    by_rate.max(MIN_PIPELINE).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_end_says_who_closed_and_why() {
        use std::io::{Error, ErrorKind};
        let cases: Vec<(Result<&'static str, PeerError>, EndedBy, &str)> = vec![
            (
                Ok("both sides complete: nothing to trade"),
                EndedBy::Us,
                "both sides complete",
            ),
            (
                Err(PeerError::Done("both sides are seeds")),
                EndedBy::Us,
                "seeds",
            ),
            (
                Err(PeerError::Protocol("have for piece 9".into())),
                EndedBy::Us,
                "protocol violation: have for piece 9",
            ),
            (
                Err(PeerError::Wire(WireError::Closed)),
                EndedBy::Peer,
                "EOF",
            ),
            (
                Err(PeerError::Wire(WireError::ClosedMidFrame)),
                EndedBy::Peer,
                "EOF in the middle",
            ),
            (
                Err(PeerError::Wire(WireError::Io(Error::from(
                    ErrorKind::ConnectionReset,
                )))),
                EndedBy::Peer,
                "reset",
            ),
            (
                Err(PeerError::Wire(WireError::Timeout(
                    crate::wire::Phase::Write,
                ))),
                EndedBy::Us,
                "stopped reading",
            ),
            (
                Err(PeerError::Wire(WireError::Timeout(
                    crate::wire::Phase::Read,
                ))),
                EndedBy::Us,
                "timeout while Read",
            ),
            (
                Err(PeerError::Wire(WireError::Io(Error::other("disk on fire")))),
                EndedBy::Error,
                "disk on fire",
            ),
        ];
        for (r, by, needle) in cases {
            let (got_by, reason) = end_reason(&r);
            assert_eq!(got_by, by, "{r:?}");
            assert!(reason.contains(needle), "{reason:?} lacks {needle:?}");
        }
        assert_eq!(EndedBy::Peer.to_string(), "peer closed");
    }

    #[test]
    fn pipeline_follows_rate_and_reqq() {
        // Unmeasured: the slow-start depth, which grows with every block received.
        assert_eq!(pipeline_depth(0.0, INITIAL_PIPELINE, 512, None), 32);
        assert_eq!(pipeline_depth(0.0, 300, 512, None), 300);
        // About two seconds' worth at the measured rate, plus a few blocks.
        assert_eq!(pipeline_depth(1024.0 * 1024.0, 32, 512, None), 132);
        assert_eq!(pipeline_depth(16384.0, 32, 512, None), 6);
        // A trickle still gets the minimum.
        assert_eq!(pipeline_depth(1.0, 32, 512, None), MIN_PIPELINE);
        // Capped by our limit and by the peer's advertised queue.
        assert_eq!(pipeline_depth(100e6, 32, 512, None), 512);
        assert_eq!(pipeline_depth(100e6, 32, 512, Some(250)), 250);
        assert_eq!(pipeline_depth(0.0, 300, 512, Some(50)), 50);
        assert_eq!(pipeline_depth(100e6, 32, 512, Some(0)), 1);
    }
}
