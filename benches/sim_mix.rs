//! The live-DHT mix at scale (issue 12): 10,000 simulated nodes, a clean network and the
//! live mix side by side in the same run, same seed, same targets and lookups. Prints the
//! table for BENCHMARKS.md. A program, not a timed test:
//!
//!     cargo bench --bench sim_mix -- [NODES] [--targets N] [--seed N]
//!         [--restart-spread SECS] [--sybils N]
//!
//! Defaults: 10,000 nodes, 20 targets, seed 2026, the live profile's restart spread
//! (120 s) and sybils (8 per target). The placement misses are broken down (restarted
//! nodes, then the rest by behavior) to show where the announces that did not land went.

use trackerless::sim::mix::{self, Profile, Report};

fn row(name: &str, r: &Report) {
    println!(
        "| {name} | {} | {}/{} ({:.1} %) | {:.1} | {:.2} s | {:.2} s | {:.1} % | {}/{} | {} | {} | {} |",
        r.nodes,
        r.completed,
        r.lookups,
        100.0 * r.completed as f64 / r.lookups.max(1) as f64,
        r.messages_per_lookup,
        r.time_p50.as_secs_f64(),
        r.time_p99.as_secs_f64(),
        100.0 * r.placement,
        r.found,
        r.lookups,
        r.lookups_overdue,
        r.wrong_id_replies,
        r.junk_candidates,
    );
}

/// What to run: see the module doc for the flags and defaults.
struct Args {
    nodes: usize,
    targets: usize,
    seed: u64,
    spread: std::time::Duration,
    sybils: usize,
}

/// Parses the arguments after cargo's own (`--bench`); a bad one is a one-line error.
fn args() -> Result<Args, String> {
    let live = Profile::live();
    let mut a = Args {
        nodes: 10_000,
        targets: 20,
        seed: 2026,
        spread: live.restart_spread,
        sybils: live.sybils_per_target,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            let v = it.next().ok_or(format!("{name} needs a value"))?;
            v.parse()
                .map_err(|_| format!("{name}: {v:?} is not a non-negative integer"))
        };
        match arg.as_str() {
            "--targets" => a.targets = number("--targets")? as usize,
            "--seed" => a.seed = number("--seed")?,
            "--restart-spread" => {
                a.spread = std::time::Duration::from_secs(number("--restart-spread")?)
            }
            "--sybils" => a.sybils = number("--sybils")? as usize,
            "--bench" => {}
            n if !n.starts_with('-') => {
                a.nodes = n
                    .parse()
                    .map_err(|_| format!("NODES: {n:?} is not a number"))?
            }
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    Ok(a)
}

fn main() {
    let Args {
        nodes,
        targets,
        seed,
        spread,
        sybils,
    } = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!(
                "usage: sim_mix [NODES] [--targets N] [--seed N] [--restart-spread SECS] [--sybils N]"
            );
            std::process::exit(2);
        }
    };
    let lookups = 400;
    let started = std::time::Instant::now();
    let clean = mix::run(nodes, Profile::clean(), targets, lookups, seed);
    let live = mix::run(
        nodes,
        Profile {
            restart_spread: spread,
            sybils_per_target: sybils,
            ..Profile::live()
        },
        targets,
        lookups,
        seed,
    );
    println!(
        "| network | nodes | lookups completed | messages/lookup | time p50 | time p99 | announce placement | found by a plain client | ended by deadline | wrong-id replies | junk entries dropped |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    row("clean", &clean);
    row("live-DHT mix", &live);
    println!(
        "\nratios (mix / clean): placement {:.3}, messages/lookup {:.2}, p50 {:.2}, p99 {:.2}",
        live.placement / clean.placement,
        live.messages_per_lookup / clean.messages_per_lookup,
        live.time_p50.as_secs_f64() / clean.time_p50.as_secs_f64(),
        live.time_p99.as_secs_f64() / clean.time_p99.as_secs_f64(),
    );
    println!(
        "placement misses (of {} slots): clean {} restarted + {} other; mix {} restarted + {} other (restarts spread over {} s before the announces)",
        8 * targets,
        clean.missed_restarted,
        clean.missed_other,
        live.missed_restarted,
        live.missed_other,
        spread.as_secs()
    );
    println!(
        "other misses by behavior (honest, NAT, junk): clean {:?}, mix {:?}",
        clean.missed_by_behavior, live.missed_by_behavior
    );
    for (name, r) in [("clean", &clean), ("live", &live)] {
        assert_eq!(
            r.worst_overdue,
            Default::default(),
            "{name}: invariant broken"
        );
        assert_eq!(
            r.accounting_errors, 0,
            "{name}: a query did not end exactly once"
        );
    }
    eprintln!("({:.0} s of real time)", started.elapsed().as_secs_f64());
}
