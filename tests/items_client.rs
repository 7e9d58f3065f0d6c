//! BEP 44 client side over real loopback sockets: our library calls and the `dht-item`
//! command against a testnet of our nodes (immutable and mutable items, salt, sequence
//! numbers, refusals with 302 and 301, one-line errors for bad arguments), and the
//! independent `mainline` crate's client putting and getting items through our nodes.
//!
//! Run inside a network namespace (see TESTING.md). Each test has its own 127.x range.

mod common;
mod wait_support;

use std::net::Ipv4Addr;

use common::item_cli::{self, json_line};
use ed25519_dalek::SigningKey;
use tokio::io::AsyncBufReadExt;
use trackerless::dht::driver::{DhtHandle, ItemsError};
use trackerless::dht::id::NodeId;
use trackerless::dht::items::{immutable_target, mutable_target};
use trackerless::dht::krpc::{ERR_CAS_MISMATCH, ERR_SEQ_TOO_OLD};
use trackerless::sim::testnet::{Testnet, TestnetConfig};
use wait_support::{GENEROUS, wait_for};

async fn testnet(n: usize, subnet: u8) -> Testnet {
    let net = Testnet::start(
        n,
        TestnetConfig {
            subnet,
            ..Default::default()
        },
    )
    .await
    .expect("testnet starts");
    let smallest = net.wait_for_tables(8, GENEROUS).await;
    assert!(smallest >= 8, "testnet tables stayed at {smallest}");
    net
}

/// Gets until `probe` accepts the result (a put's last replies may still be in flight on
/// other nodes when it returns; an item is readable at once in practice).
async fn get_until<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    wait_for(what, GENEROUS, async || probe().await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_get_items_through_a_testnet() {
    let net = testnet(30, 211).await;
    let (writer, reader): (&DhtHandle, &DhtHandle) = (&net.nodes[3], &net.nodes[27]);

    // Immutable.
    let v = b"12:Hello World!".to_vec();
    let put = writer.put_immutable(v.clone()).await.expect("stored");
    assert_eq!(put.target, immutable_target(&v));
    assert!(put.stored >= 3, "{put:?}");
    let got = get_until("the immutable item", async || {
        reader.get_immutable(put.target).await.ok()
    })
    .await;
    assert_eq!(got.item.v, v);
    assert!(got.item.mutable.is_none());

    // Not stored anywhere: NotFound, after a lookup that ends.
    let missing = reader.get_immutable(NodeId([0x3c; 20])).await;
    assert!(
        matches!(missing, Err(ItemsError::NotFound { .. })),
        "{missing:?}"
    );

    // Mutable, without and with salt: seq starts at 1 and continues.
    let key = SigningKey::from_bytes(&[0x11; 32]);
    let pk = key.verifying_key();
    for salt in [&b""[..], b"salt"] {
        let p1 = writer
            .put_mutable(&key, salt, b"5:first".to_vec(), None, None)
            .await
            .expect("first put");
        assert_eq!(p1.target, mutable_target(&pk.to_bytes(), salt));
        assert_eq!(p1.seq, Some(1));
        let p2 = writer
            .put_mutable(&key, salt, b"6:second".to_vec(), None, None)
            .await
            .expect("second put");
        assert_eq!(p2.seq, Some(2), "the current seq was read first");
        let got = get_until("the second version", async || {
            let g = reader.get_mutable(&pk, salt, None).await.ok()?;
            (g.item.v == b"6:second").then_some(g)
        })
        .await;
        let m = got.item.mutable.expect("mutable");
        assert_eq!((m.k, m.seq), (pk.to_bytes(), 2));
        // min_seq: the current seq itself qualifies, one above it does not.
        let same = reader
            .get_mutable(&pk, salt, Some(2))
            .await
            .expect("seq 2 >= 2");
        assert_eq!(same.item.mutable.map(|m| m.seq), Some(2));
        let newer = reader.get_mutable(&pk, salt, Some(3)).await;
        assert!(
            matches!(newer, Err(ItemsError::NotFound { .. })),
            "{newer:?}"
        );
    }
    // The salted and unsalted items are distinct items.
    let unsalted = reader.get_mutable(&pk, b"", None).await.unwrap();
    let salted = reader.get_mutable(&pk, b"salt", None).await.unwrap();
    assert_ne!(unsalted.target, salted.target);

    // A stale seq is refused with 302 by the nodes holding seq 2.
    let stale = writer
        .put_mutable(&key, b"", b"5:stale".to_vec(), Some(1), None)
        .await;
    match stale {
        Err(ItemsError::NotStored(s)) => {
            assert!(
                s.nodes
                    .iter()
                    .any(|(_, o)| format!("{o:?}").contains(&ERR_SEQ_TOO_OLD.to_string())),
                "{s:?}"
            )
        }
        other => panic!("a stale put must be refused: {other:?}"),
    }
    // A CAS that does not match the stored seq (2) is refused with 301.
    let cas = writer
        .put_mutable(&key, b"", b"3:cas".to_vec(), None, Some(1))
        .await;
    match cas {
        Err(ItemsError::NotStored(s)) => assert!(
            s.nodes
                .iter()
                .any(|(_, o)| format!("{o:?}").contains(&ERR_CAS_MISMATCH.to_string())),
            "{s:?}"
        ),
        other => panic!("a CAS mismatch must be refused: {other:?}"),
    }
    // A matching CAS is stored.
    let ok = writer
        .put_mutable(&key, b"", b"3:cas".to_vec(), None, Some(2))
        .await
        .expect("a matching CAS is stored");
    assert_eq!(ok.seq, Some(3));

    // Invalid values never leave the process.
    let bad = writer.put_immutable(b"not bencode".to_vec()).await;
    assert!(matches!(bad, Err(ItemsError::Invalid(_))), "{bad:?}");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dht_item_command_puts_and_gets() {
    let subnet = 212;
    let net = testnet(20, subnet).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let out = item_cli::run(&net, subnet, &data, &["put", "hello item"]).await;
    assert!(out.status.success(), "{out:?}");
    let put = json_line(&out);
    let target = put["target"].as_str().unwrap().to_string();
    assert_eq!(target, hex::encode(immutable_target(b"10:hello item").0));
    assert!(put["stored"].as_u64().unwrap() >= 1, "{put}");

    let out = item_cli::run(&net, subnet, &data, &["get", &target]).await;
    assert!(out.status.success(), "{out:?}");
    let got = json_line(&out);
    assert_eq!(got["value"], "hello item", "{got}");
    // --format bencode writes the raw value.
    let out = item_cli::run(
        &net,
        subnet,
        &data,
        &["--format", "bencode", "get", &target],
    )
    .await;
    assert_eq!(out.stdout, b"10:hello item");

    // Mutable with a key file the command creates (0600), then with salt.
    let key_file = dir.path().join("item.key");
    let key_arg = key_file.to_str().unwrap();
    let out = item_cli::run(
        &net,
        subnet,
        &data,
        &["put", "--mutable", "--key-file", key_arg, "v1"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(json_line(&out)["seq"], 1);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let key = trackerless::dht::item_keys::parse_key(&std::fs::read(&key_file).unwrap()).unwrap();
    let pk = hex::encode(key.verifying_key().to_bytes());
    let out = item_cli::run(
        &net,
        subnet,
        &data,
        &[
            "put",
            "--mutable",
            "--key-file",
            key_arg,
            "--salt",
            "s",
            "v2",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    for (salt, want) in [(None, "v1"), (Some("s"), "v2")] {
        let mut args = vec!["--json", "get", "--pubkey", &pk];
        if let Some(s) = salt {
            args.extend(["--salt", s]);
        }
        let out = item_cli::run(&net, subnet, &data, &args).await;
        assert!(out.status.success(), "{out:?}");
        let got = json_line(&out);
        assert_eq!(got["value"], want, "{got}");
        assert_eq!(got["seq"], 1, "{got}");
        assert_eq!(got["pubkey"], pk.as_str());
    }
    // A stale --seq is refused: non-zero exit, the 302s in the output.
    let out = item_cli::run(
        &net,
        subnet,
        &data,
        &[
            "put",
            "--mutable",
            "--key-file",
            key_arg,
            "--seq",
            "0",
            "old",
        ],
    )
    .await;
    assert!(!out.status.success());
    assert!(json_line(&out).to_string().contains("302"), "{out:?}");

    // --keep: the first round is reported at once, SIGINT ends the wait for the next one
    // with status 0.
    let mut child = item_cli::command(&net, subnet, &data, &["put", "--keep", "kept"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("dht-item starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(GENEROUS, lines.next_line())
        .await
        .expect("the first round is reported")
        .unwrap()
        .expect("a line");
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert!(first["stored"].as_u64().unwrap() >= 1, "{first}");
    let pid = child.id().expect("running") as i32;
    // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = tokio::time::timeout(GENEROUS, child.wait())
        .await
        .expect("dht-item --keep stops on SIGINT")
        .unwrap();
    assert!(status.success(), "{status:?}");

    // Bad arguments: one line on stderr, non-zero exit, before any network traffic.
    let bad_key = dir.path().join("bad.key");
    std::fs::write(&bad_key, "not a key").unwrap();
    for args in [
        vec!["get", "abc"],
        vec!["get", "--pubkey", "zz"],
        vec![
            "put",
            "--mutable",
            "--key-file",
            bad_key.to_str().unwrap(),
            "x",
        ],
    ] {
        let out = item_cli::run(&net, subnet, &data, &args).await;
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
    }
    net.shutdown().await;
}

/// The `mainline` crate's client (not a server: it stores nothing) bootstraps from our
/// nodes only (`bootstrap()` replaces its default internet routers), puts an immutable and a
/// mutable item, and reads them back, all served by our nodes; our client reads what it put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mainline_crate_client_puts_and_gets_through_our_nodes() {
    let subnet = 213;
    let net = testnet(25, subnet).await;
    let boot: Vec<String> = (0..5).map(|i| net.addr(i).to_string()).collect();
    let ml = mainline::Dht::builder()
        .bootstrap(&boot)
        .bind_address(Ipv4Addr::new(127, subnet, 9, 2))
        .build()
        .expect("mainline client starts")
        .as_async();
    assert!(ml.bootstrapped().await, "mainline joined through our nodes");

    let target = ml
        .put_immutable(b"from mainline")
        .await
        .expect("mainline's immutable put");
    assert_eq!(target.as_bytes(), &immutable_target(b"13:from mainline").0);
    let ours = get_until("mainline's immutable item via our client", async || {
        net.nodes[20]
            .get_immutable(NodeId(*target.as_bytes()))
            .await
            .ok()
    })
    .await;
    assert_eq!(ours.item.v, b"13:from mainline");
    let back = ml
        .get_immutable(target)
        .await
        .expect("mainline reads it back");
    assert_eq!(&*back, b"from mainline");

    let key = SigningKey::from_bytes(&[0x22; 32]);
    for salt in [None, Some(&b"pepper"[..])] {
        let item = mainline::MutableItem::new(key.clone(), b"ml-mutable", 7, salt);
        ml.put_mutable(item, None)
            .await
            .expect("mainline's mutable put");
        let got = ml
            .get_mutable_most_recent(key.verifying_key().as_bytes(), salt)
            .await
            .expect("mainline reads its mutable item");
        assert_eq!((got.value(), got.seq()), (&b"ml-mutable"[..], 7));
        let ours = net.nodes[21]
            .get_mutable(&key.verifying_key(), salt.unwrap_or_default(), None)
            .await
            .expect("our client reads mainline's item");
        assert_eq!(ours.item.v, b"10:ml-mutable");
    }

    // And the other way: what our client puts, mainline reads.
    let put = net.nodes[22]
        .put_mutable(&key, b"ours", b"4:ours".to_vec(), Some(3), None)
        .await
        .expect("our put");
    assert_eq!(put.seq, Some(3));
    let got = ml
        .get_mutable_most_recent(key.verifying_key().as_bytes(), Some(b"ours"))
        .await
        .expect("mainline reads our item");
    assert_eq!((got.value(), got.seq()), (&b"ours"[..], 3));
    net.shutdown().await;
}
