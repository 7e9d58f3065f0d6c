//! Crash safety of the node store (issue 6, part 4): `kill -9` a `dht-node` twenty times in
//! a row while it rewrites its routing table to disk every 10 ms, restarting it each time.
//!
//! Every restart must come up (no error exit, no panic), keep the node id from the first
//! run, and find a usable store: between runs the test opens the store itself and checks the
//! id and that contacts are there; after each restart the node has no working bootstrap
//! router, so the contacts it knows can only have come from that store, and it must answer
//! a find_node with them. sled is beta software with reports of corruption after abrupt
//! stops, which is why this test exists; if the store ever becomes unreadable, the node must
//! exit with its one-line error (never a panic) and this test fails showing it.
//!
//! Addresses: a 40-node testnet on 127.125.0.0/16, the node under test on 127.126.0.1.

use std::net::{SocketAddr, SocketAddrV4};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use trackerless::dht::id::NodeId;
use trackerless::dht::node::DirectQuery;
use trackerless::dht::persist::NodeStore;
use trackerless::sim::testnet::{Testnet, TestnetConfig};

const ROUNDS: usize = 20;

/// A running dht-node, with everything it logged so far.
struct Running {
    child: Child,
    id: NodeId,
    log: Arc<Mutex<String>>,
}

/// (write syscalls, bytes sent to the storage device) of a process so far, from
/// /proc/PID/io: shows the node really was rewriting its store when it was killed.
fn writes(pid: u32) -> (u64, u64) {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("syscw:"), field("write_bytes:"))
}

/// The id in a `node <40 hex> listening on ...` log line.
fn listening_id(line: &str) -> Option<NodeId> {
    let at = line.find("node ")? + 5;
    let rest = line.get(at..)?;
    let (hex, tail) = rest.split_at_checked(40)?;
    tail.starts_with(" listening on ")
        .then(|| hex.parse().ok())
        .flatten()
}

/// Starts the node and waits for its listening line (it opened the store and bound).
async fn start(bind: SocketAddrV4, routers: &[SocketAddrV4], data: &std::path::Path) -> Running {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dht-node"));
    cmd.arg("--bind")
        .arg(bind.to_string())
        .args(["--allow-net", "127.0.0.0/8", "--no-subnet-limit"])
        .args(["--save-interval", "0.01", "--stats-interval", "0"])
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for r in routers {
        cmd.arg("--bootstrap").arg(r.to_string());
    }
    let mut child = cmd.spawn().expect("dht-node starts");
    let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
    let log = Arc::new(Mutex::new(String::new()));
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            log.lock().unwrap().push_str(&line);
            log.lock().unwrap().push('\n');
            if let Some(id) = listening_id(&line) {
                return Some(id);
            }
        }
        None
    })
    .await;
    let Ok(Some(id)) = found else {
        let status = child.try_wait().ok().flatten();
        panic!(
            "dht-node did not come up (exit status {status:?}); its log:\n{}",
            log.lock().unwrap()
        );
    };
    // Keep draining its log so it never blocks on a full pipe.
    let sink = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let mut s = sink.lock().unwrap();
            if s.len() < 1 << 20 {
                s.push_str(&line);
                s.push('\n');
            }
        }
    });
    Running { child, id, log }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_twenty_times_during_writes() {
    let testnet = Testnet::start(
        40,
        TestnetConfig {
            subnet: 125,
            ..Default::default()
        },
    )
    .await
    .expect("testnet starts");
    testnet.wait_for_tables(8, Duration::from_secs(30)).await;

    // A fixed port across restarts, as a real node has.
    let probe = std::net::UdpSocket::bind("127.126.0.1:0").expect("free port");
    let SocketAddr::V4(bind) = probe.local_addr().unwrap() else {
        unreachable!()
    };
    drop(probe);
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("dht");
    // Nothing listens here: after the first run, contacts can only come from the store.
    let dead_router: SocketAddrV4 = "127.126.0.2:9".parse().unwrap();
    let first_routers = [testnet.addr(0), testnet.addr(1)];

    let mut rng = StdRng::seed_from_u64(6);
    let mut id = None;
    let mut stored = Vec::new();
    let mut written = Vec::new();
    for round in 0..ROUNDS {
        let routers: &[SocketAddrV4] = if round == 0 {
            &first_routers
        } else {
            &[dead_router]
        };
        let mut node = start(bind, routers, dir.path()).await;
        let expected = *id.get_or_insert(node.id);
        assert_eq!(node.id, expected, "round {round}: the node id changed");

        // Usable: it answers, and (after the first run) knows contacts from the store.
        let pinged = testnet.nodes[0].ping(bind).await;
        assert_eq!(pinged.ok(), Some(expected), "round {round}: no pong");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let known = match testnet.nodes[0]
                .query(bind, DirectQuery::FindNode(NodeId::random(&mut rng)))
                .await
            {
                Ok(r) => r.nodes().count(),
                Err(_) => 0,
            };
            if known >= 8 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: the restarted node knows only {known} contacts; log:\n{}",
                node.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let pid = node.child.id().expect("running");
        let at_start = writes(pid);
        // Let it rewrite the table for a random while (every 10 ms), then SIGKILL it.
        let delay = Duration::from_millis(rng.random_range(100..1500));
        // sleep-ok: the random moment of the SIGKILL is the input under test; the assert
        // after it only checks the node is still running, which no delay can make false.
        tokio::time::sleep(delay).await;
        assert!(
            node.child.try_wait().unwrap().is_none(),
            "round {round}: the node exited by itself; log:\n{}",
            node.log.lock().unwrap()
        );
        let at_kill = writes(pid);
        written.push((at_kill.0 - at_start.0, (at_kill.1 - at_start.1) / 1024));
        node.child.start_kill().expect("SIGKILL");
        let status = node.child.wait().await.unwrap();
        assert!(!status.success(), "round {round}: {status}");
        let log = node.log.lock().unwrap().clone();
        assert!(!log.contains("panicked"), "round {round}: a panic:\n{log}");

        // The store as the next run will find it.
        let store = NodeStore::open(&store_dir).unwrap_or_else(|e| {
            panic!("round {round}: the store does not open after kill -9: {e}")
        });
        assert_eq!(store.node_id().unwrap(), Some(expected), "round {round}");
        let contacts = store.contacts().len();
        assert!(
            contacts >= 8,
            "round {round}: only {contacts} contacts saved"
        );
        stored.push(contacts);
        drop(store);
    }
    println!(
        "crash: {ROUNDS} kill -9 during writes every 10 ms, all restarted with id {}; contacts \
         in the store after each kill: {stored:?}; (write syscalls, KiB to disk) between the checks and the kill: {written:?}",
        id.unwrap(),
    );
    assert!(
        written.iter().all(|&(calls, _)| calls > 0),
        "the node was not writing: {written:?}"
    );
    testnet.shutdown().await;
}
