//! How the aria2c tests and benchmarks run aria2: with everything that could reach beyond
//! the test switched off ([`aria2_args`]), and told where a seeder is either through its
//! DHT, bootstrapped from one loopback testnet node ([`Aria2Dht`]), or by a minimal HTTP
//! tracker ([`tracker`]). aria2 ignores a magnet's `x.pe`, so these are its only two ways in.
//! Used by tests/download_aria2.rs and benches/interop.rs.

use std::net::{SocketAddr, SocketAddrV4};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// aria2's DHT for a test: the one node it bootstraps from, its UDP port, and where it keeps
/// its routing table (a fresh file per run, so no earlier run's contacts leak in).
pub struct Aria2Dht<'a> {
    pub entry: SocketAddrV4,
    pub port: u16,
    pub table: &'a std::path::Path,
}

/// aria2c's arguments with LPD, PEX and IPv6 off, and its DHT off unless `dht` names a
/// loopback entry point (so it talks to nothing the test does not name), listening on
/// `port` and saving into `dir`.
pub fn aria2_args(dir: &std::path::Path, port: u16, dht: Option<Aria2Dht<'_>>) -> Vec<String> {
    let dht = match dht {
        Some(d) => vec![
            "--enable-dht=true".to_string(),
            format!("--dht-entry-point={}", d.entry),
            format!("--dht-listen-port={}", d.port),
            format!("--dht-file-path={}", d.table.display()),
        ],
        None => vec!["--enable-dht=false".to_string()],
    };
    [
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--file-allocation=none",
        "--summary-interval=0",
        "--console-log-level=warn",
        "--disable-ipv6=true",
        "--check-certificate=false",
    ]
    .into_iter()
    .map(String::from)
    .chain(dht)
    .chain([
        format!("--listen-port={port}"),
        format!("--dir={}", dir.display()),
    ])
    .collect()
}

/// The magnet without `x.pe` and `tr`, so aria2's DHT is provably its only way in (it
/// ignores `x.pe` anyway).
pub fn dht_only_magnet(magnet: &str) -> String {
    magnet
        .split('&')
        .filter(|p| !p.starts_with("x.pe=") && !p.starts_with("tr="))
        .collect::<Vec<_>>()
        .join("&")
}

/// Binds `bind` and answers every request with `peer`; returns the bound address.
pub async fn tracker(bind: SocketAddr, peer: SocketAddrV4) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .expect("tracker binds");
    let addr = listener.local_addr().expect("bound");
    let mut body = b"d8:intervali30e5:peers6:".to_vec();
    body.extend_from_slice(&peer.ip().octets());
    body.extend_from_slice(&peer.port().to_be_bytes());
    body.push(b'e');
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = 0;
                while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") && got < buf.len() {
                    match s.read(&mut buf[got..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n,
                    }
                }
                let head = format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    addr
}
