//! Interop benchmarks for issue 15 (a program, not a timed test; run in release, inside a
//! loopback-only namespace as TESTING.md says):
//!
//!     unshare -rn sh -c 'ip link set lo up && cargo bench --bench interop -- [--size-mib N] [--big-mib N] [--rounds N] [--no-big] [--no-aria2]'
//!
//! Every comparison puts our seeder next to a libtorrent seeder of the same file, measured
//! in the same run by the same downloader (rounds alternate the order):
//! 1. **libtorrent with default settings (uTP first)** downloads an N MiB magnet (default
//!    32) from `dht-seed` and from a libtorrent seeder: seconds from `add_magnet` to
//!    finished (DHT lookup, BEP 9 metadata and the pieces; the session's start and DHT
//!    bootstrap are not timed), a fresh session each time.
//! 2. **aria2c** downloads the same N MiB from `dht-seed` and from the libtorrent seeder:
//!    the process's wall time, twice over: (a) a magnet found through the DHT only (aria2's
//!    DHT bootstraps from one testnet node; a fresh routing-table file each run), which
//!    includes aria2's own lookup and metadata fetch; (b) the `.torrent` and a tiny HTTP
//!    tracker (here) naming the one seeder, which isolates the transfer.
//! 3. **1 GiB over uTP** (`--big-mib`, default 1024): `dht-get --no-tcp` from `dht-seed`
//!    (ours, uTP both ends), `dht-get --no-utp` from the same seeder (ours, TCP, plain),
//!    `dht-get --no-utp --encryption require` (ours, TCP, RC4 both ways: MSE/PE's cost), and
//!    libtorrent with TCP disabled downloading from a libtorrent seeder with TCP disabled
//!    (theirs, uTP both ends). `dht-get` is timed as a whole process (start, bootstrap,
//!    lookup, metadata, pieces, exit), libtorrent from `add_magnet` as above, so the
//!    comparison is tilted against us by our start-up.
//!
//! `BEFORE=DIR` adds, in part 1, a `dht-seed` from DIR (an older build) seeding a copy of
//! the file, timed in the same rounds: a change's before/after ratio side by side.
//!
//! Untimed warm-up downloads first (libtorrent's seed mode hashes each piece the first time
//! it is asked for it). Addresses: testnet 127.146.0.x, seeders 127.146.1.x, downloaders
//! 127.146.2-3.x, tracker 127.146.4.1; every node has a loopback allow-list.

#[path = "../tests/common/lt.rs"]
#[allow(dead_code)]
mod lt;
mod support;
#[path = "../tests/common/tracker.rs"]
mod tracker;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lt::{LtNode, Seeded};
use support::{
    Cost, free_bytes, get_args, loadavg, lt_download, lt_joined, make_file, run_measured, same,
};
use tracker::{Aria2Dht, aria2_args, dht_only_magnet, tracker};
use trackerless::sim::testnet::{Testnet, TestnetConfig};
use trackerless::torrent::InfoHash;

const GET: &str = env!("CARGO_BIN_EXE_dht-get");
const SEED: &str = env!("CARGO_BIN_EXE_dht-seed");
const ARIA2: &str = "/usr/bin/aria2c";

struct Args {
    size_mib: u64,
    big_mib: u64,
    rounds: usize,
    big: bool,
    aria2: bool,
}

/// Parses the flags after cargo's own (`--bench`); a bad value is a one-line error.
fn args() -> Result<Args, String> {
    let mut a = Args {
        size_mib: 32,
        big_mib: 1024,
        rounds: 3,
        big: true,
        aria2: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            let v = it.next().ok_or(format!("{name} needs a value"))?;
            v.parse()
                .ok()
                .filter(|&n| n > 0)
                .ok_or(format!("{name}: {v:?} is not a positive integer"))
        };
        match flag.as_str() {
            "--size-mib" => a.size_mib = number("--size-mib")?,
            "--big-mib" => a.big_mib = number("--big-mib")?,
            "--rounds" => a.rounds = number("--rounds")? as usize,
            "--no-big" => a.big = false,
            "--no-aria2" => a.aria2 = false,
            "--bench" => {}
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    Ok(a)
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!(
                "usage: interop [--size-mib N] [--big-mib N] [--rounds N] [--no-big] [--no-aria2]"
            );
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(a));
}

/// A running `dht-seed` (killed on drop) and what it printed first.
struct OurSeeder {
    child: Child,
    magnet: String,
    torrent: PathBuf,
    addr: SocketAddrV4,
}

impl Drop for OurSeeder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn our_seeder(net: &Testnet, file: &Path, work: &Path, ip: &str, tag: &str) -> OurSeeder {
    our_seeder_with(SEED, net, file, work, ip, tag).await
}

/// [`our_seeder`] with the `dht-seed` binary `bin` (BEFORE's, to compare builds).
async fn our_seeder_with(
    bin: &str,
    net: &Testnet,
    file: &Path,
    work: &Path,
    ip: &str,
    tag: &str,
) -> OurSeeder {
    let data = work.join(format!("{tag}-seed-state"));
    let torrent = work.join(format!("{tag}.torrent"));
    let mut child = Command::new(bin)
        .arg(file)
        .args([
            "--torrent-out",
            torrent.to_str().expect("utf-8 path"),
            "--listen",
            &format!("{ip}:0"),
            "--bind",
            &format!("{ip}:0"),
            "--bootstrap",
            &net.addr(0).to_string(),
            "--allow-net",
            "127.0.0.0/8",
            "--no-subnet-limit",
            "--rate-limit",
            "0",
            "--data-dir",
            data.to_str().expect("utf-8 path"),
        ])
        .stdout(Stdio::piped())
        .stderr(seeder_log(tag))
        .spawn()
        .expect("dht-seed starts");
    let stdout = child.stdout.take().expect("piped");
    let magnet = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        std::thread::spawn(move || for _ in lines {});
        first
    })
    .await
    .expect("reader");
    let addr: SocketAddrV4 = magnet
        .split("x.pe=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .map(|s| s.replace("%3A", ":").replace("%3a", ":"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no x.pe in dht-seed's magnet {magnet:?}"));
    // Announced and findable before anyone is timed.
    let ih: InfoHash = magnet["magnet:?xt=urn:btih:".len()..][..40]
        .parse()
        .expect("hex info hash");
    wait_findable(net, ih, addr).await;
    OurSeeder {
        child,
        magnet,
        torrent,
        addr,
    }
}

/// `INTEROP_SEED_LOG=DIR`: each seeder's stderr goes to `DIR/<tag>.log` (set `RUST_LOG`
/// for detail), to diagnose a slow run; otherwise it is discarded.
fn seeder_log(tag: &str) -> Stdio {
    match std::env::var_os("INTEROP_SEED_LOG") {
        Some(dir) => {
            let path = Path::new(&dir).join(format!("{tag}.log"));
            std::fs::File::create(&path)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()))
                .into()
        }
        None => Stdio::null(),
    }
}

async fn wait_findable(net: &Testnet, ih: InfoHash, peer: SocketAddrV4) {
    for _ in 0..120 {
        let (peers, _) = net.nodes[7]
            .get_peers(ih)
            .expect("node runs")
            .collect()
            .await;
        if peers.contains(&std::net::SocketAddr::from(peer)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{peer} never became findable for {ih:?}");
}

async fn lt_seeder(net: &Testnet, ip: Ipv4Addr, flags: &[&str], file: &Path) -> (LtNode, Seeded) {
    let mut lt = lt_joined(net, ip, flags).await;
    let seeded = lt.seed(file).await;
    let ih: InfoHash = seeded.info_hash.parse().expect("hex info hash");
    for _ in 0..60 {
        let (peers, _) = net.nodes[7]
            .get_peers(ih)
            .expect("node runs")
            .collect()
            .await;
        if peers.contains(&std::net::SocketAddr::from(lt.addr)) {
            break;
        }
        lt.command(&format!("dht_announce_torrent {}", seeded.info_hash))
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    (lt, seeded)
}

/// How aria2c finds the seeder: a `.torrent` and a tracker naming it, or a magnet
/// through its DHT.
enum Aria2Way<'a> {
    Tracker(&'a Path, SocketAddr),
    Dht(&'a str, SocketAddrV4),
}

/// aria2c downloads into `dir`, listening on `port` (and `port + 1` for its DHT); wall time.
fn aria2_download(way: Aria2Way<'_>, dir: &Path, port: u16) -> Cost {
    let table = dir.join("aria2-dht.dat");
    let mut args = match way {
        Aria2Way::Tracker(torrent, tracker) => {
            let mut args = aria2_args(dir, port, None);
            args.extend([
                format!("--bt-tracker=http://{tracker}/announce"),
                torrent.to_str().expect("utf-8 path").to_string(),
            ]);
            args
        }
        Aria2Way::Dht(magnet, entry) => {
            let dht = Aria2Dht {
                entry,
                port: port + 1,
                table: &table,
            };
            let mut args = aria2_args(dir, port, Some(dht));
            args.push(dht_only_magnet(magnet));
            args
        }
    };
    args.push("--seed-time=0".to_string());
    run_measured(ARIA2, &args)
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[0], s[s.len() / 2], s[s.len() - 1])
}

/// One table row: every run's seconds, min / median / max, MiB/s at the median.
fn row(who: &str, mib: u64, secs: &[f64]) {
    let (lo, med, hi) = stats(secs);
    let all: Vec<String> = secs.iter().map(|s| format!("{s:.2}")).collect();
    println!(
        "| {who} | {} | {lo:.2} / {med:.2} / {hi:.2} | {:.0} |",
        all.join(", "),
        mib as f64 / med
    );
}

fn header() {
    println!("| downloader ← seeder | seconds per run | min / median / max | MiB/s (median) |");
    println!("| --- | --- | ---: | ---: |");
}

async fn run(a: Args) {
    let base = std::env::temp_dir();
    let need = (a.size_mib * 3 + if a.big { a.big_mib * 3 } else { 0 }) << 20;
    let free = free_bytes(&base);
    if free < need {
        eprintln!(
            "error: {} has {} MiB free, the benchmark needs {} MiB (try --big-mib or --no-big)",
            base.display(),
            free >> 20,
            need >> 20
        );
        std::process::exit(1);
    }
    if a.aria2 && !Path::new(ARIA2).exists() {
        eprintln!("error: {ARIA2} is not installed (apt-get install aria2), or pass --no-aria2");
        std::process::exit(1);
    }
    let work = tempfile::Builder::new()
        .prefix("bench-interop-")
        .tempdir_in(&base)
        .expect("temp dir");
    let w = work.path();
    println!(
        "# {} cores; load average {} at start",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    let net = Testnet::start(
        20,
        TestnetConfig {
            subnet: 146,
            ..Default::default()
        },
    )
    .await
    .expect("testnet starts (inside `unshare -rn` with lo up?)");
    net.wait_for_tables(8, Duration::from_secs(30)).await;

    let src = w.join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    let small = src.join("interop.bin");
    make_file(&small, a.size_mib);

    let ours = our_seeder(&net, &small, w, "127.146.1.1", "small").await;
    let (theirs_lt, theirs) = lt_seeder(&net, Ipv4Addr::new(127, 146, 1, 2), &[], &small).await;
    println!(
        "# {} MiB: dht-seed {} ({}), libtorrent seeder {} ({})",
        a.size_mib,
        ours.addr,
        &ours.magnet[20..60],
        theirs_lt.addr,
        theirs.info_hash
    );

    let mut k = 0u32;
    let mut fresh = |tag: &str| {
        k += 1;
        let out = w.join(format!("{tag}-{k}"));
        let ip = Ipv4Addr::new(127, 146, 2 + (k / 250) as u8, (k % 250) as u8 + 1);
        (out, ip)
    };

    // Part 1: libtorrent, default settings (uTP first). With BEFORE, an older dht-seed
    // seeds a copy of the file under another name (so another info hash: a downloader
    // finds one seeder only) and is timed in the same rounds.
    let before = match std::env::var_os("BEFORE") {
        Some(dir) => {
            let bin = Path::new(&dir).join("dht-seed");
            assert!(bin.is_file(), "BEFORE: {} does not exist", bin.display());
            let copy = src.join("interop-before.bin");
            std::fs::copy(&small, &copy).expect("copy");
            let s = our_seeder_with(
                bin.to_str().expect("utf-8 path"),
                &net,
                &copy,
                w,
                "127.146.1.5",
                "before",
            )
            .await;
            Some((s, copy))
        }
        None => None,
    };
    let ih_of = |magnet: &str| magnet["magnet:?xt=urn:btih:".len()..][..40].to_string();
    let ours_ih = ih_of(&ours.magnet);
    let mut seeders: Vec<(&str, &str, String, &Path, Vec<f64>)> = vec![
        (
            "libtorrent ← dht-seed",
            &ours.magnet,
            ours_ih,
            &small,
            Vec::new(),
        ),
        (
            "libtorrent ← libtorrent",
            &theirs.magnet,
            theirs.info_hash.clone(),
            &small,
            Vec::new(),
        ),
    ];
    if let Some((s, copy)) = &before {
        seeders.push((
            "libtorrent ← dht-seed (before)",
            &s.magnet,
            ih_of(&s.magnet),
            copy,
            Vec::new(),
        ));
    }
    for round in 0..=a.rounds {
        let n = seeders.len();
        for i in 0..n {
            let j = if round % 2 == 0 { i } else { n - 1 - i };
            let (label, magnet, ih, file, _) = &seeders[j];
            let (out, ip) = fresh("lt");
            let c = lt_download(&net, ip, &[], magnet, ih, &out).await;
            if std::env::var_os("INTEROP_SEED_LOG").is_some() {
                eprintln!(
                    "# {:?} {label} {ip} took {:.2} s",
                    std::time::SystemTime::now(),
                    c.secs
                );
            }
            let got = out.join(file.file_name().expect("file name"));
            assert!(same(file, &got), "{label}: bytes differ");
            let _ = std::fs::remove_dir_all(&out);
            if round > 0 {
                seeders[j].4.push(c.secs); // round 0 is the warm-up
            }
        }
    }
    println!();
    println!(
        "## {} MiB magnet, libtorrent (default settings: uTP first) as the downloader",
        a.size_mib
    );
    println!();
    header();
    for (label, _, _, _, t) in &seeders {
        row(label, a.size_mib, t);
    }
    println!(
        "ratio (median, libtorrent seeder / dht-seed): {:.2}",
        stats(&seeders[1].4).1 / stats(&seeders[0].4).1
    );
    if seeders.len() > 2 {
        println!(
            "ratio (median, dht-seed before / dht-seed now; > 1 = now is faster): {:.2}",
            stats(&seeders[2].4).1 / stats(&seeders[0].4).1
        );
    }
    drop(seeders);
    drop(before);

    // Part 2: aria2c, through the DHT and through a tracker.
    if a.aria2 {
        let tr_ours = tracker("127.146.4.1:0".parse().expect("addr"), ours.addr).await;
        let tr_theirs = tracker("127.146.4.1:0".parse().expect("addr"), theirs_lt.addr).await;
        let mut port = 7000u16;
        for via_dht in [true, false] {
            let (mut a_ours, mut a_theirs) = (Vec::new(), Vec::new());
            for round in 0..=a.rounds {
                for first in [round % 2 == 0, round % 2 != 0] {
                    let (out, _) = fresh("aria2");
                    port += 2;
                    std::fs::create_dir_all(&out).expect("mkdir");
                    let (torrent, tr, magnet) = if first {
                        (ours.torrent.clone(), tr_ours, ours.magnet.clone())
                    } else {
                        (theirs.torrent.clone(), tr_theirs, theirs.magnet.clone())
                    };
                    let entry = net.addr(2 + (port as usize / 2) % 10);
                    let dir = out.clone();
                    let c = tokio::task::spawn_blocking(move || {
                        let way = if via_dht {
                            Aria2Way::Dht(&magnet, entry)
                        } else {
                            Aria2Way::Tracker(&torrent, tr)
                        };
                        aria2_download(way, &dir, port)
                    })
                    .await
                    .expect("aria2 thread");
                    assert!(
                        same(&small, &out.join("interop.bin")),
                        "aria2: bytes differ"
                    );
                    let _ = std::fs::remove_dir_all(&out);
                    if round == 0 {
                        continue;
                    }
                    if first {
                        a_ours.push(c.secs);
                    } else {
                        a_theirs.push(c.secs);
                    }
                }
            }
            println!();
            println!(
                "## {} MiB, aria2c as the downloader ({})",
                a.size_mib,
                if via_dht {
                    "magnet through the DHT only"
                } else {
                    ".torrent + tracker"
                }
            );
            println!();
            header();
            row("aria2c ← dht-seed", a.size_mib, &a_ours);
            row("aria2c ← libtorrent", a.size_mib, &a_theirs);
            println!(
                "ratio (median, dht-seed / libtorrent seeder): {:.2} (goal ≤ 2)",
                stats(&a_ours).1 / stats(&a_theirs).1
            );
        }
    }
    drop(ours);
    drop(theirs_lt);

    // Part 3: a big file over uTP, ours and libtorrent's, and ours over TCP.
    if a.big {
        let big = src.join("big.bin");
        make_file(&big, a.big_mib);
        let ours = our_seeder(&net, &big, w, "127.146.1.3", "big").await;
        let (theirs_lt, theirs) =
            lt_seeder(&net, Ipv4Addr::new(127, 146, 1, 4), &["--no-tcp"], &big).await;
        let (mut u_ours, mut t_ours, mut u_theirs) = (Vec::new(), Vec::new(), Vec::new());
        let (mut cpu_u, mut cpu_t) = (Vec::new(), Vec::new());
        let (mut t_rc4, mut cpu_rc4) = (Vec::new(), Vec::new());
        let rounds = a.rounds.min(2);
        for round in 0..=rounds {
            let order: [u8; 4] = if round % 2 == 0 {
                [0, 1, 3, 2]
            } else {
                [2, 3, 1, 0]
            };
            for who in order {
                let (out, ip) = fresh("big");
                let c = match who {
                    0 | 1 | 3 => {
                        let data = w.join(format!("big-state-{round}-{who}"));
                        let mut args = get_args(&net, &ours.magnet, &ip.to_string(), &out, &data);
                        args.push(if who == 0 { "--no-tcp" } else { "--no-utp" }.into());
                        // 1: plain TCP; 3: the same with RC4 both ways (MSE/PE).
                        args.push("--encryption".into());
                        args.push(if who == 3 { "require" } else { "disable" }.into());
                        let c = tokio::task::spawn_blocking(move || run_measured(GET, &args))
                            .await
                            .expect("dht-get thread");
                        let _ = std::fs::remove_dir_all(&data);
                        c
                    }
                    _ => {
                        lt_download(
                            &net,
                            ip,
                            &["--no-tcp"],
                            &theirs.magnet,
                            &theirs.info_hash,
                            &out,
                        )
                        .await
                    }
                };
                assert!(
                    same(&big, &out.join("big.bin")),
                    "big download: bytes differ"
                );
                let _ = std::fs::remove_dir_all(&out);
                if round == 0 {
                    continue;
                }
                match who {
                    0 => {
                        u_ours.push(c.secs);
                        cpu_u.push(c.cpu);
                    }
                    1 => {
                        t_ours.push(c.secs);
                        cpu_t.push(c.cpu);
                    }
                    3 => {
                        t_rc4.push(c.secs);
                        cpu_rc4.push(c.cpu);
                    }
                    _ => u_theirs.push(c.secs),
                }
            }
        }
        println!();
        println!("## {} MiB over uTP (and ours over TCP)", a.big_mib);
        println!();
        header();
        row("dht-get --no-tcp ← dht-seed (uTP)", a.big_mib, &u_ours);
        row("dht-get --no-utp ← dht-seed (TCP)", a.big_mib, &t_ours);
        row(
            "dht-get --no-utp --encryption require ← dht-seed (TCP, RC4)",
            a.big_mib,
            &t_rc4,
        );
        row(
            "libtorrent uTP only ← libtorrent uTP only",
            a.big_mib,
            &u_theirs,
        );
        println!(
            "ratios (median): our uTP vs libtorrent's uTP {:.2}× faster; our uTP / our TCP time {:.2}; dht-get CPU s uTP {:.2}, TCP {:.2}",
            stats(&u_theirs).1 / stats(&u_ours).1,
            stats(&u_ours).1 / stats(&t_ours).1,
            stats(&cpu_u).1,
            stats(&cpu_t).1
        );
        println!(
            "MSE/PE (median): RC4 / plain TCP time {:.2}; dht-get CPU s RC4 {:.2} vs plain {:.2}, {:.2} s more per GiB",
            stats(&t_rc4).1 / stats(&t_ours).1,
            stats(&cpu_rc4).1,
            stats(&cpu_t).1,
            (stats(&cpu_rc4).1 - stats(&cpu_t).1) * 1024.0 / a.big_mib as f64
        );
        drop(ours);
        drop(theirs_lt);
    }
    println!();
    println!("# load average {} at the end", loadavg());
    net.shutdown().await;
}
