//! `dht-loadgen flood`: a query flood from many source addresses while an honest node keeps
//! pinging, for the load test of issue 6 (tools/flood-test.sh runs it against a release
//! `dht-node` with its default rate limit and reply quota).
//!
//! Three parts run side by side for `--duration` seconds:
//! * the flood: one thread sends queries round-robin from `--sources` sockets (one loopback
//!   address each) as fast as it can, open loop: it never waits for an answer, so its rate
//!   is the generator's maximum. Replies are drained and counted every few rounds (a banned
//!   source gets none);
//! * the honest probe: a ping every `--probe-interval-ms`, rotating over `--probe-sources`
//!   addresses so that each stays under the node's per-IP limit (the default allows 5
//!   packets/s; one address pinging 10 times a second would rightly be banned). Each probe
//!   waits on a blocking socket, so its latency is the node's plus one wake-up;
//! * a sampler: once a second, the node's resident memory (VmRSS) and the flood's counters.
//!
//! It prints a per-second table and a summary, and with `--max-p99-ms`, `--max-lost-pct` or
//! `--max-rss-spread-pct` it exits with status 1 when a bound is missed.
//!
//! Over IPv6 (`--target [fd77::…]:PORT` or `[::1]:PORT`, an IPv6 node) every source is
//! IPv6 as well, and consecutive sources differ in their 4th segment (fd77:0:121:0::1,
//! fd77:0:121:1::1, ...): each is its own `/64`, i.e. its own host to the DHT, so the flood
//! keeps coming from many hosts even against per-`/64` limits. Each address must be added to
//! `lo` of the test namespace first (`ip -6 addr add fd77:0:121:N::1/128 dev lo nodad`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use trackerless::dht::id::NodeId;
use trackerless::dht::krpc::{self, Body, QueryArgs, ResponseBody};
use trackerless::torrent::InfoHash;

use super::{
    FastRng, Kind, V6Step, VERSION, bind_error, bind_sources, cpu_time, parse_mix, random_seed,
    sources_for, test_addr,
};

/// Default first flooding source per family (see `FloodArgs::source_base`).
const FLOOD_SOURCE_BASE: (Ipv4Addr, Ipv6Addr) = (
    Ipv4Addr::new(127, 121, 0, 1),
    Ipv6Addr::new(0xfd77, 0, 0x121, 0, 0, 0, 0, 1),
);
/// Default first honest probe source per family (see `FloodArgs::probe_base`).
const PROBE_BASE: (Ipv4Addr, Ipv6Addr) = (
    Ipv4Addr::new(127, 120, 1, 1),
    Ipv6Addr::new(0xfd77, 0, 0x120, 0, 0, 0, 0, 1),
);

#[derive(Args, Debug)]
pub struct FloodArgs {
    /// The node to flood: in 127.0.0.0/8, or IPv6 `::1` or fd77::/16 (then every source,
    /// flooding or probing, is IPv6 too).
    #[arg(long, value_name = "ADDR")]
    target: SocketAddr,
    /// Seconds of flood.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    duration: f64,
    /// Number of flooding source addresses.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    sources: u16,
    /// Address of the first flooding source, of --target's family; the others follow it.
    /// Default 127.121.0.1, or fd77:0:121::1 for an IPv6 target: IPv6 sources count up in
    /// the 4th segment (one /64 each, as distinct hosts; each must exist on `lo`).
    #[arg(long, value_name = "IP")]
    source_base: Option<IpAddr>,
    /// Cap on the flood's packets per second (0 = as fast as the generator can send).
    #[arg(long, value_name = "PPS", default_value_t = 0)]
    rate: u64,
    /// Flood query kinds, round-robin: ping, find_node, get_peers, sample_infohashes
    /// (announce needs a token and is sent as get_peers).
    #[arg(long, value_name = "LIST", default_value = "ping,find_node,get_peers")]
    mix: String,
    /// Address of the first honest probe source, of --target's family. Default 127.120.1.1,
    /// or fd77:0:120::1 for an IPv6 target (counting up like --source-base).
    #[arg(long, value_name = "IP")]
    probe_base: Option<IpAddr>,
    /// Number of honest probe addresses the pings rotate over.
    #[arg(long, value_name = "N", default_value_t = 4)]
    probe_sources: u16,
    /// Milliseconds between honest pings.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    probe_interval_ms: u64,
    /// A ping unanswered after this long is lost.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    probe_timeout_ms: u64,
    /// Pid of the node, to sample its memory and CPU time.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Seed for ids and targets (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// Fail unless the honest pings' 99th percentile latency is at most this.
    #[arg(long, value_name = "MS")]
    max_p99_ms: Option<f64>,
    /// Fail if more than this share of honest pings is lost.
    #[arg(long, value_name = "PCT")]
    max_lost_pct: Option<f64>,
    /// Fail if the node's RSS over the second half of the run varies by more than this
    /// share of its minimum (needs --server-pid).
    #[arg(long, value_name = "PCT")]
    max_rss_spread_pct: Option<f64>,
}

/// Resident memory of a process in KiB, from /proc/PID/status.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Counters the flood thread publishes.
#[derive(Default)]
struct FloodCounters {
    sent: AtomicU64,
    send_errors: AtomicU64,
    /// Datagrams the flooding sources received: replies, and the node's verification pings.
    replies: AtomicU64,
}

/// Sends the pre-encoded queries round-robin until `stop`; `queries[i]` are source i's.
/// With a `rate` (packets per second) each round of one packet per source waits for its
/// share of time, spinning so the pacing stays exact at high rates.
fn run_flood(
    to: SocketAddr,
    sockets: &[UdpSocket],
    queries: &[Vec<Vec<u8>>],
    rate: Option<u64>,
    stop: &AtomicBool,
    counters: &FloodCounters,
) {
    let start = Instant::now();
    let round_time = rate.map(|r| Duration::from_secs_f64(sockets.len() as f64 / r as f64));
    // Connected sockets skip the route lookup per datagram and filter what they receive.
    let connected = sockets.iter().all(|s| s.connect(to).is_ok());
    let mut buf = [0u8; 2048];
    let mut round = 0usize;
    while !stop.load(Ordering::Relaxed) {
        if let Some(t) = round_time {
            let due = start + t.mul_f64(round as f64);
            while Instant::now() < due && !stop.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        }
        let (mut sent, mut errors) = (0, 0);
        for (sock, qs) in sockets.iter().zip(queries) {
            let q = &qs[round % qs.len()];
            let r = if connected {
                sock.send(q)
            } else {
                sock.send_to(q, to)
            };
            match r {
                Ok(_) => sent += 1,
                Err(_) => errors += 1,
            }
        }
        counters.sent.fetch_add(sent, Ordering::Relaxed);
        counters.send_errors.fetch_add(errors, Ordering::Relaxed);
        if round.is_multiple_of(16) {
            let mut replies = 0;
            for sock in sockets {
                while sock.recv(&mut buf).is_ok() {
                    replies += 1;
                }
            }
            counters.replies.fetch_add(replies, Ordering::Relaxed);
        }
        round += 1;
    }
}

/// One honest ping: when it was sent (since the start) and its round trip, `None` if lost.
#[derive(Debug, Clone, Copy)]
struct Probe {
    at: Duration,
    rtt: Option<Duration>,
}

/// The honest pings' schedule, shared by the probers.
#[derive(Clone, Copy)]
struct ProbePlan {
    target: SocketAddr,
    /// Number of probers (addresses).
    probers: u32,
    start: Instant,
    until: Instant,
    interval: Duration,
    timeout: Duration,
}

/// Honest prober `k`: sends pings number k, k + n, k + 2n, ... (n probers) at `start + seq *
/// interval` until `until`, then waits out the last timeouts. Answers the node's own
/// queries (its verification ping), as an honest node would.
fn run_probe(k: u32, sock: &UdpSocket, plan: ProbePlan) -> Vec<Probe> {
    let ProbePlan {
        target,
        probers: n,
        start,
        until,
        interval,
        timeout,
    } = plan;
    let id = NodeId([0x50 + k as u8; 20]);
    let mut results = Vec::new();
    let mut pending: HashMap<[u8; 4], Instant> = HashMap::new();
    let mut seq = k;
    let mut buf = [0u8; 2048];
    let mut out = Vec::with_capacity(128);
    loop {
        let now = Instant::now();
        let next_send = start + interval * seq;
        if next_send < until && now >= next_send {
            out.clear();
            let tid = seq.to_be_bytes();
            krpc::encode_query(&mut out, &tid, &id, &QueryArgs::Ping, false, Some(VERSION));
            if sock.send_to(&out, target).is_ok() {
                pending.insert(tid, Instant::now());
            } else {
                results.push(Probe {
                    at: now - start,
                    rtt: None,
                });
            }
            seq += n;
            continue;
        }
        pending.retain(|_, sent| {
            let expired = now.duration_since(*sent) >= timeout;
            if expired {
                results.push(Probe {
                    at: *sent - start,
                    rtt: None,
                });
            }
            !expired
        });
        if next_send >= until && pending.is_empty() {
            return results;
        }
        let mut wait = pending
            .values()
            .map(|sent| (*sent + timeout).saturating_duration_since(now))
            .min()
            .unwrap_or(timeout);
        if next_send < until {
            wait = wait.min(next_send.saturating_duration_since(now));
        }
        // A zero timeout means "block forever" to the socket API.
        let _ = sock.set_read_timeout(Some(wait.max(Duration::from_micros(50))));
        let Ok((len, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let received = Instant::now();
        if from != target {
            continue;
        }
        let Ok(msg) = krpc::decode(&buf[..len]) else {
            continue;
        };
        match msg.body {
            Body::Response(_) | Body::Error(_) => {
                let Ok(tid) = <[u8; 4]>::try_from(msg.tid.as_slice()) else {
                    continue;
                };
                if let Some(sent) = pending.remove(&tid) {
                    results.push(Probe {
                        at: sent - start,
                        rtt: Some(received - sent),
                    });
                }
            }
            Body::Query(_) => {
                out.clear();
                krpc::encode_response(
                    &mut out,
                    msg.tid.as_slice(),
                    &ResponseBody::id_only(&id),
                    Some(target),
                    Some(VERSION),
                );
                let _ = sock.send_to(&out, target);
            }
        }
    }
}

/// One row of the per-second table.
struct Second {
    sent: u64,
    replies: u64,
    rss: Option<u64>,
}

fn percentile_us(sorted: &[Duration], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[i].as_secs_f64() * 1e6)
}

fn ms(us: Option<f64>) -> String {
    us.map(|v| format!("{:.2} ms", v / 1000.0))
        .unwrap_or_else(|| "-".into())
}

pub fn flood(args: FloodArgs) -> Result<ExitCode, String> {
    let target = test_addr(args.target, "--target")?;
    let ips = sources_for(
        target,
        args.source_base,
        FLOOD_SOURCE_BASE,
        args.sources,
        "--source-base",
        V6Step::Subnet,
    )?;
    let probe_ips = sources_for(
        target,
        args.probe_base,
        PROBE_BASE,
        args.probe_sources,
        "--probe-base",
        V6Step::Subnet,
    )?;
    if probe_ips.iter().any(|p| ips.contains(p)) || probe_ips.contains(&target.ip()) {
        return Err("the probe addresses overlap the flood sources or the target".into());
    }
    let mix = parse_mix(&args.mix)?;
    if !(args.duration.is_finite() && args.duration > 0.0) {
        return Err("--duration must be positive".into());
    }
    if args.probe_interval_ms == 0 || args.probe_timeout_ms == 0 {
        return Err("--probe-interval-ms and --probe-timeout-ms must be at least 1".into());
    }
    if args.max_rss_spread_pct.is_some() && args.server_pid.is_none() {
        return Err("--max-rss-spread-pct needs --server-pid".into());
    }
    if let Some(pid) = args.server_pid
        && rss_kib(pid).is_none()
    {
        return Err(format!("cannot read /proc/{pid}/status (--server-pid)"));
    }
    let seed = args.seed.unwrap_or_else(random_seed);
    let mut rng = FastRng(seed);
    // Four variants of every kind per source, so the node sees varied targets.
    let queries: Vec<Vec<Vec<u8>>> = ips
        .iter()
        .map(|_| {
            let id = rng.id();
            (0..4)
                .flat_map(|v| mix.iter().map(move |k| (v, *k)))
                .map(|(v, kind)| {
                    let target = rng.id();
                    let args = match kind {
                        Kind::Ping => QueryArgs::Ping,
                        Kind::FindNode => QueryArgs::FindNode { target: &target },
                        Kind::GetPeers | Kind::Announce => QueryArgs::GetPeers {
                            info_hash: &InfoHash::from_node_id(target),
                            scrape: false,
                            noseed: false,
                        },
                        Kind::Sample => QueryArgs::SampleInfohashes { target: &target },
                    };
                    let mut q = Vec::new();
                    krpc::encode_query(&mut q, &[b'f', v], &id, &args, false, Some(VERSION));
                    q
                })
                .collect()
        })
        .collect();
    let sockets = bind_sources(&ips)?;
    // The probers block (with a read timeout) rather than poll.
    let probe_sockets: Vec<UdpSocket> = probe_ips
        .iter()
        .map(|&ip| {
            UdpSocket::bind(SocketAddr::new(ip, 0))
                .map_err(|e| bind_error("a probe socket", ip, &e))
        })
        .collect::<Result<_, String>>()?;

    let duration = Duration::from_secs_f64(args.duration);
    let interval = Duration::from_millis(args.probe_interval_ms);
    let timeout = Duration::from_millis(args.probe_timeout_ms);
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(FloodCounters::default());
    let n_probes = probe_sockets.len() as u32;
    let (own0, server0) = (
        cpu_time("self"),
        args.server_pid.and_then(|p| cpu_time(&p.to_string())),
    );
    let start = Instant::now();
    let until = start + duration;
    let (rows, probes) = std::thread::scope(|s| {
        let flood = {
            let (stop, counters) = (stop.clone(), counters.clone());
            let (sockets, queries) = (&sockets, &queries);
            let rate = (args.rate > 0).then_some(args.rate);
            s.spawn(move || run_flood(target, sockets, queries, rate, &stop, &counters))
        };
        let plan = ProbePlan {
            target,
            probers: n_probes,
            start,
            until,
            interval,
            timeout,
        };
        let probers: Vec<_> = probe_sockets
            .iter()
            .enumerate()
            .map(|(k, sock)| s.spawn(move || run_probe(k as u32, sock, plan)))
            .collect();
        let mut rows = Vec::new();
        let mut last = (0, 0);
        let mut next = start + Duration::from_secs(1);
        while next <= until {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            let sent = counters.sent.load(Ordering::Relaxed);
            let replies = counters.replies.load(Ordering::Relaxed);
            rows.push(Second {
                sent: sent - last.0,
                replies: replies - last.1,
                rss: args.server_pid.and_then(rss_kib),
            });
            last = (sent, replies);
            next += Duration::from_secs(1);
        }
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
        stop.store(true, Ordering::Relaxed);
        let _ = flood.join();
        let mut probes = Vec::new();
        for p in probers {
            probes.extend(p.join().unwrap_or_default());
        }
        (rows, probes)
    });
    let elapsed = start.elapsed().as_secs_f64();
    let (own1, server1) = (
        cpu_time("self"),
        args.server_pid.and_then(|p| cpu_time(&p.to_string())),
    );
    let share = |a: Option<Duration>, b: Option<Duration>| {
        a.zip(b)
            .map(|(a, b)| 100.0 * b.saturating_sub(a).as_secs_f64() / duration.as_secs_f64())
    };

    // Per-second probe latency, by when the ping was sent.
    let mut by_second: Vec<Vec<Duration>> = vec![Vec::new(); rows.len().max(1)];
    let mut lost_by_second = vec![0u32; rows.len().max(1)];
    for p in &probes {
        let i = (p.at.as_secs() as usize).min(by_second.len() - 1);
        match p.rtt {
            Some(rtt) => by_second[i].push(rtt),
            None => lost_by_second[i] += 1,
        }
    }
    println!(
        "{:>4} {:>10} {:>8} {:>10} {:>10} {:>10}",
        "sec", "flood/s", "received", "probes ok", "lost", "p99"
    );
    for (i, row) in rows.iter().enumerate() {
        by_second[i].sort_unstable();
        println!(
            "{:>4} {:>10} {:>8} {:>10} {:>10} {:>10}   rss {}",
            i + 1,
            row.sent,
            row.replies,
            by_second[i].len(),
            lost_by_second[i],
            ms(percentile_us(&by_second[i], 0.99)),
            row.rss
                .map(|r| format!("{r} KiB"))
                .unwrap_or_else(|| "-".into()),
        );
    }

    let sent = counters.sent.load(Ordering::Relaxed);
    let mut rtts: Vec<Duration> = probes.iter().filter_map(|p| p.rtt).collect();
    rtts.sort_unstable();
    let lost = probes.len() - rtts.len();
    let lost_pct = 100.0 * lost as f64 / probes.len().max(1) as f64;
    let (p50, p99, max) = (
        percentile_us(&rtts, 0.5),
        percentile_us(&rtts, 0.99),
        percentile_us(&rtts, 1.0),
    );
    println!(
        "flood {target}: {} sources ({}..), mix {}, {elapsed:.1} s: sent {sent} ({:.0}/s), \
         received {} (replies and the node's verification pings), send errors {}",
        ips.len(),
        ips[0],
        args.mix,
        sent as f64 / elapsed,
        counters.replies.load(Ordering::Relaxed),
        counters.send_errors.load(Ordering::Relaxed),
    );
    println!(
        "honest pings: {} sent every {} ms from {} addresses: {} answered, {lost} lost \
         ({lost_pct:.2}%), latency p50 {} p99 {} max {}",
        probes.len(),
        args.probe_interval_ms,
        n_probes,
        rtts.len(),
        ms(p50),
        ms(p99),
        ms(max),
    );
    let rss: Vec<u64> = rows.iter().filter_map(|r| r.rss).collect();
    let half = &rss[rss.len() / 2..];
    let spread = match (half.iter().min(), half.iter().max()) {
        (Some(&lo), Some(&hi)) if lo > 0 => Some(100.0 * (hi - lo) as f64 / lo as f64),
        _ => None,
    };
    if let (Some(first), Some(last)) = (rss.first(), rss.last()) {
        println!(
            "node rss: {first} KiB after 1 s, {last} KiB at the end, max {} KiB; second half \
             {}..{} KiB (spread {:.2}%)",
            rss.iter().max().unwrap_or(&0),
            half.iter().min().unwrap_or(&0),
            half.iter().max().unwrap_or(&0),
            spread.unwrap_or(f64::NAN),
        );
    }
    let (server_cpu, own_cpu) = (share(server0, server1), share(own0, own1));
    if let Some(c) = server_cpu {
        println!("node cpu {c:.1}% of one core");
    }
    if let Some(c) = own_cpu {
        println!("loadgen cpu {c:.1}% of one core (flood thread, probes, sampler)");
    }
    println!(
        "RESULT flood_pps={:.0} probes={} lost={lost} p50_us={:.0} p99_us={:.0} max_us={:.0} \
         rss_first_kib={} rss_last_kib={} rss_spread_pct={:.2}",
        sent as f64 / elapsed,
        probes.len(),
        p50.unwrap_or(0.0),
        p99.unwrap_or(0.0),
        max.unwrap_or(0.0),
        rss.first().unwrap_or(&0),
        rss.last().unwrap_or(&0),
        spread.unwrap_or(f64::NAN),
    );

    let mut failed = Vec::new();
    if let Some(bound) = args.max_p99_ms
        && p99.is_none_or(|v| v / 1000.0 > bound)
    {
        failed.push(format!("honest p99 {} above {bound} ms", ms(p99)));
    }
    if let Some(bound) = args.max_lost_pct
        && lost_pct > bound
    {
        failed.push(format!(
            "{lost_pct:.2}% of honest pings lost, above {bound}%"
        ));
    }
    if let Some(bound) = args.max_rss_spread_pct
        && spread.is_none_or(|s| s > bound)
    {
        failed.push(format!(
            "node RSS spread {:.2}% in the second half, above {bound}%",
            spread.unwrap_or(f64::NAN)
        ));
    }
    if failed.is_empty() {
        println!("PASS");
        Ok(ExitCode::SUCCESS)
    } else {
        for f in &failed {
            println!("FAIL: {f}");
        }
        Ok(ExitCode::from(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trackerless::dht::allow::AllowList;
    use trackerless::dht::driver::{Dht, DhtConfig};
    use trackerless::dht::node::Config;

    /// A short flood against a real node with its default defenses: every flooding source
    /// gets at most its 50 packets per 10 s answered and is then banned, and the honest
    /// prober (well under the limit) is still answered.
    #[test]
    fn flooders_are_banned_and_the_prober_is_answered() {
        let mut cfg = DhtConfig::new("127.120.5.1:0".parse().unwrap());
        cfg.node = Config {
            allow: AllowList::loopback(),
            ..Config::default()
        };
        let dht = Dht::spawn(cfg).unwrap();
        let target = dht.local_addr();
        let ips = crate::source_ips("127.120.6.1".parse().unwrap(), 20).unwrap();
        let sockets = bind_sources(&ips).unwrap();
        let queries: Vec<Vec<Vec<u8>>> = (0..sockets.len())
            .map(|i| {
                let mut q = Vec::new();
                let id = NodeId([i as u8 + 1; 20]);
                krpc::encode_query(&mut q, b"ff", &id, &QueryArgs::Ping, false, None);
                vec![q]
            })
            .collect();
        let probe = UdpSocket::bind("127.120.7.1:0").unwrap();
        let stop = AtomicBool::new(false);
        let counters = FloodCounters::default();
        let start = Instant::now();
        let plan = ProbePlan {
            target,
            probers: 1,
            start,
            until: start + Duration::from_millis(1500),
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
        };
        let probes = std::thread::scope(|s| {
            let flood = s.spawn(|| run_flood(target, &sockets, &queries, None, &stop, &counters));
            let probes = run_probe(0, &probe, plan);
            stop.store(true, Ordering::Relaxed);
            flood.join().unwrap();
            probes
        });
        let stats = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(dht.stats())
            .unwrap();
        let replies = counters.replies.load(Ordering::Relaxed);
        assert!(
            counters.sent.load(Ordering::Relaxed) > 20 * 51,
            "the flood outran the limit"
        );
        // 50 answered queries per source, plus the one verification ping the node sends
        // every new querier.
        assert!(
            replies <= 20 * 51,
            "{replies} datagrams to 20 limited sources"
        );
        assert_eq!(stats.banned_ips, 20, "{stats:?}");
        assert!(stats.dropped_rate_limited > 0);
        assert_eq!(probes.len(), 15, "every probe accounted for");
        assert!(
            probes.iter().any(|p| p.rtt.is_some()),
            "the honest prober got no answer: {probes:?}"
        );
    }
}
