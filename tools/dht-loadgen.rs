//! `dht-loadgen`: loopback load generation for DHT nodes.
//!
//! * `echo`: a plain UDP echo server, the reference ceiling for "queries served per second":
//!   it has the same shape as our node's driver (a tokio current-thread runtime, one task
//!   owning the socket, an awaited receive followed by a batch of `try_recv_from`), minus all
//!   KRPC work. Whatever rate it reaches under the same load is what the kernel and the
//!   runtime allow; the node's rate divided by it is the share left to our own code.
//! * `load`: KRPC queries from N source sockets on distinct loopback addresses, each keeping C
//!   queries outstanding (closed loop, so the reply rate *is* the throughput), matched by
//!   transaction id. Prints replies/s, errors, timeouts, p50/p99 latency and, given the
//!   server's pid, how busy the server's CPU was (so a generator-bound run is visible).
//! * `flood`: an open-loop query flood from many source addresses while an honest prober
//!   pings and the node's memory is sampled (see `flood.rs`; tools/flood-test.sh).
//! * `fill`: stores N infohashes × M peers in a node the proper way (get_peers for a token,
//!   then announce_peer) from S source addresses, run in waves of K, for benchmarks that
//!   need a full store; `--verify` reads a sample back. The project's only fill tool (a
//!   separate `dht-fill` with other flag names was folded into it).
//!
//! Every socket binds to and sends to 127.0.0.0/8, `::1` or fd77::/16 only; other addresses
//! are refused. fd77::/16 addresses are test addresses that exist only on `lo` inside a
//! network namespace the benchmark creates (tools/bench-serve.sh `V6=1`), one `ip -6 addr
//! add` each. Every mode takes either family (issue 13): an IPv6 `--target` means IPv6
//! sources (a mismatch is refused: an IPv6 node does not answer IPv4 sources, BEP 32).
//! `load` counts IPv6 sources up in the last 16 bits; `fill` and `flood`, whose sources
//! stand for distinct hosts, count up in the 4th segment so that each source is a `/64` of
//! its own (see [`V6Step`]), and default to fd77:0:92::1 (fill) and fd77:0:121::1 /
//! fd77:0:120::1 (flood, probes) for an IPv6 target. `fill --verify` counts the peers of the
//! target's family (`values6` from an IPv6 node).
//!
//! The generator must not be the bottleneck: replies are classified by one pass over the
//! top-level dictionary (no allocation, no full decode), and all sources are served by one
//! thread: by default a current-thread tokio runtime, or with `--busy-poll` a loop over
//! connected nonblocking sockets that never sleeps. On a machine where other processes
//! compete for the cores, the generator's wake-up latency otherwise sets the pace of the
//! closed loop (measured against the echo server: ~156k replies/s with tokio, ~197k with
//! busy polling, same server CPU share), so `taskset -c 1 dht-loadgen load --busy-poll ...`
//! against a server pinned to core 0 is what measures the server.

#[path = "../src/bin/common/cli.rs"]
#[allow(dead_code)] // each binary uses a different part of it
mod cli;

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

mod flood;

use clap::{Args, Parser, Subcommand};
use tokio::net::UdpSocket;
use trackerless::bencode;
use trackerless::dht::id::NodeId;
use trackerless::dht::krpc::{self, Body, QueryArgs, ResponseBody, Token};
use trackerless::torrent::InfoHash;

/// Version tag of the generator's messages.
const VERSION: &[u8] = b"LG\x00\x01";
/// Datagrams handled per wake-up before the task yields (like the node's driver).
const RECV_BATCH: usize = 64;
/// How often timeouts are checked and the phase flag is read when no datagram arrives.
const TICK: Duration = Duration::from_millis(20);
/// A token older than this is refreshed (ours live 5 to 10 minutes).
const TOKEN_REFRESH: Duration = Duration::from_secs(4 * 60);

#[derive(Parser, Debug)]
#[command(
    name = "dht-loadgen",
    version,
    about = "Loopback load generator for DHT nodes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Plain UDP echo server: the reference ceiling for served queries per second.
    Echo {
        /// Address to listen on: in 127.0.0.0/8, `::1` or fd77::/16.
        #[arg(long, value_name = "ADDR")]
        bind: SocketAddr,
    },
    /// Closed-loop KRPC query load against a node (or an echo server).
    Load(LoadArgs),
    /// Announce N infohashes × M peers to a node with proper tokens (get_peers, then
    /// announce_peer from the same address). The announced peers are SOURCE-IP:PORT pairs
    /// (see --peers-per); the node keeps at most its --max-infohashes and --max-peers, and the
    /// command fails unless every announce is acknowledged.
    Fill(FillArgs),
    /// Flood a node from many loopback addresses at the generator's maximum rate while an
    /// honest prober pings it; reports the honest latency and the node's memory.
    Flood(flood::FloodArgs),
}

#[derive(Args, Debug)]
struct LoadArgs {
    /// The node (or echo server) to load: in 127.0.0.0/8, or IPv6 `::1` or fd77::/16.
    #[arg(long, value_name = "ADDR")]
    target: SocketAddr,
    /// Seconds measured (after the warm-up).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    warmup: f64,
    /// Number of source sockets, each on its own loopback address.
    #[arg(long, value_name = "N", default_value_t = 8)]
    sources: u16,
    /// Queries kept outstanding per source socket.
    #[arg(long, value_name = "C", default_value_t = 16)]
    concurrency: u16,
    /// Query mix, sent round-robin: ping, find_node, get_peers, announce, sample_infohashes.
    /// `announce` needs a token, so until a source has one it sends get_peers instead.
    #[arg(long, value_name = "LIST", default_value = "ping,find_node,get_peers")]
    mix: String,
    /// Address of the first source; the others follow it (all must stay in 127.0.0.0/8, or
    /// for an IPv6 target in fd77::/16, counting up in the last 16 bits). Same family as
    /// --target [default: 127.91.0.1, or fd77::91:1 for an IPv6 target].
    #[arg(long, value_name = "IP")]
    source_base: Option<IpAddr>,
    /// Size of the pool of infohashes that get_peers and announce draw from.
    #[arg(long, value_name = "N", default_value_t = 256)]
    infohashes: u32,
    /// A query unanswered after this long counts as a timeout and frees its slot.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    timeout_ms: u64,
    /// Answer queries the target sends us (its verification pings), so the sources enter its
    /// routing table and find_node/get_peers replies carry nodes. Otherwise they are counted
    /// and ignored.
    #[arg(long)]
    answer_pings: bool,
    /// Poll the sockets in a loop that never sleeps instead of waiting in a tokio runtime:
    /// burns the generator's core, but takes its wake-up latency out of the measurement.
    #[arg(long)]
    busy_poll: bool,
    /// Pid of the server process, to report how busy its CPU was while measuring.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Seed for ids and targets (default: random).
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Args, Debug)]
struct FillArgs {
    /// The node to fill: in 127.0.0.0/8, or IPv6 `::1` or fd77::/16 (an IPv6 node: the
    /// sources are then IPv6 too, and the node's IPv6 peer store is filled).
    #[arg(long, value_name = "ADDR")]
    target: SocketAddr,
    /// Number of infohashes to announce.
    #[arg(long, value_name = "N")]
    infohashes: u32,
    /// Peers announced per infohash (spread over the sources: peer k comes from source
    /// k mod S, on TCP port `port-base + k / S`). `--peers-per` is the old name.
    #[arg(long, value_name = "M", alias = "peers-per")]
    peers: u32,
    /// Number of source addresses (distinct loopback IPs, i.e. distinct peer IPs). IPv6
    /// sources must exist on `lo` (see --source-base).
    #[arg(long, value_name = "S", default_value_t = 16)]
    sources: u16,
    /// Sources working at the same time (each with its own socket): thousands of sources
    /// run in waves of this many, so the fill never needs more file descriptors than this.
    #[arg(long, value_name = "N", default_value_t = 16)]
    sources_at_once: u16,
    /// Requests kept outstanding per source. The default keeps S x C around 64 datagrams,
    /// which fits a default-sized (208 KiB) receive buffer at the node; much more overflows
    /// it while the node is busy, and the drops cost retries (measured: 16 x 16 → 62
    /// timeouts and a slower fill than 16 x 4).
    #[arg(long, value_name = "C", default_value_t = 4)]
    concurrency: u16,
    /// Address of the first source, of --target's family; the others follow it. Default
    /// 127.92.0.1 for an IPv4 target (counting up through 127.0.0.0/8), fd77:0:92::1 for an
    /// IPv6 one: IPv6 sources count up in the 4th segment (fd77:0:92:1::1, fd77:0:92:2::1,
    /// ...), each in a /64 of its own, because the DHT treats a /64 as one host.
    #[arg(long, value_name = "IP")]
    source_base: Option<IpAddr>,
    /// First announced TCP port.
    #[arg(long, value_name = "PORT", default_value_t = 10000)]
    port_base: u16,
    /// Attempts per request before it counts as failed.
    #[arg(long, value_name = "N", default_value_t = 4)]
    attempts: u8,
    /// Per-attempt timeout.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    timeout_ms: u64,
    /// Seed of the infohashes (the same seed gives the same infohashes).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the announced infohashes (hex, one per line) to this file.
    #[arg(long, value_name = "PATH")]
    write_infohashes: Option<PathBuf>,
    /// After the fill, look up this many of the infohashes (spread over the list) and report
    /// how many peers the node returns for each: whether a full store kept what it acked.
    #[arg(long, value_name = "N", default_value_t = 0)]
    verify: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Echo { bind } => echo(bind),
        Cmd::Load(args) => load(args),
        Cmd::Fill(args) => fill(args),
        Cmd::Flood(args) => flood::flood(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => cli::fail(e),
    }
}

// ------------------------------------------------------------------ address checks

/// Whether `ip` is one this tool may use: 127.0.0.0/8, `::1`, or fd77::/16 (unique-local
/// test addresses that only exist on `lo` inside the benchmark's own network namespace).
fn allowed_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => ip.is_loopback() || ip.segments()[0] == 0xfd77,
    }
}

/// `addr` if its address is [allowed](allowed_ip), or a one-line error naming `what`.
fn test_addr(addr: SocketAddr, what: &str) -> Result<SocketAddr, String> {
    if allowed_ip(addr.ip()) {
        Ok(addr)
    } else {
        Err(format!(
            "{what} {addr} is outside 127.0.0.0/8, ::1 and fd77::/16; this tool only talks to loopback and namespace test addresses"
        ))
    }
}

/// Which part of an IPv6 source address counts up from one source to the next.
///
/// IPv4 sources always count through 127.0.0.0/8, where every address is local (and the
/// router and the rate limiter key an IPv4 host by its address). IPv6 has no such local
/// range (each source address must be added to `lo`), and the DHT keys IPv6 *hosts* by
/// `/64`, because one machine normally owns a whole `/64`: the router stores one entry per
/// `/64` (src/dht/router/store.rs) and a routing bucket admits one node per `/64`
/// (`NodeAddr::subnet`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum V6Step {
    /// The last 16 bits (all sources in `base`'s /112): enough where only distinct sockets
    /// matter (`load`, whose sources tools/bench-serve.sh adds as fd77::91:x).
    Host,
    /// The 4th segment, bits 48..64 (fd77:0:92:0::1, fd77:0:92:1::1, ...): every source is
    /// a host of its own `/64`, so `fill` and `flood` look like many hosts, not one, to any
    /// per-`/64` rule of the target.
    Subnet,
}

impl V6Step {
    /// The index of the 16-bit segment that counts up.
    fn segment(self) -> usize {
        match self {
            V6Step::Host => 7,
            V6Step::Subnet => 3,
        }
    }
}

/// The `n` consecutive source addresses starting at `base`, all [allowed](allowed_ip): IPv4
/// ones count up through 127.0.0.0/8, IPv6 ones count up in the segment `step` names (and
/// may not carry out of it, so they stay where `base` put them).
fn source_ips_any(base: IpAddr, n: u16, step: V6Step) -> Result<Vec<IpAddr>, String> {
    let base6 = match base {
        IpAddr::V4(b) => return Ok(source_ips(b, n)?.into_iter().map(IpAddr::V4).collect()),
        IpAddr::V6(b) => b,
    };
    if n == 0 {
        return Err("--sources must be at least 1".into());
    }
    let mut seg = base6.segments();
    let k = step.segment();
    let first = seg[k];
    let fits = u32::from(first) + u32::from(n) - 1 <= u32::from(u16::MAX);
    if !fits || !allowed_ip(base) || (base6.is_loopback() && n > 1) {
        let how = match step {
            V6Step::Host => "the last 16 bits count up",
            V6Step::Subnet => "the 4th segment counts up, one /64 per source",
        };
        return Err(format!(
            "{n} sources from {base} do not fit in fd77::/16 ({how}) or ::1"
        ));
    }
    Ok((0..n)
        .map(|i| {
            seg[k] = first + i;
            IpAddr::V6(Ipv6Addr::from(seg))
        })
        .collect())
}

/// The sources of a run against `target`: `n` addresses from `base`, or from the default
/// base of the target's family when `base` is `None` (so `--target [fd77::1]:6881` alone
/// works). `flag` names the base's option in the one-line error a family mismatch gives:
/// an IPv6 node only talks to IPv6 sources (BEP 32), so such a run could only time out.
fn sources_for(
    target: SocketAddr,
    base: Option<IpAddr>,
    defaults: (Ipv4Addr, Ipv6Addr),
    n: u16,
    flag: &str,
    step: V6Step,
) -> Result<Vec<IpAddr>, String> {
    let base = base.unwrap_or(match target {
        SocketAddr::V4(_) => IpAddr::V4(defaults.0),
        SocketAddr::V6(_) => IpAddr::V6(defaults.1),
    });
    if base.is_ipv4() != target.is_ipv4() {
        return Err(format!(
            "{flag} {base} and --target {target} are of different address families"
        ));
    }
    source_ips_any(base, n, step)
}

/// The `n` consecutive source addresses starting at `base`, all inside 127.0.0.0/8.
fn source_ips(base: Ipv4Addr, n: u16) -> Result<Vec<Ipv4Addr>, String> {
    if n == 0 {
        return Err("--sources must be at least 1".into());
    }
    let start = u32::from(base);
    let last = start
        .checked_add(u32::from(n) - 1)
        .map(Ipv4Addr::from)
        .filter(|ip| ip.is_loopback() && base.is_loopback());
    if last.is_none() {
        return Err(format!("{n} sources from {base} do not fit in 127.0.0.0/8"));
    }
    Ok((0..u32::from(n))
        .map(|i| Ipv4Addr::from(start + i))
        .collect())
}

// ------------------------------------------------------------------ small shared pieces

/// splitmix64: ids and targets need speed and spread, not secrecy.
struct FastRng(u64);

impl FastRng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn id(&mut self) -> NodeId {
        let mut b = [0u8; 20];
        for chunk in b.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        NodeId(b)
    }

    fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }
}

fn random_seed() -> u64 {
    use rand::RngExt;
    rand::rng().random()
}

/// Length of our transaction ids: slot (2 bytes) and generation (4 bytes).
const TID_LEN: usize = 6;

/// Outstanding queries of one source socket, matched by transaction id.
///
/// A tid names a slot and that slot's generation. Slots are reused as soon as a query
/// completes or times out; the generation makes a late reply to an earlier use of a slot a
/// miss instead of completing (and mis-timing) the query that now occupies it.
struct Tracker<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u16>,
}

struct Slot<T> {
    generation: u32,
    pending: Option<(Instant, T)>,
}

impl<T> Tracker<T> {
    fn new(capacity: u16) -> Self {
        Tracker {
            slots: (0..capacity)
                .map(|_| Slot {
                    generation: 0,
                    pending: None,
                })
                .collect(),
            // Popped from the end: slot 0 first.
            free: (0..capacity).rev().collect(),
        }
    }

    fn outstanding(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    /// Registers a query; its tid, or `None` when every slot is taken.
    fn start(&mut self, now: Instant, what: T) -> Option<[u8; TID_LEN]> {
        let index = self.free.pop()?;
        let slot = &mut self.slots[usize::from(index)];
        slot.generation = slot.generation.wrapping_add(1);
        slot.pending = Some((now, what));
        let mut tid = [0u8; TID_LEN];
        tid[..2].copy_from_slice(&index.to_be_bytes());
        tid[2..].copy_from_slice(&slot.generation.to_be_bytes());
        Some(tid)
    }

    /// Completes the query `tid` names: what it was and how long it took. `None` for a tid
    /// we never issued, one already completed or timed out, or a stale generation.
    fn finish(&mut self, tid: &[u8], now: Instant) -> Option<(T, Duration)> {
        let tid: [u8; TID_LEN] = tid.try_into().ok()?;
        let index = u16::from_be_bytes([tid[0], tid[1]]);
        let generation = u32::from_be_bytes([tid[2], tid[3], tid[4], tid[5]]);
        let slot = self.slots.get_mut(usize::from(index))?;
        if slot.generation != generation {
            return None;
        }
        let (sent, what) = slot.pending.take()?;
        self.free.push(index);
        Some((what, now.saturating_duration_since(sent)))
    }

    /// Frees every query older than `timeout`, handing each to `expired`.
    fn expire(&mut self, now: Instant, timeout: Duration, mut expired: impl FnMut(T)) {
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let due = slot
                .pending
                .as_ref()
                .is_some_and(|(sent, _)| now.saturating_duration_since(*sent) >= timeout);
            if due && let Some((_, what)) = slot.pending.take() {
                self.free.push(index as u16);
                expired(what);
            }
        }
    }
}

/// What an incoming datagram is, from one pass over its top-level keys.
#[derive(Debug, PartialEq, Eq)]
enum Incoming<'a> {
    Reply(&'a [u8]),
    Error(&'a [u8]),
    /// A query: `echo` when it is one of ours coming back (from an echo server), otherwise
    /// the target querying us (verification pings).
    Query {
        tid: &'a [u8],
        echo: bool,
    },
    Malformed,
}

/// The payload range of the byte string at `pos`, if one starts there.
fn string_at(data: &[u8], pos: usize) -> Option<Range<usize>> {
    let colon = pos + data.get(pos..)?.iter().take(8).position(|&b| b == b':')?;
    let digits = &data[pos..colon];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let len: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let end = colon.checked_add(1)?.checked_add(len)?;
    (end <= data.len()).then_some(colon + 1..end)
}

/// Classifies a datagram without decoding it: walks the top-level dictionary, skipping
/// values with the crate's allocation-free scanner, and keeps `t` and `y`.
/// `own_prefix` is how every query of this source starts (`d1:ad2:id20:<our id>`).
fn classify<'a>(data: &'a [u8], own_prefix: &[u8]) -> Incoming<'a> {
    if data.first() != Some(&b'd') {
        return Incoming::Malformed;
    }
    let (mut t, mut y) = (None, None);
    let mut pos = 1;
    loop {
        match data.get(pos) {
            Some(b'e') if pos + 1 == data.len() => break,
            Some(b'0'..=b'9') => {}
            _ => return Incoming::Malformed,
        }
        let Some(key) = string_at(data, pos) else {
            return Incoming::Malformed;
        };
        let Ok(end) = bencode::scan_value(data, key.end, 8) else {
            return Incoming::Malformed;
        };
        match &data[key.clone()] {
            b"t" => t = string_at(data, key.end).filter(|r| r.end == end),
            b"y" => y = string_at(data, key.end).filter(|r| r.end == end),
            _ => {}
        }
        pos = end;
    }
    let (Some(t), Some(y)) = (t, y) else {
        return Incoming::Malformed;
    };
    let tid = &data[t];
    match &data[y] {
        b"r" => Incoming::Reply(tid),
        b"e" => Incoming::Error(tid),
        b"q" => Incoming::Query {
            tid,
            echo: data.starts_with(own_prefix),
        },
        _ => Incoming::Malformed,
    }
}

/// `d1:ad2:id20:<id>`: how our encoder starts every query from `id`.
fn query_prefix(id: &NodeId) -> Vec<u8> {
    let mut p = b"d1:ad2:id20:".to_vec();
    p.extend_from_slice(&id.0);
    p
}

/// One nonblocking socket on each of `ips`, port chosen by the kernel.
fn bind_sources<I: Copy + Into<IpAddr>>(ips: &[I]) -> Result<Vec<std::net::UdpSocket>, String> {
    ips.iter()
        .map(|&ip| {
            let ip: IpAddr = ip.into();
            let s = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))
                .map_err(|e| bind_error("a source socket", ip, &e))?;
            s.set_nonblocking(true)
                .map_err(|e| format!("cannot configure the socket on {ip}: {e}"))?;
            Ok(s)
        })
        .collect()
}

/// The one-line error for a failed bind of `what` on `ip`. Every 127.0.0.0/8 address is
/// local, but an IPv6 test address exists only once added to `lo`, so that is the likely
/// cause and the line says how.
fn bind_error(what: &str, ip: IpAddr, e: &io::Error) -> String {
    let hint = if ip.is_ipv6() && e.kind() == io::ErrorKind::AddrNotAvailable {
        format!(" (add it inside the test namespace: ip -6 addr add {ip}/128 dev lo nodad)")
    } else {
        String::new()
    };
    format!("cannot bind {what} on {ip}: {e}{hint}")
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// CPU time (user + system) a process has used so far, from `/proc/PID/stat`.
fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ').skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux architecture we run on (`getconf CLK_TCK`).
    Some(Duration::from_millis((utime + stime) * 10))
}

// ------------------------------------------------------------------ echo

fn echo(bind: SocketAddr) -> Result<ExitCode, String> {
    let bind = test_addr(bind, "--bind")?;
    let rt = runtime()?;
    rt.block_on(async {
        let sock = UdpSocket::bind(bind)
            .await
            .map_err(|e| format!("cannot bind UDP {bind}: {e}"))?;
        eprintln!(
            "echo: listening on {}",
            sock.local_addr().map_err(|e| e.to_string())?
        );
        let mut buf = vec![0u8; 65_536];
        let (mut packets, mut send_errors) = (0u64, 0u64);
        let signal = cli::shutdown_signal();
        tokio::pin!(signal);
        loop {
            tokio::select! {
                biased;
                r = sock.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    echo_one(&sock, &buf[..n], from, &mut packets, &mut send_errors).await;
                    for _ in 1..RECV_BATCH {
                        match sock.try_recv_from(&mut buf) {
                            Ok((n, from)) => {
                                echo_one(&sock, &buf[..n], from, &mut packets, &mut send_errors)
                                    .await;
                            }
                            Err(_) => break,
                        }
                    }
                }
                _ = &mut signal => break,
            }
        }
        eprintln!("echo: {packets} datagrams echoed, {send_errors} send errors");
        Ok(ExitCode::SUCCESS)
    })
}

/// Echoes one datagram the way the node's driver sends: try first, wait for room only if
/// the socket is full. Only senders in the allowed ranges get an answer.
async fn echo_one(
    sock: &UdpSocket,
    data: &[u8],
    from: SocketAddr,
    packets: &mut u64,
    send_errors: &mut u64,
) {
    if !allowed_ip(from.ip()) {
        return;
    }
    *packets += 1;
    match sock.try_send_to(data, from) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            let _ = sock.writable().await;
            if sock.try_send_to(data, from).is_err() {
                *send_errors += 1;
            }
        }
        Err(_) => *send_errors += 1,
    }
}

// ------------------------------------------------------------------ load

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ping,
    FindNode,
    GetPeers,
    Announce,
    Sample,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Ping,
        Kind::FindNode,
        Kind::GetPeers,
        Kind::Announce,
        Kind::Sample,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Ping => "ping",
            Kind::FindNode => "find_node",
            Kind::GetPeers => "get_peers",
            Kind::Announce => "announce",
            Kind::Sample => "sample_infohashes",
        }
    }
}

fn parse_mix(s: &str) -> Result<Vec<Kind>, String> {
    s.split(',')
        .map(|w| {
            Kind::ALL
                .into_iter()
                .find(|k| {
                    k.name() == w.trim() || (w.trim() == "announce_peer" && *k == Kind::Announce)
                })
                .ok_or_else(|| format!("unknown query kind {w:?} in --mix"))
        })
        .collect()
}

/// Counters of one source in one phase.
#[derive(Debug, Default, Clone)]
struct Counts {
    sent: u64,
    replies: u64,
    replies_by_kind: [u64; 5],
    errors: u64,
    timeouts: u64,
    /// Replies or errors whose tid matched nothing outstanding (late, duplicated, foreign).
    unmatched: u64,
    /// Queries the target sent us (e.g. verification pings).
    queries_in: u64,
    answered: u64,
    malformed: u64,
    send_errors: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.sent += o.sent;
        self.replies += o.replies;
        for (a, b) in self.replies_by_kind.iter_mut().zip(o.replies_by_kind) {
            *a += b;
        }
        self.errors += o.errors;
        self.timeouts += o.timeouts;
        self.unmatched += o.unmatched;
        self.queries_in += o.queries_in;
        self.answered += o.answered;
        self.malformed += o.malformed;
        self.send_errors += o.send_errors;
    }
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// Settings shared by every source of a load run.
struct LoadPlan {
    target: SocketAddr,
    mix: Vec<Kind>,
    infohashes: Vec<InfoHash>,
    concurrency: u16,
    timeout: Duration,
    answer_pings: bool,
}

/// One source's state, without I/O (so the accounting is testable).
struct LoadSource {
    id: NodeId,
    prefix: Vec<u8>,
    rng: FastRng,
    tracker: Tracker<Kind>,
    mix_pos: usize,
    token: Option<(Token, Instant)>,
    counts: [Counts; 2],
    /// Latencies of replies received while measuring, in microseconds.
    latencies: Vec<u32>,
}

impl LoadSource {
    fn new(plan: &LoadPlan, seed: u64) -> Self {
        let mut rng = FastRng(seed);
        let id = rng.id();
        LoadSource {
            prefix: query_prefix(&id),
            id,
            rng,
            tracker: Tracker::new(plan.concurrency),
            mix_pos: 0,
            token: None,
            counts: Default::default(),
            latencies: Vec::new(),
        }
    }

    /// Encodes the next query of the mix into `out`; its tid, or `None` when no slot is free.
    fn next_query(
        &mut self,
        plan: &LoadPlan,
        now: Instant,
        phase: u8,
        out: &mut Vec<u8>,
    ) -> Option<[u8; TID_LEN]> {
        let mut kind = plan.mix[self.mix_pos];
        if kind == Kind::Announce && self.token.is_none() {
            kind = Kind::GetPeers;
        }
        let tid = self.tracker.start(now, kind)?;
        self.mix_pos = (self.mix_pos + 1) % plan.mix.len();
        out.clear();
        let ih = plan.infohashes[self.rng.below(plan.infohashes.len() as u32) as usize];
        let target = self.rng.id();
        let token = self.token.map(|(t, _)| t);
        let args = match kind {
            Kind::Ping => QueryArgs::Ping,
            Kind::FindNode => QueryArgs::FindNode { target: &target },
            Kind::GetPeers => QueryArgs::GetPeers {
                info_hash: &ih,
                scrape: false,
                noseed: false,
            },
            Kind::Announce => QueryArgs::AnnouncePeer {
                info_hash: &ih,
                port: 6881,
                implied_port: false,
                token: token.as_ref().map(|t| t.as_slice()).unwrap_or(&[]),
                seed: false,
            },
            Kind::Sample => QueryArgs::SampleInfohashes { target: &target },
        };
        krpc::encode_query(out, &tid, &self.id, &args, false, Some(VERSION));
        self.counts[usize::from(phase.min(MEASURE))].sent += 1;
        Some(tid)
    }

    /// Takes back a query whose send failed, so its slot does not sit out a timeout.
    fn unsend(&mut self, tid: &[u8], phase: u8) {
        if self.tracker.finish(tid, Instant::now()).is_some() {
            let counts = &mut self.counts[usize::from(phase.min(MEASURE))];
            counts.sent -= 1;
            counts.send_errors += 1;
        }
    }

    /// Accounts for one datagram; fills `answer` when it is a query we should answer.
    fn on_datagram(
        &mut self,
        plan: &LoadPlan,
        now: Instant,
        phase: u8,
        from: SocketAddr,
        data: &[u8],
        answer: &mut Vec<u8>,
    ) -> bool {
        let p = usize::from(phase.min(MEASURE));
        if from != plan.target {
            // Nothing but the target should write to us; treat strays as noise.
            self.counts[p].malformed += 1;
            return false;
        }
        let (tid, is_error) = match classify(data, &self.prefix) {
            Incoming::Reply(tid) | Incoming::Query { tid, echo: true } => (tid, false),
            Incoming::Error(tid) => (tid, true),
            Incoming::Query { tid, echo: false } => {
                self.counts[p].queries_in += 1;
                if !plan.answer_pings {
                    return false;
                }
                answer.clear();
                krpc::encode_response(
                    answer,
                    tid,
                    &ResponseBody::id_only(&self.id),
                    Some(plan.target),
                    Some(VERSION),
                );
                self.counts[p].answered += 1;
                return true;
            }
            Incoming::Malformed => {
                self.counts[p].malformed += 1;
                return false;
            }
        };
        let Some((kind, latency)) = self.tracker.finish(tid, now) else {
            self.counts[p].unmatched += 1;
            return false;
        };
        if is_error {
            self.counts[p].errors += 1;
            if kind == Kind::Announce {
                // Most likely an expired token: fetch a fresh one.
                self.token = None;
            }
            return false;
        }
        self.counts[p].replies += 1;
        self.counts[p].replies_by_kind[kind as usize] += 1;
        if p == usize::from(MEASURE) {
            self.latencies
                .push(latency.as_micros().min(u128::from(u32::MAX)) as u32);
        }
        if kind == Kind::GetPeers
            && self
                .token
                .is_none_or(|(_, got)| now.saturating_duration_since(got) > TOKEN_REFRESH)
            && let Ok(msg) = krpc::decode(data)
            && let Body::Response(r) = msg.body
            && let Some(t) = r.token
        {
            self.token = Some((t, now));
        }
        false
    }

    /// Sends queries until `concurrency` are outstanding; `send` reports success. A query
    /// whose send fails is taken back and the filling stops until the next call.
    fn fill(
        &mut self,
        plan: &LoadPlan,
        now: Instant,
        phase: u8,
        out: &mut Vec<u8>,
        mut send: impl FnMut(&[u8]) -> bool,
    ) {
        while let Some(tid) = self.next_query(plan, now, phase, out) {
            if !send(out) {
                self.unsend(&tid, phase);
                break;
            }
        }
    }

    fn expire(&mut self, plan: &LoadPlan, now: Instant, phase: u8) {
        let counts = &mut self.counts[usize::from(phase.min(MEASURE))];
        self.tracker
            .expire(now, plan.timeout, |_| counts.timeouts += 1);
    }
}

async fn run_load_source(
    plan: Arc<LoadPlan>,
    phase: Arc<AtomicU8>,
    sock: std::net::UdpSocket,
    mut src: LoadSource,
) -> Result<LoadSource, String> {
    let sock = UdpSocket::from_std(sock).map_err(|e| format!("cannot register a socket: {e}"))?;
    let mut buf = vec![0u8; 65_536];
    let mut out = Vec::with_capacity(1500);
    let mut answer = Vec::with_capacity(256);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let to = plan.target;
    // A full socket (or one tokio does not yet know is writable) stops the filling until the
    // next datagram or tick.
    let fill = |src: &mut LoadSource, out: &mut Vec<u8>, now: Instant, phase: u8| {
        src.fill(&plan, now, phase, out, |q| sock.try_send_to(q, to).is_ok());
    };
    // tokio reports a new socket writable only after the reactor has polled it once.
    sock.writable()
        .await
        .map_err(|e| format!("source socket unusable: {e}"))?;
    fill(&mut src, &mut out, Instant::now(), WARMUP);
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let p = phase.load(Ordering::Relaxed);
                if p == STOP {
                    break;
                }
                let mut next = r.ok();
                for i in 1..=RECV_BATCH {
                    let Some((n, from)) = next else { break };
                    let now = Instant::now();
                    if src.on_datagram(&plan, now, p, from, &buf[..n], &mut answer)
                        && sock.try_send_to(&answer, to).is_err()
                    {
                        src.counts[usize::from(p)].send_errors += 1;
                    }
                    fill(&mut src, &mut out, now, p);
                    // Read the next one only if it will be handled in this batch.
                    next = if i < RECV_BATCH { sock.try_recv_from(&mut buf).ok() } else { None };
                }
            }
            _ = tick.tick() => {
                let p = phase.load(Ordering::Relaxed);
                if p == STOP {
                    break;
                }
                let now = Instant::now();
                src.expire(&plan, now, p);
                fill(&mut src, &mut out, now, p);
            }
        }
    }
    Ok(src)
}

/// The busy-polling alternative: one thread cycles over nonblocking std sockets and never
/// sleeps. On a core of its own this removes the generator's wake-up latency from the loop,
/// which on a busy machine (other processes runnable on both cores) otherwise dominates the
/// round trip and leaves *both* sides idle part of the time.
fn run_busy(
    plan: &LoadPlan,
    phase: &AtomicU8,
    sockets: Vec<std::net::UdpSocket>,
    mut sources: Vec<LoadSource>,
) -> Vec<LoadSource> {
    let to = plan.target;
    let mut buf = vec![0u8; 65_536];
    let mut out = Vec::with_capacity(1500);
    let mut answer = Vec::with_capacity(256);
    // Connected sockets skip the per-datagram route lookup, and the kernel drops datagrams
    // from anyone but the target for us.
    let connected = sockets.iter().all(|s| s.connect(to).is_ok());
    let send = |sock: &std::net::UdpSocket, data: &[u8]| {
        if connected {
            sock.send(data).is_ok()
        } else {
            sock.send_to(data, to).is_ok()
        }
    };
    let mut next_tick = Instant::now();
    loop {
        let p = phase.load(Ordering::Relaxed);
        if p == STOP {
            break;
        }
        let now = Instant::now();
        let tick = now >= next_tick;
        if tick {
            next_tick = now + TICK;
        }
        for (src, sock) in sources.iter_mut().zip(&sockets) {
            if tick {
                src.expire(plan, now, p);
                src.fill(plan, now, p, &mut out, |q| send(sock, q));
            }
            for _ in 0..RECV_BATCH {
                let received = if connected {
                    sock.recv(&mut buf).map(|n| (n, to))
                } else {
                    sock.recv_from(&mut buf)
                };
                let Ok((n, from)) = received else {
                    break;
                };
                let now = Instant::now();
                if src.on_datagram(plan, now, p, from, &buf[..n], &mut answer)
                    && !send(sock, &answer)
                {
                    src.counts[usize::from(p)].send_errors += 1;
                }
                src.fill(plan, now, p, &mut out, |q| send(sock, q));
            }
        }
    }
    sources
}

fn percentile(sorted: &[u32], q: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[i])
}

fn us(v: Option<u32>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 10_000 => format!("{:.1} ms", f64::from(v) / 1000.0),
        Some(v) => format!("{v} us"),
    }
}

fn load(args: LoadArgs) -> Result<ExitCode, String> {
    let target = test_addr(args.target, "--target")?;
    let ips = sources_for(
        target,
        args.source_base,
        LOAD_SOURCE_BASE,
        args.sources,
        "--source-base",
        V6Step::Host,
    )?;
    let mix = parse_mix(&args.mix)?;
    if args.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    if args.infohashes == 0 {
        return Err("--infohashes must be at least 1".into());
    }
    let valid = |v: f64, min: f64| v.is_finite() && v >= min;
    if !valid(args.duration, f64::MIN_POSITIVE) || !valid(args.warmup, 0.0) {
        return Err("--duration must be positive and --warmup not negative".into());
    }
    let server_pid = args.server_pid.map(|p| p.to_string());
    if let Some(pid) = &server_pid
        && cpu_time(pid).is_none()
    {
        return Err(format!("cannot read /proc/{pid}/stat (--server-pid)"));
    }
    let seed = args.seed.unwrap_or_else(random_seed);
    let mut rng = FastRng(seed);
    let plan = Arc::new(LoadPlan {
        target,
        mix,
        infohashes: (0..args.infohashes).map(|_| InfoHash(rng.id().0)).collect(),
        concurrency: args.concurrency,
        timeout: Duration::from_millis(args.timeout_ms.max(1)),
        answer_pings: args.answer_pings,
    });
    let sockets = bind_sources(&ips)?;
    let sources: Vec<LoadSource> = sockets
        .iter()
        .map(|_| LoadSource::new(&plan, rng.next_u64()))
        .collect();
    let phase = Arc::new(AtomicU8::new(WARMUP));
    // The I/O runs on a worker thread; this thread only keeps time and flips the phase.
    let worker = {
        let (plan, phase) = (plan.clone(), phase.clone());
        let busy = args.busy_poll;
        std::thread::Builder::new()
            .name("load".into())
            .spawn(move || -> Result<Vec<LoadSource>, String> {
                if busy {
                    return Ok(run_busy(&plan, &phase, sockets, sources));
                }
                runtime()?.block_on(async {
                    let tasks: Vec<_> = sockets
                        .into_iter()
                        .zip(sources)
                        .map(|(sock, src)| {
                            tokio::spawn(run_load_source(plan.clone(), phase.clone(), sock, src))
                        })
                        .collect();
                    let mut sources = Vec::new();
                    for t in tasks {
                        sources.push(
                            t.await
                                .map_err(|e| format!("a source task failed: {e}"))??,
                        );
                    }
                    Ok(sources)
                })
            })
            .map_err(|e| format!("cannot start the load thread: {e}"))?
    };
    std::thread::sleep(Duration::from_secs_f64(args.warmup));
    let cpu_at = |pid: Option<&String>| pid.and_then(|p| cpu_time(p));
    let (server0, own0) = (cpu_at(server_pid.as_ref()), cpu_time("self"));
    let start = Instant::now();
    phase.store(MEASURE, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs_f64(args.duration));
    phase.store(STOP, Ordering::Relaxed);
    let measured = start.elapsed();
    let (server1, own1) = (cpu_at(server_pid.as_ref()), cpu_time("self"));
    let sources = worker
        .join()
        .map_err(|_| "the load thread panicked".to_string())??;
    let share = |a: Option<Duration>, b: Option<Duration>| {
        a.zip(b)
            .map(|(a, b)| b.saturating_sub(a).as_secs_f64() / measured.as_secs_f64())
    };
    let (server_cpu, own_cpu) = (share(server0, server1), share(own0, own1));

    let mut total = Counts::default();
    let mut lat = Vec::new();
    // The target queries a source once, when it first hears from it: during the warm-up.
    let (mut queries_in, mut answered) = (0, 0);
    for s in &sources {
        total.add(&s.counts[usize::from(MEASURE)]);
        lat.extend_from_slice(&s.latencies);
        for c in &s.counts {
            queries_in += c.queries_in;
            answered += c.answered;
        }
    }
    lat.sort_unstable();
    let secs = measured.as_secs_f64();
    let rate = total.replies as f64 / secs;
    let by_kind: Vec<String> = Kind::ALL
        .iter()
        .filter(|k| total.replies_by_kind[**k as usize] > 0)
        .map(|k| format!("{} {}", k.name(), total.replies_by_kind[*k as usize]))
        .collect();
    println!(
        "target {target}: {} sources x {} outstanding, mix {}, {secs:.2} s measured after {} s warm-up",
        args.sources, args.concurrency, args.mix, args.warmup
    );
    println!(
        "replies {} ({rate:.0}/s) [{}]",
        total.replies,
        by_kind.join(", ")
    );
    println!(
        "sent {}  errors {}  timeouts {}  unmatched {}  malformed {}  send errors {}  (whole run: queries from target {}, answered {})",
        total.sent,
        total.errors,
        total.timeouts,
        total.unmatched,
        total.malformed,
        total.send_errors,
        queries_in,
        answered,
    );
    let (p50, p99) = (percentile(&lat, 0.50), percentile(&lat, 0.99));
    println!(
        "latency p50 {}  p99 {}  max {}",
        us(p50),
        us(p99),
        us(lat.last().copied())
    );
    if let Some(cpu) = server_cpu {
        println!(
            "server cpu {:.1}% of one core -> {:.0} replies per server cpu-second",
            cpu * 100.0,
            if cpu > 0.0 { rate / cpu } else { 0.0 }
        );
    }
    if let Some(cpu) = own_cpu {
        println!("loadgen cpu {:.1}% of one core", cpu * 100.0);
    }
    println!(
        "RESULT replies_per_s={rate:.0} errors={} timeouts={} unmatched={} p50_us={} p99_us={} server_cpu={} loadgen_cpu={}",
        total.errors,
        total.timeouts,
        total.unmatched,
        p50.unwrap_or(0),
        p99.unwrap_or(0),
        server_cpu
            .map(|c| format!("{c:.3}"))
            .unwrap_or_else(|| "-".into()),
        own_cpu
            .map(|c| format!("{c:.3}"))
            .unwrap_or_else(|| "-".into()),
    );
    Ok(ExitCode::SUCCESS)
}

// ------------------------------------------------------------------ fill

/// Default first load source per family (see `LoadArgs::source_base`): the addresses
/// tools/bench-serve.sh puts on `lo`.
const LOAD_SOURCE_BASE: (Ipv4Addr, Ipv6Addr) = (
    Ipv4Addr::new(127, 91, 0, 1),
    Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0x91, 1),
);

/// Default first fill source per family (see `FillArgs::source_base`).
const FILL_SOURCE_BASE: (Ipv4Addr, Ipv6Addr) = (
    Ipv4Addr::new(127, 92, 0, 1),
    Ipv6Addr::new(0xfd77, 0, 0x92, 0, 0, 0, 0, 1),
);

#[derive(Clone, Copy, Debug)]
enum Job {
    GetPeers { ih: u32 },
    Announce { ih: u32, port: u16, token: Token },
}

/// One fill source's work and results, without I/O.
struct FillSource {
    id: NodeId,
    prefix: Vec<u8>,
    tracker: Tracker<(Job, u8)>,
    queue: VecDeque<(Job, u8)>,
    /// TCP ports this source announces for every infohash.
    ports: Vec<u16>,
    announced: u64,
    failed: u64,
    timeouts: u64,
    queries_in: u64,
    first_error: Option<String>,
}

#[derive(Default)]
struct FillTotals {
    announced: u64,
    failed: u64,
    timeouts: u64,
    queries_in: u64,
    first_error: Option<String>,
}

impl FillSource {
    fn new(id: NodeId, index: u32, sources: u32, args: &FillArgs) -> Self {
        let ports = (index..args.peers)
            .step_by(sources as usize)
            .map(|k| args.port_base + (k / sources) as u16)
            .collect();
        FillSource {
            prefix: query_prefix(&id),
            id,
            tracker: Tracker::new(args.concurrency),
            queue: (0..args.infohashes)
                .map(|ih| (Job::GetPeers { ih }, 0))
                .collect(),
            ports,
            announced: 0,
            failed: 0,
            timeouts: 0,
            queries_in: 0,
            first_error: None,
        }
    }

    fn done(&self) -> bool {
        self.queue.is_empty() && self.tracker.outstanding() == 0
    }

    /// Encodes the next job into `out`; its tid, or `None` when idle or at the limit.
    fn next(
        &mut self,
        infohashes: &[InfoHash],
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Option<[u8; TID_LEN]> {
        if self.tracker.is_full() {
            return None;
        }
        let (job, attempt) = self.queue.pop_front()?;
        let tid = self
            .tracker
            .start(now, (job, attempt))
            .expect("a slot is free");
        out.clear();
        let args = match &job {
            Job::GetPeers { ih } => QueryArgs::GetPeers {
                info_hash: &infohashes[*ih as usize],
                scrape: false,
                noseed: false,
            },
            Job::Announce { ih, port, token } => QueryArgs::AnnouncePeer {
                info_hash: &infohashes[*ih as usize],
                port: *port,
                implied_port: false,
                token: token.as_slice(),
                seed: false,
            },
        };
        krpc::encode_query(out, &tid, &self.id, &args, false, Some(VERSION));
        Some(tid)
    }

    /// Puts a job whose send failed back at the head of the queue.
    fn unsend(&mut self, tid: &[u8]) {
        if let Some((job, _)) = self.tracker.finish(tid, Instant::now()) {
            self.queue.push_front(job);
        }
    }

    fn error(&mut self, what: String) {
        self.failed += 1;
        self.first_error.get_or_insert(what);
    }

    fn on_datagram(&mut self, now: Instant, data: &[u8]) {
        let tid = match classify(data, &self.prefix) {
            Incoming::Reply(tid) | Incoming::Error(tid) => tid,
            Incoming::Query { .. } => {
                self.queries_in += 1;
                return;
            }
            Incoming::Malformed => return,
        };
        let Some(((job, _), _)) = self.tracker.finish(tid, now) else {
            return;
        };
        let msg = match krpc::decode(data) {
            Ok(m) => m,
            Err(e) => return self.error(format!("undecodable reply: {e}")),
        };
        match (job, msg.body) {
            (Job::GetPeers { ih }, Body::Response(r)) => match r.token {
                Some(token) => {
                    for &port in &self.ports {
                        self.queue.push_back((Job::Announce { ih, port, token }, 0));
                    }
                }
                None => {
                    self.failed += self.ports.len() as u64;
                    self.first_error
                        .get_or_insert_with(|| "get_peers reply without a token".into());
                }
            },
            (Job::GetPeers { .. }, Body::Error(e)) => {
                self.failed += self.ports.len() as u64;
                self.first_error
                    .get_or_insert_with(|| format!("get_peers error {}: {}", e.code, e.message));
            }
            (Job::Announce { .. }, Body::Response(_)) => self.announced += 1,
            (Job::Announce { .. }, Body::Error(e)) => {
                self.error(format!("announce_peer error {}: {}", e.code, e.message))
            }
            (_, Body::Query(_)) => {}
        }
    }

    fn expire(&mut self, now: Instant, timeout: Duration, attempts: u8) {
        let mut retry = Vec::new();
        let (mut timeouts, mut lost_get_peers, mut lost_announces) = (0u64, 0u64, 0u64);
        self.tracker.expire(now, timeout, |(job, attempt)| {
            timeouts += 1;
            if attempt + 1 < attempts {
                retry.push((job, attempt + 1));
            } else {
                match job {
                    Job::GetPeers { .. } => lost_get_peers += 1,
                    Job::Announce { .. } => lost_announces += 1,
                }
            }
        });
        self.timeouts += timeouts;
        // A get_peers that never got through loses every announce it would have led to.
        self.failed += lost_announces + lost_get_peers * self.ports.len() as u64;
        if lost_get_peers + lost_announces > 0 {
            self.first_error
                .get_or_insert_with(|| format!("no reply after {attempts} attempts"));
        }
        self.queue.extend(retry);
    }
}

async fn run_fill_source(
    target: SocketAddr,
    infohashes: Arc<Vec<InfoHash>>,
    timeout: Duration,
    attempts: u8,
    sock: std::net::UdpSocket,
    mut src: FillSource,
) -> Result<FillSource, String> {
    let sock = UdpSocket::from_std(sock).map_err(|e| format!("cannot register a socket: {e}"))?;
    let mut buf = vec![0u8; 65_536];
    let mut out = Vec::with_capacity(512);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    sock.writable()
        .await
        .map_err(|e| format!("source socket unusable: {e}"))?;
    while !src.done() {
        let now = Instant::now();
        while let Some(tid) = src.next(&infohashes, now, &mut out) {
            if sock.try_send_to(&out, target).is_err() {
                // Full socket buffer: the tick retries.
                src.unsend(&tid);
                break;
            }
        }
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let mut next = r.ok();
                for i in 1..=RECV_BATCH {
                    let Some((n, from)) = next else { break };
                    if from == target {
                        src.on_datagram(Instant::now(), &buf[..n]);
                    }
                    // Read the next one only if it will be handled in this batch.
                    next = if i < RECV_BATCH { sock.try_recv_from(&mut buf).ok() } else { None };
                }
            }
            _ = tick.tick() => src.expire(Instant::now(), timeout, attempts),
        }
    }
    Ok(src)
}

/// The number of peers in `data` if it is the answer to our query `tid`: the peers of the
/// target's family (`values` from an IPv4 node; from an IPv6 node the 18-byte entries the
/// decoder puts in `values6`), as announced there; an error answer has none. `None` for
/// anything else (a stray, another query's late reply, the node's own query).
fn peers_in_reply(data: &[u8], tid: &[u8], ipv6: bool) -> Option<usize> {
    let m = krpc::decode(data).ok()?;
    if m.tid.as_slice() != tid {
        return None;
    }
    match m.body {
        Body::Response(r) if ipv6 => Some(r.values6.len()),
        Body::Response(r) => Some(r.values.len()),
        Body::Error(_) => Some(0),
        Body::Query(_) => None,
    }
}

/// Looks up `n` of `infohashes` (evenly spread) from `ip` and summarises the peers the node
/// returns for each. A lookup that gets no reply after `attempts` counts as zero peers.
async fn verify_fill(
    target: SocketAddr,
    ip: IpAddr,
    infohashes: &[InfoHash],
    n: u32,
    timeout: Duration,
    attempts: u8,
) -> Result<String, String> {
    let sock = UdpSocket::bind(SocketAddr::new(ip, 0))
        .await
        .map_err(|e| bind_error("the verify socket", ip, &e))?;
    let id = FastRng(0x5eed).id();
    let n = (n as usize).min(infohashes.len());
    let step = (infohashes.len() / n).max(1);
    let mut got = Vec::with_capacity(n);
    let (mut q, mut buf) = (Vec::new(), vec![0u8; 65_536]);
    for (k, ih) in infohashes.iter().step_by(step).take(n).enumerate() {
        let tid = (k as u32).to_be_bytes();
        q.clear();
        krpc::encode_query(
            &mut q,
            &tid,
            &id,
            &QueryArgs::GetPeers {
                info_hash: ih,
                scrape: false,
                noseed: false,
            },
            false,
            None,
        );
        let mut peers = 0;
        'attempts: for _ in 0..attempts {
            sock.send_to(&q, target)
                .await
                .map_err(|e| format!("cannot send to {target}: {e}"))?;
            let deadline = tokio::time::Instant::now() + timeout;
            while let Ok(r) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
                let Ok((len, from)) = r else { break };
                if from != target {
                    continue;
                }
                if let Some(n) = peers_in_reply(&buf[..len], &tid, target.is_ipv6()) {
                    peers = n;
                    break 'attempts;
                }
            }
        }
        got.push(peers);
    }
    let min = got.iter().copied().min().unwrap_or(0);
    let mean = got.iter().sum::<usize>() as f64 / got.len().max(1) as f64;
    Ok(format!(
        "verify: {} infohashes looked up, peers returned per infohash mean {mean:.1} min {min}",
        got.len()
    ))
}

impl fmt::Display for FillTotals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "announced {} failed {} (timeouts {}, queries from target {})",
            self.announced, self.failed, self.timeouts, self.queries_in
        )
    }
}

fn fill(args: FillArgs) -> Result<ExitCode, String> {
    let target = test_addr(args.target, "--target")?;
    let ips = sources_for(
        target,
        args.source_base,
        FILL_SOURCE_BASE,
        args.sources,
        "--source-base",
        V6Step::Subnet,
    )?;
    if args.infohashes == 0 || args.peers == 0 {
        return Err("--infohashes and --peers must be at least 1".into());
    }
    if args.concurrency == 0 || args.attempts == 0 || args.sources_at_once == 0 {
        return Err("--concurrency, --attempts and --sources-at-once must be at least 1".into());
    }
    let s = u32::from(args.sources);
    let highest_port = u32::from(args.port_base) + (args.peers - 1) / s;
    if args.port_base == 0 || highest_port > u32::from(u16::MAX) {
        return Err(format!(
            "ports {}..={highest_port} do not fit; lower --peers or --port-base, or add --sources",
            args.port_base
        ));
    }
    let mut rng = FastRng(args.seed);
    let infohashes: Arc<Vec<InfoHash>> =
        Arc::new((0..args.infohashes).map(|_| InfoHash(rng.id().0)).collect());
    if let Some(path) = &args.write_infohashes {
        let text: String = infohashes
            .iter()
            .map(|ih| format!("{}\n", ih.to_hex()))
            .collect();
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let rt = runtime()?;
    let start = Instant::now();
    let totals = rt.block_on(async {
        let mut t = FillTotals::default();
        // Waves of --sources-at-once sources; source j keeps its index, so its ports do not
        // depend on the wave size.
        for (w, wave) in ips.chunks(usize::from(args.sources_at_once)).enumerate() {
            let first = w * usize::from(args.sources_at_once);
            let sockets = bind_sources(wave)?;
            let tasks: Vec<_> = sockets
                .into_iter()
                .enumerate()
                .map(|(k, sock)| {
                    let src = FillSource::new(rng.id(), (first + k) as u32, s, &args);
                    tokio::spawn(run_fill_source(
                        target,
                        infohashes.clone(),
                        timeout,
                        args.attempts,
                        sock,
                        src,
                    ))
                })
                .collect();
            for task in tasks {
                let src = task
                    .await
                    .map_err(|e| format!("a source task failed: {e}"))??;
                t.announced += src.announced;
                t.failed += src.failed;
                t.timeouts += src.timeouts;
                t.queries_in += src.queries_in;
                if t.first_error.is_none() {
                    t.first_error = src.first_error;
                }
            }
        }
        Ok::<_, String>(t)
    })?;
    let expected = u64::from(args.infohashes) * u64::from(args.peers);
    println!(
        "fill {target}: {} infohashes x {} peers from {} sources in {:.2} s: {totals}",
        args.infohashes,
        args.peers,
        args.sources,
        start.elapsed().as_secs_f64()
    );
    if args.verify > 0 {
        let line = rt.block_on(verify_fill(
            target,
            ips[0],
            &infohashes,
            args.verify,
            timeout,
            args.attempts,
        ))?;
        println!(
            "{line} (announced {}; one reply carries at most 100)",
            args.peers
        );
    }
    if totals.announced != expected {
        return Err(format!(
            "only {} of {expected} announces acknowledged; first problem: {}",
            totals.announced,
            totals.first_error.as_deref().unwrap_or("unknown")
        ));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(answer_pings: bool) -> LoadPlan {
        LoadPlan {
            target: "127.90.0.1:7000".parse().unwrap(),
            mix: vec![Kind::Ping, Kind::GetPeers, Kind::Announce],
            infohashes: vec![InfoHash([7; 20])],
            concurrency: 2,
            timeout: Duration::from_secs(1),
            answer_pings,
        }
    }

    fn reply(tid: &[u8], token: Option<&[u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        let id = NodeId([9; 20]);
        let body = ResponseBody {
            token,
            ..ResponseBody::id_only(&id)
        };
        krpc::encode_response(&mut out, tid, &body, None, None);
        out
    }

    fn tid_of(query: &[u8]) -> Vec<u8> {
        krpc::decode(query).unwrap().tid.as_slice().to_vec()
    }

    #[test]
    fn tracker_matches_each_tid_once_and_rejects_stale_generations() {
        let t0 = Instant::now();
        let mut tr = Tracker::new(1);
        let a = tr.start(t0, "a").unwrap();
        assert!(tr.start(t0, "full").is_none());
        let (what, _) = tr.finish(&a, t0 + Duration::from_millis(5)).unwrap();
        assert_eq!(what, "a");
        assert!(
            tr.finish(&a, t0).is_none(),
            "duplicate reply must not match"
        );
        let b = tr.start(t0, "b").unwrap();
        assert_eq!(a[..2], b[..2], "same slot reused");
        assert!(
            tr.finish(&a, t0).is_none(),
            "stale generation must not match"
        );
        assert!(tr.finish(&b[..5], t0).is_none(), "short tid must not match");
        let mut expired = Vec::new();
        tr.expire(t0 + Duration::from_secs(2), Duration::from_secs(1), |w| {
            expired.push(w)
        });
        assert_eq!(expired, vec!["b"]);
        assert_eq!(tr.outstanding(), 0);
        assert!(tr.finish(&b, t0).is_none(), "late reply after a timeout");
    }

    #[test]
    fn classify_reads_top_level_keys_only() {
        let id = NodeId([1; 20]);
        let prefix = query_prefix(&id);
        let mut q = Vec::new();
        krpc::encode_query(&mut q, b"xy", &id, &QueryArgs::Ping, false, None);
        assert_eq!(
            classify(&q, &prefix),
            Incoming::Query {
                tid: b"xy",
                echo: true
            }
        );
        let other = query_prefix(&NodeId([2; 20]));
        assert_eq!(
            classify(&q, &other),
            Incoming::Query {
                tid: b"xy",
                echo: false
            }
        );
        // A nested `t` inside `r` must not be taken for the transaction id.
        let r = b"d1:rd1:t2:no2:id20:aaaaaaaaaaaaaaaaaaaae1:t2:ok1:y1:re";
        assert_eq!(classify(r, &prefix), Incoming::Reply(b"ok"));
        let mut e = Vec::new();
        krpc::encode_error(&mut e, b"zz", 203, "bad token", None, None);
        assert_eq!(classify(&e, &prefix), Incoming::Error(b"zz"));
        for bad in [
            &b""[..],
            b"le",
            b"d1:t2:ok1:y1:r",
            b"d1:t2:oke",
            b"d1:t2:ok1:y1:rex",
        ] {
            assert_eq!(classify(bad, &prefix), Incoming::Malformed, "{bad:?}");
        }
    }

    #[test]
    fn load_source_accounts_replies_errors_tokens_and_pings() {
        let plan = plan(true);
        let target = plan.target;
        let t0 = Instant::now();
        let mut src = LoadSource::new(&plan, 42);
        let mut out = Vec::new();
        let mut answer = Vec::new();

        // The mix says ping first; then get_peers.
        assert!(src.next_query(&plan, t0, MEASURE, &mut out).is_some());
        let ping_tid = tid_of(&out);
        assert!(src.next_query(&plan, t0, MEASURE, &mut out).is_some());
        let gp_tid = tid_of(&out);
        assert!(
            src.next_query(&plan, t0, MEASURE, &mut out).is_none(),
            "concurrency 2"
        );

        let later = t0 + Duration::from_micros(300);
        assert!(!src.on_datagram(
            &plan,
            later,
            MEASURE,
            target,
            &reply(&ping_tid, None),
            &mut answer
        ));
        // The same reply again, and one from a stranger, are not replies.
        src.on_datagram(
            &plan,
            later,
            MEASURE,
            target,
            &reply(&ping_tid, None),
            &mut answer,
        );
        let stranger: SocketAddr = "127.90.0.9:7000".parse().unwrap();
        src.on_datagram(
            &plan,
            later,
            MEASURE,
            stranger,
            &reply(&gp_tid, None),
            &mut answer,
        );
        // The get_peers reply hands out a token, so the announce in the mix can go out.
        src.on_datagram(
            &plan,
            later,
            MEASURE,
            target,
            &reply(&gp_tid, Some(b"tok")),
            &mut answer,
        );
        assert_eq!(
            src.token.map(|(t, _)| t.as_slice().to_vec()),
            Some(b"tok".to_vec())
        );
        assert!(src.next_query(&plan, later, MEASURE, &mut out).is_some());
        let msg = krpc::decode(&out).unwrap();
        let ann_tid = msg.tid.as_slice().to_vec();
        assert!(matches!(
            msg.body,
            Body::Query(krpc::Query {
                method: krpc::Method::AnnouncePeer { .. },
                ..
            })
        ));
        // A bad-token error drops the token.
        let mut e = Vec::new();
        krpc::encode_error(&mut e, &ann_tid, 203, "bad token", None, None);
        src.on_datagram(&plan, later, MEASURE, target, &e, &mut answer);
        assert!(src.token.is_none());
        // A verification ping from the target is answered with our id.
        let mut ping = Vec::new();
        krpc::encode_query(
            &mut ping,
            b"vp",
            &NodeId([9; 20]),
            &QueryArgs::Ping,
            false,
            None,
        );
        assert!(src.on_datagram(&plan, later, MEASURE, target, &ping, &mut answer));
        let pong = krpc::decode(&answer).unwrap();
        assert_eq!(pong.tid.as_slice(), b"vp");
        assert!(matches!(pong.body, Body::Response(r) if r.id == src.id));

        let c = &src.counts[usize::from(MEASURE)];
        assert_eq!(c.sent, 3);
        assert_eq!(c.replies, 2);
        assert_eq!(c.replies_by_kind[Kind::Ping as usize], 1);
        assert_eq!(c.replies_by_kind[Kind::GetPeers as usize], 1);
        assert_eq!(c.errors, 1);
        assert_eq!(c.unmatched, 1);
        assert_eq!(c.malformed, 1, "the stranger's datagram");
        assert_eq!((c.queries_in, c.answered), (1, 1));
        assert_eq!(src.latencies, vec![300, 300]);
        assert_eq!(src.tracker.outstanding(), 0);
    }

    #[test]
    fn fill_source_spreads_ports_and_counts_lost_work() {
        let args = FillArgs::try_parse_from_for_test(&[
            "--target",
            "127.90.0.1:1",
            "--infohashes",
            "2",
            "--peers",
            "5",
            "--sources",
            "2",
        ]);
        // Source 0 announces peers 0, 2, 4 (ports 10000..=10002); source 1 peers 1, 3.
        let s0 = FillSource::new(NodeId([1; 20]), 0, 2, &args);
        let s1 = FillSource::new(NodeId([2; 20]), 1, 2, &args);
        assert_eq!(s0.ports, vec![10000, 10001, 10002]);
        assert_eq!(s1.ports, vec![10000, 10001]);

        let ihs = vec![InfoHash([5; 20]), InfoHash([6; 20])];
        let mut src = s0;
        let t0 = Instant::now();
        let mut out = Vec::new();
        assert!(src.next(&ihs, t0, &mut out).is_some());
        let gp0 = tid_of(&out);
        // A failed send puts the job back: the same get_peers goes out again.
        let gp1 = src.next(&ihs, t0, &mut out).unwrap();
        let gp1_bytes = out.clone();
        src.unsend(&gp1);
        assert_eq!(src.tracker.outstanding(), 1);
        assert!(src.next(&ihs, t0, &mut out).is_some());
        assert_eq!(out[..60], gp1_bytes[..60], "same id and infohash");
        assert!(src.next(&ihs, t0, &mut out).is_none(), "queue empty");
        // The first get_peers succeeds: three announces follow with its token, and are
        // acknowledged.
        src.on_datagram(t0, &reply(&gp0, Some(b"secret")));
        assert_eq!(src.queue.len(), 3);
        while src.next(&ihs, t0, &mut out).is_some() {
            let m = krpc::decode(&out).unwrap();
            assert!(matches!(
                m.body,
                Body::Query(krpc::Query {
                    method: krpc::Method::AnnouncePeer { token, .. }, ..
                }) if token.as_slice() == b"secret"
            ));
            src.on_datagram(t0, &reply(m.tid.as_slice(), None));
        }
        assert_eq!(src.announced, 3);
        assert!(!src.done(), "the second get_peers is still out");
        // It never answers: each timeout sends it again until the attempts run out, and
        // the three peers it would have announced count as failed.
        let mut now = t0;
        for _ in 0..4 {
            now += Duration::from_secs(2);
            src.expire(now, Duration::from_secs(1), 4);
            while src.next(&ihs, now, &mut out).is_some() {}
        }
        assert_eq!(src.timeouts, 4);
        assert_eq!(src.failed, 3);
        assert!(src.done());
    }

    #[test]
    fn busy_loop_gets_every_query_echoed() {
        // A plain std echo socket on this helper's loopback range.
        let echo = std::net::UdpSocket::bind("127.90.3.1:0").unwrap();
        echo.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let target = echo.local_addr().unwrap();
        let stop = Arc::new(AtomicU8::new(0));
        let echo_thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while stop.load(Ordering::Relaxed) == 0 {
                    if let Ok((n, from)) = echo.recv_from(&mut buf) {
                        echo.send_to(&buf[..n], from).unwrap();
                    }
                }
            })
        };
        let plan = LoadPlan {
            target,
            ..plan(false)
        };
        let ips = source_ips("127.90.3.2".parse().unwrap(), 2).unwrap();
        let sockets = bind_sources(&ips).unwrap();
        let sources = vec![LoadSource::new(&plan, 1), LoadSource::new(&plan, 2)];
        let phase = AtomicU8::new(MEASURE);
        let sources = std::thread::scope(|s| {
            let worker = s.spawn(|| run_busy(&plan, &phase, sockets, sources));
            std::thread::sleep(Duration::from_millis(300));
            phase.store(STOP, Ordering::Relaxed);
            worker.join().unwrap()
        });
        stop.store(1, Ordering::Relaxed);
        echo_thread.join().unwrap();
        for src in &sources {
            let c = &src.counts[usize::from(MEASURE)];
            assert!(c.replies > 10, "{c:?}");
            // Echoed queries carry no token, so announce turns into get_peers.
            assert_eq!(c.replies_by_kind[Kind::Announce as usize], 0);
            assert_eq!(
                (c.errors, c.timeouts, c.unmatched, c.malformed),
                (0, 0, 0, 0)
            );
            // Whatever is not answered yet is still outstanding: nothing got lost.
            assert_eq!(c.sent, c.replies + src.tracker.outstanding() as u64);
            assert_eq!(src.latencies.len() as u64, c.replies);
        }
    }

    #[test]
    fn refuses_non_loopback_targets_and_sources() {
        assert!(source_ips("127.255.255.254".parse().unwrap(), 3).is_err());
        assert!(source_ips("10.0.0.1".parse().unwrap(), 1).is_err());
        assert_eq!(
            source_ips("127.91.0.255".parse().unwrap(), 2).unwrap()[1],
            Ipv4Addr::new(127, 91, 1, 0)
        );
        // IPv6: ::1 and fd77::/16 only.
        assert!(test_addr("[::1]:1".parse().unwrap(), "--target").is_ok());
        assert!(test_addr("[fd77::90:1]:1".parse().unwrap(), "--target").is_ok());
        assert!(test_addr("127.90.0.1:1".parse().unwrap(), "--target").is_ok());
        for bad in [
            "[fd00::1]:1",
            "[fd78::1]:1",
            "[2001:db8::1]:1",
            "[::ffff:127.0.0.1]:1",
            "[::]:1",
            "10.0.0.1:1",
        ] {
            let e = test_addr(bad.parse().unwrap(), "--target").unwrap_err();
            assert!(!e.contains('\n') && e.contains("fd77::/16"), "{e}");
        }
        for step in [V6Step::Host, V6Step::Subnet] {
            let any = |base: &str, n| source_ips_any(base.parse().unwrap(), n, step);
            assert!(any("fd00::1", 1).is_err());
            assert!(any("::1", 2).is_err());
            assert!(any("fd77:0:0:ffff::ffff", 2).is_err());
            assert!(any("fd77::1", 0).is_err());
            assert_eq!(
                any("::1", 1).unwrap(),
                vec!["::1".parse::<IpAddr>().unwrap()]
            );
            assert!(any("10.0.0.1", 1).is_err());
        }
        assert!(parse_mix("ping,nope").is_err());
        assert_eq!(
            parse_mix("ping,announce_peer").unwrap(),
            vec![Kind::Ping, Kind::Announce]
        );
    }

    /// `fill` and `flood` take an IPv6 target, with sources of its family, and refuse
    /// non-test addresses and a family mismatch with a one-line error before any socket
    /// is opened.
    #[test]
    fn fill_and_flood_take_either_family_and_refuse_the_rest() {
        let v4: SocketAddr = "127.90.0.1:6881".parse().unwrap();
        let v6: SocketAddr = "[fd77::90:1]:6881".parse().unwrap();
        let sources = |target, base: Option<&str>| {
            let base = base.map(|b| b.parse().unwrap());
            sources_for(
                target,
                base,
                FILL_SOURCE_BASE,
                3,
                "--source-base",
                V6Step::Subnet,
            )
        };
        // Each family's default base, when none is given.
        assert_eq!(
            sources(v4, None).unwrap()[2],
            "127.92.0.3".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            sources(v6, None).unwrap(),
            ["fd77:0:92::1", "fd77:0:92:1::1", "fd77:0:92:2::1"]
                .map(|a| a.parse::<IpAddr>().unwrap())
        );
        let v6_loop: SocketAddr = "[::1]:6881".parse().unwrap();
        assert!(sources(v6_loop, Some("fd77::5")).is_ok());
        for (target, base) in [(v6, "127.92.0.1"), (v4, "fd77::1"), (v6_loop, "127.0.0.1")] {
            let e = sources(target, Some(base)).unwrap_err();
            assert!(
                e.contains("different address families") && !e.contains('\n'),
                "{e}"
            );
        }
        assert!(sources(v6, Some("fd00::1")).is_err());

        // Through the subcommands: every one of these fails before binding anything.
        let fill_err = |a: &[&str]| {
            let mut args = vec!["--infohashes", "1", "--peers", "1"];
            args.extend_from_slice(a);
            fill(FillArgs::try_parse_from_for_test(&args)).unwrap_err()
        };
        let flood_err = |a: &[&str]| flood::flood(flood_args(a)).unwrap_err();
        for run in [&fill_err as &dyn Fn(&[&str]) -> String, &flood_err] {
            for bad in [
                "[2001:db8::1]:6881",
                "[fd00::1]:6881",
                "[::ffff:127.0.0.1]:1",
            ] {
                let e = run(&["--target", bad]);
                assert!(e.contains("fd77::/16") && !e.contains('\n'), "{e}");
            }
            let e = run(&[
                "--target",
                "[fd77::90:1]:6881",
                "--source-base",
                "127.92.0.1",
            ]);
            assert!(e.contains("different address families"), "{e}");
            let e = run(&["--target", "127.90.0.1:6881", "--source-base", "fd77::1"]);
            assert!(e.contains("different address families"), "{e}");
        }
        let e = flood_err(&["--target", "[fd77::90:1]:1", "--probe-base", "127.1.0.1"]);
        assert!(e.starts_with("--probe-base 127.1.0.1 and --target"), "{e}");
        // A clap-level parse of an IPv6 --target and --source-base.
        let args = FillArgs::try_parse_from_for_test(&[
            "--target",
            "[fd77::90:1]:6881",
            "--infohashes",
            "1",
            "--peers",
            "1",
            "--source-base",
            "fd77:0:92:10::1",
        ]);
        assert_eq!(args.target, v6);
        assert_eq!(args.source_base, Some("fd77:0:92:10::1".parse().unwrap()));
    }

    /// What an IPv6 node answers a fill source: an 18-byte `ip`, `nodes6` (38-byte entries)
    /// instead of `nodes`, `values6` peers and a token bound to the 16-byte address. The
    /// token is all fill needs; the verify step counts the `values6` peers.
    #[test]
    fn fill_handles_ipv6_replies() {
        let args = FillArgs::try_parse_from_for_test(&[
            "--target",
            "[fd77::90:1]:6881",
            "--infohashes",
            "1",
            "--peers",
            "2",
            "--sources",
            "1",
        ]);
        let target = args.target;
        let me: SocketAddr = "[fd77:0:92::1]:40000".parse().unwrap();
        let mut src = FillSource::new(NodeId([1; 20]), 0, 1, &args);
        let ihs = vec![InfoHash([5; 20])];
        let t0 = Instant::now();
        let mut out = Vec::new();
        let gp = src.next(&ihs, t0, &mut out).unwrap();
        let id = NodeId([9; 20]);
        let nodes6 = [0x42u8; 38 * 3];
        let values6: Vec<std::net::SocketAddrV6> = vec!["[fd77:0:92:7::1]:10000".parse().unwrap()];
        let body = ResponseBody {
            nodes6: Some(&nodes6),
            token: Some(b"tok6"),
            values6: &values6,
            ..ResponseBody::id_only(&id)
        };
        let mut r = Vec::new();
        krpc::encode_response(&mut r, &gp, &body, Some(me), None);
        assert!(r.windows(8).any(|w| w == b"6:nodes6"), "an IPv6 reply");
        src.on_datagram(t0, &r);
        assert_eq!(
            src.queue.len(),
            2,
            "both announces queued: {:?}",
            src.first_error
        );
        while let Some(tid) = src.next(&ihs, t0, &mut out) {
            let m = krpc::decode(&out).unwrap();
            assert!(matches!(
                m.body,
                Body::Query(krpc::Query {
                    method: krpc::Method::AnnouncePeer { token, .. }, ..
                }) if token.as_slice() == b"tok6"
            ));
            let mut ack = Vec::new();
            krpc::encode_response(&mut ack, &tid, &ResponseBody::id_only(&id), Some(me), None);
            src.on_datagram(t0, &ack);
        }
        assert_eq!((src.announced, src.failed), (2, 0));
        assert!(src.done());

        // Verify: the IPv6 peers count against an IPv6 target, not against an IPv4 one,
        // and only in the reply to our own tid.
        assert_eq!(peers_in_reply(&r, &gp, target.is_ipv6()), Some(1));
        assert_eq!(peers_in_reply(&r, &gp, false), Some(0));
        assert_eq!(peers_in_reply(&r, b"other", true), None);
        let mut e = Vec::new();
        krpc::encode_error(&mut e, &gp, 201, "no", None, None);
        assert_eq!(peers_in_reply(&e, &gp, true), Some(0));
        // An IPv4 node's reply still counts its `values`.
        let values = vec!["127.92.0.1:10000".parse().unwrap(); 2];
        let body = ResponseBody {
            values: &values,
            ..ResponseBody::id_only(&id)
        };
        r.clear();
        krpc::encode_response(&mut r, b"v4", &body, None, None);
        assert_eq!(peers_in_reply(&r, b"v4", false), Some(2));
    }

    #[test]
    fn ipv6_fill_and_flood_sources_are_one_per_64() {
        let ips = source_ips_any("fd77:0:92:fffe::1".parse().unwrap(), 2, V6Step::Subnet).unwrap();
        assert_eq!(
            ips,
            ["fd77:0:92:fffe::1", "fd77:0:92:ffff::1"].map(|a| a.parse::<IpAddr>().unwrap())
        );
        assert!(source_ips_any("fd77:0:92:fffe::1".parse().unwrap(), 3, V6Step::Subnet).is_err());
        // Thousands of sources: all distinct, and so are their /64s (what the router and a
        // routing bucket key an IPv6 host by).
        let ips = source_ips_any("fd77:0:92::1".parse().unwrap(), 5000, V6Step::Subnet).unwrap();
        let nets: std::collections::HashSet<u64> = ips
            .iter()
            .map(|ip| match ip {
                IpAddr::V6(ip) => (u128::from(*ip) >> 64) as u64,
                IpAddr::V4(_) => unreachable!(),
            })
            .collect();
        assert_eq!(nets.len(), 5000);
        assert_eq!(ips[4999], "fd77:0:92:1387::1".parse::<IpAddr>().unwrap());
        // `load` keeps counting in the last 16 bits (the addresses bench-serve.sh adds).
        let ips = source_ips_any("fd77::91:1".parse().unwrap(), 2, V6Step::Host).unwrap();
        assert_eq!(ips[1], "fd77::91:2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn ipv6_sources_count_up_in_the_last_segment() {
        let ips = source_ips_any("fd77::91:fffe".parse().unwrap(), 2, V6Step::Host).unwrap();
        assert_eq!(
            ips,
            vec![
                "fd77::91:fffe".parse::<IpAddr>().unwrap(),
                "fd77::91:ffff".parse().unwrap()
            ]
        );
        let ips = source_ips_any("fd77::91:1".parse().unwrap(), 8, V6Step::Host).unwrap();
        assert_eq!(ips.len(), 8);
        assert_eq!(ips[7], "fd77::91:8".parse::<IpAddr>().unwrap());
        // IPv4 bases still count through 127.0.0.0/8.
        assert_eq!(
            source_ips_any("127.91.0.255".parse().unwrap(), 2, V6Step::Subnet).unwrap()[1],
            IpAddr::V4(Ipv4Addr::new(127, 91, 1, 0))
        );
    }

    #[test]
    fn load_source_accepts_ipv6_replies() {
        let target: SocketAddr = "[fd77::90:1]:7000".parse().unwrap();
        let me: SocketAddr = "[fd77::91:1]:40000".parse().unwrap();
        let plan = LoadPlan {
            target,
            mix: vec![Kind::FindNode, Kind::GetPeers],
            ..plan(true)
        };
        let t0 = Instant::now();
        let mut src = LoadSource::new(&plan, 7);
        let (mut out, mut answer) = (Vec::new(), Vec::new());
        src.next_query(&plan, t0, MEASURE, &mut out).unwrap();
        let fn_tid = tid_of(&out);
        src.next_query(&plan, t0, MEASURE, &mut out).unwrap();
        let gp_tid = tid_of(&out);
        // What an IPv6 node answers: an 18-byte `ip` (BEP 42) and `nodes6` (BEP 32: without
        // a `want`, nodes of the querier's family).
        let id = NodeId([9; 20]);
        let nodes6 = [0x42u8; 38 * 2];
        let values6 = ["[fd77::91:2]:6881".parse().unwrap()];
        let mut r = Vec::new();
        let body = ResponseBody {
            nodes6: Some(&nodes6),
            ..ResponseBody::id_only(&id)
        };
        krpc::encode_response(&mut r, &fn_tid, &body, Some(me), None);
        assert!(r.windows(7).any(|w| w == b"2:ip18:"), "an 18-byte ip");
        src.on_datagram(&plan, t0, MEASURE, target, &r, &mut answer);
        r.clear();
        let body = ResponseBody {
            nodes6: Some(&nodes6),
            token: Some(b"tok6"),
            values6: &values6,
            ..ResponseBody::id_only(&id)
        };
        krpc::encode_response(&mut r, &gp_tid, &body, Some(me), None);
        src.on_datagram(&plan, t0, MEASURE, target, &r, &mut answer);
        assert_eq!(
            src.token.map(|(t, _)| t.as_slice().to_vec()),
            Some(b"tok6".to_vec())
        );
        // The node's verification ping over IPv6 is answered, with its 18-byte `ip`.
        let mut ping = Vec::new();
        krpc::encode_query(&mut ping, b"vp", &id, &QueryArgs::Ping, false, None);
        assert!(src.on_datagram(&plan, t0, MEASURE, target, &ping, &mut answer));
        let pong = krpc::decode(&answer).unwrap();
        assert_eq!(pong.ip, Some(target));
        // The same ping from any other address (here an IPv4 one) is a stray.
        src.on_datagram(
            &plan,
            t0,
            MEASURE,
            "127.90.0.1:7000".parse().unwrap(),
            &ping,
            &mut answer,
        );
        let c = &src.counts[usize::from(MEASURE)];
        assert_eq!(c.replies_by_kind[Kind::FindNode as usize], 1);
        assert_eq!(c.replies_by_kind[Kind::GetPeers as usize], 1);
        assert_eq!(
            (c.replies, c.unmatched, c.malformed, c.answered),
            (2, 0, 1, 1)
        );
    }

    fn flood_args(args: &[&str]) -> flood::FloodArgs {
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            f: flood::FloodArgs,
        }
        T::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .unwrap()
            .f
    }

    impl FillArgs {
        fn try_parse_from_for_test(args: &[&str]) -> FillArgs {
            #[derive(Parser)]
            struct T {
                #[command(flatten)]
                f: FillArgs,
            }
            T::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
                .unwrap()
                .f
        }
    }
}
