//! BEP 44 benchmarks (issue 14): (1) the latency of a mutable-item `get` through a loopback
//! network of 2,000 of our nodes, our client side by side with the independent `mainline`
//! crate's client in the same run on the same items; (2) the heap of a full item store.
//! A program, not a timed test: `cargo bench --bench items [-- NODES ITEMS]` (defaults
//! 2,000 nodes, 40 items), inside a loopback-only namespace (TESTING.md):
//!
//!     unshare -rn sh -c 'ip link set lo up && cargo bench --bench items'
//!
//! Both clients are ordinary members of the network: ours is the testnet's last node (it
//! joined through three earlier nodes like every other), `mainline`'s is a client that
//! bootstrapped from five of our nodes. Every item is read once by each client (who goes
//! first alternates), so neither reads a target it has looked up before. Our `get_mutable`
//! stops once the newest value is confirmed by several of the closest nodes; `mainline`'s
//! `get_mutable_most_recent` collects until its lookup has finished; both return the newest
//! valid value, which is what an application asks for.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use trackerless::dht::items::{ItemStore, ItemStoreConfig, signable};
use trackerless::dht::krpc::{MAX_ITEM_SALT, MAX_ITEM_VALUE, MutablePut, PutArgs, Token};
use trackerless::sim::testnet::{Testnet, TestnetConfig, testnet_ip};

/// Counts live heap bytes, so the store's memory is measured rather than estimated.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A bencoded byte string of exactly `len` bytes (prefix included).
fn bencoded_value(len: usize, fill: u8) -> Vec<u8> {
    // "NNN:" prefix: find the payload size whose prefix makes the total `len`.
    let mut payload = len - 2;
    while payload.to_string().len() + 1 + payload > len {
        payload -= 1;
    }
    let mut v = format!("{payload}:").into_bytes();
    v.resize(v.len() + payload, fill);
    v
}

/// Heap bytes of a store holding `n` largest-possible mutable items (1,000-byte values,
/// 64-byte salts), each signed by its own key, as the store keeps them after `put`.
fn full_store_heap(n: usize) -> (usize, usize, usize) {
    let mut puts = Vec::with_capacity(n);
    let mut signable_buf = Vec::new();
    for i in 0..n {
        let mut seed = [7u8; 32];
        seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let key = SigningKey::from_bytes(&seed);
        let salt = vec![b's'; MAX_ITEM_SALT];
        let v = bencoded_value(MAX_ITEM_VALUE, b'a' + (i % 26) as u8);
        signable_buf.clear();
        signable(&salt, 1, &v, &mut signable_buf);
        let sig = key.sign(&signable_buf).to_bytes();
        puts.push(PutArgs {
            token: Token::new(b"tok").expect("short token"),
            v,
            mutable: Some(MutablePut {
                k: key.verifying_key().to_bytes(),
                salt,
                seq: 1,
                sig,
                cas: None,
            }),
        });
    }
    let now = Instant::now();
    let before = LIVE.load(Ordering::Relaxed);
    let mut store = ItemStore::new(ItemStoreConfig::with_max_items(n));
    for p in &puts {
        store.put(p, now).expect("valid put");
    }
    let heap = LIVE.load(Ordering::Relaxed) - before;
    assert_eq!(store.len(), n, "every item kept");
    let accounted = store.bytes();
    drop(store);
    let payload: usize = puts
        .iter()
        .map(|p| p.v.len() + p.mutable.as_ref().map_or(0, |m| m.salt.len() + 32 + 64 + 8))
        .sum();
    (heap, accounted, payload)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let nodes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2_000);
    let items: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(40);

    println!("## full item store (heap counted by a global allocator)");
    println!(
        "| items | heap | heap per item | accounted by the store (cap) | payload (v + salt + k + sig + seq) | heap / payload |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for n in [700, 10_000] {
        let (heap, accounted, payload) = full_store_heap(n);
        println!(
            "| {n} | {:.2} MiB | {} B | {:.2} MiB | {:.2} MiB | {:.2} |",
            heap as f64 / 1048576.0,
            heap / n,
            accounted as f64 / 1048576.0,
            payload as f64 / 1048576.0,
            heap as f64 / payload as f64
        );
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(latency(nodes, items));
}

async fn latency(nodes: usize, items: usize) {
    let subnet = 214;
    let started = Instant::now();
    let net = Testnet::start(
        nodes + 1,
        TestnetConfig {
            subnet,
            ..Default::default()
        },
    )
    .await
    .expect("testnet starts (inside `unshare -rn` with lo up?)");
    let smallest = net.wait_for_tables(8, Duration::from_secs(300)).await;
    println!(
        "\n## mutable get latency: {} nodes up in {:.1?}, smallest table {smallest}",
        nodes + 1,
        started.elapsed()
    );
    let ours = &net.nodes[nodes];
    let boot: Vec<String> = (0..5).map(|i| net.addr(i).to_string()).collect();
    let ml_ip = testnet_ip(subnet, nodes + 10);
    let ml = mainline::Dht::builder()
        .bootstrap(&boot)
        .bind_address(ml_ip)
        .build()
        .expect("mainline client starts")
        .as_async();
    assert!(ml.bootstrapped().await, "mainline joined through our nodes");

    // Items put by nodes spread over the network, each with its own key and salt.
    let mut keys = Vec::with_capacity(items);
    for i in 0..items {
        let mut seed = [0x44u8; 32];
        seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let key = SigningKey::from_bytes(&seed);
        let salt = format!("bench-{i}").into_bytes();
        let value = format!("value {i}");
        let v = format!("{}:{value}", value.len()).into_bytes();
        let writer = &net.nodes[(i * 7919) % nodes];
        let put = writer
            .put_mutable(&key, &salt, v, Some(5), None)
            .await
            .expect("put");
        assert!(put.stored >= 3, "item {i} stored on {} nodes", put.stored);
        keys.push((key, salt, value));
    }

    let (mut t_ours, mut t_ml) = (Vec::new(), Vec::new());
    let (mut ok_ours, mut ok_ml) = (0, 0);
    for (i, (key, salt, value)) in keys.iter().enumerate() {
        let vk = key.verifying_key();
        for turn in 0..2 {
            if (i + turn) % 2 == 0 {
                let t = Instant::now();
                let got = ours.get_mutable(&vk, salt, None).await;
                t_ours.push(t.elapsed());
                if let Ok(g) = got {
                    let want = format!("{}:{value}", value.len());
                    ok_ours += usize::from(
                        g.item.v == want.as_bytes()
                            && g.item.mutable.as_ref().is_some_and(|m| m.seq == 5),
                    );
                }
            } else {
                let t = Instant::now();
                let got = ml
                    .get_mutable_most_recent(vk.as_bytes(), Some(salt.as_slice()))
                    .await;
                t_ml.push(t.elapsed());
                if let Some(g) = got {
                    ok_ml += usize::from(g.value() == value.as_bytes() && g.seq() == 5);
                }
            }
        }
    }
    t_ours.sort();
    t_ml.sort();
    let mean = |t: &[Duration]| t.iter().sum::<Duration>() / t.len() as u32;
    println!("| client | gets | newest value returned | p50 | p90 | max | mean |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (name, t, ok) in [
        ("trackerless `get_mutable`", &t_ours, ok_ours),
        ("mainline 8.0.1 `get_mutable_most_recent`", &t_ml, ok_ml),
    ] {
        println!(
            "| {name} | {} | {ok}/{} | {} | {} | {} | {} |",
            t.len(),
            t.len(),
            ms(percentile(t, 0.5)),
            ms(percentile(t, 0.9)),
            ms(*t.last().expect("gets")),
            ms(mean(t)),
        );
    }
    println!(
        "ratio mainline / ours: p50 {:.2}, p90 {:.2}, mean {:.2}",
        percentile(&t_ml, 0.5).as_secs_f64() / percentile(&t_ours, 0.5).as_secs_f64(),
        percentile(&t_ml, 0.9).as_secs_f64() / percentile(&t_ours, 0.9).as_secs_f64(),
        mean(&t_ml).as_secs_f64() / mean(&t_ours).as_secs_f64(),
    );
    net.shutdown().await;
}
