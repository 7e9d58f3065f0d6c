//! The router's driver: batched UDP I/O ([`crate::dht::udp`], shared with the node's
//! driver) on its own thread. Batching (not more threads) is the lever here: the target is
//! "tens of thousands of queries per second on one core".

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::store::{NodeRing, StoreError, store_file};
use super::{Router, RouterConfig, RouterStats};
use crate::dht::driver::StartError;
use crate::dht::udp::{self, BatchedSocket};

/// Receive buffer per datagram: KRPC queries are far smaller; longer ones are dropped.
const BUF_LEN: usize = 2048;

/// What [`spawn`] needs.
#[derive(Debug, Clone)]
pub struct RouterRunConfig {
    /// UDP address to bind (IPv4 only).
    pub bind: SocketAddr,
    /// The sans-IO router's settings.
    pub router: RouterConfig,
    /// Where the verified-node store is kept (`router-nodes.bin`); `None` = not kept.
    pub data_dir: Option<PathBuf>,
    /// How often the store is saved while running (it is also saved on shutdown).
    pub save_interval: Duration,
    /// `host:port` of nodes or routers to seed an empty store from (resolved at start).
    pub seeds: Vec<String>,
}

enum Command {
    Stats(oneshot::Sender<RouterStats>),
    Shutdown(oneshot::Sender<Result<(), StoreError>>),
}

/// A handle to a running router.
#[derive(Clone, Debug)]
pub struct RouterHandle {
    tx: mpsc::UnboundedSender<Command>,
    local_addr: SocketAddr,
    loaded: usize,
}

impl RouterHandle {
    /// The UDP address the router is bound to (with the actual port when port 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Contacts loaded from the store at start.
    pub fn loaded(&self) -> usize {
        self.loaded
    }

    /// The router's counters and gauges; `None` once it has stopped.
    pub async fn stats(&self) -> Option<RouterStats> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Stats(tx)).ok()?;
        rx.await.ok()
    }

    /// Stops the router after saving its store.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown(tx)).is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }
}

/// Loads the store, binds, and runs the router on its own thread.
pub fn spawn(config: RouterRunConfig) -> Result<RouterHandle, StartError> {
    let SocketAddr::V4(_) = config.bind else {
        return Err(StartError::Bind {
            addr: config.bind,
            error: io::Error::new(io::ErrorKind::Unsupported, "router mode binds IPv4 only"),
        });
    };
    let started = Instant::now();
    let ring = match &config.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                StartError::Runtime(io::Error::new(
                    e.kind(),
                    format!("cannot create {}: {e}", dir.display()),
                ))
            })?;
            let path = store_file(dir);
            match NodeRing::load(&path, config.router.capacity) {
                Ok(r) => r,
                Err(e) => {
                    // Only rebuildable state: keep the bad file for inspection, start empty.
                    let aside = path.with_extension("corrupt");
                    let _ = std::fs::rename(&path, &aside);
                    tracing::warn!("{e}; moved it to {} and starting empty", aside.display());
                    NodeRing::new(config.router.capacity)
                }
            }
        }
        None => NodeRing::new(config.router.capacity),
    };
    let loaded = ring.len();
    tracing::info!(
        "router store: {loaded} contacts loaded in {:?}",
        started.elapsed()
    );
    // A router's traffic comes in bursts, and every datagram dropped by a full buffer is a
    // node not bootstrapped: ask for twice the node's buffers.
    let std_socket = udp::bind_std(config.bind, 8 << 20).map_err(|error| StartError::Bind {
        addr: config.bind,
        error,
    })?;
    let local_addr = std_socket.local_addr().map_err(|error| StartError::Bind {
        addr: config.bind,
        error,
    })?;
    let (tx, rx) = mpsc::unbounded_channel();
    let router = Router::new(config.router.clone(), ring, Instant::now());
    let store = config.data_dir.as_ref().map(|d| store_file(d));
    let (save_interval, seeds) = (config.save_interval, config.seeds.clone());
    // The runtime is built on the router's own thread, so this works from inside another
    // runtime too.
    std::thread::Builder::new()
        .name(format!("router {local_addr}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("cannot start the router runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                let socket = match UdpSocket::from_std(std_socket) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!("cannot register the router socket: {e}");
                        return;
                    }
                };
                let driver = Driver {
                    io: BatchedSocket::new(socket, BUF_LEN),
                    router,
                    rx,
                    store,
                    save_interval,
                    seeds,
                    saving: None,
                };
                driver.run().await;
            });
        })
        .map_err(StartError::Runtime)?;
    Ok(RouterHandle {
        tx,
        local_addr,
        loaded,
    })
}

struct Driver {
    io: BatchedSocket,
    router: Router,
    rx: mpsc::UnboundedReceiver<Command>,
    store: Option<PathBuf>,
    save_interval: Duration,
    seeds: Vec<String>,
    /// The save running on the blocking pool, if any: writing and fsyncing up to 26 MB
    /// must not stop the only thread that answers queries.
    saving: Option<tokio::task::JoinHandle<Result<(), StoreError>>>,
}

impl Driver {
    async fn run(mut self) {
        let sleep =
            tokio::time::sleep_until(tokio::time::Instant::from_std(self.router.poll_timeout()));
        tokio::pin!(sleep);
        let mut save_tick = tokio::time::interval(self.save_interval);
        save_tick.tick().await;
        let mut ack = None;
        let seeds = std::mem::take(&mut self.seeds);
        self.seed(&seeds).await;
        loop {
            self.flush().await;
            let deadline = tokio::time::Instant::from_std(self.router.poll_timeout());
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            tokio::select! {
                biased;
                cmd = self.rx.recv() => match cmd {
                    Some(Command::Stats(tx)) => {
                        let _ = tx.send(self.router.stats(Instant::now()));
                    }
                    Some(Command::Shutdown(tx)) => {
                        ack = Some(tx);
                        break;
                    }
                    None => break,
                },
                () = &mut sleep => self.router.handle_timeout(Instant::now()),
                _ = save_tick.tick() => self.start_save(),
                // Last in the biased order: under a saturating flood the socket is always
                // readable, and commands and timers (rare, cheap) must still get their turn.
                r = self.io.socket().readable() => {
                    if r.is_ok() {
                        // Up to 64 batches: the router does nothing else between them.
                        self.io.receive(&mut self.router, 64);
                    }
                }
            }
        }
        self.flush().await;
        if let Some(h) = self.saving.take() {
            // Let a periodic save finish before the final one renames over it.
            let _ = h.await;
        }
        let saved = match (self.save_in_background(), &self.store) {
            (Some(h), Some(path)) => h.await.unwrap_or_else(|e| {
                Err(StoreError::Task {
                    path: path.clone(),
                    detail: e.to_string(),
                })
            }),
            _ => Ok(()),
        };
        if let Some(tx) = ack {
            let _ = tx.send(saved);
        }
    }

    /// Queries the seeds when the store is less than half full.
    async fn seed(&mut self, seeds: &[String]) {
        if seeds.is_empty() || self.router.ring().len() * 2 >= self.router.ring().capacity() {
            return;
        }
        let (addrs, errors) = crate::dht::bootstrap::resolve(seeds).await;
        for e in errors {
            tracing::warn!("router seed {e}");
        }
        // The router holds IPv4 contacts only.
        let addrs: Vec<std::net::SocketAddrV4> = addrs
            .into_iter()
            .filter_map(|a| match a {
                std::net::SocketAddr::V4(a) => Some(a),
                std::net::SocketAddr::V6(_) => None,
            })
            .collect();
        self.router.seed(Instant::now(), &addrs);
    }

    async fn flush(&mut self) {
        self.io.flush(&mut self.router).await;
    }

    /// Starts a periodic save unless the previous one is still being written (a finished
    /// one has logged its own failure).
    fn start_save(&mut self) {
        if self.saving.as_ref().is_some_and(|h| !h.is_finished()) {
            tracing::debug!("router store save still running; skipping this one");
            return;
        }
        self.saving = self.save_in_background();
    }

    /// Snapshots the ring here (milliseconds) and writes it on the blocking pool.
    fn save_in_background(&self) -> Option<tokio::task::JoinHandle<Result<(), StoreError>>> {
        let path = self.store.clone()?;
        let snap = self.router.ring().snapshot();
        Some(tokio::task::spawn_blocking(move || {
            let res = snap.save(&path).map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            });
            if let Err(e) = &res {
                tracing::warn!("saving the router store failed: {e}");
            }
            res
        }))
    }
}

impl udp::Core for Router {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        Router::handle_datagram(self, now, from, data);
    }

    fn note_oversized(&mut self, _len: usize) {
        self.note_unreadable();
    }

    fn drain_transmits(&mut self, f: impl FnMut(std::net::SocketAddrV4, &[u8])) {
        Router::drain_transmits(self, f);
    }
}
