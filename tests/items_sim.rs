//! BEP 44 item lookups at scale, in virtual time: 1,000 simulated nodes with latency, 5 %
//! packet loss and a tenth of them silent or answering with other ids. Mutable and immutable
//! items put from one node are read from others; every item lookup ends with exactly one
//! `Item` event followed by its `LookupDone`, within the lookup deadline.

use std::collections::HashMap;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use trackerless::dht::id::NodeId;
use trackerless::dht::item_search::{ItemQuery, ItemResult, PutRequest};
use trackerless::dht::items::immutable_target;
use trackerless::dht::node::{Event, LOOKUP_DEADLINE, LookupId};
use trackerless::sim::mix::Behavior;
use trackerless::sim::{Sim, SimConfig};

/// Runs until every lookup in `ids` has ended; returns each one's item result.
fn results(sim: &mut Sim, ids: &[(usize, LookupId)]) -> HashMap<(usize, LookupId), ItemResult> {
    let started = sim.now();
    sim.run_for(LOOKUP_DEADLINE + Duration::from_secs(5));
    let mut items = HashMap::new();
    let mut done = HashMap::new();
    for (node, at, e) in sim.take_timed_events() {
        match e {
            Event::Item { lookup, result } => {
                assert!(!done.contains_key(&(node, lookup)), "Item after LookupDone");
                assert!(
                    items.insert((node, lookup), *result).is_none(),
                    "one Item per lookup"
                );
            }
            Event::LookupDone { lookup, .. } => {
                assert!(at - started <= LOOKUP_DEADLINE, "ended within the deadline");
                done.insert((node, lookup), ());
            }
            _ => {}
        }
    }
    for id in ids {
        assert!(done.contains_key(id), "lookup {id:?} ended");
        assert!(items.contains_key(id), "lookup {id:?} reported its item");
    }
    items
}

#[test]
fn items_in_a_thousand_node_sim_with_loss_and_misbehaving_nodes() {
    let n = 1000;
    let mut sim = Sim::new(SimConfig {
        latency: (Duration::from_millis(20), Duration::from_millis(150)),
        loss: 0.05,
        seed: 44,
        ..Default::default()
    });
    sim.grow(n, Duration::from_millis(5));
    sim.run_for(Duration::from_secs(60));
    sim.take_events();
    let writer = 17;
    let mut rng = StdRng::seed_from_u64(44);
    for i in 0..n / 10 {
        let who = rng.random_range(1..n);
        if who == writer {
            continue;
        }
        let b = if i % 2 == 0 {
            Behavior::Silent
        } else {
            Behavior::WrongId(NodeId::random(&mut rng))
        };
        sim.set_behavior(who, b);
    }

    let key = SigningKey::from_bytes(&[0x55; 32]);
    let v = b"9:sim value".to_vec();
    let puts = [
        (
            writer,
            sim.with_node(writer, |node, now| {
                node.put_item(now, PutRequest::Immutable { v: v.clone() })
            }),
        ),
        (
            writer,
            sim.with_node(writer, |node, now| {
                node.put_item(
                    now,
                    PutRequest::Mutable {
                        key: Box::new(key.clone()),
                        salt: b"s".to_vec(),
                        v: b"2:m1".to_vec(),
                        seq: None,
                        cas: None,
                    },
                )
            }),
        ),
    ];
    let r = results(&mut sim, &puts);
    for id in &puts {
        let put = r[id].put.as_ref().expect("a put report");
        assert!(put.stored() >= 5, "{put:?}");
    }

    // Readers that behave, spread over the network.
    let readers: Vec<usize> = (0..10)
        .map(|k| 50 + k * 90)
        .filter(|&i| sim.behavior(i) == Behavior::Honest)
        .collect();
    let mut gets = Vec::new();
    for &r in &readers {
        gets.push((
            r,
            sim.with_node(r, |node, now| {
                node.get_item(now, immutable_target(&v), ItemQuery::Immutable)
            }),
        ));
        gets.push((
            r,
            sim.with_node(r, |node, now| {
                node.get_item(
                    now,
                    NodeId([0; 20]),
                    ItemQuery::Mutable {
                        k: key.verifying_key().to_bytes(),
                        salt: b"s".to_vec(),
                        min_seq: None,
                    },
                )
            }),
        ));
    }
    let r = results(&mut sim, &gets);
    let found = gets
        .iter()
        .filter(|id| {
            r[id].found.as_ref().is_some_and(|f| match &f.mutable {
                None => f.v == v,
                Some(m) => f.v == b"2:m1" && m.seq == 1,
            })
        })
        .count();
    assert_eq!(found, gets.len(), "every reader finds both items");
}
