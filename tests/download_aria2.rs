//! Interop with the real aria2c (Debian's /usr/bin/aria2c), 32 MiB each way, on loopback:
//! - aria2c downloads a magnet from `dht-seed` finding it through the DHT only: aria2's DHT
//!   bootstraps from one node of a loopback testnet, looks the info hash up, fetches the
//!   metadata from our seeder (BEP 9) and then the data (aria2 ignores `x.pe`, so the
//!   magnet carries none);
//! - aria2c downloads from `dht-seed` given the `.torrent` and a tiny HTTP tracker (in
//!   this test) that names our seeder.
//!   aria2 sends a full `bitfield` after `have`s; we used to drop it for that and it took
//!   200-280 s to reconnect its way through, so the deadline here also guards the fix;
//! - `dht-get` downloads from aria2c seeding, through the magnet's `x.pe`.
//!
//! Skipped (with a message) when aria2c is not installed. Addresses: ours 127.152.2.x and
//! 127.152.4.x, the tracker 127.152.3.1, the testnet 127.153.0.x; aria2 listens on its
//! ports on every address and sends from 127.0.0.1.

mod common;
mod dl_support;
#[path = "common/tracker.rs"]
mod tracker;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dl_support::{make_file, run_dht_get, same_file, start_seeder_at};
use tracker::{Aria2Dht, aria2_args, dht_only_magnet, tracker};
use trackerless::sim::testnet::{Testnet, TestnetConfig};
use trackerless::torrent::InfoHash;
use trackerless::torrent::metainfo::{create_info, torrent_file_from_info};

const ARIA2: &str = "/usr/bin/aria2c";
const SIZE: usize = 32 << 20;

/// Whether aria2c is installed; if so, also gives the namespace a global IPv6 address, as
/// the IPv6 tests that run before these in the same namespace leave one: aria2 binds
/// through getaddrinfo(AI_ADDRCONFIG), which refused IPv4 binds on such a host until
/// `common::ensure_ipv6_on_lo` added an IPv4 test address beside it. Doing it here tests
/// that whatever order the test binaries run in.
fn have_aria2() -> bool {
    if !Path::new(ARIA2).exists() {
        eprintln!("skipped: {ARIA2} is not installed");
        return false;
    }
    common::ensure_ipv6_on_lo("fd77::a2:1");
    true
}

/// aria2c with everything that could reach beyond the test switched off (its DHT too,
/// unless `dht` points it at the testnet).
fn aria2(dir: &Path, port: u16, dht: Option<Aria2Dht<'_>>) -> Command {
    let mut c = Command::new(ARIA2);
    c.args(aria2_args(dir, port, dht));
    c
}

/// Runs aria2c to the end; returns its wall time and output, failing the test if it did.
async fn run_aria2(mut cmd: Command) -> (Duration, String) {
    let t = Instant::now();
    let o = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let took = t.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "aria2c failed: {text}");
    (took, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aria2_downloads_a_magnet_from_dht_seed_through_the_dht_only() {
    if !have_aria2() {
        return;
    }
    let net = Testnet::start(
        8,
        TestnetConfig {
            subnet: 153,
            ..Default::default()
        },
    )
    .await
    .expect("testnet (inside unshare -rn with lo up?)");
    net.wait_for_tables(4, Duration::from_secs(30)).await;

    let content = tempfile::tempdir().unwrap();
    let file = content.path().join("dht-aria2.bin");
    make_file(&file, SIZE, 54);
    let torrent = content.path().join("dht-aria2.torrent");
    let data = tempfile::tempdir().unwrap();
    let seeder = start_seeder_at(
        net.addr(0),
        &file,
        data.path(),
        "127.152.4.1",
        &[
            "--torrent-out",
            torrent.to_str().unwrap(),
            "--rate-limit",
            "0",
        ],
    )
    .await;
    let peer = seeder.addr();
    let ih: InfoHash = seeder.info_hash().parse().expect("hex info hash");
    // The seeder's announce has reached the testnet before aria2 starts looking.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (peers, _) = net.nodes[5].get_peers(ih).unwrap().collect().await;
        if peers.contains(&std::net::SocketAddr::from(peer)) {
            break;
        }
        assert!(Instant::now() < deadline, "{peer} never became findable");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // DHT only: no x.pe (aria2 would ignore it anyway), no tracker.
    let dht_only = dht_only_magnet(&seeder.magnet);
    assert!(!dht_only.contains("x.pe") && dht_only.contains("btih"));

    let save = tempfile::tempdir().unwrap();
    let table = save.path().join("aria2-dht.dat");
    let mut cmd = aria2(
        save.path(),
        6995,
        Some(Aria2Dht {
            entry: net.addr(2),
            port: 6996,
            table: &table,
        }),
    );
    cmd.args(["--seed-time=0", &dht_only]);
    let (took, text) = run_aria2(cmd).await;
    drop(seeder);
    println!("aria2c took {took:?} from dht-seed through the DHT");
    assert!(
        same_file(&file, &save.path().join("dht-aria2.bin")),
        "bytes differ: {text}"
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aria2_downloads_from_dht_seed() {
    if !have_aria2() {
        return;
    }
    let content = tempfile::tempdir().unwrap();
    let file = content.path().join("to-aria2.bin");
    make_file(&file, SIZE, 52);
    let torrent = content.path().join("to-aria2.torrent");
    let data = tempfile::tempdir().unwrap();
    // Its DHT bootstraps from an address nobody answers: the tracker is the only way in.
    let seeder = start_seeder_at(
        "127.152.0.250:6881".parse().unwrap(),
        &file,
        data.path(),
        "127.152.2.1",
        &["--torrent-out", torrent.to_str().unwrap()],
    )
    .await;
    let peer = seeder.addr();
    let tr = tracker("127.152.3.1:0".parse().unwrap(), peer).await;

    let save = tempfile::tempdir().unwrap();
    let mut cmd = aria2(save.path(), 6991, None);
    cmd.args([
        &format!("--bt-tracker=http://{tr}/announce"),
        "--seed-time=0",
        torrent.to_str().unwrap(),
    ]);
    let (took, text) = run_aria2(cmd).await;
    drop(seeder);
    println!("aria2c took {took:?} from dht-seed");
    assert!(
        same_file(&file, &save.path().join("to-aria2.bin")),
        "bytes differ: {text}"
    );
    // Seconds on loopback; before late bitfields were accepted it took 200-280 s.
    assert!(took < Duration::from_secs(100), "aria2c took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dht_get_downloads_from_aria2_seeding() {
    if !have_aria2() {
        return;
    }
    let content = tempfile::tempdir().unwrap();
    let file = content.path().join("from-aria2.bin");
    make_file(&file, SIZE, 53);
    let (raw, _) = create_info(&file, None, |_| {}).unwrap();
    let torrent = content.path().join("from-aria2.torrent");
    std::fs::write(&torrent, torrent_file_from_info(&raw)).unwrap();
    let ih = {
        use sha1::{Digest, Sha1};
        hex::encode(Sha1::digest(&raw))
    };
    let port = 6992;
    let mut cmd = aria2(content.path(), port, None);
    cmd.args(["--check-integrity=true", "--seed-ratio=0.0"])
        .arg(&torrent)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut aria = cmd.spawn().unwrap();

    // aria2 hashes the file before it listens; dht-get retries x.pe peers meanwhile, but
    // wait for the port so a slow check does not eat into dht-get's metadata timeout.
    let aria_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(aria_addr).await.is_err() {
        assert!(Instant::now() < deadline, "aria2c never listened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // aria2 is handed over by the magnet's x.pe (its DHT is off).
    let magnet = format!("magnet:?xt=urn:btih:{ih}&x.pe={aria_addr}");
    let run = run_dht_get(&magnet, "127.152.2.2:0", "127.152.0.250:6881").await;
    let _ = aria.kill();
    let _ = aria.wait();
    let (out, text) = (&run.out, &run.text);
    assert!(run.status.success(), "dht-get failed: {text}");
    println!("dht-get took {:?} from aria2c", run.took);
    assert!(
        same_file(&file, &out.path().join("from-aria2.bin")),
        "bytes differ"
    );
}
