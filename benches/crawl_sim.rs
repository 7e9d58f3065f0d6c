//! dht-crawl on the virtual-time simulator: 5,000 nodes holding 50,000 announced
//! infohashes; how long (virtual) the walk takes to find 99 % of them and how many packets
//! the crawler's node sends per infohash found.
//!
//!     cargo bench --bench crawl_sim                  # node intervals 600 s and 21600 s
//!     cargo bench --bench crawl_sim -- 600           # one interval
//!
//! Reference printed alongside: the floor of `infohashes / 20` queries (every reply a full,
//! never-repeating sample), which no crawler can beat.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use trackerless::crawl::WalkConfig;
use trackerless::crawl::sim::SimCrawler;
use trackerless::dht::id::InfoHash;
use trackerless::dht::node::{Config, Event};
use trackerless::sim::{Sim, SimConfig, sim_addr};

const NODES: usize = 5000;
const INFOHASHES: usize = 50_000;

fn run(interval: u32) {
    let wall = Instant::now();
    let mut sim = Sim::new(SimConfig {
        seed: 51,
        node: Config {
            sample_interval: interval,
            ..Config::loopback_testnet()
        },
        ..Default::default()
    });
    sim.grow(NODES, Duration::from_millis(2));
    sim.run_for(Duration::from_secs(120));
    let mut rng = StdRng::seed_from_u64(5);
    let hashes: Vec<InfoHash> = (0..INFOHASHES)
        .map(|_| InfoHash::random(&mut rng))
        .collect();
    for (i, ih) in hashes.iter().enumerate() {
        let who = rng.random_range(0..NODES);
        sim.with_node(who, |n, now| n.announce(now, *ih, Some(6881)));
        if i % 500 == 499 {
            sim.run_for(Duration::from_secs(1));
        }
    }
    sim.run_for(Duration::from_secs(30));
    let stored = sim
        .take_events()
        .iter()
        .filter(|(_, e)| matches!(e, Event::LookupDone { announced, .. } if *announced > 0))
        .count();
    let held: usize = (0..NODES)
        .map(|i| sim.node(i).stats(sim.now()).infohashes)
        .sum();
    let setup = wall.elapsed();

    let walk = WalkConfig {
        seed: Some(7),
        ..WalkConfig::default()
    };
    let rate = walk.rate;
    let mut c = SimCrawler::join(&mut sim, walk, &[sim_addr(0), sim_addr(NODES / 2)]);
    let start = sim.now();
    let target = INFOHASHES * 99 / 100;
    let mut marks = Vec::new();
    let mut next_mark = INFOHASHES / 10;
    let limit = start + Duration::from_secs(u64::from(interval) * 4 + 3600);
    let wall_crawl = Instant::now();
    c.run_until(&mut sim, limit, |c| {
        let found = c.known.len();
        if found >= next_mark {
            marks.push(found);
            next_mark += INFOHASHES / 10;
        }
        found >= target
    });
    let elapsed = sim.now() - start;
    let st = sim.node(c.node).stats(sim.now());
    let w = c.walker.stats();
    let found = hashes.iter().filter(|h| c.known.contains(h)).count();
    let floor = INFOHASHES as f64 / 20.0;
    println!(
        "interval {interval} s | {NODES} nodes, {stored}/{INFOHASHES} announces stored ({:.0} per node) | setup {setup:.1?} wall",
        held as f64 / NODES as f64
    );
    println!(
        "  found {found} ({:.2} %) in {:.0} s virtual ({:.2} h), crawl {:.1?} wall, rate {rate}/s",
        found as f64 * 100.0 / INFOHASHES as f64,
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() / 3600.0,
        wall_crawl.elapsed()
    );
    println!(
        "  crawler node sent {} packets ({} queries: {} walk, {} upkeep; {} replies to others) => {:.3} packets / infohash found",
        st.packets_out,
        st.queries_out,
        w.queries,
        st.queries_out.saturating_sub(w.queries),
        st.replies_out + st.errors_out,
        st.packets_out as f64 / found.max(1) as f64
    );
    println!(
        "  reference floor {floor:.0} queries (infohashes / 20) => walk queries / floor = {:.2}; nodes visited {} of {NODES}, samples {} ({} new)",
        w.queries as f64 / floor,
        w.visited,
        w.samples,
        w.new_samples
    );
}

fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let intervals = if args.is_empty() {
        vec![600, 21_600]
    } else {
        args
    };
    for i in intervals {
        run(i);
    }
}
