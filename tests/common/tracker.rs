//! A minimal HTTP tracker that answers every announce with one peer (compact form): how
//! aria2c, whose DHT cannot be pointed at loopback addresses, is told where a seeder is.
//! Used by tests/download_aria2.rs and benches/interop.rs.

use std::net::{SocketAddr, SocketAddrV4};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
