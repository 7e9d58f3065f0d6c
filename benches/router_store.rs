//! Router store size and restart speed, per address family: fills a router ring with N
//! verified contacts, reports the memory it takes, saves it, and times loading it back
//! (issue 7: ≤ 300 MB for 10M IPv4 entries, loads "well under a second" for 1M; issue 13:
//! router memory per 1M contacts, IPv6 vs IPv4).
//!
//! `cargo bench --bench router_store -- 1000000 10000000`
//!
//! Each (family, N) is measured in a child process of its own (this program, run with
//! `--one v4|v6 N`), IPv4 then IPv6 for each N, so the two families are measured side by
//! side in one run and neither inherits the other's freed heap: the RSS the ring added is
//! then the ring's alone. Two figures per run:
//! - **exact**: [`NodeRing::memory`], the bytes of the ring's heap allocations (entries plus
//!   the two Bloom filter generations), divided by N;
//! - **RSS**: `VmRSS` after filling minus before (what the kernel charges; includes
//!   allocator slack, so slightly above the exact figure).
//!
//! `-- 1000000 --out DIR` also leaves a saved IPv4 store as `DIR/router/router-nodes.bin`, a
//! ready data directory for `dht-node --router --data-dir DIR` (tools/bench-save.sh uses it).
//!
//! Contacts are synthetic (random ids, distinct public-looking addresses: one per IPv4
//! address, one per IPv6 `/64`); nothing is sent.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::path::Path;
use std::time::{Duration, Instant};

use trackerless::dht::id::{Contact, NodeAddr, NodeId};
use trackerless::dht::router::store::{NodeRing, Rings, store_file};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// What one child measured.
struct One {
    exact: usize,
    rss_kib: u64,
    filled: Duration,
    file_bytes: u64,
    saved: Duration,
    loaded: Duration,
}

impl One {
    /// One line on stdout, read back by the parent.
    fn print(&self) {
        println!(
            "RESULT {} {} {} {} {} {}",
            self.exact,
            self.rss_kib,
            self.filled.as_nanos(),
            self.file_bytes,
            self.saved.as_nanos(),
            self.loaded.as_nanos()
        );
    }

    fn parse(out: &str) -> Option<One> {
        let line = out.lines().find_map(|l| l.strip_prefix("RESULT "))?;
        let v: Vec<u128> = line
            .split(' ')
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        let ns = |x: u128| Duration::from_nanos(x as u64);
        Some(One {
            exact: v[0] as usize,
            rss_kib: v[1] as u64,
            filled: ns(v[2]),
            file_bytes: v[3] as u64,
            saved: ns(v[4]),
            loaded: ns(v[5]),
        })
    }
}

/// The `i`th synthetic address of a family: distinct hosts spread over the space
/// (`i` times an odd constant).
trait Synthetic: NodeAddr {
    fn nth(i: u32) -> Self;
    fn ring(rings: &mut Rings) -> &mut NodeRing<Self>;
}

impl Synthetic for SocketAddrV4 {
    fn nth(i: u32) -> Self {
        SocketAddrV4::new(Ipv4Addr::from(i.wrapping_mul(2_654_435_761)), 6881)
    }
    fn ring(rings: &mut Rings) -> &mut NodeRing<Self> {
        &mut rings.v4
    }
}

impl Synthetic for SocketAddrV6 {
    fn nth(i: u32) -> Self {
        // 2a00::/12-style public space, one /64 per contact, a random-looking interface id.
        let net = 0x2a00_0000_0000_0000u64 | u64::from(i.wrapping_mul(2_654_435_761));
        let iid = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let ip = Ipv6Addr::from((u128::from(net) << 64) | u128::from(iid));
        SocketAddrV6::new(ip, 6881, 0, 0)
    }
    fn ring(rings: &mut Rings) -> &mut NodeRing<Self> {
        &mut rings.v6
    }
}

/// Fills one family's ring with `n` contacts and measures it (in this process).
fn measure<A: Synthetic>(n: usize, path: &Path) -> One {
    let mut rng = rand::rng();
    let base = rss_kib();
    let started = Instant::now();
    // Only the measured family's ring is sized: the other one's filters would count too.
    let mut rings = Rings {
        v4: NodeRing::new(1),
        v6: NodeRing::new(1),
    };
    *A::ring(&mut rings) = NodeRing::new(n);
    let mut i: u32 = 0;
    while A::ring(&mut rings).len() < n {
        let addr = A::nth(i);
        i += 1;
        A::ring(&mut rings).insert(&Contact::new(NodeId::random(&mut rng), addr));
    }
    let filled = started.elapsed();
    let rss_kib = rss_kib().saturating_sub(base);
    let exact = A::ring(&mut rings).memory();
    let t = Instant::now();
    rings.save(path).expect("save");
    let saved = t.elapsed();
    let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    drop(rings);
    let t = Instant::now();
    let mut back = Rings::load(path, n, n).expect("load");
    let loaded = t.elapsed();
    assert_eq!(A::ring(&mut back).len(), n);
    One {
        exact,
        rss_kib,
        filled,
        file_bytes,
        saved,
        loaded,
    }
}

fn child(family: &str, n: usize, out: Option<&Path>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = store_file(dir.path());
    let one = match family {
        "v4" => measure::<SocketAddrV4>(n, &path),
        "v6" => measure::<SocketAddrV6>(n, &path),
        other => panic!("--one {other}: v4 or v6"),
    };
    if let Some(out) = out {
        let dir = out.join("router");
        std::fs::create_dir_all(&dir).expect("--out directory");
        std::fs::copy(&path, store_file(&dir)).expect("copy the store");
    }
    one.print();
}

fn run_child(family: &str, n: usize, out: Option<&Path>) -> One {
    let exe = std::env::current_exe().expect("own path");
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--one", family, &n.to_string()]);
    if let Some(out) = out {
        cmd.arg("--out").arg(out);
    }
    let output = cmd.output().expect("run the measuring child");
    assert!(output.status.success(), "child {family} {n} failed");
    One::parse(&String::from_utf8_lossy(&output.stdout)).expect("a RESULT line")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from);
    if let Some(i) = args.iter().position(|a| a == "--one") {
        let family = args.get(i + 1).expect("--one FAMILY N");
        let n = args.get(i + 2).and_then(|n| n.parse().ok()).expect("N");
        child(family, n, out.as_deref());
        return;
    }
    let sizes: Vec<usize> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000_000]
    } else {
        sizes
    };
    println!(
        "| contacts | family | exact bytes/contact (raw entry) | RSS added | RSS bytes/contact | \
         filled in | file | saved in | loaded in |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for n in sizes {
        // The IPv4 child leaves the --out store (an IPv4 ring, as tools/bench-save.sh wants).
        let v4 = run_child("v4", n, out.as_deref());
        let v6 = run_child("v6", n, None);
        for (name, raw, r) in [("IPv4", 26, &v4), ("IPv6", 38, &v6)] {
            println!(
                "| {n} | {name} | {:.1} B ({raw} B) | {:.1} MiB | {:.1} B | {:.2?} | {:.1} MB | \
                 {:.2?} | {:.2?} |",
                r.exact as f64 / n as f64,
                r.rss_kib as f64 / 1024.0,
                r.rss_kib as f64 * 1024.0 / n as f64,
                r.filled,
                r.file_bytes as f64 / 1e6,
                r.saved,
                r.loaded,
            );
        }
        println!(
            "{n} contacts: IPv6 / IPv4 memory ratio: exact {:.2}, RSS {:.2}",
            v6.exact as f64 / v4.exact as f64,
            v6.rss_kib as f64 / v4.rss_kib.max(1) as f64
        );
    }
}
