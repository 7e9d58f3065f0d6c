//! Helpers shared by the metadata integration tests: synthetic info dicts, a scriptable
//! (possibly lying) metadata peer, and our seeder. (The libtorrent driver is
//! `tests/common/lt.rs`.)
//!
//! Each test crate uses a different subset, hence the dead-code allowance.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sha1::{Digest, Sha1};
use tokio::net::TcpListener;
use trackerless::torrent::InfoHash;
use trackerless::wire::{
    EXT_HANDSHAKE_ID, ExtHandshake, Handshake, METADATA_BLOCK, Message, MetadataMsg,
    OUR_UT_METADATA_ID, PeerConn, UT_METADATA, WireConfig, handshake_incoming,
};

/// Appends a bencoded byte string.
fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(s);
}

fn put_int(out: &mut Vec<u8>, n: u64) {
    out.push(b'i');
    out.extend_from_slice(n.to_string().as_bytes());
    out.push(b'e');
}

/// A canonical multi-file info dict with `files` small files (1 to 100 bytes), piece length
/// 16 KiB, and pseudo-random piece hashes derived from `seed`: it parses and validates like a
/// real torrent, and distinct seeds give distinct info hashes. 2,000 files make a ~60 KiB dict,
/// i.e. four metadata pieces.
pub fn synthetic_info(name: &str, files: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(files * 32 + 256);
    out.push(b'd');
    put_str(&mut out, b"files");
    out.push(b'l');
    let mut total = 0u64;
    for i in 0..files {
        let len = 1 + (i as u64 * 37 + seed) % 100;
        total += len;
        out.push(b'd');
        put_str(&mut out, b"length");
        put_int(&mut out, len);
        put_str(&mut out, b"path");
        out.push(b'l');
        put_str(&mut out, format!("dir{:02}", i / 100).as_bytes());
        put_str(&mut out, format!("file-{i:05}.dat").as_bytes());
        out.push(b'e');
        out.push(b'e');
    }
    out.push(b'e');
    put_str(&mut out, b"name");
    put_str(&mut out, name.as_bytes());
    put_str(&mut out, b"piece length");
    put_int(&mut out, 16384);
    let pieces = total.div_ceil(16384);
    let mut hashes = Vec::with_capacity(pieces as usize * 20);
    for p in 0..pieces {
        hashes.extend_from_slice(&Sha1::digest(format!("{seed}-{p}")));
    }
    put_str(&mut out, b"pieces");
    put_str(&mut out, &hashes);
    out.push(b'e');
    out
}

pub fn info_hash(info: &[u8]) -> InfoHash {
    InfoHash(Sha1::digest(info).into())
}

/// How a [`FakePeer`] answers metadata requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lie {
    /// Correct data.
    Honest,
    /// Flips a byte of this piece.
    CorruptPiece(u32),
    /// Flips a byte of every piece.
    CorruptAll,
    /// Flips a byte of the n-th block it sends on a connection (0-based), whichever piece
    /// that is, so it lies on a piece it is actually asked for.
    CorruptNth(u32),
    /// Sends `total_size` one larger than the advertised `metadata_size`.
    WrongTotalSize,
    /// Advertises this `metadata_size` and answers consistently with it (the real dict
    /// zero-padded or cut).
    AdvertiseSize(u64),
    /// Drops the last byte of every block.
    ShortBlock,
    /// Answers every request with a payload that is not a ut_metadata message.
    Malformed,
    /// Never answers requests.
    Silent,
    /// Answers each request, then sends 100 blocks nobody asked for.
    Flood,
}

/// A metadata peer built from the wire primitives, independent of the crate's serving side,
/// so a test can make it lie.
pub struct FakePeer {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    /// PORT messages received from the fetcher.
    pub ports: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakePeer {
    /// Listens on `bind` and serves `info` (under its real info hash) the way `lie` says.
    /// `dht_port`, when set, is sent to the fetcher in a PORT message.
    pub async fn start(
        bind: SocketAddr,
        info: Vec<u8>,
        lie: Lie,
        dht_port: Option<u16>,
    ) -> FakePeer {
        let listener = TcpListener::bind(bind).await.expect("bind fake peer");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let ports = Arc::new(AtomicU64::new(0));
        let info = Bytes::from(info);
        let (r, p) = (requests.clone(), ports.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (info, r, p) = (info.clone(), r.clone(), p.clone());
                tokio::spawn(async move {
                    let _ = serve_fake(stream, info, lie, dht_port, r, p).await;
                });
            }
        });
        FakePeer {
            addr,
            requests,
            ports,
            task,
        }
    }
}

async fn serve_fake(
    mut stream: tokio::net::TcpStream,
    info: Bytes,
    lie: Lie,
    dht_port: Option<u16>,
    requests: Arc<AtomicU64>,
    ports: Arc<AtomicU64>,
) -> Result<(), trackerless::wire::WireError> {
    let ih = info_hash(&info);
    let wire = WireConfig::default();
    let peer_id = trackerless::torrent::PeerId::generate();
    handshake_incoming(&mut stream, Duration::from_secs(5), |hs| {
        (hs.info_hash == ih).then(|| Handshake::new(ih, peer_id).without_fast())
    })
    .await?;
    let advertised = match lie {
        Lie::AdvertiseSize(s) => s,
        _ => info.len() as u64,
    };
    // The dict as this peer pretends it is.
    let mut served = info.to_vec();
    served.resize(advertised.min(17 << 20) as usize, 0);
    let mut conn = PeerConn::from_tcp(stream, &wire);
    conn.writer
        .queue(&ExtHandshake::ours(None, Some(advertised)).to_message());
    if let Some(port) = dht_port {
        conn.writer.queue(&Message::Port(port));
    }
    conn.writer.flush().await?;
    let mut peer_ext = ExtHandshake::default();
    let mut sent = 0u32;
    loop {
        match conn.reader.recv().await? {
            Message::Extended {
                id: EXT_HANDSHAKE_ID,
                payload,
            } => {
                if let Ok(hs) = ExtHandshake::decode(&payload) {
                    peer_ext.update(hs);
                }
            }
            Message::Port(_) => {
                ports.fetch_add(1, Ordering::Relaxed);
            }
            Message::Extended {
                id: OUR_UT_METADATA_ID,
                payload,
            } => {
                let Ok(MetadataMsg::Request { piece }) = MetadataMsg::decode(&payload) else {
                    continue;
                };
                requests.fetch_add(1, Ordering::Relaxed);
                let Some(id) = peer_ext.ext_id(UT_METADATA) else {
                    continue;
                };
                let start = piece as usize * METADATA_BLOCK;
                if start >= served.len() {
                    conn.writer
                        .queue_metadata(id, &MetadataMsg::Reject { piece });
                    conn.writer.flush().await?;
                    continue;
                }
                let end = (start + METADATA_BLOCK).min(served.len());
                let mut block = served[start..end].to_vec();
                let mut total_size = advertised;
                match lie {
                    Lie::CorruptAll => block[0] ^= 0x5a,
                    Lie::CorruptPiece(p) if p == piece => block[0] ^= 0x5a,
                    Lie::CorruptNth(n) if n == sent => block[0] ^= 0x5a,
                    Lie::WrongTotalSize => total_size += 1,
                    Lie::ShortBlock => {
                        block.pop();
                    }
                    Lie::Malformed => {
                        conn.writer
                            .queue_extended_with(id, |out| out.extend_from_slice(b"i42e"));
                        conn.writer.flush().await?;
                        continue;
                    }
                    Lie::Silent => continue,
                    _ => {}
                }
                conn.writer.queue_metadata(
                    id,
                    &MetadataMsg::Data {
                        piece,
                        total_size,
                        data: &block,
                    },
                );
                if lie == Lie::Flood {
                    for _ in 0..100 {
                        conn.writer.queue_metadata(
                            id,
                            &MetadataMsg::Data {
                                piece: piece + 1000,
                                total_size,
                                data: b"x",
                            },
                        );
                    }
                }
                conn.writer.flush().await?;
                sent += 1;
            }
            _ => {}
        }
    }
}

/// Our seeder: a DHT node and a metadata server on the same loopback IP, announcing every
/// torrent it holds into the network it bootstrapped from.
pub struct Seeder {
    pub dht: trackerless::dht::driver::DhtHandle,
    pub server: trackerless::metadata::MetadataServer,
}

impl Seeder {
    /// Starts on `ip`, joins through `routers`, serves and announces `infos`.
    pub async fn start(ip: std::net::Ipv4Addr, routers: Vec<String>, infos: &[Vec<u8>]) -> Seeder {
        use trackerless::metadata::{MetadataRegistry, MetadataServer, ServeConfig};
        let mut cfg = trackerless::dht::driver::DhtConfig::new(SocketAddr::new(ip.into(), 0));
        cfg.node = trackerless::dht::node::Config::loopback_testnet();
        cfg.bootstrap = routers;
        let (dht, driver) = trackerless::dht::driver::Dht::bind(cfg).await.unwrap();
        tokio::spawn(driver);
        let registry = Arc::new(MetadataRegistry::new());
        for info in infos {
            registry.insert(info.clone());
        }
        let server = MetadataServer::bind(
            SocketAddr::new(ip.into(), 0),
            registry,
            ServeConfig {
                allow: trackerless::dht::allow::AllowList::loopback(),
                dht: Some(dht.clone()),
                dht_port: Some(dht.local_addr().port()),
                ..ServeConfig::default()
            },
        )
        .await
        .unwrap();
        let seeder = Seeder { dht, server };
        seeder.wait_for_table(1).await;
        for info in infos {
            seeder.announce(info_hash(info)).await;
        }
        seeder
    }

    pub async fn wait_for_table(&self, n: usize) {
        // Generous: only a table that never fills should reach it, not a loaded machine.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.dht.stats().await.unwrap();
            if s.good_nodes + s.questionable_nodes >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "seeder's DHT table never reached {n} nodes"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Announces `ih` on the server's TCP port; panics if no node acknowledged it.
    pub async fn announce(&self, ih: InfoHash) {
        let port = self.server.local_addr().port();
        let (_, summary) = self.dht.announce(ih, Some(port)).unwrap().collect().await;
        assert!(
            summary.announced >= 1,
            "announce reached nobody: {summary:?}"
        );
    }
}
