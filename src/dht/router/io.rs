//! The router's driver: batched UDP I/O ([`crate::dht::udp`], shared with the node's
//! driver) on its own thread. Batching (not more threads) is the lever here: the target is
//! "tens of thousands of queries per second on one core".
//!
//! BEP 32 runs the IPv6 DHT on its own socket, so the driver binds one per family: the
//! IPv4 socket (required) and optionally an IPv6 one (`IPV6_V6ONLY`, see
//! [`udp::bind_std`]), both with batched I/O, as the node's driver does. A host without
//! IPv6 runs the IPv4 router alone when
//! [`RouterRunConfig::bind6_optional`] says so.

use std::io;
use std::net::{SocketAddr, SocketAddrV6};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::store::{Rings, StoreError, store_file};
use super::{Router, RouterConfig, RouterStats};
use crate::dht::driver::StartError;
use crate::dht::udp::{self, BatchedSocket};

/// Receive buffer per datagram: KRPC queries are far smaller; longer ones are dropped.
const BUF_LEN: usize = 2048;

/// What [`spawn`] needs.
#[derive(Debug, Clone)]
pub struct RouterRunConfig {
    /// UDP address of the IPv4 socket (required: an IPv4 address).
    pub bind: SocketAddr,
    /// UDP address of the IPv6 socket (an IPv6 address); `None` serves IPv4 only.
    pub bind6: Option<SocketAddr>,
    /// When binding [`RouterRunConfig::bind6`] fails because the host has no IPv6, serve
    /// IPv4 only after one log line instead of failing (the CLI's default `--bind`, which
    /// asks for both families, like the node's).
    pub bind6_optional: bool,
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
    local_addr6: Option<SocketAddr>,
    loaded: usize,
    loaded6: usize,
}

impl RouterHandle {
    /// The UDP address the router is bound to (with the actual port when port 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The IPv6 socket's address, when the router serves IPv6.
    pub fn local_addr6(&self) -> Option<SocketAddr> {
        self.local_addr6
    }

    /// Contacts loaded from the store at start, both families.
    pub fn loaded(&self) -> usize {
        self.loaded
    }

    /// IPv6 contacts loaded from the store at start (included in [`RouterHandle::loaded`]).
    pub fn loaded6(&self) -> usize {
        self.loaded6
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
    let not_family = |addr: SocketAddr, what: &str| StartError::Bind {
        addr,
        error: io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not an {what} address"),
        ),
    };
    if !config.bind.is_ipv4() {
        return Err(not_family(config.bind, "IPv4"));
    }
    if let Some(a) = config.bind6
        && !a.is_ipv6()
    {
        return Err(not_family(a, "IPv6"));
    }
    let started = Instant::now();
    let rings = match &config.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                StartError::Runtime(io::Error::new(
                    e.kind(),
                    format!("cannot create {}: {e}", dir.display()),
                ))
            })?;
            let path = store_file(dir);
            match Rings::load(&path, config.router.capacity, config.router.capacity6) {
                Ok(r) => r,
                Err(e) => {
                    // Only rebuildable state: keep the bad file for inspection, start empty.
                    let aside = path.with_extension("corrupt");
                    let _ = std::fs::rename(&path, &aside);
                    tracing::warn!("{e}; moved it to {} and starting empty", aside.display());
                    Rings::new(config.router.capacity, config.router.capacity6)
                }
            }
        }
        None => Rings::new(config.router.capacity, config.router.capacity6),
    };
    let (loaded, loaded6) = (rings.len(), rings.v6.len());
    tracing::info!(
        "router store: {loaded} contacts ({loaded6} IPv6) loaded in {:?}",
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
    let std_socket6 = match config.bind6 {
        Some(a) => match udp::bind_std(a, 8 << 20) {
            Ok(s) => Some(s),
            Err(error) if config.bind6_optional && udp::no_ipv6(&error) => {
                tracing::info!("no IPv6 on this host ({error}): the router serves IPv4 only");
                None
            }
            Err(error) => return Err(StartError::Bind { addr: a, error }),
        },
        None => None,
    };
    let local_addr6 = match (&std_socket6, config.bind6) {
        (Some(s), Some(a)) => Some(
            s.local_addr()
                .map_err(|error| StartError::Bind { addr: a, error })?,
        ),
        _ => None,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let router_config = RouterConfig {
        // Nothing IPv6 is queued that could never be verified.
        ipv6: config.router.ipv6 && std_socket6.is_some(),
        ..config.router.clone()
    };
    let router = Router::new(router_config, rings, Instant::now());
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
                let io6 = match std_socket6.map(UdpSocket::from_std).transpose() {
                    Ok(s) => s.map(|socket| BatchedSocket::new(socket, BUF_LEN)),
                    Err(e) => {
                        tracing::error!("cannot register the router's IPv6 socket: {e}");
                        return;
                    }
                };
                let driver = Driver {
                    io: BatchedSocket::new(socket, BUF_LEN),
                    io6,
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
        local_addr6,
        loaded,
        loaded6,
    })
}

/// Resolves when the IPv6 socket (if any) is readable; never without one.
async fn readable6(io6: Option<&BatchedSocket<SocketAddrV6>>) -> io::Result<()> {
    match io6 {
        Some(u) => u.socket().readable().await,
        None => std::future::pending().await,
    }
}

struct Driver {
    io: BatchedSocket,
    io6: Option<BatchedSocket<SocketAddrV6>>,
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
                r = readable6(self.io6.as_ref()) => {
                    if r.is_ok()
                        && let Some(io6) = &mut self.io6
                    {
                        // As many batches as IPv4 gets.
                        io6.receive(&mut self.router, 64);
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

    /// Queries the seeds (of either family) when a ring is less than half full.
    async fn seed(&mut self, seeds: &[String]) {
        let half_full = |len: usize, cap: usize| len * 2 >= cap;
        let (r4, r6) = (self.router.ring(), self.router.ring6());
        if seeds.is_empty()
            || (half_full(r4.len(), r4.capacity())
                && (self.io6.is_none() || half_full(r6.len(), r6.capacity())))
        {
            return;
        }
        let (addrs, errors) = crate::dht::bootstrap::resolve(seeds).await;
        for e in errors {
            tracing::warn!("router seed {e}");
        }
        self.router.seed(Instant::now(), &addrs);
    }

    async fn flush(&mut self) {
        self.io.flush(&mut self.router).await;
        if let Some(io6) = &mut self.io6 {
            io6.flush(&mut self.router).await;
        }
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
        let snap = self.router.snapshot();
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

impl udp::Core<SocketAddrV6> for Router {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        Router::handle_datagram(self, now, from, data);
    }

    fn note_oversized(&mut self, _len: usize) {
        self.note_unreadable();
    }

    fn drain_transmits(&mut self, f: impl FnMut(SocketAddrV6, &[u8])) {
        Router::drain_transmits6(self, f);
    }
}
