//! BEP 47 / BEP 52 hybrid torrents against a real libtorrent 2.x, on loopback:
//! - libtorrent makes a multi-file torrent with its *default* flags (hybrid v1+v2, pad files
//!   `.pad/N` repeated for equal sizes) and seeds it; `dht-get` downloads it through the
//!   magnet's `x.pe` peer: files byte-identical, no pad file on disk, and the metadata it
//!   writes is libtorrent's info dict byte for byte (v2 keys included);
//! - `dht-seed --hybrid` makes such a torrent itself; libtorrent loads the `.torrent`
//!   (it checks the v2 `piece layers` against the merkle roots) and downloads it from us.
//!
//! Addresses: libtorrent 127.151.1.x, ours 127.151.2.x; no DHT is needed (the bootstrap
//! address answers nothing).

mod common;
mod dl_support;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::lt::LtNode;
use dl_support::{assert_same_tree, make_tree};
use trackerless::torrent::metainfo::Metainfo;

const GET: &str = env!("CARGO_BIN_EXE_dht-get");
const SEED: &str = env!("CARGO_BIN_EXE_dht-seed");

/// Several files of one size (so libtorrent repeats a pad path), one smaller than a piece,
/// an empty one, one in a subdirectory; 32 KiB pieces.
const TREE: &[(&str, usize)] = &[
    ("a.bin", 100_000),
    ("b.bin", 100_000),
    ("c.bin", 100_000),
    ("empty", 0),
    ("small.txt", 1_000),
    ("sub/d.bin", 300_001),
];
const PIECE: u32 = 32 << 10;

fn net_args(ip: &str, data: &Path) -> Vec<String> {
    [
        "--bind",
        &format!("{ip}:0"),
        "--bootstrap",
        "127.151.0.250:6881",
        "--allow-net",
        "127.0.0.0/8",
        "--no-subnet-limit",
        "--data-dir",
        data.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn run(bin: &'static str, args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || Command::new(bin).args(&args).output().unwrap())
        .await
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn no_pad_on_disk(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            assert!(
                !p.to_string_lossy().contains(".pad"),
                "pad file on disk: {}",
                p.display()
            );
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dht_get_downloads_a_libtorrent_default_hybrid_torrent() {
    let content = tempfile::tempdir().unwrap();
    let tree = content.path().join("hybrid-tree");
    make_tree(&tree, TREE);
    let mut lt = LtNode::start_on(Ipv4Addr::new(127, 151, 1, 1)).await;
    let seeded = lt.seed_default(&tree, PIECE).await;
    let lt_torrent = Metainfo::from_bytes(&std::fs::read(&seeded.torrent).unwrap()).unwrap();
    assert!(lt_torrent.info.hybrid, "libtorrent made a v1-only torrent");
    let pads: Vec<&Vec<String>> = lt_torrent
        .info
        .files
        .iter()
        .filter(|f| f.pad)
        .map(|f| &f.path)
        .collect();
    assert!(
        pads.len() >= 3
            && pads
                .iter()
                .any(|p| pads.iter().filter(|q| *q == p).count() > 1),
        "expected repeated pad paths: {pads:?}"
    );
    let magnet = format!("{}&x.pe={}", seeded.magnet, lt.addr);

    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut args = vec![
        magnet.clone(),
        "--out".into(),
        out.path().to_str().unwrap().into(),
    ];
    args.extend(net_args("127.151.2.1", data.path()));
    let o = run(GET, args).await;
    if !o.status.success() {
        panic!("dht-get failed: {}\n{}", text(&o), lt.diagnostics().await);
    }
    assert!(text(&o).contains("complete:"), "{}", text(&o));
    assert_same_tree(&tree, &out.path().join("hybrid-tree"));
    assert!(out.path().join("hybrid-tree/empty").is_file());
    no_pad_on_disk(out.path());

    // The metadata as we fetch and write it keeps libtorrent's v2 keys byte for byte.
    let meta_out = tempfile::tempdir().unwrap();
    let mut args = vec![
        magnet,
        "--metadata-only".into(),
        "--out".into(),
        meta_out.path().to_str().unwrap().into(),
    ];
    let data2 = tempfile::tempdir().unwrap();
    args.extend(net_args("127.151.2.2", data2.path()));
    let o = run(GET, args).await;
    assert!(o.status.success(), "{}", text(&o));
    let written = std::fs::read_dir(meta_out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "torrent"))
        .expect("a .torrent was written");
    let ours = Metainfo::from_bytes(&std::fs::read(written).unwrap()).unwrap();
    assert_eq!(ours.info_bytes, lt_torrent.info_bytes);
    lt.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libtorrent_downloads_a_hybrid_torrent_from_dht_seed() {
    let content = tempfile::tempdir().unwrap();
    let tree = content.path().join("our-hybrid");
    make_tree(&tree, TREE);
    let torrent = content.path().join("our-hybrid.torrent");
    let data = tempfile::tempdir().unwrap();
    let mut seeder = Command::new(SEED)
        .arg(&tree)
        .args([
            "--hybrid",
            "--piece-length",
            &PIECE.to_string(),
            "--torrent-out",
            torrent.to_str().unwrap(),
        ])
        .args(net_args("127.151.2.3", data.path()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = seeder.stdout.take().unwrap();
    let magnet = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        std::thread::spawn(move || for _ in lines {});
        first
    })
    .await
    .unwrap();
    let peer: SocketAddr = magnet
        .split("x.pe=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .map(|s| s.replace("%3A", ":").replace("%3a", ":"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no x.pe in {magnet}"));

    let ours = Metainfo::from_bytes(&std::fs::read(&torrent).unwrap()).unwrap();
    assert!(ours.info.hybrid && ours.piece_layers.is_some());
    assert!(ours.info.files.iter().filter(|f| f.pad).count() >= 3);

    let mut lt = LtNode::start_on(Ipv4Addr::new(127, 151, 1, 2)).await;
    let save = tempfile::tempdir().unwrap();
    let ih = lt.add_torrent_file(&torrent, save.path()).await;
    assert_eq!(ih, ours.info_hash.to_hex());
    lt.add_peer(&ih, peer).await;
    let done = lt.wait_finished(&ih, Duration::from_secs(120)).await;
    let _ = seeder.kill();
    let _ = seeder.wait();
    if !done {
        panic!(
            "libtorrent did not finish: {}\n{}",
            lt.torrent_status(&ih).await,
            lt.diagnostics().await
        );
    }
    // `finished` can precede libtorrent's disk writes becoming visible: poll, then assert.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline
        && !TREE.iter().all(|(rel, _)| {
            std::fs::read(tree.join(rel)).ok()
                == std::fs::read(save.path().join("our-hybrid").join(rel)).ok()
        })
    {
        // sleep-ok: the poll interval of the loop above (until the files match or 20 s pass).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_same_tree(&tree, &save.path().join("our-hybrid"));
    lt.quit().await;
}
