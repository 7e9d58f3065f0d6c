//! The sans-IO metadata coordinator: every decision of a fetch, none of its I/O.
//!
//! The coordinator never reads the clock and never opens a socket. Its inputs are a peer
//! address found ([`Coordinator::offer`]), the peer source ending
//! ([`Coordinator::source_ended`]), something a peer connection reported
//! ([`Coordinator::handle`] with a [`PeerEvent`]) and a timer firing
//! ([`Coordinator::handle_timeout`]), each with the current `now`. Its outputs are
//! [`Action`]s ([`Coordinator::poll_action`]) — connect, request pieces, close, and finally
//! exactly one `Done` or `Failed` — and the next instant it wants to be woken at
//! ([`Coordinator::poll_timeout`]). The tokio driver behind [`super::fetch_metadata`] only
//! carries these across; the rules below are therefore tested here with virtual instants, no
//! sockets.
//!
//! Rules the coordinator owns, each with the unit test that checks it:
//!
//! * At most `max_connections` peers are open or opening; further candidates queue in the
//!   order found and start as slots free up — `connection_limit_queues_candidates`.
//! * A peer address offered again while known (queued, connected, waiting for a retry or
//!   banned) is not connected twice, and is counted once in `found` —
//!   `duplicate_peers_are_deduplicated`.
//! * A peer that failed for a reason that may pass is retried after `retry_delay`, doubled
//!   for each further attempt, up to `max_attempts`; one that failed for good is not —
//!   `failed_peer_is_retried_with_backoff`, `permanent_failure_is_not_retried`. A peer the
//!   source offers again is tried again (within `max_attempts`) once `retry_delay` has passed
//!   since its last failure — `reoffered_peer_waits_retry_delay`.
//! * A handshaken peer has `ext_handshake_timeout` to send a usable extension handshake —
//!   `missing_ext_handshake_times_out`; one without ut_metadata or with no `metadata_size`
//!   is not used — `peer_without_ut_metadata_or_size_is_not_used`.
//! * A `metadata_size` of 0 or above the cap drops the peer before anything is allocated —
//!   `absurd_metadata_size_drops_peer`; changing it later drops it too —
//!   `changed_metadata_size_drops_peer`.
//! * Each piece is first asked of one peer only; a request outstanding for `steal_after` is
//!   also asked of a second peer — `pieces_are_spread_then_slow_ones_stolen`. The window of
//!   a peer is `max_window`, lowered to its `reqq` — `window_follows_reqq`.
//! * A request unanswered for `request_timeout` fails the peer (retry allowed) and its pieces
//!   go to the others — `request_timeout_fails_peer_and_reassigns`.
//! * A reject makes the piece be asked of another peer, and a peer that rejected everything
//!   it was asked is let go (retry allowed) — `reject_asks_another_peer`,
//!   `rejected_piece_goes_to_a_peer_with_room_at_once`.
//! * A peer that disconnects mid-transfer has its pieces re-requested from the others —
//!   `disconnect_mid_transfer_rerequests_its_pieces`.
//! * A data message whose `total_size` differs from the peer's `metadata_size`, or whose
//!   block has the wrong length, drops the peer (its piece goes to another) —
//!   `wrong_total_size_drops_peer`, `wrong_block_drops_peer`; more than [`MAX_UNREQUESTED`]
//!   unrequested blocks drop it —
//!   `unrequested_flood_drops_peer`; an undecodable message drops it —
//!   `malformed_message_drops_peer`.
//! * Candidate bytes held are capped by `max_buffered` — `buffer_budget_stops_storing`.
//! * Peers are grouped by the `metadata_size` they claim, one assembly per group, at most
//!   [`MAX_SIZE_GROUPS`] groups — `too_many_size_groups_refuses_peer`. A group whose copy
//!   fails the hash check has its peers blamed and banned — `lying_size_group_is_blamed`;
//!   when one group verifies, the peers of every other group are dropped for the wrong size —
//!   `size_groups_other_groups_dropped_on_success`.
//! * A block that breaks the hash check of a fast-path assembly switches the group to
//!   cross-checking (every peer asked for every piece) until the liar convicts itself —
//!   `lying_block_is_found_by_cross_check`. A banned peer is never connected again —
//!   `banned_peer_is_not_reconnected`.
//! * The overall deadline ends the fetch with [`FetchError::Timeout`] —
//!   `deadline_fails_fetch`; a source that ended with every peer used up ends it with
//!   [`FetchError::Exhausted`] — `exhausted_when_source_ends_and_peers_fail`.
//! * Success yields `Done` exactly once, after a `Close` for every other open peer, and
//!   nothing afterwards — `success_is_done_once_and_closes_the_rest`.
//! * Inputs about unknown or closed peers are ignored, never a panic —
//!   `unknown_peer_inputs_are_ignored`; durations too large for `Instant` mean "never" —
//!   `huge_durations_do_not_panic`; across random input sequences the connection limit
//!   holds, no request goes to a closed peer, no ready peer with room is left idle while a
//!   piece it could ask for is unasked, there is at most one final action, a handled
//!   timer is never still due (the driver would spin) and the fetch always ends once the
//!   source does — `random_inputs_keep_invariants`.
//! * All of it together: whole fetches against simulated swarms (honest peers, block liars,
//!   size liars, rejecters, silent and disconnecting peers, random latencies) on the virtual
//!   clock always end with the true dict and drop only liars —
//!   `simulated_swarms_verify_and_blame_only_liars`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use super::assemble::PeerKey;
use super::assemble::{Assembly, Verdict};
use super::fetch::{
    FetchConfig, FetchError, FetchStats, Fetched, MAX_SIZE_GROUPS, MAX_UNREQUESTED, Misbehavior,
    PeerOutcome, PeerReport,
};
use crate::torrent::InfoHash;
use crate::wire::valid_metadata_size;

/// The part of [`FetchConfig`] the coordinator decides with (the rest is the driver's: peer
/// id, allow-list, wire timeouts, DHT).
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// See [`FetchConfig::max_connections`].
    pub max_connections: usize,
    /// See [`FetchConfig::max_window`].
    pub max_window: usize,
    /// See [`FetchConfig::ext_handshake_timeout`].
    pub ext_handshake_timeout: Duration,
    /// See [`FetchConfig::request_timeout`].
    pub request_timeout: Duration,
    /// See [`FetchConfig::steal_after`].
    pub steal_after: Duration,
    /// See [`FetchConfig::timeout`].
    pub timeout: Option<Duration>,
    /// See [`FetchConfig::max_buffered`].
    pub max_buffered: usize,
    /// See [`FetchConfig::max_attempts`].
    pub max_attempts: u32,
    /// See [`FetchConfig::retry_delay`].
    pub retry_delay: Duration,
}

impl From<&FetchConfig> for CoordinatorConfig {
    fn from(c: &FetchConfig) -> Self {
        CoordinatorConfig {
            max_connections: c.max_connections,
            max_window: c.max_window,
            ext_handshake_timeout: c.ext_handshake_timeout,
            request_timeout: c.request_timeout,
            steal_after: c.steal_after,
            timeout: c.timeout,
            max_buffered: c.max_buffered,
            max_attempts: c.max_attempts,
            retry_delay: c.retry_delay,
        }
    }
}

impl Default for CoordinatorConfig {
    /// The defaults of [`FetchConfig`], so both stay one set of numbers.
    fn default() -> Self {
        CoordinatorConfig::from(&FetchConfig::default())
    }
}

/// What a peer connection reports to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// The BitTorrent handshake completed (with the extension bit set).
    Connected,
    /// An extension handshake (the peer's accumulated state after it).
    Ext {
        /// Whether the peer maps ut_metadata to an id.
        ut_metadata: bool,
        /// The info dict size the peer advertised (BEP 9); `None` when it has no metadata.
        metadata_size: Option<u64>,
        /// How many requests the peer queues (BEP 10 `reqq`); caps our request window.
        reqq: Option<u32>,
    },
    /// A ut_metadata data message.
    Data {
        /// Index of the block.
        piece: u32,
        /// The dict size the message states; must equal the peer's `metadata_size`.
        total_size: u64,
        /// The block's bytes.
        data: Bytes,
    },
    /// A ut_metadata reject.
    Reject {
        /// Index of the block the peer refused.
        piece: u32,
    },
    /// An undecodable ut_metadata message.
    Malformed,
    /// A PORT message was received (and passed to our DHT node).
    Port,
    /// The connection ended; `retry` when the reason may pass (refused, reset, timed out).
    Closed {
        /// The reason, for the peer's report.
        why: String,
        /// Whether the reason may pass, so the peer may be tried again.
        retry: bool,
    },
}

/// What the coordinator wants done.
#[derive(Debug, Clone)]
pub enum Action {
    /// Open a connection to `addr`; its events are to be reported as peer `peer`.
    Connect {
        /// The key the connection's events are reported under.
        peer: PeerKey,
        /// The address to connect to.
        addr: SocketAddr,
    },
    /// Send ut_metadata requests for `pieces` to `peer`.
    Request {
        /// The connection to send on.
        peer: PeerKey,
        /// Block indices to request, in order.
        pieces: Vec<u32>,
    },
    /// Close `peer`'s connection; nothing more from it is wanted.
    Close {
        /// The connection to close.
        peer: PeerKey,
    },
    /// The verified dict; the last action.
    Done(Fetched),
    /// No dict; the last action.
    Failed(FetchError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Handshaken(Instant),
    Ready,
    Closed,
}

struct Slot {
    addr: SocketAddr,
    phase: Phase,
    /// The connection already ended by itself: closing it needs no `Close` action.
    ended: bool,
    /// The size group the peer joined, valid once `joined`.
    group: usize,
    joined: bool,
    window: usize,
    outstanding: Vec<(u32, Instant)>,
    supplied: Vec<bool>,
    rejected: Vec<bool>,
    blocks: u32,
    unrequested: u32,
    outcome: Option<PeerOutcome>,
}

struct Group {
    asm: Assembly,
    cross_check: bool,
    /// Per piece: requests in flight, and when the latest was sent.
    in_flight: Vec<u16>,
    last_request: Vec<Option<Instant>>,
}

#[derive(Default)]
struct Known {
    attempts: u32,
    active: bool,
    queued: bool,
    banned: bool,
    last_failure: Option<Instant>,
    /// A retry is scheduled (in `Coordinator::retries`).
    retry_pending: bool,
}

/// The state of one metadata fetch. See the module docs.
pub struct Coordinator {
    info_hash: InfoHash,
    cfg: CoordinatorConfig,
    started: Instant,
    deadline: Option<Instant>,
    /// The latest `now` given; private helpers read it instead of the clock.
    now: Instant,
    slots: Vec<Slot>,
    groups: Vec<Group>,
    known: HashMap<SocketAddr, Known>,
    pending: VecDeque<SocketAddr>,
    /// Peers to re-queue at the given time.
    retries: Vec<(Instant, SocketAddr)>,
    /// Groups that lost requests in flight (a peer closed) and need rescheduling.
    reschedule: Vec<usize>,
    active: usize,
    stats: FetchStats,
    result: Option<Vec<u8>>,
    source_done: bool,
    finished: bool,
    actions: VecDeque<Action>,
}

impl Coordinator {
    /// A fetch of `info_hash` starting at `now` (the overall deadline counts from it).
    pub fn new(info_hash: InfoHash, cfg: CoordinatorConfig, now: Instant) -> Self {
        Coordinator {
            info_hash,
            deadline: cfg.timeout.and_then(|t| now.checked_add(t)),
            cfg,
            started: now,
            now,
            slots: Vec::new(),
            groups: Vec::new(),
            known: HashMap::new(),
            pending: VecDeque::new(),
            retries: Vec::new(),
            reschedule: Vec::new(),
            active: 0,
            stats: FetchStats::default(),
            result: None,
            source_done: false,
            finished: false,
            actions: VecDeque::new(),
        }
    }

    /// The next thing to do, in order; `None` until the next input.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Coordinator::handle_timeout`] should next be called; `None` when no timer is
    /// pending (or the fetch is over). Only future instants are returned for the "steal a
    /// slow request" timer, so a steal that found no free peer does not make the driver spin.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        let mut next = self.deadline;
        // An instant past what `Instant` can hold (a huge configured duration) never comes.
        let mut at = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        for &(t, _) in &self.retries {
            at(Some(t));
        }
        for slot in &self.slots {
            match slot.phase {
                Phase::Handshaken(t) => at(t.checked_add(self.cfg.ext_handshake_timeout)),
                Phase::Ready => {
                    if let Some(&(_, t)) = slot.outstanding.iter().min_by_key(|&&(_, t)| t) {
                        at(t.checked_add(self.cfg.request_timeout));
                    }
                }
                _ => {}
            }
        }
        for g in &self.groups {
            if g.cross_check {
                continue;
            }
            for (i, &n) in g.in_flight.iter().enumerate() {
                if n == 1
                    && let Some(t) = g.last_request[i]
                    && let Some(steal) = t.checked_add(self.cfg.steal_after)
                    && steal > self.now
                {
                    at(Some(steal));
                }
            }
        }
        next
    }

    /// A candidate peer was found.
    pub fn offer(&mut self, now: Instant, addr: SocketAddr) {
        if !self.begin(now) {
            return;
        }
        let max_attempts = self.cfg.max_attempts.max(1);
        let retry_delay = self.cfg.retry_delay;
        let is_new = !self.known.contains_key(&addr);
        let k = self.known.entry(addr).or_default();
        if is_new {
            self.stats.found += 1;
        }
        let waited = k
            .last_failure
            .is_none_or(|t| now.duration_since(t) >= retry_delay);
        if !(k.banned
            || k.active
            || k.queued
            || k.retry_pending
            || k.attempts >= max_attempts
            || !waited)
        {
            k.queued = true;
            self.pending.push_back(addr);
        }
        self.end();
    }

    /// The peer source will offer nothing more: once every peer is used up, the fetch fails.
    pub fn source_ended(&mut self, now: Instant) {
        if !self.begin(now) {
            return;
        }
        self.source_done = true;
        self.end();
    }

    /// Peer `peer` (from a `Connect` action) reported `ev`.
    pub fn handle(&mut self, now: Instant, peer: PeerKey, ev: PeerEvent) {
        if !self.begin(now) {
            return;
        }
        if self
            .slots
            .get(peer)
            .is_some_and(|s| s.phase != Phase::Closed)
        {
            self.on_event(peer, ev);
        }
        self.end();
    }

    /// The instant from [`Coordinator::poll_timeout`] has come: time out handshakes and
    /// requests, steal slow requests, start due retries, and end the fetch at its deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.begin(now) {
            return;
        }
        if self.deadline.is_some_and(|d| now >= d) {
            self.finish(Err(true));
            return;
        }
        self.on_tick();
        self.end();
    }

    /// Stats so far (final ones travel in `Done`/`Failed`).
    pub fn stats(&self) -> &FetchStats {
        &self.stats
    }

    fn begin(&mut self, now: Instant) -> bool {
        // A driver handing an older instant must not move time backwards.
        self.now = self.now.max(now);
        !self.finished
    }

    /// After every input: reschedule what lost peers, finish on a verified dict, start
    /// queued peers, and fail once nothing is left to try.
    fn end(&mut self) {
        if self.result.is_none() {
            let groups = std::mem::take(&mut self.reschedule);
            for g in groups {
                self.schedule_group(g);
            }
        }
        if let Some(info) = self.result.take() {
            return self.finish(Ok(info));
        }
        self.launch();
        if self.source_done
            && self.pending.is_empty()
            && self.active == 0
            && self.retries.is_empty()
        {
            self.finish(Err(false));
        }
    }

    fn launch(&mut self) {
        while self.active < self.cfg.max_connections.max(1) {
            let Some(addr) = self.pending.pop_front() else {
                return;
            };
            let k = self.known.entry(addr).or_default();
            k.queued = false;
            k.active = true;
            k.attempts += 1;
            let peer = self.slots.len();
            self.slots.push(Slot {
                addr,
                phase: Phase::Connecting,
                ended: false,
                group: 0,
                joined: false,
                window: 0,
                outstanding: Vec::new(),
                supplied: Vec::new(),
                rejected: Vec::new(),
                blocks: 0,
                unrequested: 0,
                outcome: None,
            });
            self.active += 1;
            self.stats.tried += 1;
            self.actions.push_back(Action::Connect { peer, addr });
        }
    }

    /// Closes everything, fills in the per-peer reports and emits the final action.
    /// `Err(true)` is the deadline, `Err(false)` exhaustion.
    fn finish(&mut self, outcome: Result<Vec<u8>, bool>) {
        for idx in 0..self.slots.len() {
            self.close(idx, PeerOutcome::Unused);
        }
        self.stats.peers = self
            .slots
            .iter()
            .map(|s| PeerReport {
                addr: s.addr,
                outcome: s.outcome.clone().unwrap_or(PeerOutcome::Unused),
                blocks: s.blocks,
            })
            .collect();
        self.stats.elapsed = self.now.duration_since(self.started);
        let stats = std::mem::take(&mut self.stats);
        self.actions.push_back(match outcome {
            Ok(info) => Action::Done(Fetched {
                info: Bytes::from(info),
                stats,
            }),
            Err(true) => Action::Failed(FetchError::Timeout(stats)),
            Err(false) => Action::Failed(FetchError::Exhausted(stats)),
        });
        self.finished = true;
    }
}

impl Coordinator {
    /// Records why a peer ended, and closes its connection if still open.
    ///
    /// Outcomes only get more specific: a conviction overrides anything (the peer is banned
    /// and its blocks forgotten, even if it already left), `Supplied` overrides a plain
    /// failure, and anything else only fills an empty outcome.
    fn close(&mut self, idx: usize, outcome: PeerOutcome) {
        let slot = &mut self.slots[idx];
        let replace = match (&slot.outcome, &outcome) {
            (None, _) => true,
            (Some(PeerOutcome::Dropped(_)), _) => false,
            (Some(_), PeerOutcome::Dropped(_)) => true,
            (Some(PeerOutcome::Failed(_) | PeerOutcome::Unused), PeerOutcome::Supplied) => true,
            _ => false,
        };
        let convicted = replace && matches!(outcome, PeerOutcome::Dropped(_));
        if replace {
            slot.outcome = Some(outcome);
        }
        let (addr, group, joined) = (slot.addr, slot.group, slot.joined);
        // Whatever the peer had in flight, or vouched for before a conviction erased it, is
        // missing from its group again: the group's other peers are asked after this input.
        if joined && !self.reschedule.contains(&group) {
            self.reschedule.push(group);
        }
        if convicted {
            self.known.entry(addr).or_default().banned = true;
            if joined {
                self.groups[group].asm.remove_peer(idx);
            }
        }
        let slot = &mut self.slots[idx];
        if slot.phase == Phase::Closed {
            return;
        }
        slot.phase = Phase::Closed;
        if !slot.ended {
            self.actions.push_back(Action::Close { peer: idx });
        }
        let outstanding = std::mem::take(&mut slot.outstanding);
        self.active -= 1;
        if joined {
            let g = &mut self.groups[group];
            for (piece, _) in outstanding {
                let c = &mut g.in_flight[piece as usize];
                *c = c.saturating_sub(1);
            }
        }
        let k = self.known.entry(addr).or_default();
        k.active = false;
        k.last_failure = Some(self.now);
    }

    /// Closes a peer that could not be used and, if `retry` and attempts remain, schedules
    /// another attempt.
    fn fail(&mut self, idx: usize, why: impl Into<String>, retry: bool) {
        self.close(idx, PeerOutcome::Failed(why.into()));
        let addr = self.slots[idx].addr;
        let max_attempts = self.cfg.max_attempts.max(1);
        let k = self.known.entry(addr).or_default();
        if !retry || k.banned || k.retry_pending || k.attempts >= max_attempts {
            return;
        }
        let backoff = 2u32.saturating_pow(k.attempts.saturating_sub(1));
        // A retry too far off for `Instant` is no retry.
        let Some(at) =
            (self.cfg.retry_delay.checked_mul(backoff)).and_then(|d| self.now.checked_add(d))
        else {
            return;
        };
        k.retry_pending = true;
        self.retries.push((at, addr));
    }

    fn on_event(&mut self, idx: usize, ev: PeerEvent) {
        match ev {
            PeerEvent::Connected => {
                self.stats.connected += 1;
                self.slots[idx].phase = Phase::Handshaken(self.now);
            }
            PeerEvent::Ext {
                ut_metadata,
                metadata_size,
                reqq,
            } => self.on_ext(idx, ut_metadata, metadata_size, reqq),
            PeerEvent::Data {
                piece,
                total_size,
                data,
            } => self.on_data(idx, piece, total_size, data),
            PeerEvent::Reject { piece } => self.on_reject(idx, piece),
            PeerEvent::Malformed => self.close(idx, PeerOutcome::Dropped(Misbehavior::Malformed)),
            PeerEvent::Port => self.stats.ports_received += 1,
            PeerEvent::Closed { why, retry } => {
                self.slots[idx].ended = true;
                self.fail(idx, why, retry)
            }
        }
    }

    fn on_ext(
        &mut self,
        idx: usize,
        ut_metadata: bool,
        metadata_size: Option<u64>,
        reqq: Option<u32>,
    ) {
        if self.slots[idx].phase == Phase::Ready {
            let size = self.groups[self.slots[idx].group].asm.size();
            match (ut_metadata, metadata_size) {
                (false, _) => self.fail(idx, "peer disabled ut_metadata", false),
                (true, Some(s)) if s != size => self.close(
                    idx,
                    PeerOutcome::Dropped(Misbehavior::SizeChanged { from: size, to: s }),
                ),
                _ => {}
            }
            return;
        }
        if !ut_metadata {
            return self.fail(idx, "peer does not support ut_metadata", false);
        }
        let Some(size) = metadata_size else {
            // It may be fetching the metadata itself; ask again later.
            return self.fail(idx, "peer has no metadata (no metadata_size)", true);
        };
        if !valid_metadata_size(size) {
            return self.close(
                idx,
                PeerOutcome::Dropped(Misbehavior::AbsurdMetadataSize(size)),
            );
        }
        let group = match self.groups.iter().position(|g| g.asm.size() == size) {
            Some(g) => g,
            None if self.groups.len() < MAX_SIZE_GROUPS => {
                let Some(asm) = Assembly::new(self.info_hash, size) else {
                    return self.close(
                        idx,
                        PeerOutcome::Dropped(Misbehavior::AbsurdMetadataSize(size)),
                    );
                };
                let n = asm.num_pieces() as usize;
                self.groups.push(Group {
                    asm,
                    cross_check: false,
                    in_flight: vec![0; n],
                    last_request: vec![None; n],
                });
                self.groups.len() - 1
            }
            None => {
                return self.fail(idx, "too many conflicting metadata sizes", false);
            }
        };
        let n = self.groups[group].asm.num_pieces() as usize;
        let slot = &mut self.slots[idx];
        slot.phase = Phase::Ready;
        slot.group = group;
        slot.joined = true;
        let max_window = self.cfg.max_window.max(1);
        slot.window = reqq.map_or(max_window, |r| r as usize).clamp(1, max_window);
        slot.supplied = vec![false; n];
        slot.rejected = vec![false; n];
        self.schedule(idx);
    }

    fn on_data(&mut self, idx: usize, piece: u32, total_size: u64, data: Bytes) {
        let slot = &mut self.slots[idx];
        // Data before the extension handshake was never requested either.
        let requested = match slot.phase {
            Phase::Ready => slot.outstanding.iter().position(|&(p, _)| p == piece),
            _ => None,
        };
        let Some(pos) = requested else {
            // Unrequested (or a duplicate): not stored; tolerated up to a limit.
            slot.unrequested += 1;
            if slot.unrequested > MAX_UNREQUESTED {
                self.close(idx, PeerOutcome::Dropped(Misbehavior::Unrequested));
            }
            return;
        };
        let group = slot.group;
        let size = self.groups[group].asm.size();
        if total_size != size {
            return self.close(
                idx,
                PeerOutcome::Dropped(Misbehavior::WrongTotalSize {
                    advertised: size,
                    got: total_size,
                }),
            );
        }
        slot.outstanding.swap_remove(pos);
        let g = &mut self.groups[group];
        let c = &mut g.in_flight[piece as usize];
        *c = c.saturating_sub(1);
        if g.asm.stored_bytes() + data.len() > self.cfg.max_buffered {
            return self.fail(idx, "metadata buffer budget exhausted", false);
        }
        if let Err(e) = g.asm.add_block(idx, piece, data) {
            return self.close(idx, PeerOutcome::Dropped(Misbehavior::BadBlock(e)));
        }
        let slot = &mut self.slots[idx];
        slot.supplied[piece as usize] = true;
        slot.blocks += 1;
        self.verify(group);
        if self.result.is_none() {
            self.schedule_group(group);
        }
    }

    fn on_reject(&mut self, idx: usize, piece: u32) {
        let slot = &mut self.slots[idx];
        if slot.phase != Phase::Ready {
            return;
        }
        let Some(pos) = slot.outstanding.iter().position(|&(p, _)| p == piece) else {
            return;
        };
        slot.outstanding.swap_remove(pos);
        slot.rejected[piece as usize] = true;
        let group = slot.group;
        let c = &mut self.groups[group].in_flight[piece as usize];
        *c = c.saturating_sub(1);
        self.schedule(idx);
        let slot = &self.slots[idx];
        if slot.phase == Phase::Ready && slot.outstanding.is_empty() {
            let rejected = slot.rejected.iter().filter(|&&r| r).count();
            self.fail(
                idx,
                format!("peer rejected {rejected} metadata request(s)"),
                true,
            );
        }
        // The rejected piece is free again: the group's peers with room ask for it now.
        self.schedule_group(group);
    }

    fn verify(&mut self, group: usize) {
        match self.groups[group].asm.verify() {
            Verdict::Incomplete => {}
            Verdict::Failed { liars } => {
                self.stats.hash_failures += 1 + liars.len();
                for liar in liars {
                    self.close(liar, PeerOutcome::Dropped(Misbehavior::HashMismatch));
                }
                self.groups[group].cross_check = true;
            }
            Verdict::Verified {
                info,
                suppliers,
                liars,
            } => {
                self.stats.hash_failures += liars.len();
                for liar in liars {
                    self.close(liar, PeerOutcome::Dropped(Misbehavior::HashMismatch));
                }
                for s in suppliers {
                    self.close(s, PeerOutcome::Supplied);
                }
                let actual = self.groups[group].asm.size();
                for idx in 0..self.slots.len() {
                    let slot = &self.slots[idx];
                    if slot.phase == Phase::Ready && slot.group != group {
                        let advertised = self.groups[slot.group].asm.size();
                        self.close(
                            idx,
                            PeerOutcome::Dropped(Misbehavior::WrongMetadataSize {
                                advertised,
                                actual,
                            }),
                        );
                    }
                }
                self.result = Some(info);
            }
        }
    }

    fn schedule_group(&mut self, group: usize) {
        for idx in 0..self.slots.len() {
            if self.slots[idx].phase == Phase::Ready && self.slots[idx].group == group {
                self.schedule(idx);
            }
        }
    }

    /// Fills peer `idx`'s request window. See the module docs for the policy.
    fn schedule(&mut self, idx: usize) {
        let now = self.now;
        let steal_after = self.cfg.steal_after;
        let slot = &mut self.slots[idx];
        if slot.phase != Phase::Ready || slot.outstanding.len() >= slot.window {
            return;
        }
        let g = &mut self.groups[slot.group];
        let n = g.asm.num_pieces();
        let mut free = slot.window - slot.outstanding.len();
        let mut picks = Vec::new();
        let askable = |slot: &Slot, p: u32| {
            !slot.supplied[p as usize]
                && !slot.rejected[p as usize]
                && !slot.outstanding.iter().any(|&(q, _)| q == p)
        };
        if g.cross_check {
            for p in 0..n {
                if free == 0 {
                    break;
                }
                if askable(slot, p) {
                    picks.push(p);
                    free -= 1;
                }
            }
        } else {
            // Unrequested pieces first, then duplicates of requests that are slow to come.
            for pass in 0..2 {
                for p in 0..n {
                    if free == 0 {
                        break;
                    }
                    let i = p as usize;
                    if g.asm.has_candidate(p) || !askable(slot, p) || picks.contains(&p) {
                        continue;
                    }
                    let ok = if pass == 0 {
                        g.in_flight[i] == 0
                    } else {
                        g.in_flight[i] < 2
                            && g.last_request[i]
                                .is_some_and(|t| now.duration_since(t) >= steal_after)
                    };
                    if ok {
                        picks.push(p);
                        free -= 1;
                    }
                }
            }
        }
        if picks.is_empty() {
            return;
        }
        for &p in &picks {
            slot.outstanding.push((p, now));
            g.in_flight[p as usize] += 1;
            g.last_request[p as usize] = Some(now);
        }
        self.actions.push_back(Action::Request {
            peer: idx,
            pieces: picks,
        });
    }

    fn on_tick(&mut self) {
        let now = self.now;
        let mut i = 0;
        while i < self.retries.len() {
            if self.retries[i].0 > now {
                i += 1;
                continue;
            }
            let (_, addr) = self.retries.swap_remove(i);
            let k = self.known.entry(addr).or_default();
            k.retry_pending = false;
            if !(k.banned || k.active || k.queued) {
                k.queued = true;
                self.pending.push_back(addr);
            }
        }
        for idx in 0..self.slots.len() {
            let slot = &self.slots[idx];
            match slot.phase {
                Phase::Handshaken(at)
                    if now.duration_since(at) >= self.cfg.ext_handshake_timeout =>
                {
                    self.fail(idx, "no usable extension handshake", false);
                }
                Phase::Ready => {
                    let late = slot
                        .outstanding
                        .iter()
                        .any(|&(_, t)| now.duration_since(t) >= self.cfg.request_timeout);
                    if late {
                        let group = slot.group;
                        self.fail(idx, "metadata request timed out", true);
                        self.schedule_group(group);
                    } else {
                        self.schedule(idx);
                    }
                }
                _ => {}
            }
        }
        // A cross-checking group whose peers have all finished their copies without a
        // verdict needs no further action: new peers will join it as they connect.
    }
}

#[cfg(test)]
impl Coordinator {
    /// The outcome recorded for `peer` so far.
    fn outcome(&self, peer: PeerKey) -> Option<&PeerOutcome> {
        self.slots.get(peer)?.outcome.as_ref()
    }

    /// A ready peer with room in its window and a piece it should have been asked for: one
    /// nobody holds or is asked for (any it has not sent or rejected, when cross-checking).
    /// Without a periodic tick, every input that frees such work must schedule it at once.
    fn missed_request(&self) -> Option<(PeerKey, u32)> {
        if self.finished {
            return None;
        }
        for (idx, slot) in self.slots.iter().enumerate() {
            if slot.phase != Phase::Ready || slot.outstanding.len() >= slot.window {
                continue;
            }
            let g = &self.groups[slot.group];
            for p in 0..g.asm.num_pieces() {
                let i = p as usize;
                let askable = !slot.supplied[i]
                    && !slot.rejected[i]
                    && !slot.outstanding.iter().any(|&(q, _)| q == p);
                let wanted = g.cross_check || (!g.asm.has_candidate(p) && g.in_flight[i] == 0);
                if askable && wanted {
                    return Some((idx, p));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::BlockError;
    use crate::wire::{MAX_METADATA_SIZE, metadata_block_len};
    use sha1::{Digest, Sha1};

    const BLOCK: usize = 16 * 1024;
    const HOUR: Duration = Duration::from_secs(3600);

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 6881))
    }

    fn cfg() -> CoordinatorConfig {
        CoordinatorConfig::default()
    }

    /// A coordinator on a virtual clock, fetching a dict of `len` pseudo-random bytes (the
    /// coordinator only checks the SHA-1, so the bytes need not be bencode).
    struct Fx {
        co: Coordinator,
        now: Instant,
        info: Vec<u8>,
    }

    impl Fx {
        fn new(len: usize, cfg: CoordinatorConfig) -> Fx {
            let info: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let now = Instant::now();
            let hash = InfoHash(Sha1::digest(&info).into());
            Fx {
                co: Coordinator::new(hash, cfg, now),
                now,
                info,
            }
        }
        fn size(&self) -> u64 {
            self.info.len() as u64
        }
        fn advance(&mut self, d: Duration) {
            self.now += d;
        }
        fn actions(&mut self) -> Vec<Action> {
            std::iter::from_fn(|| self.co.poll_action()).collect()
        }
        fn offer(&mut self, n: u8) -> Vec<Action> {
            self.co.offer(self.now, addr(n));
            self.actions()
        }
        fn ev(&mut self, peer: PeerKey, ev: PeerEvent) -> Vec<Action> {
            self.co.handle(self.now, peer, ev);
            self.actions()
        }
        fn tick(&mut self) -> Vec<Action> {
            self.co.handle_timeout(self.now);
            self.actions()
        }
        /// Handshake and extension handshake claiming `size`.
        fn ready(&mut self, peer: PeerKey, size: u64) -> Vec<Action> {
            assert!(self.ev(peer, PeerEvent::Connected).is_empty());
            self.ev(
                peer,
                PeerEvent::Ext {
                    ut_metadata: true,
                    metadata_size: Some(size),
                    reqq: None,
                },
            )
        }
        fn block(&self, piece: u32) -> Bytes {
            let start = piece as usize * BLOCK;
            let end = (start + BLOCK).min(self.info.len());
            Bytes::copy_from_slice(&self.info[start..end])
        }
        /// Peer sends the true block `piece`.
        fn send(&mut self, peer: PeerKey, piece: u32) -> Vec<Action> {
            let ev = PeerEvent::Data {
                piece,
                total_size: self.size(),
                data: self.block(piece),
            };
            self.ev(peer, ev)
        }
        /// A three-piece dict, windows of two, no steals: peer 0 has been asked for pieces 0
        /// and 1, peer 1 for piece 2 and has one free slot.
        fn split3() -> Fx {
            let mut f = Fx::new(
                2 * BLOCK + 100,
                CoordinatorConfig {
                    max_window: 2,
                    steal_after: HOUR,
                    ..cfg()
                },
            );
            let size = f.size();
            f.offer(1);
            f.offer(2);
            assert_eq!(requests(&f.ready(0, size)), [(0, vec![0, 1])]);
            assert_eq!(requests(&f.ready(1, size)), [(1, vec![2])]);
            f
        }
        fn closed(&mut self, peer: PeerKey, retry: bool) -> Vec<Action> {
            let why = "connection reset".to_owned();
            self.ev(peer, PeerEvent::Closed { why, retry })
        }
    }

    fn connects(a: &[Action]) -> Vec<(PeerKey, SocketAddr)> {
        a.iter()
            .filter_map(|a| match a {
                Action::Connect { peer, addr } => Some((*peer, *addr)),
                _ => None,
            })
            .collect()
    }

    fn requests(a: &[Action]) -> Vec<(PeerKey, Vec<u32>)> {
        a.iter()
            .filter_map(|a| match a {
                Action::Request { peer, pieces } => Some((*peer, pieces.clone())),
                _ => None,
            })
            .collect()
    }

    fn closes(a: &[Action]) -> Vec<PeerKey> {
        a.iter()
            .filter_map(|a| match a {
                Action::Close { peer } => Some(*peer),
                _ => None,
            })
            .collect()
    }

    fn done(a: &[Action]) -> Option<&Fetched> {
        a.iter().find_map(|a| match a {
            Action::Done(f) => Some(f),
            _ => None,
        })
    }

    fn failed(a: &[Action]) -> Option<&FetchError> {
        a.iter().find_map(|a| match a {
            Action::Failed(e) => Some(e),
            _ => None,
        })
    }

    fn failed_with(why: &str) -> Option<PeerOutcome> {
        Some(PeerOutcome::Failed(why.to_owned()))
    }

    #[test]
    fn connection_limit_queues_candidates() {
        let mut f = Fx::new(
            100,
            CoordinatorConfig {
                max_connections: 2,
                ..cfg()
            },
        );
        assert_eq!(connects(&f.offer(1)), [(0, addr(1))]);
        assert_eq!(connects(&f.offer(2)), [(1, addr(2))]);
        assert!(
            f.offer(3).is_empty(),
            "third candidate waits for a free slot"
        );
        let a = f.closed(0, false);
        assert_eq!(connects(&a), [(2, addr(3))]);
        assert!(
            closes(&a).is_empty(),
            "a connection that ended needs no Close"
        );
        assert_eq!(f.co.stats().tried, 3);
    }

    #[test]
    fn duplicate_peers_are_deduplicated() {
        let mut f = Fx::new(
            100,
            CoordinatorConfig {
                max_connections: 1,
                ..cfg()
            },
        );
        assert_eq!(connects(&f.offer(1)).len(), 1);
        assert!(f.offer(1).is_empty(), "already connecting");
        assert!(f.offer(2).is_empty());
        assert!(f.offer(2).is_empty(), "already queued");
        assert_eq!(connects(&f.closed(0, false)), [(1, addr(2))]);
        assert!(f.offer(2).is_empty(), "already connected");
        assert_eq!(f.co.stats().found, 2);
        assert_eq!(f.co.stats().tried, 2);
    }

    #[test]
    fn failed_peer_is_retried_with_backoff() {
        let mut f = Fx::new(
            100,
            CoordinatorConfig {
                retry_delay: Duration::from_secs(1),
                max_attempts: 3,
                ..cfg()
            },
        );
        f.offer(1);
        assert!(f.closed(0, true).is_empty(), "no immediate reconnect");
        assert_eq!(f.co.poll_timeout(), Some(f.now + Duration::from_secs(1)));
        f.advance(Duration::from_millis(999));
        assert!(f.tick().is_empty());
        f.advance(Duration::from_millis(1));
        assert_eq!(connects(&f.tick()), [(1, addr(1))]);
        f.closed(1, true);
        // The second retry waits twice as long.
        assert_eq!(f.co.poll_timeout(), Some(f.now + Duration::from_secs(2)));
        f.advance(Duration::from_millis(1999));
        assert!(f.tick().is_empty());
        f.advance(Duration::from_millis(1));
        assert_eq!(connects(&f.tick()), [(2, addr(1))]);
        // Attempts are used up: neither a timer nor a new offer brings it back.
        assert!(f.closed(2, true).is_empty());
        assert_eq!(f.co.poll_timeout(), None);
        f.advance(HOUR);
        assert!(f.offer(1).is_empty());
        f.co.source_ended(f.now);
        let a = f.actions();
        let Some(FetchError::Exhausted(stats)) = failed(&a) else {
            panic!("expected exhaustion: {a:?}");
        };
        assert_eq!((stats.found, stats.tried), (1, 3));
    }

    #[test]
    fn reoffered_peer_waits_retry_delay() {
        let mut f = Fx::new(100, cfg());
        f.offer(1);
        f.closed(0, false);
        f.advance(cfg().retry_delay - Duration::from_millis(1));
        assert!(f.offer(1).is_empty(), "failed too recently");
        f.advance(Duration::from_millis(1));
        assert_eq!(connects(&f.offer(1)), [(1, addr(1))]);
        assert_eq!(f.co.stats().found, 1);
    }

    #[test]
    fn permanent_failure_is_not_retried() {
        let mut f = Fx::new(100, cfg());
        f.offer(1);
        f.closed(0, false);
        assert_eq!(f.co.poll_timeout(), None);
        f.advance(HOUR);
        assert!(f.tick().is_empty());
        f.co.source_ended(f.now);
        let a = f.actions();
        let Some(FetchError::Exhausted(stats)) = failed(&a) else {
            panic!("expected exhaustion: {a:?}");
        };
        assert_eq!(
            stats.peers[0].outcome,
            failed_with("connection reset").unwrap()
        );
    }

    #[test]
    fn missing_ext_handshake_times_out() {
        let mut f = Fx::new(100, cfg());
        f.offer(1);
        f.ev(0, PeerEvent::Connected);
        let due = f.now + cfg().ext_handshake_timeout;
        assert_eq!(f.co.poll_timeout(), Some(due));
        f.advance(cfg().ext_handshake_timeout - Duration::from_millis(1));
        assert!(f.tick().is_empty());
        f.advance(Duration::from_millis(1));
        assert_eq!(closes(&f.tick()), [0]);
        assert_eq!(
            f.co.outcome(0).cloned(),
            failed_with("no usable extension handshake")
        );
        assert_eq!(f.co.poll_timeout(), None, "not retried");
    }

    #[test]
    fn peer_without_ut_metadata_or_size_is_not_used() {
        let mut f = Fx::new(100, cfg());
        f.offer(1);
        f.offer(2);
        f.ev(0, PeerEvent::Connected);
        let no_ut = PeerEvent::Ext {
            ut_metadata: false,
            metadata_size: Some(100),
            reqq: None,
        };
        assert_eq!(closes(&f.ev(0, no_ut)), [0]);
        assert_eq!(
            f.co.outcome(0).cloned(),
            failed_with("peer does not support ut_metadata")
        );
        f.ev(1, PeerEvent::Connected);
        let no_size = PeerEvent::Ext {
            ut_metadata: true,
            metadata_size: None,
            reqq: None,
        };
        assert_eq!(closes(&f.ev(1, no_size)), [1]);
        // It may be fetching the metadata itself: asked again later, the other one never.
        assert_eq!(f.co.poll_timeout(), Some(f.now + cfg().retry_delay));
        f.advance(cfg().retry_delay);
        assert_eq!(connects(&f.tick()), [(2, addr(2))]);
    }

    #[test]
    fn absurd_metadata_size_drops_peer() {
        let mut f = Fx::new(100, cfg());
        f.offer(1);
        f.offer(2);
        for (peer, size) in [(0, 0), (1, MAX_METADATA_SIZE + 1)] {
            assert_eq!(closes(&f.ready(peer, size)), [peer]);
            assert_eq!(
                f.co.outcome(peer).cloned(),
                Some(PeerOutcome::Dropped(Misbehavior::AbsurdMetadataSize(size)))
            );
        }
        assert!(
            f.co.groups.is_empty(),
            "nothing allocated for a hostile size"
        );
        assert_eq!(f.co.poll_timeout(), None);
    }

    #[test]
    fn banned_peer_is_not_reconnected() {
        let mut f = Fx::new(100, cfg());
        f.offer(1);
        f.ready(0, 0);
        f.advance(HOUR);
        assert!(f.offer(1).is_empty());
        assert!(f.tick().is_empty());
        assert_eq!(f.co.stats().tried, 1);
    }

    #[test]
    fn changed_metadata_size_drops_peer() {
        let mut f = Fx::new(100, cfg());
        f.offer(1);
        assert_eq!(requests(&f.ready(0, 100)), [(0, vec![0])]);
        let changed = PeerEvent::Ext {
            ut_metadata: true,
            metadata_size: Some(101),
            reqq: None,
        };
        assert_eq!(closes(&f.ev(0, changed)), [0]);
        assert_eq!(
            f.co.outcome(0).cloned(),
            Some(PeerOutcome::Dropped(Misbehavior::SizeChanged {
                from: 100,
                to: 101
            }))
        );
    }

    #[test]
    fn pieces_are_spread_then_slow_ones_stolen() {
        let mut f = Fx::new(
            BLOCK + 100,
            CoordinatorConfig {
                max_window: 1,
                ..cfg()
            },
        );
        let size = f.size();
        f.offer(1);
        f.offer(2);
        assert_eq!(requests(&f.ready(0, size)), [(0, vec![0])]);
        let asked = f.now;
        assert_eq!(requests(&f.ready(1, size)), [(1, vec![1])]);
        // Peer 0 is done with piece 0; piece 1 is with peer 1 and not yet slow.
        assert!(requests(&f.send(0, 0)).is_empty());
        let steal = asked + cfg().steal_after;
        assert_eq!(f.co.poll_timeout(), Some(steal));
        f.now = steal - Duration::from_millis(1);
        assert!(f.tick().is_empty());
        f.now = steal;
        assert_eq!(requests(&f.tick()), [(0, vec![1])]);
        // Once stolen, the steal timer is spent: only the request timeouts remain.
        assert_eq!(f.co.poll_timeout(), Some(asked + cfg().request_timeout));
        let a = f.send(0, 1);
        assert_eq!(done(&a).map(|d| d.info.to_vec()), Some(f.info.clone()));
    }

    #[test]
    fn window_follows_reqq() {
        let mut f = Fx::new(5 * BLOCK, cfg());
        let size = f.size();
        f.offer(1);
        f.offer(2);
        f.ev(0, PeerEvent::Connected);
        let ext = |reqq| PeerEvent::Ext {
            ut_metadata: true,
            metadata_size: Some(size),
            reqq: Some(reqq),
        };
        assert_eq!(requests(&f.ev(0, ext(2))), [(0, vec![0, 1])]);
        f.ev(1, PeerEvent::Connected);
        assert_eq!(
            requests(&f.ev(1, ext(0))),
            [(1, vec![2])],
            "reqq 0 still allows one"
        );
    }

    #[test]
    fn request_timeout_fails_peer_and_reassigns() {
        let mut f = Fx::split3();
        let asked = f.now;
        f.advance(Duration::from_secs(1));
        assert!(
            requests(&f.send(1, 2)).is_empty(),
            "the rest is with peer 0"
        );
        assert_eq!(f.co.poll_timeout(), Some(asked + cfg().request_timeout));
        f.now = asked + cfg().request_timeout - Duration::from_millis(1);
        assert!(f.tick().is_empty());
        f.now = asked + cfg().request_timeout;
        let a = f.tick();
        assert_eq!(closes(&a), [0]);
        assert_eq!(
            requests(&a),
            [(1, vec![0, 1])],
            "the slow peer's pieces go to the other"
        );
        assert_eq!(
            f.co.outcome(0).cloned(),
            failed_with("metadata request timed out")
        );
        // Too slow may pass: it gets another attempt.
        assert!(f.co.retries.iter().any(|&(_, a)| a == addr(1)));
    }

    #[test]
    fn reject_asks_another_peer() {
        let mut f = Fx::new(
            BLOCK + 100,
            CoordinatorConfig {
                max_window: 1,
                steal_after: HOUR,
                ..cfg()
            },
        );
        let size = f.size();
        f.offer(1);
        f.offer(2);
        f.ready(0, size);
        f.ready(1, size);
        let a = f.ev(0, PeerEvent::Reject { piece: 0 });
        assert_eq!(closes(&a), [0], "rejected everything it was asked");
        assert_eq!(
            f.co.outcome(0).cloned(),
            failed_with("peer rejected 1 metadata request(s)")
        );
        assert!(
            f.co.retries.iter().any(|&(_, a)| a == addr(1)),
            "may have it later"
        );
        assert_eq!(requests(&f.send(1, 1)), [(1, vec![0])]);
        assert!(done(&f.send(1, 0)).is_some());
    }

    #[test]
    fn rejected_piece_goes_to_a_peer_with_room_at_once() {
        let mut f = Fx::split3();
        // Peer 0 still has piece 1 in flight, so it stays; peer 1 has a free slot.
        let a = f.ev(0, PeerEvent::Reject { piece: 0 });
        assert!(closes(&a).is_empty());
        assert_eq!(requests(&a), [(1, vec![0])]);
    }

    #[test]
    fn disconnect_mid_transfer_rerequests_its_pieces() {
        let mut f = Fx::split3();
        assert!(
            requests(&f.send(1, 2)).is_empty(),
            "the rest is with peer 0"
        );
        let a = f.closed(0, true);
        assert_eq!(requests(&a), [(1, vec![0, 1])]);
        assert!(closes(&a).is_empty());
        f.send(1, 0);
        assert!(done(&f.send(1, 1)).is_some());
    }

    #[test]
    fn wrong_total_size_drops_peer() {
        let mut f = Fx::new(100, cfg());
        f.offer(1);
        f.ready(0, 100);
        let data = f.block(0);
        let a = f.ev(
            0,
            PeerEvent::Data {
                piece: 0,
                total_size: 99,
                data,
            },
        );
        assert_eq!(closes(&a), [0]);
        assert_eq!(
            f.co.outcome(0).cloned(),
            Some(PeerOutcome::Dropped(Misbehavior::WrongTotalSize {
                advertised: 100,
                got: 99
            }))
        );
    }

    #[test]
    fn wrong_block_drops_peer() {
        let mut f = Fx::new(100, cfg());
        f.offer(1);
        f.offer(2);
        f.ready(0, 100);
        f.ready(1, 100);
        let a = f.ev(
            0,
            PeerEvent::Data {
                piece: 0,
                total_size: 100,
                data: Bytes::from(vec![0; 99]),
            },
        );
        assert_eq!(closes(&a), [0]);
        assert_eq!(requests(&a), [(1, vec![0])], "asked of the other peer");
        let bad = BlockError::BadLength {
            piece: 0,
            expected: 100,
            got: 99,
        };
        assert_eq!(
            f.co.outcome(0).cloned(),
            Some(PeerOutcome::Dropped(Misbehavior::BadBlock(bad)))
        );
    }

    #[test]
    fn unrequested_flood_drops_peer() {
        let mut f = Fx::new(
            BLOCK + 100,
            CoordinatorConfig {
                max_window: 1,
                ..cfg()
            },
        );
        let size = f.size();
        f.offer(1);
        f.ready(0, size);
        for _ in 0..MAX_UNREQUESTED {
            assert!(closes(&f.send(0, 1)).is_empty(), "a few are tolerated");
        }
        assert_eq!(closes(&f.send(0, 1)), [0]);
        assert_eq!(
            f.co.outcome(0).cloned(),
            Some(PeerOutcome::Dropped(Misbehavior::Unrequested))
        );
        assert!(
            !f.co.groups[0].asm.has_candidate(1),
            "unrequested blocks are not stored"
        );
    }

    #[test]
    fn malformed_message_drops_peer() {
        let mut f = Fx::new(100, cfg());
        f.offer(1);
        f.ready(0, 100);
        assert_eq!(closes(&f.ev(0, PeerEvent::Malformed)), [0]);
        assert_eq!(
            f.co.outcome(0).cloned(),
            Some(PeerOutcome::Dropped(Misbehavior::Malformed))
        );
    }

    #[test]
    fn buffer_budget_stops_storing() {
        let mut f = Fx::new(
            BLOCK + 100,
            CoordinatorConfig {
                max_buffered: BLOCK,
                ..cfg()
            },
        );
        let size = f.size();
        f.offer(1);
        assert_eq!(requests(&f.ready(0, size)), [(0, vec![0, 1])]);
        assert!(f.send(0, 0).is_empty());
        assert_eq!(closes(&f.send(0, 1)), [0]);
        assert_eq!(
            f.co.outcome(0).cloned(),
            failed_with("metadata buffer budget exhausted")
        );
        assert_eq!(f.co.groups[0].asm.stored_bytes(), BLOCK);
    }

    #[test]
    fn too_many_size_groups_refuses_peer() {
        let mut f = Fx::new(100, cfg());
        for n in 0..=MAX_SIZE_GROUPS as u8 {
            f.offer(n);
        }
        for peer in 0..MAX_SIZE_GROUPS {
            assert_eq!(requests(&f.ready(peer, 100 + peer as u64)).len(), 1);
        }
        let last = MAX_SIZE_GROUPS;
        assert_eq!(closes(&f.ready(last, 200)), [last]);
        assert_eq!(
            f.co.outcome(last).cloned(),
            failed_with("too many conflicting metadata sizes")
        );
        assert_eq!(f.co.groups.len(), MAX_SIZE_GROUPS);
    }

    #[test]
    fn lying_size_group_is_blamed() {
        let mut f = Fx::new(100, cfg());
        f.offer(1);
        f.offer(2);
        // The liar claims 50 bytes, forming a group of its own.
        assert_eq!(requests(&f.ready(0, 50)), [(0, vec![0])]);
        assert_eq!(requests(&f.ready(1, 100)), [(1, vec![0])]);
        let junk = PeerEvent::Data {
            piece: 0,
            total_size: 50,
            data: Bytes::from(vec![7; 50]),
        };
        // Its complete copy fails the hash check: it alone is blamed.
        assert_eq!(closes(&f.ev(0, junk)), [0]);
        assert!(f.co.stats().hash_failures >= 1);
        f.advance(HOUR);
        assert!(f.offer(1).is_empty(), "banned");
        let a = f.send(1, 0);
        let fetched = done(&a).expect("the honest group verifies");
        assert_eq!(fetched.info.to_vec(), f.info);
        assert_eq!(
            fetched.stats.peers[0].outcome,
            PeerOutcome::Dropped(Misbehavior::HashMismatch)
        );
        assert_eq!(fetched.stats.peers[1].outcome, PeerOutcome::Supplied);
        assert_eq!(fetched.stats.suppliers().collect::<Vec<_>>(), [addr(2)]);
    }

    #[test]
    fn size_groups_other_groups_dropped_on_success() {
        let mut f = Fx::new(100, cfg());
        f.offer(1);
        f.offer(2);
        f.ready(0, 200);
        f.ready(1, 100);
        let a = f.send(1, 0);
        let fetched = done(&a).expect("verified");
        assert_eq!(closes(&a), [1, 0]);
        let wrong = Misbehavior::WrongMetadataSize {
            advertised: 200,
            actual: 100,
        };
        assert_eq!(fetched.stats.peers[0].outcome, PeerOutcome::Dropped(wrong));
    }

    #[test]
    fn lying_block_is_found_by_cross_check() {
        let mut f = Fx::new(
            BLOCK + 100,
            CoordinatorConfig {
                max_window: 1,
                steal_after: HOUR,
                ..cfg()
            },
        );
        let size = f.size();
        f.offer(1);
        f.offer(2);
        assert_eq!(requests(&f.ready(0, size)), [(0, vec![0])]);
        assert_eq!(requests(&f.ready(1, size)), [(1, vec![1])]);
        let lie = PeerEvent::Data {
            piece: 0,
            total_size: size,
            data: Bytes::from(vec![0xAA; BLOCK]),
        };
        assert!(requests(&f.ev(0, lie)).is_empty());
        // All pieces present, the combination fails, nobody has a full copy yet: every
        // peer is asked for what it has not sent.
        let a = f.send(1, 1);
        assert_eq!(f.co.stats().hash_failures, 1);
        assert!(f.co.groups[0].cross_check);
        assert_eq!(requests(&a), [(0, vec![1]), (1, vec![0])]);
        let a = f.send(1, 0);
        let fetched = done(&a).expect("peer 1's own copy verifies");
        assert_eq!(fetched.info.to_vec(), f.info);
        assert_eq!(
            fetched.stats.peers[0].outcome,
            PeerOutcome::Dropped(Misbehavior::HashMismatch)
        );
        assert_eq!(fetched.stats.peers[1].outcome, PeerOutcome::Supplied);
    }

    #[test]
    fn deadline_fails_fetch() {
        let mut f = Fx::new(
            100,
            CoordinatorConfig {
                timeout: Some(Duration::from_secs(10)),
                ext_handshake_timeout: HOUR,
                ..cfg()
            },
        );
        let deadline = f.now + Duration::from_secs(10);
        f.offer(1);
        f.ev(0, PeerEvent::Connected);
        assert_eq!(f.co.poll_timeout(), Some(deadline));
        f.now = deadline;
        let a = f.tick();
        assert_eq!(closes(&a), [0]);
        let Some(FetchError::Timeout(stats)) = failed(&a) else {
            panic!("expected a timeout: {a:?}");
        };
        // clock-ok: virtual time; `elapsed` is computed from the instants the test passes in.
        assert_eq!(stats.elapsed, Duration::from_secs(10));
        assert!(
            matches!(a.last(), Some(Action::Failed(_))),
            "the final action is last"
        );
        assert_eq!(f.co.poll_timeout(), None);
        assert!(f.offer(2).is_empty());
    }

    #[test]
    fn exhausted_when_source_ends_and_peers_fail() {
        let mut f = Fx::new(100, cfg());
        f.offer(1);
        f.co.source_ended(f.now);
        assert!(f.actions().is_empty(), "a peer is still connecting");
        let a = f.closed(0, false);
        assert!(matches!(failed(&a), Some(FetchError::Exhausted(_))));
    }

    #[test]
    fn success_is_done_once_and_closes_the_rest() {
        let mut f = Fx::new(100, cfg());
        f.offer(1);
        f.offer(2);
        f.offer(3);
        assert_eq!(requests(&f.ready(0, 100)), [(0, vec![0])]);
        assert!(
            requests(&f.ready(1, 100)).is_empty(),
            "the only piece is asked already"
        );
        let a = f.send(0, 0);
        assert_eq!(closes(&a), [0, 1, 2]);
        assert_eq!(a.iter().filter(|a| matches!(a, Action::Done(_))).count(), 1);
        assert!(matches!(a.last(), Some(Action::Done(_))));
        let outcomes: Vec<_> = done(&a)
            .unwrap()
            .stats
            .peers
            .iter()
            .map(|p| p.outcome.clone())
            .collect();
        assert_eq!(
            outcomes,
            [
                PeerOutcome::Supplied,
                PeerOutcome::Unused,
                PeerOutcome::Unused
            ]
        );
        // Nothing after the end.
        assert!(f.send(1, 0).is_empty());
        assert!(f.offer(4).is_empty());
        f.advance(HOUR);
        assert!(f.tick().is_empty());
        f.co.source_ended(f.now);
        assert!(f.actions().is_empty());
        assert_eq!(f.co.poll_timeout(), None);
    }

    #[test]
    fn huge_durations_do_not_panic() {
        let mut f = Fx::new(
            BLOCK + 100,
            CoordinatorConfig {
                max_window: 1,
                ext_handshake_timeout: Duration::MAX,
                request_timeout: Duration::MAX,
                steal_after: Duration::MAX,
                timeout: Some(Duration::MAX),
                retry_delay: Duration::MAX,
                ..cfg()
            },
        );
        let size = f.size();
        f.offer(1);
        f.offer(2);
        f.offer(3);
        f.ev(0, PeerEvent::Connected);
        assert_eq!(f.co.poll_timeout(), None, "no timer can come");
        f.ready(1, size);
        f.ready(2, size);
        f.closed(0, true);
        assert_eq!(f.co.poll_timeout(), None);
        assert!(f.tick().is_empty());
        f.send(1, 0);
        assert!(done(&f.send(2, 1)).is_some());
    }

    #[test]
    fn unknown_peer_inputs_are_ignored() {
        let mut f = Fx::new(100, cfg());
        f.offer(1);
        assert!(f.send(7, 0).is_empty());
        assert!(f.closed(usize::MAX, true).is_empty());
        // Data before the extension handshake, for pieces that do not exist.
        let ev = PeerEvent::Data {
            piece: u32::MAX,
            total_size: u64::MAX,
            data: Bytes::new(),
        };
        assert!(f.ev(0, ev).is_empty());
        assert!(f.ev(0, PeerEvent::Reject { piece: u32::MAX }).is_empty());
        f.closed(0, false);
        assert!(f.send(0, 0).is_empty(), "a closed peer is not heard");
        assert_eq!(f.co.stats().tried, 1);
    }

    /// Checks one input's actions for `random_inputs_keep_invariants`.
    fn check(
        seed: u64,
        max_connections: usize,
        f: &Fx,
        a: Vec<Action>,
        open: &mut std::collections::BTreeSet<PeerKey>,
        ended: &mut Option<bool>,
    ) {
        for act in &a {
            assert!(
                ended.is_none(),
                "seed {seed}: action after the end: {act:?}"
            );
            match act {
                Action::Connect { peer, .. } => {
                    open.insert(*peer);
                }
                Action::Close { peer } => {
                    open.remove(peer);
                }
                Action::Request { peer, .. } => {
                    assert!(open.contains(peer), "seed {seed}: request to closed {peer}")
                }
                Action::Done(d) => {
                    assert_eq!(d.info.to_vec(), f.info, "seed {seed}");
                    *ended = Some(true);
                }
                Action::Failed(_) => *ended = Some(false),
            }
        }
        assert!(f.co.active <= max_connections, "seed {seed}");
        let missed = f.co.missed_request();
        assert_eq!(missed, None, "seed {seed}: (peer, piece) left unasked");
        assert!(open.len() <= max_connections, "seed {seed}");
    }

    /// Random inputs from many seeds, checking what every rule above relies on: no panic,
    /// no more than `max_connections` open, no request to a closed peer, at most one final
    /// action and nothing after it, a timer that never stays due after `handle_timeout`
    /// (the driver would spin), and that a source that ends with every peer gone always
    /// reaches the final action.
    #[test]
    fn random_inputs_keep_invariants() {
        use rand::rngs::StdRng;
        use rand::{RngExt, SeedableRng};
        let mut dones = 0;
        for seed in 0..300u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let max_connections = rng.random_range(1..4usize);
            let mut f = Fx::new(
                2 * BLOCK + 100,
                CoordinatorConfig {
                    max_connections,
                    max_window: rng.random_range(1..4usize),
                    timeout: rng.random_bool(0.3).then_some(Duration::from_secs(30)),
                    ..cfg()
                },
            );
            let size = f.size();
            let mut open = std::collections::BTreeSet::new();
            let mut ended = None;
            for _ in 0..300 {
                // Mostly peers that are open, sometimes any key (stale or unknown).
                let peer = match open.iter().nth(rng.random_range(0..open.len() + 1)) {
                    Some(&p) if rng.random_bool(0.8) => p,
                    _ => rng.random_range(0..f.co.slots.len() + 2),
                };
                // The honest answer to the peer's oldest request, when it has one.
                let honest = f.co.slots.get(peer).and_then(|s| s.outstanding.first());
                let ev = match (rng.random_range(0..20), honest) {
                    (0..2, _) => PeerEvent::Connected,
                    (2..5, _) => PeerEvent::Ext {
                        ut_metadata: rng.random_bool(0.95),
                        metadata_size: [Some(size), Some(size), Some(size + 1), Some(0), None]
                            [rng.random_range(0..5)],
                        reqq: rng.random_bool(0.5).then(|| rng.random_range(0..4)),
                    },
                    (5..12, Some(&(piece, _))) => PeerEvent::Data {
                        piece,
                        total_size: size,
                        data: f.block(piece),
                    },
                    (5..15, _) => {
                        let piece = rng.random_range(0..4);
                        let data = match rng.random_range(0..4) {
                            0 => Bytes::from(vec![1; BLOCK]),
                            1 => Bytes::from(vec![2; 7]),
                            _ if piece < 3 => f.block(piece),
                            _ => Bytes::new(),
                        };
                        let total_size = if rng.random_bool(0.9) { size } else { size + 1 };
                        PeerEvent::Data {
                            piece,
                            total_size,
                            data,
                        }
                    }
                    (15, _) => PeerEvent::Reject {
                        piece: rng.random_range(0..4),
                    },
                    (16, _) => PeerEvent::Malformed,
                    (17, _) => PeerEvent::Port,
                    _ => PeerEvent::Closed {
                        why: "gone".into(),
                        retry: rng.random_bool(0.5),
                    },
                };
                match rng.random_range(0..10) {
                    0..3 => {
                        let a = f.offer(rng.random_range(1..8));
                        check(seed, max_connections, &f, a, &mut open, &mut ended);
                    }
                    3..8 => {
                        let is_closed = matches!(ev, PeerEvent::Closed { .. });
                        let a = f.ev(peer, ev);
                        if is_closed {
                            open.remove(&peer);
                        }
                        check(seed, max_connections, &f, a, &mut open, &mut ended);
                    }
                    _ => {
                        f.advance(Duration::from_millis(rng.random_range(0..3000)));
                        if f.co.poll_timeout().is_some_and(|t| t <= f.now) {
                            let a = f.tick();
                            check(seed, max_connections, &f, a, &mut open, &mut ended);
                            if let Some(t) = f.co.poll_timeout() {
                                assert!(t > f.now, "seed {seed}: timer still due after handling");
                            }
                        }
                    }
                }
            }
            // Wind down: the source ends and every connection fails as soon as it opens.
            f.co.source_ended(f.now);
            let a = f.actions();
            check(seed, max_connections, &f, a, &mut open, &mut ended);
            for _ in 0..1000 {
                if ended.is_some() {
                    break;
                }
                for peer in std::mem::take(&mut open) {
                    let a = f.closed(peer, true);
                    check(seed, max_connections, &f, a, &mut open, &mut ended);
                }
                if let Some(t) = f.co.poll_timeout() {
                    f.now = f.now.max(t);
                    let a = f.tick();
                    check(seed, max_connections, &f, a, &mut open, &mut ended);
                }
            }
            assert!(ended.is_some(), "seed {seed}: never reached a final action");
            dones += usize::from(ended == Some(true));
        }
        // The inputs are not all noise: true blocks do get a dict verified now and then.
        assert!(dones >= 30, "only {dones} of 300 seeds verified the dict");
    }

    /// The `n` of [`addr`]`(n)`.
    fn index(a: SocketAddr) -> usize {
        match a.ip() {
            std::net::IpAddr::V4(ip) => usize::from(ip.octets()[3]),
            std::net::IpAddr::V6(_) => unreachable!("the tests use IPv4"),
        }
    }

    /// How a simulated peer of `simulated_swarms_verify_and_blame_only_liars` behaves.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Honest,
        /// Sends junk of the right length for this piece, the truth for the others.
        LiesOn(u32),
        /// Claims the dict is one byte longer and sends junk for it.
        WrongSize,
        /// Rejects every request.
        Rejects,
        /// Completes the handshakes, then never answers.
        Silent,
        /// Disconnects when first asked.
        Drops,
    }

    /// Whole fetches against simulated swarms on the virtual clock: a random mix of the
    /// behaviours above (at least one honest peer), random latencies, connection limits and
    /// windows. Every fetch must end with the true dict, and only liars may be dropped.
    #[test]
    fn simulated_swarms_verify_and_blame_only_liars() {
        use rand::rngs::StdRng;
        use rand::{RngExt, SeedableRng};
        // Seeds in which a block liar was convicted, a size liar dropped, a peer retried.
        let (mut convicted, mut wrong_size, mut retried) = (0, 0, 0);
        for seed in 0..200u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut f = Fx::new(
                2 * BLOCK + 100,
                CoordinatorConfig {
                    max_connections: rng.random_range(1..4usize),
                    max_window: rng.random_range(1..4usize),
                    ..cfg()
                },
            );
            let size = f.size();
            let n = rng.random_range(2..7u8);
            let honest = rng.random_range(0..n);
            let kinds: Vec<Kind> = (0..n)
                .map(|i| match rng.random_range(0..6) {
                    _ if i == honest => Kind::Honest,
                    0 => Kind::Honest,
                    1 => Kind::LiesOn(rng.random_range(0..3)),
                    2 => Kind::WrongSize,
                    3 => Kind::Rejects,
                    4 => Kind::Silent,
                    _ => Kind::Drops,
                })
                .collect();
            let latency: Vec<Duration> = (0..n)
                .map(|_| Duration::from_millis(rng.random_range(1..1500)))
                .collect();
            // Peer key -> index into `kinds`, and events in flight to the coordinator.
            let mut who: HashMap<PeerKey, usize> = HashMap::new();
            let mut wire: Vec<(Instant, PeerKey, PeerEvent)> = Vec::new();
            let mut result = None;
            for i in 0..n {
                f.co.offer(f.now, addr(i));
            }
            f.co.source_ended(f.now);
            for _ in 0..100_000 {
                for action in f.actions() {
                    match action {
                        Action::Connect { peer, addr } => {
                            let i = index(addr);
                            who.insert(peer, i);
                            let (kind, d) = (kinds[i], latency[i]);
                            let claimed = if kind == Kind::WrongSize {
                                size + 1
                            } else {
                                size
                            };
                            wire.push((f.now + d, peer, PeerEvent::Connected));
                            let ext = PeerEvent::Ext {
                                ut_metadata: true,
                                metadata_size: Some(claimed),
                                reqq: None,
                            };
                            wire.push((f.now + 2 * d, peer, ext));
                        }
                        Action::Request { peer, pieces } => {
                            let (kind, d) = (kinds[who[&peer]], latency[who[&peer]]);
                            for piece in pieces {
                                let ev = match kind {
                                    Kind::Honest => PeerEvent::Data {
                                        piece,
                                        total_size: size,
                                        data: f.block(piece),
                                    },
                                    Kind::LiesOn(p) => PeerEvent::Data {
                                        piece,
                                        total_size: size,
                                        data: if p == piece {
                                            Bytes::from(vec![0xEE; f.block(piece).len()])
                                        } else {
                                            f.block(piece)
                                        },
                                    },
                                    Kind::WrongSize => {
                                        let len = metadata_block_len(piece, size + 1).unwrap();
                                        PeerEvent::Data {
                                            piece,
                                            total_size: size + 1,
                                            data: Bytes::from(vec![0xEE; len]),
                                        }
                                    }
                                    Kind::Rejects => PeerEvent::Reject { piece },
                                    Kind::Silent => continue,
                                    Kind::Drops => PeerEvent::Closed {
                                        why: "connection reset".into(),
                                        retry: true,
                                    },
                                };
                                wire.push((f.now + d, peer, ev));
                            }
                        }
                        Action::Close { peer } => wire.retain(|&(_, p, _)| p != peer),
                        Action::Done(d) => result = Some(Ok(d)),
                        Action::Failed(e) => result = Some(Err(e)),
                    }
                }
                if result.is_some() {
                    break;
                }
                // The next thing to happen: a message arriving, or the coordinator's timer.
                let next_msg = wire.iter().map(|w| w.0).min();
                let timer = f.co.poll_timeout();
                let message_first = match (next_msg, timer) {
                    (Some(m), Some(t)) => m <= t,
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (None, None) => panic!("seed {seed}: stalled with {kinds:?}"),
                };
                if message_first {
                    let m = next_msg.unwrap();
                    let i = wire.iter().position(|w| w.0 == m).unwrap();
                    let (at, peer, ev) = wire.remove(i);
                    f.now = f.now.max(at);
                    f.co.handle(f.now, peer, ev);
                } else if let Some(t) = timer {
                    f.now = f.now.max(t);
                    f.co.handle_timeout(f.now);
                }
            }
            let fetched = match result {
                Some(Ok(d)) => d,
                other => panic!("seed {seed} {kinds:?}: {other:?}"),
            };
            assert_eq!(fetched.info.to_vec(), f.info, "seed {seed}");
            let st = &fetched.stats;
            convicted += usize::from(st.dropped().any(|(a, m)| {
                *m == Misbehavior::HashMismatch && kinds[index(a)] != Kind::WrongSize
            }));
            wrong_size += usize::from(
                st.dropped()
                    .any(|(a, _)| kinds[index(a)] == Kind::WrongSize),
            );
            retried += usize::from(st.tried > st.found);
            for p in &fetched.stats.peers {
                let kind = kinds[index(p.addr)];
                if let PeerOutcome::Dropped(why) = &p.outcome {
                    assert!(
                        matches!(kind, Kind::LiesOn(_) | Kind::WrongSize),
                        "seed {seed}: {kind:?} peer dropped: {why}"
                    );
                }
            }
        }
        // The mix exercised what it is for (deterministic seeds: these are fixed counts).
        assert!(
            convicted >= 10 && wrong_size >= 10 && retried >= 5,
            "{convicted} {wrong_size} {retried}"
        );
    }
}
