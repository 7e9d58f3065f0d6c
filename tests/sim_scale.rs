//! The virtual-time simulator at scale: 10,000 nodes, 50–300 ms one-way latency, 20 % loss.
//! Reports lookup success, messages and virtual time per lookup, and holds the node to a
//! success bar. Runs in a few seconds of real time because nothing waits on a clock.

use std::collections::HashMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use trackerless::dht::id::InfoHash;
use trackerless::dht::node::{Event, LookupId};
use trackerless::sim::{Sim, SimConfig};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn ten_thousand_nodes_with_latency_and_loss() {
    let nodes = 10_000;
    let mut sim = Sim::new(SimConfig {
        latency: (Duration::from_millis(50), Duration::from_millis(300)),
        loss: 0.20,
        seed: 42,
        ..Default::default()
    });
    // Nodes join 2 ms apart (20 virtual seconds), then the network settles.
    sim.grow(nodes, Duration::from_millis(2));
    sim.run_for(Duration::from_secs(120));
    sim.take_events();

    let mut rng = StdRng::seed_from_u64(7);
    // One node announces 20 infohashes; 200 random nodes look each of them up.
    let announcer = rng.random_range(0..nodes);
    let hashes: Vec<InfoHash> = (0..20).map(|_| InfoHash::random(&mut rng)).collect();
    for ih in &hashes {
        sim.with_node(announcer, |n, now| n.announce(now, *ih, Some(6881)));
    }
    // Every announce lookup ends by its deadline at the latest; under 20 % loss the slowest
    // of these 20 (announcing to K nodes, passing failed slots to spares) takes ~34 s.
    sim.run_for(trackerless::dht::node::LOOKUP_DEADLINE + Duration::from_secs(5));
    let mut announced = 0;
    for (_, e) in sim.take_events() {
        if let Event::LookupDone { announced: a, .. } = e {
            announced += usize::from(a > 0);
        }
    }
    assert_eq!(
        announced,
        hashes.len(),
        "every announce reached at least one node"
    );

    let lookups = 200;
    let mut started: HashMap<(usize, LookupId), (InfoHash, std::time::Instant)> = HashMap::new();
    for i in 0..lookups {
        let who = rng.random_range(0..nodes);
        let ih = hashes[i % hashes.len()];
        let id = sim.with_node(who, |n, now| n.get_peers(now, ih));
        started.insert((who, id), (ih, sim.now()));
        sim.run_for(Duration::from_millis(50));
    }
    sim.run_for(Duration::from_secs(60));

    let expected = trackerless::sim::sim_addr(announcer);
    let mut found: HashMap<(usize, LookupId), bool> = HashMap::new();
    let mut messages = Vec::new();
    let mut times = Vec::new();
    for (node, at, e) in sim.take_timed_events() {
        match e {
            Event::Peers { lookup, peers } if peers.iter().any(|p| p.ip() == expected.ip()) => {
                found.insert((node, lookup), true);
            }
            Event::LookupDone {
                lookup,
                messages: m,
                ..
            } => {
                if let Some((_, t0)) = started.get(&(node, lookup)) {
                    messages.push(f64::from(m));
                    times.push((at - *t0).as_secs_f64());
                }
            }
            _ => {}
        }
    }
    let succeeded = started.keys().filter(|k| found.contains_key(k)).count();
    messages.sort_by(f64::total_cmp);
    times.sort_by(f64::total_cmp);
    let success = succeeded as f64 / lookups as f64;
    println!(
        "sim: {nodes} nodes, 20% loss, 50-300 ms: {succeeded}/{lookups} lookups found the peer \
         ({:.1}%); messages per lookup p50 {} p90 {} max {}; virtual time per lookup p50 {:.2}s \
         p90 {:.2}s; {} lookups finished; network sent {} lost {}",
        success * 100.0,
        percentile(&messages, 0.5),
        percentile(&messages, 0.9),
        percentile(&messages, 1.0),
        percentile(&times, 0.5),
        percentile(&times, 0.9),
        messages.len(),
        sim.net.sent,
        sim.net.lost,
    );
    assert_eq!(messages.len(), lookups, "every lookup finished");
    assert!(success >= 0.97, "lookup success {success}");
    assert!(
        percentile(&messages, 0.5) <= 40.0,
        "median messages per lookup"
    );
}
