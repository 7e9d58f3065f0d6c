//! How the aria2c tests and benchmarks run aria2: with everything that could reach beyond
//! the test switched off ([`aria2_args`]), and told where a seeder is by a minimal HTTP
//! tracker ([`tracker`]), since aria2's DHT cannot be pointed at loopback addresses.
//! Used by tests/download_aria2.rs and benches/interop.rs.

use std::net::{SocketAddr, SocketAddrV4};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// aria2c's arguments with its DHT, LPD, PEX and IPv6 off (so it talks to nothing the test
/// does not name), listening on `port` and saving into `dir`.
pub fn aria2_args(dir: &std::path::Path, port: u16) -> Vec<String> {
    [
        "--enable-dht=false",
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
    .chain([
        format!("--listen-port={port}"),
        format!("--dir={}", dir.display()),
    ])
    .collect()
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
