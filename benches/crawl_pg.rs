//! The crawler's stores side by side (issue 16): ingest rate into PostgreSQL with 1, 2 and
//! 4 concurrent crawlers against the embedded sled store, then bytes per 1M infohashes with
//! metadata and search latency at 1M, sled vs PostgreSQL. A program, not a timed test:
//!
//!     d=$(mktemp -d /tmp/pgb.XXXX); chmod 755 $d; eval "$(tools/pg-test.sh start $d/pg)"
//!     cargo bench --bench crawl_pg [-- --records N --big N]
//!     tools/pg-test.sh stop $d/pg
//!
//! It talks to PostgreSQL over the Unix socket `tools/pg-test.sh` made (no TCP, no
//! network), through the crawler's own store code (`crawl::backend::Store`): each "crawler"
//! is a thread with its own `Store` (its own connection), noting sightings and flushing
//! every `BATCH` notes, as `dht-crawl` flushes every 5 s (5,000 notes is 1,000 new
//! infohashes a second). A fifth of every crawler's notes are infohashes every crawler
//! sees (so the multi-row upserts meet real conflicts); the rest are its own.
//!
//! Defaults: 100,000 notes per crawler for the ingest rows, 1,000,000 infohashes (each with
//! metadata: a name from a 2,000-word vocabulary and 1–3 files) for the size and search part.

#[path = "../tests/crawl_pg_common/mod.rs"]
mod pgc;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use trackerless::crawl::backend::Store;
use trackerless::crawl::pg::PgStore;
use trackerless::crawl::store::{CrawlStore, MetaFile, StoreConfig, TorrentMeta};
use trackerless::dht::id::InfoHash;

const BATCH: usize = 5_000;

struct Args {
    records: usize,
    big: usize,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        records: 100_000,
        big: 1_000_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut number = |name: &str| -> Result<usize, String> {
            let v = it.next().ok_or(format!("{name} needs a value"))?;
            v.parse()
                .ok()
                .filter(|&n: &usize| n > 0)
                .ok_or(format!("{name}: {v:?} is not a positive integer"))
        };
        match flag.as_str() {
            "--records" => a.records = number("--records")?,
            "--big" => a.big = number("--big")?,
            "--bench" => {}
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    Ok(a)
}

/// A deterministic infohash: crawler `w`'s `i`-th own one, or shared one `i` (`w` = 255).
fn ih(w: u8, i: u64) -> InfoHash {
    let mut b = [0u8; 20];
    b[0] = w;
    b[1..9].copy_from_slice(&i.to_be_bytes());
    // Spread the rest so keys are not all neighbours in the B-tree.
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(w);
    for chunk in b[9..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = chunk.len();
        chunk.copy_from_slice(&x.to_le_bytes()[..n]);
    }
    InfoHash(b)
}

fn peer(i: u64) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(127, 9, (i >> 8) as u8, i as u8), 6881)
}

/// The 2,000-word vocabulary names are drawn from (`w0` … `w1999` spelled as syllables).
fn word(n: u64) -> String {
    const SYL: [&str; 16] = [
        "ka", "lo", "mi", "ne", "ru", "sa", "te", "vo", "zi", "ba", "do", "fe", "gu", "ha", "ji",
        "pu",
    ];
    let n = n % 2_000;
    format!(
        "{}{}{}",
        SYL[(n % 16) as usize],
        SYL[((n / 16) % 16) as usize],
        SYL[((n / 256) % 16) as usize]
    )
}

fn meta(i: u64) -> TorrentMeta {
    let mut x = i.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let name = format!(
        "{} {} {} {}",
        word(next()),
        word(next()),
        word(next()),
        1080 + i % 7
    );
    let files: Vec<MetaFile> = (0..1 + next() % 3)
        .map(|f| MetaFile {
            path: format!("{name}/{} {f}.mkv", word(next())),
            length: 1 + next() % (4 << 30),
        })
        .collect();
    TorrentMeta {
        total_size: files.iter().map(|f| f.length).sum(),
        file_count: files.len() as u64,
        files,
        name,
        fetched_at: 1_790_000_000 + i,
    }
}

/// Crawler `w` of `n`: `records` notes (a fifth shared), flushing every [`BATCH`]; with
/// `with_meta`, every own infohash also gets metadata. Returns the notes made.
fn crawl(store: &mut Store, w: u8, records: usize, with_meta: bool, own_base: u64) -> usize {
    let mut notes = 0;
    for i in 0..records as u64 {
        let (h, is_shared) = if i % 5 == 4 {
            (ih(255, i / 5), true)
        } else {
            (ih(w, own_base + i), false)
        };
        store.note_at(h, 1, Some(peer(i).into()), 1_790_000_000 + i);
        if with_meta && !is_shared {
            store.set_metadata(h, meta(own_base + i + u64::from(w) * 10_000_000));
        }
        notes += 1;
        if notes % BATCH == 0 {
            store.flush().expect("flush");
        }
    }
    store.flush().expect("flush");
    notes
}

fn open_pg(url: &str) -> Store {
    PgStore::open(url)
        .unwrap_or_else(|e| panic!("PostgreSQL: {e}"))
        .into()
}

/// `n` crawlers at once on one database, or (`url` `None`) the notes of `sled_as` crawlers
/// made one after the other through one sled store: notes per second over the whole run,
/// and the rows stored.
fn ingest(
    url: Option<&str>,
    dir: &std::path::Path,
    n: u8,
    sled_as: u8,
    records: usize,
    with_meta: bool,
) -> (f64, u64, Duration) {
    let t = Instant::now();
    let notes: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|w| {
                s.spawn(move || {
                    match url {
                        Some(u) => crawl(&mut open_pg(u), w, records, with_meta, 0),
                        // One process owns a sled store: `sled_as` crawlers' notes, one
                        // after the other, through the one store.
                        None => {
                            let mut store: Store = CrawlStore::open(dir, StoreConfig::default())
                                .expect("sled store")
                                .into();
                            (0..sled_as)
                                .map(|w| crawl(&mut store, w, records, with_meta, 0))
                                .sum()
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("crawler"))
            .sum()
    });
    let took = t.elapsed();
    let rows = match url {
        Some(u) => open_pg(u).totals().expect("totals").0,
        None => CrawlStore::open(dir, StoreConfig::default())
            .expect("sled store")
            .count(),
    };
    (notes as f64 / took.as_secs_f64(), rows, took)
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                    _ => e.metadata().map_or(0, |m| m.len()),
                })
                .sum()
        })
        .unwrap_or(0)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn search_latency(store: &Store, queries: usize) -> (Duration, Duration, usize) {
    let mut t = Vec::with_capacity(queries);
    let mut hits = 0;
    for q in 0..queries as u64 {
        let w = word(q.wrapping_mul(7919) + 13);
        let s = Instant::now();
        hits += store.search(&w, 0, 20).expect("search").len();
        t.push(s.elapsed());
    }
    t.sort();
    (pct(&t, 0.5), pct(&t, 0.99), hits)
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}\nusage: crawl_pg [--records N] [--big N]");
            std::process::exit(2);
        }
    };
    if std::env::var_os("TRACKERLESS_TEST_PG").is_none() {
        eprintln!(
            "error: TRACKERLESS_TEST_PG is not set: start a server first with \
             `eval \"$(tools/pg-test.sh start DIR)\"` (see the header of benches/crawl_pg.rs)"
        );
        std::process::exit(1);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let fresh = |tag: &str| rt.block_on(pgc::fresh_db(tag));
    let work = tempfile::tempdir().expect("temp dir");

    println!(
        "## ingest: {} notes per crawler, flush every {BATCH}",
        a.records
    );
    println!();
    println!(
        "| store | crawlers | notes/s (all crawlers) | rows stored | wall time | ratio to sled |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let sled_dir = work.path().join("sled-ingest");
    let (sled_rate, rows, took) = ingest(None, &sled_dir, 1, 1, a.records, false);
    println!("| sled | 1 | {sled_rate:.0} | {rows} | {took:.1?} | 1.00 |");
    for n in [1u8, 2, 4] {
        let url = fresh("bench_ingest");
        let (rate, rows, took) = ingest(Some(&url), work.path(), n, 0, a.records, false);
        println!(
            "| PostgreSQL | {n} | {rate:.0} | {rows} | {took:.1?} | {:.2} |",
            rate / sled_rate
        );
    }

    println!();
    println!(
        "## {} infohashes with metadata: bytes and search latency",
        a.big
    );
    println!();
    // Own infohashes carry metadata; shared ones (a fifth of the notes) are re-sightings,
    // so `big` own records need big * 5 / 4 notes.
    let notes = a.big * 5 / 4;
    let sled_big = work.path().join("sled-big");
    let (rate_s, rows_s, took_s) = ingest(None, &sled_big, 1, 4, notes / 4, true);
    let sled = Store::from(CrawlStore::open(&sled_big, StoreConfig::default()).expect("sled"));
    let sled_bytes = dir_bytes(&sled_big);
    let pg_url = fresh("bench_big");
    let (rate_p, rows_p, took_p) = ingest(Some(&pg_url), work.path(), 4, 0, notes / 4, true);
    let pg = open_pg(&pg_url);
    let pg_bytes: i64 = rt.block_on(async {
        pgc::client(&pg_url)
            .await
            .query_one(
                "SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = 'public' AND c.relkind = 'r'",
                &[],
            )
            .await
            .expect("size query")
            .get(0)
    });
    let (s50, s99, s_hits) = search_latency(&sled, 20);
    let (p50, p99, p_hits) = search_latency(&pg, 200);
    println!(
        "| store | rows | filled in | notes/s | bytes | bytes per record | search p50 | search p99 | queries (hits) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| sled (4 crawlers' notes in one process; substring of names, full scan) | {rows_s} | {took_s:.1?} | {rate_s:.0} | {:.1} MiB | {} | {s50:.2?} | {s99:.2?} | 20 ({s_hits}) |",
        sled_bytes as f64 / 1048576.0,
        sled_bytes / rows_s.max(1)
    );
    println!(
        "| PostgreSQL (4 crawlers; full text, GIN index) | {rows_p} | {took_p:.1?} | {rate_p:.0} | {:.1} MiB | {} | {p50:.2?} | {p99:.2?} | 200 ({p_hits}) |",
        pg_bytes as f64 / 1048576.0,
        pg_bytes as u64 / rows_p.max(1)
    );
    println!(
        "ratios PostgreSQL / sled: bytes {:.2}, search p50 {:.4}",
        pg_bytes as f64 / sled_bytes as f64,
        p50.as_secs_f64() / s50.as_secs_f64()
    );
}
