//! Downloads between our own peers in a loopback testnet, found through the DHT:
//! - multi-file torrents whose files straddle piece boundaries (piece lengths that are and
//!   are not multiples of the 16 KiB block, empty files, 1-byte files);
//! - a lying peer that corrupts every block it sends: its pieces fail the hash check, it is
//!   banned, and the download completes from the honest seeder;
//! - one seeder and three downloaders that trade among themselves: all complete, and the
//!   seeder uploads less than three copies of the file.
//!
//! Addresses: 127.141.x.y.

mod dl_support;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dl_support::{Liar, Peer, assert_same_tree, content, make_tree, testnet, torrent_of, v4};
use trackerless::download::Mode;
use trackerless::torrent::metainfo::Info;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_file_layout_with_odd_piece_boundaries() {
    let net = testnet(141, 6).await;
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("odd");
    make_tree(
        &tree,
        &[
            ("a.bin", 1),
            ("empty", 0),
            ("dir/b.bin", 16_383),
            ("dir/c.bin", 16_385),
            ("dir/sub/d.bin", 100_000),
            ("e.bin", 7),
            ("z/last.bin", 250_001),
        ],
    );
    for (k, piece_len) in [(1u8, 20_000u64), (2, 32_768), (3, 16_384 * 5)] {
        let info = torrent_of(&tree, Some(piece_len));
        let seeder = Peer::seeder(v4(127, 141, 10 + k, 1), &[net.addr(0)], &info, src.path()).await;
        let out = tempfile::tempdir().unwrap();
        let dl = Peer::start(
            v4(127, 141, 10 + k, 2),
            &[net.addr(1)],
            &info,
            out.path(),
            Mode::ReadWrite,
            |_| {},
        )
        .await;
        dl.wait_complete(Duration::from_secs(60)).await;
        assert_same_tree(&tree, &out.path().join("odd"));
        assert_eq!(
            std::fs::metadata(out.path().join("odd/empty"))
                .unwrap()
                .len(),
            0,
            "empty files are created too"
        );
        let p = dl.session.progress();
        assert_eq!(
            p.downloaded, p.total_bytes,
            "piece length {piece_len}: {p:?}"
        );
        drop(seeder);
    }
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_peer_is_banned_and_the_download_completes() {
    let net = testnet(141, 6).await;
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("truth.bin");
    let data = content(4 << 20, 77);
    std::fs::write(&file, &data).unwrap();
    let piece_length = 64 * 1024;
    let info = torrent_of(&file, Some(piece_length));
    let ih = {
        use sha1::{Digest, Sha1};
        trackerless::torrent::InfoHash(Sha1::digest(&info).into())
    };
    // The liar corrupts every block it sends; the honest seeder is slowed down so that the
    // liar gets plenty of pieces to spoil before the download can finish without it.
    let liar = Liar::start(
        v4(127, 141, 20, 9),
        ih,
        Arc::new(data),
        piece_length,
        |_| true,
        |_| true,
    )
    .await;
    let seeder = Peer::start(
        v4(127, 141, 20, 1),
        &[net.addr(0)],
        &info,
        src.path(),
        Mode::ReadOnly,
        |c| {
            c.seed = true;
            c.assume_complete = true;
            c.upload_rate = Some(2 << 20);
        },
    )
    .await;
    let out = tempfile::tempdir().unwrap();
    let dl = Peer::start(
        v4(127, 141, 20, 2),
        &[net.addr(1)],
        &info,
        out.path(),
        Mode::ReadWrite,
        |_| {},
    )
    .await;
    dl.session.add_peers([liar.addr]);
    dl.wait_complete(Duration::from_secs(60)).await;
    assert_same_tree(src.path(), out.path());
    let p = dl.session.progress();
    assert!(p.hash_failures >= 2, "{p:?}");
    assert_eq!(dl.session.banned(), [IpAddr::from(v4(127, 141, 20, 9))]);
    assert!(p.wasted >= 2 * piece_length, "{p:?}");
    assert!(
        liar.blocks_sent.load(std::sync::atomic::Ordering::Relaxed) >= 8,
        "the liar was used"
    );
    drop(seeder);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_downloaders_trade_among_themselves() {
    let net = testnet(141, 8).await;
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("shared.bin");
    let size = 24usize << 20;
    std::fs::write(&file, content(size, 5)).unwrap();
    let info = torrent_of(&file, Some(256 * 1024));
    // A seeder with a modest uplink: three downloaders that only took from it would need
    // three times its upload; trading among themselves they need about one.
    let seeder = Peer::start(
        v4(127, 141, 30, 1),
        &[net.addr(0)],
        &info,
        src.path(),
        Mode::ReadOnly,
        |c| {
            c.seed = true;
            c.assume_complete = true;
            c.upload_rate = Some(12 << 20);
        },
    )
    .await;
    let started = Instant::now();
    let mut outs = Vec::new();
    let mut dls = Vec::new();
    for i in 0..3u8 {
        let out = tempfile::tempdir().unwrap();
        dls.push(
            Peer::start(
                v4(127, 141, 30, 2 + i),
                &[net.addr(1 + usize::from(i))],
                &info,
                out.path(),
                Mode::ReadWrite,
                |c| c.seed = true,
            )
            .await,
        );
        outs.push(out);
    }
    for dl in &dls {
        dl.wait_complete(Duration::from_secs(120)).await;
    }
    let elapsed = started.elapsed();
    for out in &outs {
        assert_same_tree(src.path(), out.path());
    }
    let seeded = seeder.session.progress().uploaded;
    let traded: Vec<u64> = dls.iter().map(|d| d.session.progress().uploaded).collect();
    println!(
        "seeder uploaded {:.2} copies; downloaders uploaded {traded:?}; {elapsed:?}",
        seeded as f64 / size as f64
    );
    assert!(
        seeded < 3 * size as u64,
        "seeder uploaded {seeded} bytes for a {size}-byte file; downloaders uploaded {traded:?}"
    );
    assert!(traded.iter().sum::<u64>() > 0, "downloaders traded");
    let n = Info::from_bytes(&info).unwrap().num_pieces();
    for dl in &dls {
        assert_eq!(dl.session.verified().count(), n);
    }
    net.shutdown().await;
}
