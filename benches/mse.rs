//! MSE/PE cost: bytes per second over a loopback TCP connection, plaintext and through the
//! RC4 adapters (`wire::mse_io`), in the same run, plus RC4 alone in memory (its cost per GiB).
//!
//! Run with `cargo bench --bench mse -- [MiB]` (default 256) inside a network namespace
//! (`unshare -rn sh -c 'ip link set lo up && cargo bench --bench mse'`). Each case runs three
//! times; the median is reported. No criterion, like the other benches.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use trackerless::wire::mse::Rc4;
use trackerless::wire::mse_io::{Rc4Reader, Rc4Writer};

const CHUNK: usize = 16 * 1024 + 13; // one block message, as the wire carries it

async fn transfer(total: usize, rc4: bool) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (a, (b, _)) = (a.expect("connect"), b.expect("accept"));
    let key = |k: &[u8]| rc4.then(|| Rc4::new(k));
    let mut w = Rc4Writer::new(a, key(b"key"));
    let mut r = Rc4Reader::new(b, key(b"key"), Vec::new());
    let start = Instant::now();
    let send = async move {
        let buf = vec![0x5a_u8; CHUNK];
        let mut left = total;
        while left > 0 {
            let n = left.min(CHUNK);
            w.write_all(&buf[..n]).await.expect("write");
            left -= n;
        }
        w.shutdown().await.expect("shutdown");
    };
    let recv = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0usize;
        loop {
            let n = r.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            if rc4 {
                assert!(buf[..n].iter().all(|&x| x == 0x5a), "decryption mismatch");
            }
            got += n;
        }
        got
    };
    let ((), got) = tokio::join!(send, recv);
    assert_eq!(got, total);
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mib: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(256);
    let total = mib << 20;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rate = |d: Duration| total as f64 / (1 << 20) as f64 / d.as_secs_f64();
    let plain = median(
        (0..3)
            .map(|_| rt.block_on(transfer(total, false)))
            .collect(),
    );
    let enc = median((0..3).map(|_| rt.block_on(transfer(total, true))).collect());
    let mut buf = vec![0u8; 1 << 20];
    let mut c = Rc4::new(b"key");
    let alone = median(
        (0..3)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..mib {
                    c.apply(&mut buf);
                }
                std::hint::black_box(&buf);
                t.elapsed()
            })
            .collect(),
    );
    println!("{mib} MiB over loopback TCP, current-thread runtime, median of 3");
    println!("plain        {:>8.0} MiB/s", rate(plain));
    println!(
        "rc4 (MSE)    {:>8.0} MiB/s  ({:.2}x the plain time)",
        rate(enc),
        enc.as_secs_f64() / plain.as_secs_f64()
    );
    println!(
        "rc4 alone    {:>8.0} MiB/s  ({:.2} s CPU per GiB, one direction)",
        rate(alone),
        alone.as_secs_f64() * 1024.0 / mib as f64
    );
}
