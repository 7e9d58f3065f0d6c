//! `dht-loadgen` against a real `dht-node`.
//!
//! `fill`, the one fill tool (issue 11: "one fill tool"): it fills the node's peer store
//! through the protocol from sources run in waves, every announce is acknowledged, and
//! `--verify` reads the peers back. Over IPv6 too (issue 13): an IPv6-only node is filled
//! from IPv6 sources, and its own metrics count the peers. `flood` over IPv6: an IPv6-only
//! node with its default defenses bans every flooding IPv6 source and answers the prober.
//!
//! Addresses: the node on 127.68.0.1:6881, fill sources from 127.68.1.1; the IPv6 node on
//! [fd77:0:68::1]:6881, sources fd77:0:68:100::1 to fd77:0:68:109::1 (one /64 each, as
//! fill counts IPv6 sources); the flooded node on [fd77:0:69::1]:6881, flood sources
//! fd77:0:69:200::1 onwards, the prober fd77:0:69:300::1. IPv6 addresses are added to `lo`,
//! so run in a network namespace
//! (`unshare -rn sh -c 'ip link set lo up && cargo test --features testing --test loadgen_tool'`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;

/// Kills the node however the test ends.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `dht-node` with `args` plus a scratch data dir, and waits for its listening
/// line; `None` if it never logs one.
fn start_node(args: &[&str], dir: &std::path::Path) -> Option<Kill> {
    let mut node = Command::new(env!("CARGO_BIN_EXE_dht-node"))
        .args(args)
        .args(["--stats-interval", "0", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dht-node starts");
    let stderr = BufReader::new(node.stderr.take().expect("piped"));
    let node = Kill(node);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains(" listening on ") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60)).ok().map(|()| node)
}

/// No rate limit or reply quota: a fill is many queries from few addresses.
const UNLIMITED: [&str; 4] = ["--rate-limit", "0", "--reply-quota", "0"];

/// Runs `dht-loadgen MODE ARGS`; its output and both streams as one text for messages.
fn loadgen(mode: &str, args: &[&str]) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dht-loadgen"))
        .arg(mode)
        .args(args)
        .output()
        .expect("dht-loadgen runs");
    let text = format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

#[test]
fn fill_in_waves_is_acknowledged_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(
        &[
            "--bind",
            "127.68.0.1:6881",
            "--bootstrap",
            "127.68.0.2:9",
            "--allow-net",
            "127.0.0.0/8",
            UNLIMITED[0],
            UNLIMITED[1],
            UNLIMITED[2],
            UNLIMITED[3],
        ],
        dir.path(),
    );
    assert!(node.is_some(), "dht-node never logged its listening line");
    let (fill, text) = loadgen(
        "fill",
        &[
            "--target",
            "127.68.0.1:6881",
            "--infohashes",
            "30",
            "--peers",
            "12",
            "--sources",
            "10",
            "--sources-at-once",
            "3",
            "--source-base",
            "127.68.1.1",
            "--verify",
            "6",
        ],
    );
    drop(node);
    assert!(fill.status.success(), "{text}");
    assert!(
        text.contains("30 infohashes x 12 peers from 10 sources")
            && text.contains("announced 360 failed 0"),
        "{text}"
    );
    // 12 peers per infohash, 10 source IPs: ports 10000 and 10001 make them distinct, and
    // every one comes back.
    assert!(
        text.contains(
            "verify: 6 infohashes looked up, peers returned per infohash mean 12.0 min 12"
        ),
        "{text}"
    );
}

/// The same fill against an IPv6-only node: IPv6 target and sources, the announces are
/// acknowledged, `--verify` counts the `values6` peers that come back, and the node's own
/// metrics show exactly the peers the fill stored, in its IPv6 store.
#[test]
fn fill_over_ipv6_fills_an_ipv6_node() {
    common::ensure_ipv6_on_lo("fd77:0:68::1");
    let sources: Vec<String> = (0..10)
        .map(|i| format!("fd77:0:68:{:x}::1", 0x100 + i))
        .collect();
    for s in &sources {
        common::ensure_ipv6_on_lo(s);
    }
    let dir = tempfile::tempdir().unwrap();
    let metrics = "[fd77:0:68::1]:9168";
    let node = start_node(
        &[
            "--bind",
            "[fd77:0:68::1]:6881",
            "--bootstrap",
            "[fd77:0:68::2]:9",
            "--allow-net",
            "fd77::/16",
            "--metrics",
            metrics,
            UNLIMITED[0],
            UNLIMITED[1],
            UNLIMITED[2],
            UNLIMITED[3],
        ],
        dir.path(),
    );
    assert!(node.is_some(), "dht-node never logged its listening line");
    // An IPv4 source base for an IPv6 target is refused in one line.
    let (bad, text) = loadgen(
        "fill",
        &[
            "--target",
            "[fd77:0:68::1]:6881",
            "--infohashes",
            "1",
            "--peers",
            "1",
            "--source-base",
            "127.68.1.1",
        ],
    );
    assert!(!bad.status.success(), "{text}");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{text}");
    assert!(err.contains("different address families"), "{text}");

    let (fill, text) = loadgen(
        "fill",
        &[
            "--target",
            "[fd77:0:68::1]:6881",
            "--infohashes",
            "30",
            "--peers",
            "12",
            "--sources",
            "10",
            "--sources-at-once",
            "3",
            "--source-base",
            &sources[0],
            "--verify",
            "6",
        ],
    );
    let exposition = common::http_get(metrics, "/metrics").1;
    drop(node);
    assert!(fill.status.success(), "{text}");
    assert!(
        text.contains("fill [fd77:0:68::1]:6881: 30 infohashes x 12 peers from 10 sources")
            && text.contains("announced 360 failed 0"),
        "{text}"
    );
    assert!(
        text.contains(
            "verify: 6 infohashes looked up, peers returned per infohash mean 12.0 min 12"
        ),
        "{text}"
    );
    // The node's view: 30 infohashes with 12 distinct peers each (10 source addresses, two
    // of them also on a second port), all in the IPv6 store; an IPv6-only node has no IPv4
    // family at all. Announces can exceed the peers only by retried ones.
    let v6 = |name: &str| {
        common::metric(
            &exposition,
            &format!("trackerless_{name}{{family=\"ipv6\"}}"),
        )
    };
    assert_eq!(v6("stored_infohashes"), Some(30.0), "{exposition}");
    assert_eq!(v6("stored_peers"), Some(360.0), "{exposition}");
    assert!(v6("announces_stored_total") >= Some(360.0), "{exposition}");
    assert!(!exposition.contains("family=\"ipv4\""), "{exposition}");
}

/// A short IPv6 flood against an IPv6-only node with its default defenses: each of the 20
/// flooding sources (one /64 each) is banned on its own, and the honest prober, well under
/// the per-address limit, is still answered. The numbers are the node's, from its metrics.
#[test]
fn flood_over_ipv6_bans_each_source_and_answers_the_prober() {
    common::ensure_ipv6_on_lo("fd77:0:69::1");
    for i in 0..20 {
        common::ensure_ipv6_on_lo(&format!("fd77:0:69:{:x}::1", 0x200 + i));
    }
    common::ensure_ipv6_on_lo("fd77:0:69:300::1");
    let dir = tempfile::tempdir().unwrap();
    let metrics = "[fd77:0:69::1]:9169";
    let node = start_node(
        &[
            "--bind",
            "[fd77:0:69::1]:6881",
            "--bootstrap",
            "[fd77:0:69::2]:9",
            "--allow-net",
            "fd77::/16",
            "--metrics",
            metrics,
        ],
        dir.path(),
    );
    assert!(node.is_some(), "dht-node never logged its listening line");
    let (flood, text) = loadgen(
        "flood",
        &[
            "--target",
            "[fd77:0:69::1]:6881",
            "--duration",
            "2",
            "--sources",
            "20",
            "--source-base",
            "fd77:0:69:200::1",
            "--probe-base",
            "fd77:0:69:300::1",
            "--probe-sources",
            "1",
            "--probe-interval-ms",
            "100",
            "--probe-timeout-ms",
            "500",
        ],
    );
    let exposition = common::http_get(metrics, "/metrics").1;
    drop(node);
    assert!(flood.status.success(), "{text}");
    assert!(
        text.contains("flood [fd77:0:69::1]:6881: 20 sources (fd77:0:69:200::1..)"),
        "{text}"
    );
    // 20 pings, one every 100 ms for 2 s, from one address: some answered.
    let answered: u32 = text
        .split_once("honest pings: 20 sent every 100 ms from 1 addresses: ")
        .and_then(|(_, rest)| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no honest-ping summary:\n{text}"));
    assert!(answered > 0, "{text}");
    let v6 = |sample: &str| common::metric(&exposition, &format!("trackerless_{sample}"));
    assert_eq!(
        v6("banned_ips{family=\"ipv6\"}"),
        Some(20.0),
        "{text}\n{exposition}"
    );
    assert!(
        v6("dropped_total{family=\"ipv6\",reason=\"rate_limited\"}") > Some(0.0),
        "{exposition}"
    );
}
