//! A write that fails mid-download — here through the file-size limit (RLIMIT_FSIZE), which
//! fails writes past an offset just as a full disk fails them past its last free block —
//! stops the session with a clear error and loses nothing verified: the resume record holds
//! exactly the verified pieces, and a restart downloads only the rest.
//!
//! The limit is process-wide, hence this test's own binary. Addresses: 127.143.x.y.

mod dl_support;

use std::sync::Arc;
use std::time::Duration;

use dl_support::{Liar, Peer, content, testnet, torrent_of, v4};
use trackerless::download::{Mode, ResumeStore, SessionError, StorageError};

const PIECE: u64 = 256 * 1024;
const SIZE: usize = 16 << 20;
/// Writes past 8 MiB fail; the partial peer has exactly the pieces below.
const LIMIT: u64 = 8 << 20;

fn set_fsize_limit(bytes: u64) -> libc::rlimit {
    // SAFETY: plain libc calls on a local struct; ignoring SIGXFSZ makes an over-limit
    // write fail with EFBIG instead of killing the test process.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let mut old: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut old), 0);
        let new = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: old.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &new), 0);
        old
    }
}

fn restore(old: libc::rlimit) {
    // SAFETY: as above; raising the soft limit back up to the hard limit is always allowed.
    unsafe {
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &old), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_failure_stops_cleanly_and_keeps_verified_pieces() {
    let net = testnet(143, 5).await;
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("data.bin");
    let data = content(SIZE, 3);
    std::fs::write(&file, &data).unwrap();
    let info = torrent_of(&file, Some(PIECE));
    let ih = {
        use sha1::{Digest, Sha1};
        trackerless::torrent::InfoHash(Sha1::digest(&info).into())
    };
    let seeder = Peer::seeder(v4(127, 143, 1, 1), &[net.addr(0)], &info, src.path()).await;
    let below = (LIMIT / PIECE) as u32;
    let partial = Liar::start(
        v4(127, 143, 1, 2),
        ih,
        Arc::new(data.clone()),
        PIECE,
        |p| u64::from(p) < LIMIT / PIECE,
        |_| false,
    )
    .await;

    let out = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let store = ResumeStore::open(&state.path().join("resume")).unwrap();
    let store2 = store.clone();
    // No DHT: peers are given one at a time, to control which pieces arrive when.
    let dl = Peer::start(
        v4(127, 143, 2, 1),
        &[net.addr(1)],
        &info,
        out.path(),
        Mode::ReadWrite,
        |c| {
            c.dht = None;
            c.resume = Some(store2);
        },
    )
    .await;
    // The file is pre-allocated (sparse) by now; from here on writes past LIMIT fail.
    let old = set_fsize_limit(LIMIT);
    dl.session.add_peers([partial.addr]);
    for _ in 0..600 {
        if dl.session.verified().count() == below as usize {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        dl.session.verified().count(),
        below as usize,
        "{:?}",
        dl.session.progress()
    );
    dl.session.add_peers([seeder.addr()]);
    let end = tokio::time::timeout(Duration::from_secs(30), dl.session.wait_stopped())
        .await
        .expect("the session stops on the write error");
    restore(old);
    let err = end.expect_err("a failed write is an error");
    assert!(
        matches!(&err, SessionError::Storage(e) if matches!(**e, StorageError::Io { op: "write", .. })),
        "a typed storage error: {err:?}"
    );
    let err = err.to_string();
    assert!(
        err.starts_with("cannot write ")
            && err.contains("data.bin")
            && err.contains("file size limit"),
        "{err}"
    );
    // Nothing verified is lost: the record holds exactly the pieces below the limit.
    let rec = store
        .load(&ih, SIZE / PIECE as usize, 1)
        .expect("a resume record");
    assert_eq!(
        rec.verified.ones().collect::<Vec<_>>(),
        (0..below as usize).collect::<Vec<_>>()
    );
    drop(dl);

    // The restart trusts them and fetches only the rest.
    let store3 = store.clone();
    let again = Peer::start(
        v4(127, 143, 2, 2),
        &[net.addr(2)],
        &info,
        out.path(),
        Mode::ReadWrite,
        |c| {
            c.dht = None;
            c.resume = Some(store3);
        },
    )
    .await;
    again.session.add_peers([seeder.addr()]);
    again.wait_complete(Duration::from_secs(60)).await;
    let p = again.session.progress();
    assert_eq!(p.downloaded, SIZE as u64 - LIMIT, "{p:?}");
    assert!(
        std::fs::read(out.path().join("data.bin")).unwrap() == data,
        "bytes differ"
    );
    net.shutdown().await;
}
