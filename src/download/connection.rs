//! One peer connection's protocol rules (BEP 3, BEP 6, BEP 9 serving, BEP 10, BEP 11), as a
//! sans-IO state machine in the quinn-proto style: messages and the time go in; frames to
//! send, requests for the picker and events come out. It owns no socket, no timer and no
//! shared state, so every rule below is a unit test (`tests` at the end of this file) and
//! the tokio side (`download::peer`) is a thin driver that only moves bytes.
//!
//! The session owns the picker, the choker and the storage, and runs every connection's
//! machine on its own task: after each input it drains [`PeerConnection::poll_event`],
//! asks the picker for what [`PeerConnection::wants_blocks`] says, starts the disk reads
//! [`PeerConnection::next_upload`] offers, and hands [`PeerConnection::take_transmit`]'s
//! bytes to the driver. Nothing is shared behind a lock.
//!
//! # Rules this machine owns, each with the unit test that checks it
//!
//! Opening and extensions:
//! - The greeting: `have_all` / `have_none` with BEP 6 where they fit, otherwise a
//!   `bitfield` (nothing when we have no piece); then, with BEP 6, our allowed-fast set for
//!   the peer's IPv4 address; the BEP 10 handshake (`p`, `metadata_size`, `yourip`, `reqq`
//!   = [`MAX_QUEUED_REQUESTS`], `ut_pex` unless PEX is off) when the peer's handshake set
//!   the extension bit; a `port` message when it set the DHT bit and we run a node —
//!   `greeting_is_bitfield_then_extension_handshake_then_port`,
//!   `fast_greeting_uses_have_all_or_have_none_and_sends_the_allowed_fast_set`.
//! - BEP 10 handshakes are cumulative ([`ExtHandshake::update`]); an incoming peer's `p`
//!   makes its listen address known ([`PeerEvent::ListenAddr`], either family), once; an
//!   outgoing peer listens where we dialed it —
//!   `extension_handshakes_accumulate_and_make_an_incoming_peers_listen_address_known_once`.
//!   Ours carries our IPv6 listen address as `ipv6`; a peer met over IPv4 whose handshake
//!   names its `ipv6` (and `p`) yields that address as a candidate, once
//!   ([`PeerEvent::OtherAddr`]) — `the_bep10_ipv6_address_goes_both_ways`.
//! - `ut_metadata` requests are answered from the info dict (BEP 9), rejects for pieces
//!   that do not exist —
//!   `metadata_requests_are_answered_from_the_info_dict_and_missing_pieces_rejected`.
//! - `ut_pex` (BEP 11, never for private torrents): a received message more often than
//!   about once a minute or malformed is ignored, not fatal; its `added` and `added6` peers
//!   (not the peer itself) become [`PeerEvent::Pex`] —
//!   `received_pex_yields_candidates_but_floods_and_junk_are_ignored_without_closing`.
//!   Ours go out when [`PeerConnection::pex_due`] (a moment after the handshake, then at
//!   most once a minute, not after the peer switched `ut_pex` off), never naming the peer
//!   to itself — `our_pex_goes_out_when_due_and_never_names_the_peer_to_itself`.
//! - `port` (BEP 5) from an IPv4 peer with a non-zero port is a DHT node to ping —
//!   `port_messages_name_dht_nodes_unless_the_port_is_zero`.
//! - Unknown messages and extensions we did not advertise are ignored —
//!   `unknown_messages_and_unadvertised_extensions_are_ignored`.
//!
//! Downloading:
//! - Interest is exact: we are interested exactly while the peer has a piece we lack
//!   (bitfield, `have`, `have_all`, and our own completed pieces all update it) —
//!   `interest_follows_exactly_whether_the_peer_has_a_piece_we_lack`.
//! - A `have` or `suggest` beyond the last piece, or a bitfield of the wrong length, is a
//!   protocol violation — `out_of_range_pieces_and_wrong_bitfields_are_protocol_violations`.
//!   A bitfield after the first picture (aria2 sends them instead of many `have`s) is read
//!   as a batch of `have`s; bits it clears are ignored —
//!   `a_later_bitfield_is_read_as_haves_and_never_clears_pieces`.
//! - Two seeds have nothing to trade: the connection ends when both are complete —
//!   `two_seeds_part_at_once`.
//! - Requests go out only while interested and unchoked —
//!   `requests_go_out_only_while_interested_and_unchoked` — or with BEP 6 while choked for
//!   the pieces of the peer's allowed-fast set that it has —
//!   `while_choked_with_fast_only_allowed_fast_pieces_the_peer_has_are_requested`. The
//!   pipeline is sized from the peer's delivery rate (about two seconds' worth, at least
//!   [`MIN_PIPELINE`], at most our `max_pipeline` and the peer's `reqq`); until the first
//!   rate measurement it grows by one block per block received (slow start). It is refilled
//!   in batches of a quarter — `the_pipeline_is_refilled_in_batches_and_grows_by_slow_start`,
//!   `pipeline_follows_rate_and_reqq`, `the_peers_reqq_caps_the_pipeline`.
//! - A choke without BEP 6 gives every outstanding request back to the picker; with BEP 6
//!   the peer answers each (piece or reject), and a reject gives that block back —
//!   `a_choke_gives_requests_back_without_fast_and_a_reject_gives_back_its_block`.
//! - A block we asked for (or cancelled recently) goes to the picker; a block nobody asked
//!   for is counted, and more than [`MAX_UNREQUESTED`] of them end the connection —
//!   `blocks_we_asked_for_go_to_the_picker_and_unrequested_ones_are_counted_then_fatal`.
//! - A cancel (endgame, or a block the picker reclaimed from us) sends `cancel` once and
//!   remembers the block for a while, so its late answer is not held against the peer —
//!   `a_cancel_is_sent_once_and_the_late_answer_still_counts`.
//! - Fast-extension messages without both handshakes setting the bit are a violation —
//!   `fast_messages_without_both_fast_bits_are_violations`.
//! - The peer's interest is reported while we choke it (the choker may unchoke it at once)
//!   — `interested_is_reported_only_while_we_choke`.
//!
//! Uploading:
//! - A request is queued only while we unchoke the peer (with BEP 6 also for its
//!   allowed-fast pieces while choked), for a piece we have, inside the piece, at most
//!   [`MAX_REQUEST`] bytes and [`MAX_QUEUED_REQUESTS`] deep; otherwise it is dropped, or
//!   with BEP 6 rejected. A repeated request is queued once; `cancel` removes it —
//!   `requests_are_queued_only_when_they_can_be_served_and_dropped_otherwise`,
//!   `the_request_queue_is_bounded_by_our_reqq`,
//!   `with_fast_every_unservable_request_is_rejected_and_allowed_fast_pieces_are_served_while_choked`.
//! - Disk reads start a few at a time ([`MAX_READS`]) and only while fewer than
//!   [`WRITE_HIGH_WATER`] bytes wait for the socket —
//!   `disk_reads_are_few_at_a_time_and_wait_for_the_socket`.
//! - Choking drops the queued requests and forgets reads in flight (their data is not
//!   sent) — `choking_drops_queued_requests_and_forgets_reads_in_flight`; with BEP 6 the
//!   ones outside the allowed-fast set are rejected instead, and allowed-fast ones stay
//!   queued — `with_fast_choking_rejects_what_it_drops_and_keeps_allowed_fast_requests`.
//! - A finished read goes out as a `piece`; a failed one sends nothing —
//!   `a_finished_read_goes_out_as_a_piece_and_a_failed_one_sends_nothing`.
//!
//! Liveness:
//! - A keep-alive after [`KEEPALIVE`] of send silence when nothing is waiting to be written
//!   — `a_keep_alive_follows_send_silence_when_nothing_waits`.
//! - A peer that accepts no byte for [`WRITE_STALL`] while data waits for it is gone —
//!   `a_peer_that_stops_reading_is_dropped_after_the_write_stall_time`.
//! - Every end of a connection says who ended it and why, for the one log line —
//!   `every_end_says_who_closed_and_why`.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::bitfield::Bitfield;
use super::picker::{BLOCK, BlockRef};
use crate::metadata::answer_metadata;
use crate::torrent::InfoHash;
use crate::torrent::metainfo::Info;
use crate::wire::message::FrameSink;
use crate::wire::pex::{self, PexEvent, PexMsg, PexRate, PexSender, UT_PEX};
use crate::wire::{
    EXT_HANDSHAKE_ID, ExtHandshake, Message, OUR_UT_METADATA_ID, OUR_UT_PEX_ID, WireError,
};

/// Largest request we serve; BEP 3 clients ask for 16 KiB, some allow up to 128 KiB.
pub const MAX_REQUEST: u32 = 128 * 1024;
/// Requests from one peer we queue; advertised as our `reqq`. Further ones are dropped.
pub const MAX_QUEUED_REQUESTS: usize = 500;
/// Disk reads in flight for one peer.
pub const MAX_READS: usize = 8;
/// Bytes waiting for the socket before we stop starting reads for the peer.
pub const WRITE_HIGH_WATER: u64 = 512 * 1024;
/// Initial pipeline, before the peer's rate is known (it then grows by slow start).
pub const INITIAL_PIPELINE: usize = 32;
/// Smallest pipeline.
pub const MIN_PIPELINE: usize = 4;
/// The pipeline holds about this much time's worth of blocks at the peer's rate.
const PIPELINE_TIME: f64 = 2.0;
/// Blocks nobody asked for (and not recently cancelled) before the peer is dropped.
pub const MAX_UNREQUESTED: u32 = 64;
/// Cancelled requests remembered, so their late answers are not held against the peer.
pub const CANCEL_MEMORY: usize = 1024;
/// Keep-alive after this much send silence (peers drop connections idle for 2 minutes).
pub const KEEPALIVE: Duration = Duration::from_secs(90);
/// A peer that accepts no bytes for this long while we have data queued is gone.
pub const WRITE_STALL: Duration = Duration::from_secs(60);

/// What a connection needs to know about its torrent and its peer.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    /// The torrent's info dict (piece count and sizes).
    pub info: Arc<Info>,
    /// The bencoded info dict, served over `ut_metadata`.
    pub info_bytes: Bytes,
    /// The torrent's info hash (BEP 6's allowed-fast set is derived from it).
    pub info_hash: InfoHash,
    /// The peer's address.
    pub addr: SocketAddr,
    /// We dialed the peer, so `addr` is where it listens.
    pub outgoing: bool,
    /// Both handshakes set the BEP 6 bit: every request gets a piece or a reject, and the
    /// Fast messages are valid. Without it a Fast message is a protocol violation.
    pub fast: bool,
    /// The peer's handshake set the BEP 10 bit, so it gets our extension handshake.
    pub extensions: bool,
    /// Our DHT port, to send in a `port` message (`None`: the peer did not set the DHT bit,
    /// or we run no node).
    pub dht_port: Option<u16>,
    /// Our TCP listen port, for the extension handshake's `p`.
    pub listen_port: Option<u16>,
    /// Our IPv6 listen address, if we listen on one: sent as BEP 10 `ipv6`, so a peer that
    /// met us over IPv4 can reach us over IPv6 too.
    pub our_ipv6: Option<std::net::Ipv6Addr>,
    /// BEP 11 is on for this torrent (configuration, and never for a private one).
    pub pex: bool,
    /// Requests in flight to the peer at most (also bounded by its `reqq`).
    pub max_pipeline: usize,
}

/// Why a connection ended with an error.
#[derive(Debug)]
pub enum PeerError {
    /// The socket failed, timed out or was closed (reported by the driver; the machine
    /// itself raises only [`WireError::Timeout`] for a peer that stopped reading).
    Wire(WireError),
    /// The peer broke a rule of the protocol.
    Protocol(String),
    /// We hang up on purpose, with nothing wrong (e.g. two seeds).
    Done(&'static str),
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

impl std::error::Error for PeerError {}

impl From<WireError> for PeerError {
    fn from(e: WireError) -> Self {
        PeerError::Wire(e)
    }
}

/// Who ended a peer connection, for the one debug line logged per connection: the next
/// interop stall should be diagnosable from our side alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
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
pub fn end_reason(r: &Result<&'static str, PeerError>) -> (EndedBy, String) {
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

/// What happened on a connection that the session must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// The peer's first full picture of its pieces ([`PeerConnection::bits`]): the picker
    /// counts it now.
    Bitfield,
    /// The peer has a new piece (a `have`, or a new bit of a later bitfield). When no
    /// picture came before, this is the first thing the picker learns of the peer.
    Have(u32),
    /// A block we asked for (or cancelled lately) arrived: for the picker and the disk.
    Block {
        /// Piece index.
        piece: u32,
        /// Offset in the piece.
        begin: u32,
        /// The data.
        data: Bytes,
    },
    /// A block nobody asked for arrived (its length in bytes; counted as waste).
    Unrequested(u32),
    /// We no longer expect this block from the peer (a choke without BEP 6, or a reject):
    /// the picker may give it to someone else.
    Released(BlockRef),
    /// The peer became interested while we choke it: the choker may unchoke it at once.
    Interested,
    /// The peer's DHT node (BEP 5 `port`): at the peer's IP, so an IPv6 peer names its IPv6
    /// DHT node (BEP 32), which goes to our IPv6 table.
    DhtNode(SocketAddr),
    /// Where an incoming peer accepts connections (its IP and the `p` of its extension
    /// handshake), for PEX.
    ListenAddr(SocketAddr),
    /// Candidate peers from the peer's `ut_pex` message.
    Pex(Vec<SocketAddr>),
    /// The peer's other address: the IPv6 address (and `p`) of its BEP 10 handshake, when
    /// we met it over IPv4. A candidate like a PEX one, once per connection.
    OtherAddr(SocketAddr),
}

/// What the picker should be asked for: see [`PeerConnection::wants_blocks`].
#[derive(Debug)]
pub struct PickRequest<'a> {
    /// How many blocks to request now.
    pub room: usize,
    /// The peer's pieces the blocks may come from.
    pub pieces: &'a Bitfield,
    /// `pieces` is the allowed-fast subset of a peer that chokes us, so it is not a seed's
    /// whatever the peer has.
    pub restricted: bool,
}

/// One peer connection's protocol state; see the module docs for its rules.
#[derive(Debug)]
pub struct PeerConnection {
    cfg: ConnConfig,
    /// Our verified pieces, as the session told us.
    ours: Bitfield,
    /// The peer's pieces.
    bits: Bitfield,
    /// The peer told us anything about its pieces (bitfield, have, have_all/none).
    seen: bool,
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
    peer_ext: ExtHandshake,
    /// Bytes of blocks received this second, and the smoothed rate.
    window_bytes: u64,
    down_rate: f64,
    /// The pipeline depth while `down_rate` is still unmeasured (slow start).
    slow_start: usize,
    /// The pieces we let this peer fetch while we choke it (BEP 6 allowed-fast set).
    allowed_out: Vec<u32>,
    /// The pieces the peer lets us fetch while it chokes us (bounded by the torrent size).
    allowed_in: Vec<u32>,
    /// Scratch for the allowed-fast subset handed to the picker.
    only: Bitfield,
    /// Where the peer accepts connections, once known.
    listen: Option<SocketAddr>,
    /// The peer's BEP 10 `ipv6` address was reported.
    other_addr_told: bool,
    pex_in: PexRate,
    pex_out: Option<PexSender>,
    /// Frames queued and not yet handed to the driver.
    out: Vec<u8>,
    /// Bytes handed to the driver, and bytes it reported written.
    handed: u64,
    written: u64,
    /// When the driver last made progress writing (or the queue was last empty).
    write_progress: Instant,
    last_send: Instant,
    events: VecDeque<PeerEvent>,
}

impl PeerConnection {
    /// A connection right after both handshakes, knowing our verified pieces `ours`; queues
    /// the greeting (see the module docs).
    pub fn new(cfg: ConnConfig, ours: &Bitfield, now: Instant) -> Self {
        let n = cfg.info.num_pieces();
        let listen = cfg.outgoing.then_some(cfg.addr);
        let mut c = PeerConnection {
            ours: ours.clone(),
            bits: Bitfield::new(n),
            seen: false,
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
            peer_ext: ExtHandshake::default(),
            window_bytes: 0,
            down_rate: 0.0,
            slow_start: INITIAL_PIPELINE,
            allowed_out: Vec::new(),
            allowed_in: Vec::new(),
            only: Bitfield::new(n),
            listen,
            other_addr_told: false,
            pex_in: PexRate::default(),
            pex_out: None,
            out: Vec::new(),
            handed: 0,
            written: 0,
            write_progress: now,
            last_send: now,
            events: VecDeque::new(),
            cfg,
        };
        c.greet(now);
        c
    }

    fn greet(&mut self, now: Instant) {
        if self.cfg.fast && self.ours.is_full() {
            self.send(now, &Message::HaveAll);
        } else if self.cfg.fast && self.ours.count() == 0 {
            self.send(now, &Message::HaveNone);
        } else if self.ours.count() > 0 {
            let raw = Bytes::copy_from_slice(self.ours.as_bytes());
            self.send(now, &Message::Bitfield(raw));
        }
        if self.cfg.fast
            && let SocketAddr::V4(a) = self.cfg.addr
        {
            self.allowed_out = crate::wire::fast::allowed_fast_set(
                *a.ip(),
                &self.cfg.info_hash,
                self.bits.len() as u32,
                crate::wire::fast::ALLOWED_FAST_COUNT,
            );
            for i in 0..self.allowed_out.len() {
                let piece = self.allowed_out[i];
                self.send(now, &Message::AllowedFast { piece });
            }
        }
        if self.cfg.extensions {
            let mut ours =
                ExtHandshake::ours(self.cfg.listen_port, Some(self.cfg.info_bytes.len() as u64));
            ours.yourip = Some(self.cfg.addr.ip());
            ours.ipv6 = self.cfg.our_ipv6;
            ours.reqq = Some(MAX_QUEUED_REQUESTS as u32);
            if self.cfg.pex {
                ours.m.insert(UT_PEX.to_owned(), OUR_UT_PEX_ID);
            }
            self.send(now, &ours.to_message());
        }
        if let Some(port) = self.cfg.dht_port {
            self.send(now, &Message::Port(port));
        }
    }

    // ----- what the session reads -----

    /// The peer's pieces as far as it told us.
    pub fn bits(&self) -> &Bitfield {
        &self.bits
    }

    /// The peer has every piece.
    pub fn is_seed(&self) -> bool {
        self.bits.is_full()
    }

    /// The peer is interested in our pieces.
    pub fn peer_interested(&self) -> bool {
        self.peer_interested
    }

    /// We choke the peer.
    pub fn am_choking(&self) -> bool {
        self.am_choking
    }

    /// We are interested in the peer's pieces.
    pub fn am_interested(&self) -> bool {
        self.am_interested
    }

    /// The peer chokes us.
    pub fn peer_choking(&self) -> bool {
        self.peer_choking
    }

    /// Our requests the peer has not answered, oldest first.
    pub fn outstanding(&self) -> impl ExactSizeIterator<Item = &BlockRef> {
        self.outstanding.iter()
    }

    /// Requests of the peer waiting to be read from disk, in order.
    pub fn queued_uploads(&self) -> impl ExactSizeIterator<Item = &BlockRef> {
        self.uploads.iter()
    }

    /// The peer's latest extension handshake (all of them merged).
    pub fn peer_ext(&self) -> &ExtHandshake {
        &self.peer_ext
    }

    /// Where the peer accepts connections: the address we dialed, or an incoming peer's IP
    /// and the `p` of its extension handshake.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen
    }

    /// Bytes handed to the driver that it has not reported written.
    pub fn unsent(&self) -> u64 {
        self.handed - self.written
    }

    /// The next event for the session, oldest first.
    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    /// The frames queued since the last call, for the driver to write (`None`: nothing).
    pub fn take_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.out.is_empty() {
            return None;
        }
        if self.unsent() == 0 {
            // The stall clock starts when data starts waiting, not at the last write.
            self.write_progress = now;
        }
        self.handed += self.out.len() as u64;
        Some(std::mem::take(&mut self.out))
    }

    /// The driver has written `total` bytes of what it was handed, since the start.
    pub fn on_written(&mut self, now: Instant, total: u64) {
        if total > self.written {
            self.written = total.min(self.handed);
            self.write_progress = now;
        }
    }

    // ----- inputs -----

    /// Handles one message from the peer. An error ends the connection (events queued by
    /// the failing message are of no use then).
    pub fn handle(&mut self, now: Instant, msg: Message) -> Result<(), PeerError> {
        match msg {
            Message::KeepAlive => {}
            Message::Choke => {
                self.peer_choking = true;
                // BEP 3: a choke discards our pending requests. BEP 6: not with Fast; the
                // peer answers each one with the piece (allowed-fast pieces) or a reject,
                // and a request it never answers is caught by the picker's slow sweep.
                if !self.cfg.fast {
                    for r in self.outstanding.drain(..) {
                        self.events.push_back(PeerEvent::Released(r));
                    }
                }
            }
            Message::Unchoke => self.peer_choking = false,
            Message::Interested => {
                self.peer_interested = true;
                if self.am_choking {
                    self.events.push_back(PeerEvent::Interested);
                }
            }
            Message::NotInterested => self.peer_interested = false,
            Message::Have { piece } => {
                if piece as usize >= self.bits.len() {
                    return Err(PeerError::Protocol(format!("have for piece {piece}")));
                }
                self.add_pieces(now, &[piece]);
            }
            Message::SuggestPiece { .. }
            | Message::HaveAll
            | Message::HaveNone
            | Message::RejectRequest { .. }
            | Message::AllowedFast { .. }
                if !self.cfg.fast =>
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
            Message::HaveAll => return self.on_bitfield(now, Bitfield::full(self.bits.len())),
            Message::HaveNone => {
                if !self.seen {
                    return self.on_bitfield(now, Bitfield::new(self.bits.len()));
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
                let r = BlockRef::new(index, begin, length);
                if let Some(i) = self.outstanding.iter().position(|x| *x == r) {
                    self.outstanding.remove(i);
                    self.events.push_back(PeerEvent::Released(r));
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
                return self.on_bitfield(now, bits);
            }
            Message::Request {
                index,
                begin,
                length,
            } => self.on_request(now, BlockRef::new(index, begin, length)),
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
                let r = BlockRef::new(index, begin, length);
                self.uploads.retain(|x| *x != r);
            }
            Message::Port(port) => {
                if port != 0 {
                    let ip = self.cfg.addr.ip().to_canonical();
                    self.events
                        .push_back(PeerEvent::DhtNode(SocketAddr::new(ip, port)));
                }
            }
            Message::Extended {
                id: EXT_HANDSHAKE_ID,
                payload,
            } => {
                if let Ok(hs) = ExtHandshake::decode(&payload) {
                    self.peer_ext.update(hs);
                    self.on_ext_handshake(now);
                }
            }
            Message::Extended {
                id: OUR_UT_METADATA_ID,
                payload,
            } => {
                let before = self.out.len();
                answer_metadata(
                    &mut self.out,
                    &self.peer_ext,
                    &self.cfg.info_bytes,
                    &payload,
                );
                if self.out.len() > before {
                    self.last_send = now;
                }
            }
            Message::Extended {
                id: OUR_UT_PEX_ID,
                payload,
            } if self.cfg.pex => self.on_pex(now, &payload),
            // Extensions we did not advertise, unknown ids: ignored rather than fatal.
            Message::Extended { .. } | Message::Unknown { .. } => {}
        }
        Ok(())
    }

    /// We verified `piece`: tell the peer, and lose interest if that was all it had for us.
    pub fn we_have(&mut self, now: Instant, piece: u32) {
        if !self.ours.set(piece as usize) {
            return;
        }
        self.send(now, &Message::Have { piece });
        if self.bits.get(piece as usize) {
            self.wanted = self.wanted.saturating_sub(1);
            self.update_interest(now);
        }
    }

    /// We have every piece now: `false` when the peer has too (nothing left to trade, so
    /// the session closes the connection).
    pub fn keep_when_complete(&self) -> bool {
        !self.bits.is_full()
    }

    /// The choker chokes the peer.
    pub fn choke(&mut self, now: Instant) {
        if self.am_choking {
            return;
        }
        self.am_choking = true;
        // Choking discards the peer's queued requests (BEP 3), and the reads in flight too:
        // forgetting them makes their answers drop in `on_read`, even if we unchoke again
        // before they arrive.
        self.send(now, &Message::Choke);
        if self.cfg.fast {
            // BEP 6: choking no longer discards requests silently; each one not in the
            // allowed-fast set gets a reject. Kept reads re-enter the upload queue; their
            // completions in flight are dropped in `on_read` (forgotten), then re-read.
            let (mut dropped, mut kept) = (Vec::new(), VecDeque::new());
            for r in self.uploads.drain(..).chain(self.reads.drain(..)) {
                if self.allowed_out.contains(&r.piece) {
                    kept.push_back(r);
                } else {
                    dropped.push(r);
                }
            }
            self.uploads = kept;
            for r in dropped {
                self.reject(now, r);
            }
        } else {
            self.uploads.clear();
            self.reads.clear();
        }
    }

    /// The choker unchokes the peer.
    pub fn unchoke(&mut self, now: Instant) {
        if self.am_choking {
            self.am_choking = false;
            self.send(now, &Message::Unchoke);
        }
    }

    /// Withdraws our request for `r` (another peer delivered it first in endgame, or the
    /// picker reclaimed it from this slow peer). A block not requested from this peer is
    /// ignored.
    pub fn cancel(&mut self, now: Instant, r: BlockRef) {
        if let Some(i) = self.outstanding.iter().position(|x| *x == r) {
            self.outstanding.remove(i);
            self.send(
                now,
                &Message::Cancel {
                    index: r.piece,
                    begin: r.begin,
                    length: r.length,
                },
            );
            if self.cancelled.len() >= CANCEL_MEMORY {
                self.cancelled.pop_front();
            }
            self.cancelled.push_back(r);
        }
    }

    /// Once a second: the delivery rate the pipeline follows, the write-stall check, and a
    /// keep-alive after [`KEEPALIVE`] of silence.
    pub fn on_tick(&mut self, now: Instant) -> Result<(), PeerError> {
        self.down_rate = 0.6 * self.down_rate + 0.4 * self.window_bytes as f64;
        self.window_bytes = 0;
        if self.unsent() == 0 {
            self.write_progress = now;
        } else if now.saturating_duration_since(self.write_progress) > WRITE_STALL {
            return Err(PeerError::Wire(WireError::Timeout(
                crate::wire::Phase::Write,
            )));
        }
        if now.saturating_duration_since(self.last_send) >= KEEPALIVE
            && self.unsent() == 0
            && self.out.is_empty()
        {
            self.send(now, &Message::KeepAlive);
        }
        Ok(())
    }

    // ----- the picker's side -----

    /// Whether to ask the picker for blocks now, how many, and from which pieces: `None`
    /// while we are not interested, choked (without an allowed-fast piece the peer has), or
    /// the pipeline is full enough (it is refilled in batches of a quarter).
    pub fn wants_blocks(&mut self) -> Option<PickRequest<'_>> {
        if !self.am_interested || !self.seen {
            return None;
        }
        // Choked: only with Fast and an allowed-fast set (checked again below).
        if self.peer_choking && (!self.cfg.fast || self.allowed_in.is_empty()) {
            return None;
        }
        let target = self.pipeline_target();
        let have = self.outstanding.len();
        if have >= target {
            return None;
        }
        let room = target - have;
        if have > 0 && room < (target / 4).max(1) {
            return None;
        }
        if !self.peer_choking {
            return Some(PickRequest {
                room,
                pieces: &self.bits,
                restricted: false,
            });
        }
        // BEP 6: while the peer chokes us, only the pieces of its allowed-fast set that it
        // has may be requested.
        self.only = Bitfield::new(self.bits.len());
        for &p in &self.allowed_in {
            if self.bits.get(p as usize) {
                self.only.set(p as usize);
            }
        }
        if self.only.count() == 0 {
            return None;
        }
        Some(PickRequest {
            room,
            pieces: &self.only,
            restricted: true,
        })
    }

    /// The picker gave us `blocks` for this peer: request them.
    pub fn requested(&mut self, now: Instant, blocks: &[BlockRef]) {
        for r in blocks {
            self.out.queue(&Message::Request {
                index: r.piece,
                begin: r.begin,
                length: r.length,
            });
            self.outstanding.push_back(*r);
        }
        if !blocks.is_empty() {
            self.last_send = now;
        }
    }

    /// Takes back our unanswered requests (the connection is ending), for the picker.
    pub fn take_outstanding(&mut self) -> Vec<BlockRef> {
        self.outstanding.drain(..).collect()
    }

    // ----- the disk's side -----

    /// The next of the peer's requests to read from disk, if one may start now (we do not
    /// choke the peer or it is an allowed-fast piece, few reads are in flight, and the
    /// socket is not backed up). The caller applies its upload rate limit, then calls
    /// [`Self::upload_started`].
    pub fn next_upload(&self) -> Option<BlockRef> {
        if self.am_choking && !self.cfg.fast {
            return None;
        }
        let waiting = self.unsent() + self.out.len() as u64;
        if self.reads.len() >= MAX_READS
            || waiting + (self.reads.len() as u64) * u64::from(BLOCK) >= WRITE_HIGH_WATER
        {
            return None;
        }
        self.uploads.front().copied()
    }

    /// The read [`Self::next_upload`] offered has started.
    pub fn upload_started(&mut self) {
        if let Some(r) = self.uploads.pop_front() {
            self.reads.push(r);
        }
    }

    /// A disk read finished: sends the block if the peer may still have it. Returns the
    /// payload bytes sent (0 when the read was forgotten by a choke, or failed: `data`
    /// `None`).
    pub fn on_read(&mut self, now: Instant, piece: u32, begin: u32, data: Option<Bytes>) -> u64 {
        let Some(i) = self
            .reads
            .iter()
            .position(|r| r.piece == piece && r.begin == begin)
        else {
            return 0;
        };
        self.reads.swap_remove(i);
        if self.am_choking && !(self.cfg.fast && self.allowed_out.contains(&piece)) {
            return 0;
        }
        let Some(block) = data else { return 0 };
        let len = block.len() as u64;
        self.send(
            now,
            &Message::Piece {
                index: piece,
                begin,
                block,
            },
        );
        len
    }

    // ----- PEX out -----

    /// Our PEX message to the peer is due (so the caller gathers the connected peers only
    /// then).
    pub fn pex_due(&self, now: Instant) -> bool {
        self.peer_ext.ext_id(UT_PEX).is_some() && self.pex_out.as_ref().is_some_and(|s| s.due(now))
    }

    /// Sends our PEX message if one is due: the `connected` peers (listen address and
    /// `added.f` flags) as a change since the last message.
    pub fn send_pex(&mut self, now: Instant, connected: &[(SocketAddr, u8)]) {
        // The peer may have switched ut_pex off with a later handshake (id 0).
        let Some(id) = self.peer_ext.ext_id(UT_PEX) else {
            return;
        };
        let Some(sender) = &mut self.pex_out else {
            return;
        };
        let Some(msg) = sender.poll(now, connected) else {
            return;
        };
        tracing::debug!(
            peer = %self.cfg.addr,
            added = msg.added.len(),
            dropped = msg.dropped.len(),
            "ut_pex sent"
        );
        self.out
            .queue_extended_with(id, |payload| msg.encode_into(payload));
        self.last_send = now;
        pex::note(PexEvent::Out);
    }

    // ----- internals -----

    fn send(&mut self, now: Instant, msg: &Message) {
        self.out.queue(msg);
        self.last_send = now;
    }

    fn update_interest(&mut self, now: Instant) {
        let want = self.wanted > 0;
        if want != self.am_interested {
            self.am_interested = want;
            self.send(
                now,
                if want {
                    &Message::Interested
                } else {
                    &Message::NotInterested
                },
            );
        }
    }

    fn pipeline_target(&self) -> usize {
        pipeline_depth(
            self.down_rate,
            self.slow_start,
            self.cfg.max_pipeline,
            self.peer_ext.reqq,
        )
    }

    /// The peer announced `pieces` (a `have`, or the new bits of a late bitfield).
    fn add_pieces(&mut self, now: Instant, pieces: &[u32]) {
        let mut changed = false;
        for &piece in pieces {
            if !self.bits.set(piece as usize) {
                continue;
            }
            changed = true;
            self.seen = true;
            self.events.push_back(PeerEvent::Have(piece));
            if !self.ours.get(piece as usize) {
                self.wanted += 1;
            }
        }
        if changed {
            self.update_interest(now);
        }
    }

    /// A full picture of the peer's pieces (bitfield, or BEP 6 have_all / have_none).
    fn on_bitfield(&mut self, now: Instant, bits: Bitfield) -> Result<(), PeerError> {
        if self.seen {
            // A bitfield after `have`s, or a second one: aria2 sends a fresh full bitfield
            // instead of many `have`s when that is shorter. BEP 3 only allows it first, but
            // dropping such peers costs real clients their downloads; read it as a batch of
            // `have`s (pieces are never lost, so bits it clears are ignored).
            let new: Vec<u32> = bits
                .ones()
                .filter(|&i| !self.bits.get(i))
                .map(|i| i as u32)
                .collect();
            self.add_pieces(now, &new);
            return Ok(());
        }
        self.seen = true;
        self.wanted = bits.ones().filter(|&i| !self.ours.get(i)).count();
        let both_complete = bits.is_full() && self.ours.is_full();
        self.bits = bits;
        if both_complete {
            // Two seeds have nothing to trade.
            return Err(PeerError::Done("both sides are seeds: nothing to trade"));
        }
        self.events.push_back(PeerEvent::Bitfield);
        self.update_interest(now);
        Ok(())
    }

    fn on_request(&mut self, now: Instant, r: BlockRef) {
        // BEP 3: requests while choked are dropped; so are oversized or out-of-range ones
        // and those for pieces we do not have. With BEP 6 each of them is answered with a
        // reject instead, and pieces of the peer's allowed-fast set are served while choked.
        let served_while_choked = self.cfg.fast && self.allowed_out.contains(&r.piece);
        let acceptable = (!self.am_choking || served_while_choked)
            && r.length != 0
            && r.length <= MAX_REQUEST
            && self.uploads.len() < MAX_QUEUED_REQUESTS
            && self.ours.get(r.piece as usize)
            && self
                .cfg
                .info
                .piece_size(r.piece as usize)
                .is_some_and(|size| u64::from(r.begin) + u64::from(r.length) <= size);
        if acceptable {
            if !self.uploads.contains(&r) {
                self.uploads.push_back(r);
            }
        } else {
            self.reject(now, r);
        }
    }

    /// BEP 6: tells the peer we will not serve `r` (nothing without the extension, where
    /// dropping silently is the rule).
    fn reject(&mut self, now: Instant, r: BlockRef) {
        if self.cfg.fast {
            self.send(
                now,
                &Message::RejectRequest {
                    index: r.piece,
                    begin: r.begin,
                    length: r.length,
                },
            );
        }
    }

    fn on_piece(&mut self, piece: u32, begin: u32, block: Bytes) -> Result<(), PeerError> {
        let len = block.len() as u32;
        let r = BlockRef::new(piece, begin, len);
        // Answers come in request order, so this is nearly always the front.
        if let Some(i) = self.outstanding.iter().position(|x| *x == r) {
            self.outstanding.remove(i);
            self.window_bytes += u64::from(len);
            if self.down_rate == 0.0 {
                self.slow_start += 1;
            }
        } else if let Some(i) = self.cancelled.iter().position(|x| *x == r) {
            // Crossed our cancel: the picker may still want it.
            self.cancelled.remove(i);
        } else {
            self.unrequested += 1;
            if self.unrequested > MAX_UNREQUESTED {
                return Err(PeerError::Protocol("sends blocks nobody asked for".into()));
            }
            self.events.push_back(PeerEvent::Unrequested(len));
            return Ok(());
        }
        self.events.push_back(PeerEvent::Block {
            piece,
            begin,
            data: block,
        });
        Ok(())
    }

    /// After the peer's extension handshake: an incoming peer's listen address becomes
    /// known (its IP and `p`), so others may hear of it by PEX; and if the peer speaks
    /// `ut_pex` (and we do), our messages to it start.
    fn on_ext_handshake(&mut self, now: Instant) {
        if self.listen.is_none()
            && let Some(p) = self.peer_ext.p
        {
            let l = SocketAddr::new(self.cfg.addr.ip(), p);
            self.listen = Some(l);
            self.events.push_back(PeerEvent::ListenAddr(l));
        }
        if !self.other_addr_told
            && self.cfg.addr.is_ipv4()
            && let (Some(v6), Some(p)) = (self.peer_ext.ipv6, self.peer_ext.p)
        {
            self.other_addr_told = true;
            self.events
                .push_back(PeerEvent::OtherAddr(SocketAddr::new(v6.into(), p)));
        }
        if self.cfg.pex && self.pex_out.is_none() && self.peer_ext.ext_id(UT_PEX).is_some() {
            // Never echoing the peer to itself: its listen address is how others know it.
            let to = self.listen.unwrap_or(self.cfg.addr);
            self.pex_out = Some(PexSender::new(to, now));
        }
    }

    /// BEP 11 message from the peer: its `added` peers become candidates. One more than
    /// about a minute after the last is ignored (counted), so is a malformed one; neither
    /// ends the connection.
    fn on_pex(&mut self, now: Instant, payload: &[u8]) {
        if !self.pex_in.accept(now) {
            pex::note(PexEvent::IgnoredFlood);
            tracing::debug!(peer = %self.cfg.addr, "ignoring ut_pex: too soon after the last");
            return;
        }
        let msg = match PexMsg::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                pex::note(PexEvent::Malformed);
                tracing::debug!(peer = %self.cfg.addr, "ignoring ut_pex: {e}");
                return;
            }
        };
        pex::note(PexEvent::In);
        tracing::debug!(
            peer = %self.cfg.addr,
            added = msg.added.len(),
            dropped = msg.dropped.len(),
            "ut_pex received"
        );
        let addr = self.cfg.addr;
        let added: Vec<SocketAddr> = msg
            .added
            .iter()
            .map(|(a, _)| *a)
            .filter(|a| *a != addr)
            .collect();
        if !added.is_empty() {
            self.events.push_back(PeerEvent::Pex(added));
        }
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
#[path = "connection_tests.rs"]
mod tests;
