//! Router store size and restart speed: fills a router ring with N verified contacts, reports
//! the process RSS, saves it, and times loading it back (issue 7: ≤ 300 MB for 10M entries,
//! loads "well under a second" for 1M).
//!
//! `cargo bench --bench router_store -- 1000000 10000000`
//!
//! `-- 1000000 --out DIR` also leaves the saved store as `DIR/router/router-nodes.bin`, a
//! ready data directory for `dht-node --router --data-dir DIR` (tools/bench-save.sh uses it).
//!
//! Contacts are synthetic (random ids, distinct public-looking addresses); nothing is sent.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use trackerless::dht::id::{Contact, NodeId};
use trackerless::dht::router::store::{NodeRing, store_file};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from);
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
    let mut rng = rand::rng();
    for n in sizes {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = store_file(dir.path());
        let base = rss_kib();
        let started = Instant::now();
        let mut ring = NodeRing::new(n);
        let mut i: u32 = 0;
        while ring.len() < n {
            // Distinct addresses spread over the whole IPv4 space (i * an odd constant).
            let ip = Ipv4Addr::from(i.wrapping_mul(2_654_435_761));
            i += 1;
            ring.insert(&Contact::new(
                NodeId::random(&mut rng),
                SocketAddrV4::new(ip, 6881),
            ));
        }
        let filled = started.elapsed();
        let rss = rss_kib().saturating_sub(base);
        let t = Instant::now();
        ring.save(&path).expect("save");
        let saved = t.elapsed();
        let file_mb = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
        drop(ring);
        let t = Instant::now();
        let back = NodeRing::load(&path, n).expect("load");
        let loaded = t.elapsed();
        assert_eq!(back.len(), n);
        if let Some(out) = &out {
            let dir = out.join("router");
            std::fs::create_dir_all(&dir).expect("--out directory");
            std::fs::copy(&path, store_file(&dir)).expect("copy the store");
        }
        println!(
            "{n} contacts: RSS +{:.1} MiB (store reports {:.1} MiB), filled in {:.2?}, \
             saved {file_mb:.0} MB in {saved:.2?}, loaded in {loaded:.2?}",
            rss as f64 / 1024.0,
            back.memory() as f64 / (1024.0 * 1024.0),
            filled
        );
    }
}
