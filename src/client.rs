//! [`Client`]: download or seed a torrent, named by a magnet link or a `.torrent`, with the
//! DHT alone. This is the pipeline behind `dht-get` and `dht-seed`, so that a library user
//! gets it without copying a binary's `main`.
//!
//! A client owns one peer listener (TCP and uTP, serving metadata to anyone and pieces for
//! the torrents it has) and shares one DHT node ([`crate::dht::driver::Dht`]) among its
//! torrents. Adding a magnet fetches the metadata from the peers the DHT finds (BEP 9),
//! then starts a [`Session`] that downloads every piece, SHA-1 verified, and, if asked,
//! keeps seeding. Progress is read from the returned [`Torrent`].
//!
//! ```no_run
//! # async fn demo(dht: trackerless::dht::driver::DhtHandle) -> Result<(), Box<dyn std::error::Error>> {
//! use trackerless::client::{AddOptions, Client, ClientConfig, Target};
//! let client = Client::start(dht, ClientConfig::default()).await?;
//! let target = Target::parse("magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567")?;
//! let torrent = client.add(target, "downloads".as_ref(), AddOptions::default()).await?;
//! torrent.wait_complete().await;
//! println!("{} bytes verified", torrent.progress().verified_bytes);
//! torrent.stop().await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::dht::allow::AllowList;
use crate::dht::driver::DhtHandle;
use crate::dht::peer_feed::PeersConfig;
use crate::download::{Mode, Phase, Progress, ResumeStore, Session, SessionConfig, SessionError};
use crate::metadata::{
    FetchConfig, FetchError, Fetched, MetadataRegistry, MetadataServer, PeerSource, ServeConfig,
    fetch_metadata,
};
use crate::torrent::InfoHash;
use crate::torrent::PeerId;
use crate::torrent::magnet::{Magnet, MagnetError};
use crate::torrent::metainfo::{Info, Metainfo, MetainfoError};
use crate::wire::{EncryptionPolicy, WireConfig};

/// How a [`Client`] connects, listens and shares.
#[derive(Clone)]
pub struct ClientConfig {
    /// Our peer id, the same for every torrent and both directions.
    pub peer_id: PeerId,
    /// Peers outside this list are never connected to (the DHT node has its own list).
    pub allow: AllowList,
    /// Where the peer listener binds, one address per family at most, all on one port
    /// (an address with port 0 takes the first one's). Empty: beside each of the DHT
    /// node's addresses, any port ([`default_listen`]); peers learn the port from our
    /// announces, which carry no address.
    pub listen: Vec<SocketAddr>,
    /// Peer connections per torrent at most (both directions), and incoming connections
    /// the listener holds at most.
    pub max_peers: usize,
    /// Accept and make uTP (BEP 29) connections: libtorrent's and most clients' first choice.
    pub utp: bool,
    /// Accept and make TCP connections.
    pub tcp: bool,
    /// Plain or MSE/PE-encrypted peer connections.
    pub encryption: EncryptionPolicy,
    /// Give up a metadata fetch after this long (`None`: never).
    pub metadata_timeout: Option<Duration>,
    /// Upload at most this many bytes per second, per torrent (`None`: unlimited).
    pub upload_rate: Option<u64>,
    /// BEP 11 peer exchange (never for private torrents).
    pub pex: bool,
    /// Where downloads keep their verified pieces and info dicts across runs (`None`: an
    /// interrupted download starts over).
    pub resume: Option<ResumeStore>,
}

impl Default for ClientConfig {
    /// A fresh peer id, loopback-only peers (widen `allow` for real use), uTP and TCP,
    /// encryption as libtorrent's default, 50 peers, a 60 s metadata timeout.
    fn default() -> Self {
        ClientConfig {
            peer_id: PeerId::generate(),
            allow: AllowList::loopback(),
            listen: Vec::new(),
            max_peers: 50,
            utp: true,
            tcp: true,
            encryption: EncryptionPolicy::default(),
            metadata_timeout: Some(Duration::from_secs(60)),
            upload_rate: None,
            pex: true,
            resume: None,
        }
    }
}

/// What to download: a magnet link (or bare info hash), or a `.torrent` whose info dict is
/// already known.
#[derive(Debug, Clone)]
pub enum Target {
    /// The info dict is fetched from peers (BEP 9).
    Magnet(Magnet),
    /// A parsed `.torrent` file.
    Torrent(Metainfo),
}

/// Why [`Target::parse`] refused its argument.
#[derive(Debug)]
pub enum TargetError {
    /// A file that could not be read.
    Read {
        /// The argument, as given.
        path: String,
        /// Why reading failed.
        error: io::Error,
    },
    /// A file that is not a `.torrent`.
    Torrent {
        /// The argument, as given.
        path: String,
        /// What is wrong with its contents.
        error: MetainfoError,
    },
    /// A name ending in `.torrent` that is no file (and no magnet link either).
    NoSuchFile {
        /// The argument, as given.
        path: String,
        /// Why it is not a magnet link either.
        magnet: MagnetError,
    },
    /// Not a file, and not a magnet link or info hash.
    Magnet(MagnetError),
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::Read { path, error } => write!(f, "cannot read {path}: {error}"),
            TargetError::Torrent { path, error } => write!(f, "{path}: {error}"),
            TargetError::NoSuchFile { path, magnet } => {
                write!(f, "{path}: no such file (and not a magnet link: {magnet})")
            }
            TargetError::Magnet(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for TargetError {}

impl Target {
    /// A path to an existing file is read as a `.torrent`; anything else must be a magnet
    /// link or a 40-hex / 32-base32 info hash.
    pub fn parse(s: &str) -> Result<Target, TargetError> {
        let path = Path::new(s);
        if path.is_file() {
            let bytes = std::fs::read(path).map_err(|error| TargetError::Read {
                path: s.to_string(),
                error,
            })?;
            let meta = Metainfo::from_bytes(&bytes).map_err(|error| TargetError::Torrent {
                path: s.to_string(),
                error,
            })?;
            return Ok(Target::Torrent(meta));
        }
        match Magnet::parse(s) {
            Ok(m) => Ok(Target::Magnet(m)),
            Err(magnet) if s.ends_with(".torrent") => Err(TargetError::NoSuchFile {
                path: s.to_string(),
                magnet,
            }),
            Err(e) => Err(TargetError::Magnet(e)),
        }
    }

    /// The info hash (v1, or the truncated v2 hash of a v2-only magnet).
    pub fn info_hash(&self) -> InfoHash {
        match self {
            Target::Magnet(m) => m.info_hash,
            Target::Torrent(t) => t.info_hash,
        }
    }
}

/// Why a client could not start, fetch or add a torrent.
#[derive(Debug)]
pub enum ClientError {
    /// The peer listener could not bind.
    Listen {
        /// The address it tried.
        addr: SocketAddr,
        /// Why binding failed.
        error: io::Error,
    },
    /// No peer gave us the metadata.
    Metadata {
        /// How the fetch ended.
        error: FetchError,
        /// Nodes in the routing table when it ended: 0 means the DHT was never reached,
        /// the likelier reason than a swarm without peers.
        dht_nodes: usize,
    },
    /// The info dict matches the info hash but is not one we can download.
    BadMetadata(MetainfoError),
    /// BEP 27: a private torrent's peers come only from its trackers.
    Private {
        /// The torrent's name.
        name: String,
    },
    /// The download session did not start.
    Session(SessionError),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Listen { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
            ClientError::Metadata { error, dht_nodes } => write!(
                f,
                "{error}; the DHT routing table has {dht_nodes} node{}",
                if *dht_nodes == 1 { "" } else { "s" }
            ),
            ClientError::BadMetadata(e) => {
                write!(
                    f,
                    "the metadata matches the info hash but is not usable: {e}"
                )
            }
            ClientError::Private { name } => write!(
                f,
                "{name} is a private torrent (BEP 27): its peers come only from its trackers, \
                 which a trackerless client does not use"
            ),
            ClientError::Session(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Per-torrent choices for [`Client::add`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AddOptions {
    /// Keep seeding once complete (until [`Torrent::stop`]); otherwise the session ends at
    /// completion.
    pub seed: bool,
}

/// A running torrent: its session, registered with the client's listener.
pub struct Torrent {
    session: Session,
    registry: Arc<MetadataRegistry>,
    info_hash: InfoHash,
    info: Info,
}

impl Torrent {
    /// The torrent's info hash.
    pub fn info_hash(&self) -> InfoHash {
        self.info_hash
    }

    /// The parsed info dict (name, files, pieces).
    pub fn info(&self) -> &Info {
        &self.info
    }

    /// A progress snapshot: phase, verified bytes and pieces, transfer counters.
    pub fn progress(&self) -> Progress {
        self.session.progress()
    }

    /// The phase right now.
    pub fn phase(&self) -> Phase {
        self.session.phase()
    }

    /// Waits until every piece is verified (or the session stops first).
    pub async fn wait_complete(&self) -> Phase {
        self.session.wait_complete().await
    }

    /// Waits until the session ends on its own (complete and not seeding, or failed).
    pub async fn wait_stopped(&self) -> Result<(), SessionError> {
        self.session.wait_stopped().await
    }

    /// The session, for what this handle does not wrap (peers, verified pieces, bans).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Stops the session (saving its resume record) and withdraws the torrent from the
    /// listener.
    pub async fn stop(self) -> Result<(), SessionError> {
        let r = self.session.stop().await;
        self.registry.detach(&self.info_hash);
        self.registry.remove(&self.info_hash);
        r
    }
}

/// The peer listener's addresses when none are configured (`dht4` is the DHT handle's main
/// address, IPv6 on an IPv6-only node): beside each of the DHT node's sockets, any port. Both wildcards become one dual-stack `[::]` listener (two sockets
/// could not both hold the port on a host where `[::]` is dual-stack); specific addresses
/// get one listener each, on one port.
pub fn default_listen(dht4: SocketAddr, dht6: Option<SocketAddr>) -> Vec<SocketAddr> {
    let v4 = SocketAddr::new(dht4.ip(), 0);
    if dht4.is_ipv6() {
        // An IPv6-only node: its main address is its IPv6 one.
        return vec![v4];
    }
    match dht6 {
        None => vec![v4],
        Some(v6) if v6.ip().is_unspecified() && dht4.ip().is_unspecified() => {
            vec![SocketAddr::new(v6.ip(), 0)]
        }
        Some(v6) => vec![v4, SocketAddr::new(v6.ip(), 0)],
    }
}

/// The listener settings a client's configuration gives.
fn serve_config(cfg: &ClientConfig, dht: &DhtHandle) -> ServeConfig {
    ServeConfig {
        peer_id: cfg.peer_id,
        allow: cfg.allow.clone(),
        dht: Some(dht.clone()),
        dht_port: Some(dht.local_addr().port()),
        max_connections: cfg.max_peers,
        utp: cfg.utp,
        tcp: cfg.tcp,
        wire: WireConfig {
            encryption: cfg.encryption,
            ..ServeConfig::default().wire
        },
    }
}

/// Downloads and seeds torrents through one DHT node and one peer listener.
pub struct Client {
    dht: DhtHandle,
    registry: Arc<MetadataRegistry>,
    server: MetadataServer,
    cfg: ClientConfig,
}

impl Client {
    /// Binds the peer listener; the DHT node is shared, not owned (shut it down yourself).
    pub async fn start(dht: DhtHandle, cfg: ClientConfig) -> Result<Client, ClientError> {
        let registry = Arc::new(MetadataRegistry::new());
        let addrs = if cfg.listen.is_empty() {
            default_listen(dht.local_addr(), dht.local_addr6())
        } else {
            cfg.listen.clone()
        };
        let server = match MetadataServer::bind_all(
            &addrs,
            registry.clone(),
            serve_config(&cfg, &dht),
        )
        .await
        {
            Ok(s) => s,
            // The default's IPv6 half is a bonus: a host whose IPv6 DHT socket bound but
            // whose TCP or uTP over IPv6 does not still serves IPv4 (after one log line).
            Err(error) if cfg.listen.is_empty() && addrs.iter().any(SocketAddr::is_ipv6) => {
                let v4 = SocketAddr::new(dht.local_addr().ip(), 0);
                tracing::info!(
                    "cannot listen for peers on {addrs:?} ({error}): IPv4 only, on {v4}"
                );
                MetadataServer::bind(v4, registry.clone(), serve_config(&cfg, &dht))
                    .await
                    .map_err(|error| ClientError::Listen { addr: v4, error })?
            }
            Err(error) => {
                return Err(ClientError::Listen {
                    addr: addrs[0],
                    error,
                });
            }
        };
        Ok(Client {
            dht,
            registry,
            server,
            cfg,
        })
    }

    /// The peer listener's first address (its port is what our announces advertise).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Every address the peer listener is bound to (one per family at most, one port).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        self.server.local_addrs()
    }

    /// The DHT node this client finds peers with.
    pub fn dht(&self) -> &DhtHandle {
        &self.dht
    }

    /// Fetches a magnet's info dict: from its `x.pe` peers first, then from the peers of
    /// DHT lookups repeated quickly (every 0.25 s, doubling up to 5 s: a seeder may
    /// announce after we start, and nothing else can happen until the metadata is here).
    pub async fn fetch_metadata(&self, magnet: &Magnet) -> Result<Fetched, ClientError> {
        let cfg = FetchConfig {
            peer_id: self.cfg.peer_id,
            allow: self.cfg.allow.clone(),
            max_connections: self.cfg.max_peers,
            timeout: self.cfg.metadata_timeout,
            dht: Some(self.dht.clone()),
            dht_port: Some(self.dht.local_addr().port()),
            listen_port: Some(self.local_addr().port()),
            transports: self.server.transports(),
            wire: WireConfig {
                encryption: self.cfg.encryption,
                ..FetchConfig::default().wire
            },
            ..FetchConfig::default()
        };
        let lookups = PeersConfig {
            first_pause: Duration::from_millis(250),
            max_pause: Duration::from_secs(5),
            max_pause_leeching: Duration::from_secs(5),
            ..PeersConfig::lookup()
        };
        let source = PeerSource::new(magnet.peers.iter().copied())
            .with_feed(self.dht.peers(magnet.info_hash, lookups));
        match fetch_metadata(magnet.info_hash, source, &cfg).await {
            Ok(f) => Ok(f),
            Err(error) => {
                let dht_nodes = self
                    .dht
                    .stats()
                    .await
                    .map(|s| s.good_nodes + s.questionable_nodes)
                    .unwrap_or(0);
                Err(ClientError::Metadata { error, dht_nodes })
            }
        }
    }

    /// Starts downloading `target` into `dir` (a multi-file torrent goes into
    /// `dir/<name>/`). The info dict comes from the `.torrent`, from the resume store (an
    /// earlier run), or from peers; pieces already on disk are checked, not fetched again.
    pub async fn add(
        &self,
        target: Target,
        dir: &Path,
        opts: AddOptions,
    ) -> Result<Torrent, ClientError> {
        let ih = target.info_hash();
        let mut peers: Vec<SocketAddr> = Vec::new();
        let cached = self
            .cfg
            .resume
            .as_ref()
            .and_then(|r| r.load_info(&ih))
            .filter(|i| InfoHash::of_info(i) == ih);
        let info_bytes: Bytes = match (&target, cached) {
            (Target::Torrent(t), _) => Bytes::from(t.info_bytes.clone()),
            (Target::Magnet(_), Some(cached)) => Bytes::from(cached),
            (Target::Magnet(m), None) => {
                let fetched = self.fetch_metadata(m).await?;
                peers.extend(fetched.stats.peers.iter().map(|p| p.addr));
                fetched.info
            }
        };
        if let Target::Magnet(m) = &target {
            peers.extend(m.peers.iter().copied());
        }
        let info = Info::from_bytes(&info_bytes).map_err(ClientError::BadMetadata)?;
        if let Some(r) = &self.cfg.resume
            && let Err(e) = r.save_info(&ih, &info_bytes)
        {
            tracing::warn!("{e}");
        }
        if info.private && peers.is_empty() {
            return Err(ClientError::Private { name: info.name });
        }
        let cfg = SessionConfig {
            seed: opts.seed,
            resume: self.cfg.resume.clone(),
            ..self.session_config()
        };
        let session = Session::start(info_bytes.clone(), dir, Mode::ReadWrite, cfg)
            .map_err(ClientError::Session)?;
        self.registry.insert(info_bytes);
        self.registry.attach(ih, session.handoff());
        session.add_peers(peers);
        Ok(Torrent {
            session,
            registry: self.registry.clone(),
            info_hash: ih,
            info,
        })
    }

    /// Seeds the torrent of `info_bytes` from complete files under `root` (as hashed by
    /// the caller: no start-up check), until [`Torrent::stop`].
    pub async fn seed(&self, info_bytes: Bytes, root: &Path) -> Result<Torrent, ClientError> {
        let info = Info::from_bytes(&info_bytes).map_err(ClientError::BadMetadata)?;
        let cfg = SessionConfig {
            seed: true,
            assume_complete: true,
            ..self.session_config()
        };
        let ih = self.registry.insert(info_bytes.clone());
        let session = Session::start(info_bytes, root, Mode::ReadOnly, cfg).map_err(|e| {
            self.registry.remove(&ih);
            ClientError::Session(e)
        })?;
        self.registry.attach(ih, session.handoff());
        Ok(Torrent {
            session,
            registry: self.registry.clone(),
            info_hash: ih,
            info,
        })
    }

    /// The settings every session of this client shares.
    fn session_config(&self) -> SessionConfig {
        SessionConfig {
            peer_id: self.cfg.peer_id,
            allow: self.cfg.allow.clone(),
            max_peers: self.cfg.max_peers,
            listen_port: Some(self.local_addr().port()),
            local_ips: self.local_addrs().iter().map(|a| a.ip()).collect(),
            transports: self.server.transports(),
            wire: WireConfig {
                encryption: self.cfg.encryption,
                ..SessionConfig::default().wire
            },
            dht: Some(self.dht.clone()),
            dht_port: Some(self.dht.local_addr().port()),
            upload_rate: self.cfg.upload_rate,
            pex: self.cfg.pex,
            ..SessionConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_from_a_hash_a_file_or_say_why_not() {
        assert!(matches!(
            Target::parse(&hex::encode([3u8; 20])),
            Ok(Target::Magnet(m)) if m.info_hash == InfoHash([3; 20])
        ));
        let e = Target::parse("/nonexistent/x.torrent").unwrap_err();
        assert!(matches!(e, TargetError::NoSuchFile { .. }), "{e:?}");
        assert!(e.to_string().contains("no such file"), "{e}");
        assert!(matches!(
            Target::parse("not a magnet"),
            Err(TargetError::Magnet(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.torrent");
        std::fs::write(&bad, b"not bencode").unwrap();
        assert!(matches!(
            Target::parse(bad.to_str().unwrap()),
            Err(TargetError::Torrent { .. })
        ));
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/torrents");
        let file = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "torrent"))
            .expect("a sample .torrent");
        let meta = Metainfo::from_bytes(&std::fs::read(&file).unwrap()).unwrap();
        match Target::parse(file.to_str().unwrap()) {
            Ok(t @ Target::Torrent(_)) => assert_eq!(t.info_hash(), meta.info_hash),
            other => panic!("{other:?}"),
        }
    }
}
