//! Peak memory of the crawl store at 1M infohashes, filled the way the crawler fills it
//! (buffered sightings, one batch + fsync per flush).
//!
//!     cargo bench --bench crawl_store_rss              # 1,000,000 infohashes
//!     cargo bench --bench crawl_store_rss -- 200000    # another size
//!     cargo bench --bench crawl_store_rss -- 1000000 64  # sled cache 64 MiB (default 16)
//!
//! Reference measured in the same process afterwards: the same records in a plain
//! in-memory `HashMap` (what a crawler without a store would hold).

use std::collections::HashMap;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use trackerless::crawl::store::{HOW_ANNOUNCE, HOW_SAMPLE};
use trackerless::crawl::{CrawlStore, Record, StoreConfig};
use trackerless::torrent::InfoHash;

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(1_000_000) as usize;
    let cfg = StoreConfig {
        cache_bytes: args
            .get(1)
            .map(|mb| mb << 20)
            .unwrap_or(StoreConfig::default().cache_bytes),
        ..StoreConfig::default()
    };
    let flush_every = 20_000;
    let base_rss = status_kib("VmRSS:");
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let mut rng = StdRng::seed_from_u64(1);
    let mut keys = Vec::with_capacity(n);
    {
        let mut store = CrawlStore::open(dir.path(), cfg.clone()).unwrap();
        for i in 0..n {
            let ih = InfoHash::random(&mut rng);
            keys.push(ih);
            let peer = (i % 4 == 0).then(|| {
                format!("10.0.{}.{}:6881", i % 250, i % 200)
                    .parse()
                    .unwrap()
            });
            store.note_at(
                ih,
                if peer.is_some() {
                    HOW_ANNOUNCE
                } else {
                    HOW_SAMPLE
                },
                peer,
                1_700_000_000,
            );
            if i % flush_every == flush_every - 1 {
                store.flush().unwrap();
            }
        }
        store.flush().unwrap();
        let fill = t.elapsed();
        let hwm = status_kib("VmHWM:");
        let rss = status_kib("VmRSS:");
        let t2 = Instant::now();
        let mut hits = 0;
        for ih in keys.iter().step_by(10) {
            hits += usize::from(store.is_known(ih));
        }
        let lookups = keys.len().div_ceil(10);
        println!(
            "store (sled cache {} MiB): {} records in {fill:.1?} ({:.0}/s) | disk {:.1} MiB | peak RSS {:.1} MiB (baseline {:.1} MiB, now {:.1} MiB) | {} lookups {:.2} us each ({hits} hits)",
            cfg.cache_bytes >> 20,
            store.count(),
            n as f64 / fill.as_secs_f64(),
            store.size_on_disk() as f64 / (1 << 20) as f64,
            hwm as f64 / 1024.0,
            base_rss as f64 / 1024.0,
            rss as f64 / 1024.0,
            lookups,
            t2.elapsed().as_secs_f64() * 1e6 / lookups as f64,
        );
    }
    // Reference: the same records in a HashMap (keys vector included in both figures).
    let before = status_kib("VmRSS:");
    let mut map: HashMap<InfoHash, Record> = HashMap::with_capacity(n);
    for (i, ih) in keys.iter().enumerate() {
        map.insert(
            *ih,
            Record {
                first_seen: 1_700_000_000,
                last_seen: 1_700_000_000,
                times_seen: 1,
                how: HOW_SAMPLE,
                scrape: None,
                peers: if i % 4 == 0 {
                    vec![
                        format!("10.0.{}.{}:6881", i % 250, i % 200)
                            .parse()
                            .unwrap(),
                    ]
                } else {
                    Vec::new()
                },
            },
        );
    }
    let after = status_kib("VmRSS:");
    println!(
        "reference HashMap<InfoHash, Record>: +{:.1} MiB RSS for {} records",
        (after.saturating_sub(before)) as f64 / 1024.0,
        map.len()
    );
    let _ = rng.random::<u8>();
}
