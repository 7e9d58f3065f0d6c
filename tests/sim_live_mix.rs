//! Issue 12's invariants as property tests over the simulator's "live-DHT mix": networks
//! where nodes answer with other ids, sit behind NATs, never answer, answer read-only, list
//! junk, restart with new ids and crowd targets as sybils. On every node, every virtual
//! second: no query outlives its hard timeout, no lookup its deadline, no verification its
//! query, and `queries_out == queries_ended + transactions` (each query ends exactly once).

use std::time::Duration;

use trackerless::dht::node::{LOOKUP_DEADLINE, Overdue};
use trackerless::sim::mix::{self, Profile, Report};

fn assert_invariants(r: &Report, what: &str) {
    assert_eq!(r.worst_overdue, Overdue::default(), "{what}: {r:?}");
    assert_eq!(r.accounting_errors, 0, "{what}: {r:?}");
    assert_eq!(r.completed, r.lookups, "{what}: every lookup ends: {r:?}");
    assert!(
        r.time_p99 <= LOOKUP_DEADLINE + Duration::from_secs(1),
        "{what}: {r:?}"
    );
}

#[test]
fn live_mix_keeps_the_invariants_and_finds_peers() {
    let clean = mix::run(1500, Profile::clean(), 4, 40, 11);
    eprintln!("clean: {clean:?}");
    assert_invariants(&clean, "clean");
    let live = mix::run(1500, Profile::live(), 4, 40, 11);
    eprintln!("live: {live:?}");
    assert_invariants(&live, "live mix");
    assert!(
        live.junk_candidates > 0 && live.wrong_id_replies > 0,
        "{live:?}"
    );
    // Peers announced through the mix are found by plain clients elsewhere.
    assert!(live.found * 10 >= live.lookups * 9, "{live:?}");
    assert!(
        live.placement >= 0.8 * clean.placement,
        "{live:?} vs {clean:?}"
    );
}

/// Every node misbehaves in some way (a network of liars around a few honest nodes): lookups
/// still all end, by convergence or by the deadline, and nothing leaks.
#[test]
fn lookups_end_when_almost_everyone_misbehaves() {
    let hostile = Profile {
        wrong_id: 0.2,
        nat: 0.15,
        silent: 0.25,
        read_only: 0.1,
        junk: 0.15,
        restarted: 0.1,
        // All at the instant of the lookups: the worst case for stale ids.
        restart_spread: Duration::ZERO,
        sybils_per_target: 16,
    };
    let r = mix::run(800, hostile, 3, 30, 5);
    eprintln!("hostile: {r:?}");
    assert_invariants(&r, "hostile");
}
