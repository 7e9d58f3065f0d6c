//! Download benchmarks on loopback (a program, not a timed test; run in release):
//!
//!     cargo bench --bench download -- [--size-mib N] [--rounds N] [--no-swarm] [--no-utp]
//!
//! (`--rounds 0` skips part 1 and runs only the swarm.)
//!
//! 1. One libtorrent seeder (tools/lt_node.py) announced in a testnet of our DHT nodes;
//!    downloaders fetch the same N MiB file (default 1024) via its magnet link, one at a
//!    time, fresh directories each run: our `dht-get` (a fresh process: start, DHT
//!    bootstrap, lookup, BEP 9 metadata, the pieces, exit) against a fresh libtorrent
//!    session (add_magnet → finished: lookup, metadata and pieces; its start and DHT
//!    bootstrap are not timed), over TCP only and with libtorrent's default uTP. Rounds
//!    (default 2) alternate the order. Wall time, rate, CPU seconds and peak RSS of each
//!    downloader (ours from wait4's rusage, libtorrent's python process from /proc: CPU
//!    during the download, VmHWM). An untimed warm-up download first, because libtorrent's
//!    seed mode hashes each piece the first time it is requested.
//! 2. A swarm: one seeder and four downloaders started together, ours (`dht-seed` + 4
//!    `dht-get --seed`) and libtorrent's (the seeder of part 1 + 4 TCP-only sessions);
//!    times until the first and the last complete, how many copies the seeder uploaded,
//!    how much the downloaders traded among themselves, CPU and memory.
//!
//! `BEFORE=DIR` also times the `dht-get` and `dht-seed` found in DIR (an older build) in
//! the same run: a fourth downloader in part 1, and a second swarm of ours in part 2, so a
//! change's before/after ratio is measured side by side.
//!
//! `DOWNLOAD_BENCH_VERBOSE=1` copies each single download's output (progress lines) to
//! stderr.
//!
//! Every file lives in one temporary directory under $TMPDIR, removed at the end. Every
//! node is on loopback with a 127.0.0.0/8 allow-list, bootstrapped from the testnet only.
//! Addresses: testnet 127.145.0.x, libtorrent seeder 127.145.1.x, single downloads
//! 127.145.2.x, our swarm 127.145.3-4.x, libtorrent's swarm 127.145.5.x.

#[path = "../tests/common/lt.rs"]
#[allow(dead_code)]
mod lt;
mod support;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use lt::LtNode;
use support::{
    Cost, Proc, free_bytes, get_args, loadavg, lt_download, lt_joined, make_file, proc_cpu,
    proc_peak_rss, run_measured, same,
};
use trackerless::sim::testnet::{Testnet, TestnetConfig};
use trackerless::torrent::InfoHash;

const GET: &str = env!("CARGO_BIN_EXE_dht-get");
const SEED: &str = env!("CARGO_BIN_EXE_dht-seed");

struct Args {
    size_mib: u64,
    rounds: usize,
    swarm: bool,
    /// Also time libtorrent with its default uTP (slow on loopback: about a minute a GiB).
    utp: bool,
}

/// Parses the flags after cargo's own (`--bench`); a bad value is a one-line error.
fn args() -> Result<Args, String> {
    let mut a = Args {
        size_mib: 1024,
        rounds: 2,
        swarm: true,
        utp: true,
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
            "--rounds" => {
                let v = it.next().ok_or("--rounds needs a value")?;
                a.rounds = v
                    .parse()
                    .map_err(|_| format!("--rounds: {v:?} is not a number (0 = swarm only)"))?;
            }
            "--no-swarm" => a.swarm = false,
            "--no-utp" => a.utp = false,
            "--bench" => {}
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    Ok(a)
}

/// `BEFORE`'s copy of binary `name`, when the variable is set (a missing file is an error).
fn before_bin(name: &str) -> Option<String> {
    let dir = std::env::var_os("BEFORE")?;
    let p = Path::new(&dir).join(name);
    assert!(p.is_file(), "BEFORE: {} does not exist", p.display());
    Some(p.to_string_lossy().into_owned())
}

fn row(who: &str, size_mib: u64, c: Cost) -> String {
    format!(
        "| {who} | {:.2} | {:.0} | {:.2} | {:.0} |",
        c.secs,
        size_mib as f64 / c.secs,
        c.cpu,
        c.rss_mib
    )
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("usage: download [--size-mib N] [--rounds N] [--no-swarm] [--no-utp]");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(a));
}

async fn run(a: Args) {
    let base = std::env::temp_dir();
    // At most: the source, and four downloaded copies during a swarm (plus slack).
    let need = a.size_mib * (1 << 20) * if a.swarm { 6 } else { 3 };
    let free = free_bytes(&base);
    if free < need {
        eprintln!(
            "error: {} has {} MiB free, the benchmark needs {} MiB (try --size-mib)",
            base.display(),
            free >> 20,
            need >> 20
        );
        std::process::exit(1);
    }
    let work = tempfile::Builder::new()
        .prefix("bench-download-")
        .tempdir_in(&base)
        .unwrap();
    println!(
        "# {} cores; load average {} at start",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    let net = Testnet::start(
        20,
        TestnetConfig {
            subnet: 145,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    net.wait_for_tables(8, Duration::from_secs(30)).await;

    let src_dir = work.path().join("src");
    std::fs::create_dir_all(&src_dir).unwrap();
    let file = src_dir.join("bench.bin");
    let t = Instant::now();
    make_file(&file, a.size_mib);
    println!(
        "# {} MiB file written in {:.1} s",
        a.size_mib,
        t.elapsed().as_secs_f64()
    );

    let mut seeder = lt_joined(&net, Ipv4Addr::new(127, 145, 1, 1), &[]).await;
    let seeded = seeder.seed(&file).await;
    let ih: InfoHash = seeded.info_hash.parse().unwrap();
    for _ in 0..60 {
        let (peers, _) = net.nodes[7].get_peers(ih).unwrap().collect().await;
        if peers.contains(&std::net::SocketAddr::from(seeder.addr)) {
            break;
        }
        seeder
            .command(&format!("dht_announce_torrent {}", seeded.info_hash))
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let torrent = std::fs::read(&seeded.torrent).unwrap();
    let info = trackerless::torrent::metainfo::Metainfo::from_bytes(&torrent)
        .unwrap()
        .info;
    println!(
        "# libtorrent seeder {} ({} pieces of {} KiB)",
        seeder.addr,
        info.num_pieces(),
        info.piece_length / 1024
    );

    let mut k = 0u8;
    let mut fresh = |tag: &str| {
        k += 1;
        let out = work.path().join(format!("{tag}-{k}"));
        let data = work.path().join(format!("{tag}-{k}-state"));
        (out, data, format!("127.145.2.{k}"))
    };

    // Warm-up: makes libtorrent's seed mode hash every piece once.
    let (out, data, ip) = fresh("warm");
    let args = get_args(&net, &seeded.magnet, &ip, &out, &data);
    let c = tokio::task::spawn_blocking(move || run_measured(GET, &args))
        .await
        .unwrap();
    println!("# warm-up (dht-get) {:.2} s", c.secs);
    let _ = std::fs::remove_dir_all(&out);

    println!();
    println!("## {} MiB from one libtorrent seeder", a.size_mib);
    println!();
    println!("| downloader | seconds | MiB/s | CPU s | peak RSS MiB |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mut ours = Vec::new();
    let mut theirs_tcp = Vec::new();
    let mut theirs_utp = Vec::new();
    let mut before = Vec::new();
    let before_get = before_bin("dht-get");
    for round in 0..a.rounds {
        let order: [u8; 4] = if round % 2 == 0 {
            [0, 3, 1, 2]
        } else {
            [2, 1, 3, 0]
        };
        let wanted = |w: &u8| (*w != 2 || a.utp) && (*w != 3 || before_get.is_some());
        for who in order.into_iter().filter(wanted) {
            let (out, data, ip) = fresh("run");
            match who {
                0 => {
                    let args = get_args(&net, &seeded.magnet, &ip, &out, &data);
                    let c = tokio::task::spawn_blocking(move || run_measured(GET, &args))
                        .await
                        .unwrap();
                    assert!(same(&file, &out.join("bench.bin")), "dht-get: bytes differ");
                    println!("{}", row("dht-get", a.size_mib, c));
                    ours.push(c);
                }
                3 => {
                    let bin = before_get.clone().unwrap();
                    let args = get_args(&net, &seeded.magnet, &ip, &out, &data);
                    let c = tokio::task::spawn_blocking(move || run_measured(&bin, &args))
                        .await
                        .unwrap();
                    assert!(
                        same(&file, &out.join("bench.bin")),
                        "dht-get (before): bytes differ"
                    );
                    println!("{}", row("dht-get (before)", a.size_mib, c));
                    before.push(c);
                }
                w => {
                    let (flags, tag): (&[&str], &str) = if w == 1 {
                        (&["--no-utp"], "libtorrent (TCP)")
                    } else {
                        (&[], "libtorrent (default: uTP)")
                    };
                    let lt_ip: Ipv4Addr = ip.parse().unwrap();
                    let c =
                        lt_download(&net, lt_ip, flags, &seeded.magnet, &seeded.info_hash, &out)
                            .await;
                    let got = out.join("bench.bin");
                    assert!(
                        same(&file, &got),
                        "{tag}: bytes differ ({} has {:?} bytes)",
                        got.display(),
                        std::fs::metadata(&got).map(|m| m.len())
                    );
                    println!("{}", row(tag, a.size_mib, c));
                    if w == 1 {
                        theirs_tcp.push(c);
                    } else {
                        theirs_utp.push(c);
                    }
                }
            }
            let _ = std::fs::remove_dir_all(&out);
            let _ = std::fs::remove_dir_all(&data);
        }
    }
    if a.rounds > 0 {
        summary(a.size_mib, &ours, &theirs_tcp, &theirs_utp, &before);
    }

    if a.swarm {
        swarm(&net, &a, &file, work.path(), &mut seeder, &seeded).await;
    }
    println!();
    println!("# load average {} at the end", loadavg());
    drop(seeder);
    net.shutdown().await;
}

/// Best and mean of each downloader, and the ratios (libtorrent's time over ours: above
/// 1 means we are faster).
fn summary(size_mib: u64, ours: &[Cost], tcp: &[Cost], utp: &[Cost], before: &[Cost]) {
    let best = |v: &[Cost]| v.iter().map(|c| c.secs).fold(f64::INFINITY, f64::min);
    let mean = |v: &[Cost], f: fn(&Cost) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
    let max_rss = |v: &[Cost]| v.iter().map(|c| c.rss_mib).fold(0.0, f64::max);
    println!();
    println!(
        "| summary ({} runs each) | best s | mean s | mean MiB/s | mean CPU s | max peak RSS MiB | speed ratio vs dht-get (best / mean) |",
        ours.len()
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (who, v) in [
        ("dht-get", ours),
        ("dht-get (before)", before),
        ("libtorrent (TCP)", tcp),
        ("libtorrent (default: uTP)", utp),
    ] {
        if v.is_empty() {
            continue;
        }
        let m = mean(v, |c| c.secs);
        println!(
            "| {who} | {:.2} | {m:.2} | {:.0} | {:.2} | {:.0} | {:.2} / {:.2} |",
            best(v),
            size_mib as f64 / m,
            mean(v, |c| c.cpu),
            max_rss(v),
            best(v) / best(ours),
            m / mean(ours, |c| c.secs),
        );
    }
}

/// 1 seeder + 4 downloaders started together, ours and libtorrent's. Downloaders stay in
/// the swarm after completing (ours with `--seed`, libtorrent's sessions keep seeding), as
/// real clients do; the time is until the last one completes.
async fn swarm(
    net: &Testnet,
    a: &Args,
    file: &Path,
    work: &Path,
    lt_seeder: &mut LtNode,
    seeded: &lt::Seeded,
) {
    let size = a.size_mib << 20;
    println!();
    println!(
        "## swarm: 1 seeder + 4 downloaders started together, {} MiB",
        a.size_mib
    );
    println!();
    println!(
        "| swarm | first / last completed, s | aggregate MiB/s | seeder uploaded (copies) | seeder CPU s | downloaders CPU s (sum) | peak RSS MiB (largest downloader) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");

    // Ours: dht-seed + 4 dht-get --seed (and the same with BEFORE's binaries).
    let (last, traded) =
        ours_swarm(net, a, file, work, (SEED, GET), "dht-seed + 4 dht-get", 3).await;
    if let (Some(seed), Some(get)) = (before_bin("dht-seed"), before_bin("dht-get")) {
        ours_swarm(
            net,
            a,
            file,
            work,
            (&seed, &get),
            "dht-seed + 4 dht-get (before)",
            6,
        )
        .await;
    }
    let ours_last = last;
    let ours_traded = traded;

    // libtorrent: the seeder from part 1 + 4 fresh sessions.
    let before = lt_seeder.torrent_status(&seeded.info_hash).await["total_payload_upload"]
        .as_u64()
        .unwrap_or(0);
    let mut lts = Vec::new();
    for i in 0..4 {
        lts.push(lt_joined(net, Ipv4Addr::new(127, 145, 5, i + 1), &["--no-utp"]).await);
    }
    let cpu0: Vec<f64> = lts.iter().map(|l| proc_cpu(l.pid())).collect();
    let seed_cpu0 = proc_cpu(lt_seeder.pid());
    let t = Instant::now();
    for (i, lt) in lts.iter_mut().enumerate() {
        lt.add_magnet(&seeded.magnet, &work.join(format!("swarm-lt-{i}")))
            .await;
    }
    // Each session's `finished` event is polled in turn with a short wait, so every
    // completion is timed within a few milliseconds.
    let mut times: Vec<Option<f64>> = vec![None; lts.len()];
    while times.iter().any(Option::is_none) {
        assert!(
            t.elapsed() < Duration::from_secs(900),
            "libtorrent swarm downloads unfinished after 900 s"
        );
        for (i, lt) in lts.iter_mut().enumerate() {
            if times[i].is_none()
                && lt
                    .wait_finished(&seeded.info_hash, Duration::from_millis(2))
                    .await
            {
                times[i] = Some(t.elapsed().as_secs_f64());
            }
        }
    }
    let first = times.iter().flatten().fold(f64::INFINITY, |a, &b| a.min(b));
    let last = times.iter().flatten().fold(0.0, |a: f64, &b| a.max(b));
    let seed_cpu = proc_cpu(lt_seeder.pid()) - seed_cpu0;
    let cpu: f64 = lts
        .iter()
        .zip(&cpu0)
        .map(|(l, c0)| proc_cpu(l.pid()) - c0)
        .sum();
    let rss = lts
        .iter()
        .map(|l| proc_peak_rss(l.pid()))
        .fold(0.0, f64::max);
    let after = lt_seeder.torrent_status(&seeded.info_hash).await["total_payload_upload"]
        .as_u64()
        .unwrap_or(0);
    let mut traded = 0;
    for lt in lts.iter_mut() {
        traded += lt.torrent_status(&seeded.info_hash).await["total_payload_upload"]
            .as_u64()
            .unwrap_or(0);
    }
    println!(
        "| libtorrent seeder + 4 libtorrent (TCP) | {first:.2} / {last:.2} | {:.0} | {:.2} | {seed_cpu:.2} | {cpu:.2} | {rss:.0} |",
        4.0 * a.size_mib as f64 / last,
        (after - before) as f64 / size as f64
    );
    println!();
    println!(
        "swarm time ratio (libtorrent / ours, >1 = we are faster): {:.2}; downloaders uploaded to each other: ours {:.2} copies, libtorrent {:.2} copies",
        last / ours_last,
        ours_traded as f64 / size as f64,
        traded as f64 / size as f64
    );
    for lt in lts {
        lt.quit().await;
    }
    for i in 0..4 {
        let _ = std::fs::remove_dir_all(work.join(format!("swarm-lt-{i}")));
    }
}

/// One swarm of ours: `bins` = (dht-seed, dht-get), the seeder on 127.145.`subnet`.1 and the
/// downloaders on 127.145.`subnet + 1`.x. Prints its row; returns the time until the last
/// completion and the bytes the downloaders uploaded to each other.
async fn ours_swarm(
    net: &Testnet,
    a: &Args,
    file: &Path,
    work: &Path,
    bins: (&str, &str),
    label: &str,
    subnet: u8,
) -> (f64, u64) {
    let size = a.size_mib << 20;
    let seed_state = work.join(format!("swarm-seed-state-{subnet}"));
    let _ = std::fs::remove_dir_all(&seed_state);
    let seed_bind = format!("127.145.{subnet}.1:0");
    let seed_args: Vec<String> = [
        file.to_str().unwrap(),
        "--bind",
        &seed_bind,
        "--bootstrap",
        &net.addr(0).to_string(),
        "--allow-net",
        "127.0.0.0/8",
        "--no-subnet-limit",
        "--rate-limit",
        "0",
        "--data-dir",
        seed_state.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let seed = Proc::spawn(bins.0, &seed_args);
    let (_, magnet) = seed
        .lines
        .recv_timeout(Duration::from_secs(300))
        .expect("dht-seed printed no magnet link");
    let seed_cpu0 = proc_cpu(seed.pid());
    let t = Instant::now();
    let mut gets = Vec::new();
    for i in 0..4 {
        let out = work.join(format!("swarm-ours-{i}"));
        let data = work.join(format!("swarm-ours-{i}-state"));
        let mut args = get_args(
            net,
            &magnet,
            &format!("127.145.{}.{}", subnet + 1, i + 1),
            &out,
            &data,
        );
        args.push("--seed".into());
        gets.push(Proc::spawn(bins.1, &args));
    }
    let mut done: Vec<Option<f64>> = vec![None; gets.len()];
    while done.iter().any(Option::is_none) {
        assert!(
            t.elapsed() < Duration::from_secs(900),
            "swarm downloads unfinished after 900 s"
        );
        for (i, g) in gets.iter().enumerate() {
            while let Ok((_, l)) = g.lines.try_recv() {
                if l.starts_with("complete:") {
                    done[i] = Some(t.elapsed().as_secs_f64());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seed_cpu = proc_cpu(seed.pid()) - seed_cpu0;
    let first = done.iter().flatten().fold(f64::INFINITY, |a, &b| a.min(b));
    let last = done.iter().flatten().fold(0.0, |a: f64, &b| a.max(b));
    let (mut cpu, mut rss, mut traded) = (0.0, 0.0f64, 0u64);
    for g in gets {
        g.interrupt();
        let (e, lines) = g.wait();
        assert!(e.success, "swarm dht-get failed: {}", e.stderr);
        cpu += e.cpu;
        rss = rss.max(e.rss_mib);
        // "downloaded N bytes, wasted W, uploaded U in T s"
        for (_, l) in lines.try_iter() {
            if let Some(rest) = l.split_once(", uploaded ").map(|x| x.1) {
                traded += rest
                    .split(' ')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    seed.interrupt();
    let (e, lines) = seed.wait();
    assert!(e.success, "dht-seed failed: {}", e.stderr);
    let uploaded = lines
        .try_iter()
        .find_map(|(_, l)| {
            l.strip_prefix("uploaded ")
                .and_then(|n| n.split(' ').next()?.parse::<u64>().ok())
        })
        .expect("dht-seed printed no upload count");
    for i in 0..4 {
        assert!(
            same(file, &work.join(format!("swarm-ours-{i}/bench.bin"))),
            "swarm dht-get {i}: bytes differ"
        );
        let _ = std::fs::remove_dir_all(work.join(format!("swarm-ours-{i}")));
    }
    println!(
        "| {label} | {first:.2} / {last:.2} | {:.0} | {:.2} | {seed_cpu:.2} | {cpu:.2} | {rss:.0} |",
        4.0 * a.size_mib as f64 / last,
        uploaded as f64 / size as f64
    );
    (last, traded)
}
