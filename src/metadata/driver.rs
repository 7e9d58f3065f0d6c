//! The thin tokio half of a metadata fetch: pulls candidates from the [`PeerSource`], runs one
//! task per peer connection (connect, handshakes, PORT, forwarding ut_metadata messages), and
//! feeds everything to the sans-IO [`Coordinator`], carrying out the actions it returns.
//! No decision about peers, pieces or time limits is made here.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::coordinator::{Action, Coordinator, CoordinatorConfig, PeerEvent, PeerKey};
use super::fetch::{FetchConfig, FetchError, Fetched};
use super::peer_source::PeerSource;
use crate::dht::allow::AllowList;
use crate::dht::driver::DhtHandle;
use crate::torrent::{InfoHash, PeerId};
use crate::wire::{
    EXT_HANDSHAKE_ID, ExtHandshake, Handshake, MetadataMsg, OUR_UT_METADATA_ID, PeerConn,
    UT_METADATA, WireConfig, WireError,
};

/// What the driver tells a peer task: the coordinator's `Request` actions.
enum PeerCmd {
    Request(Vec<u32>),
}

/// What every peer task of one fetch shares (the I/O half of [`FetchConfig`]).
struct TaskCtx {
    info_hash: InfoHash,
    peer_id: PeerId,
    allow: AllowList,
    transports: crate::wire::Transports,
    wire: WireConfig,
    dht: Option<DhtHandle>,
    dht_port: Option<u16>,
    listen_port: Option<u16>,
}

type EventTx = mpsc::UnboundedSender<(PeerKey, PeerEvent)>;

/// One peer connection, run for a `Connect` action: reports what happens as [`PeerEvent`]s
/// and always ends with `Closed`, whose `retry` says whether the reason may pass.
async fn peer_task(
    idx: PeerKey,
    addr: SocketAddr,
    ctx: Arc<TaskCtx>,
    events: EventTx,
    cmds: mpsc::UnboundedReceiver<PeerCmd>,
) {
    let (why, retry) = match run_peer(idx, addr, &ctx, &events, cmds).await {
        Ok(()) => ("closed".to_owned(), false),
        Err(e) => {
            // Refusals that will not change: the allow-list, a peer for another torrent or
            // without the extension protocol.
            let retry = !matches!(
                e,
                PeerEnd::NoExtensions
                    | PeerEnd::Wire(WireError::Refused(_) | WireError::InfoHashMismatch { .. })
            );
            (e.to_string(), retry)
        }
    };
    let _ = events.send((idx, PeerEvent::Closed { why, retry }));
}

/// Why a peer task ended without a wire error.
#[derive(Debug)]
enum PeerEnd {
    Wire(WireError),
    NoExtensions,
}

impl fmt::Display for PeerEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerEnd::Wire(e) => write!(f, "{e}"),
            PeerEnd::NoExtensions => write!(f, "peer does not support the extension protocol"),
        }
    }
}

impl From<WireError> for PeerEnd {
    fn from(e: WireError) -> Self {
        PeerEnd::Wire(e)
    }
}

async fn run_peer(
    idx: PeerKey,
    addr: SocketAddr,
    ctx: &TaskCtx,
    events: &EventTx,
    mut cmds: mpsc::UnboundedReceiver<PeerCmd>,
) -> Result<(), PeerEnd> {
    // Metadata only: no pieces are traded, so no BEP 6 promises.
    let ours = Handshake::new(ctx.info_hash, ctx.peer_id).without_fast();
    let (stream, theirs) =
        crate::wire::open_outgoing(addr, None, &ctx.allow, &ctx.wire, &ctx.transports, &ours)
            .await?;
    if !theirs.supports_extensions() {
        return Err(PeerEnd::NoExtensions);
    }
    let _ = events.send((idx, PeerEvent::Connected));
    let PeerConn {
        mut reader,
        mut writer,
    } = PeerConn::from_peer_stream(stream, &ctx.wire);
    writer.queue(&ExtHandshake::ours(ctx.listen_port, None).to_message());
    if theirs.supports_dht()
        && let Some(port) = ctx.dht_port
    {
        writer.queue(&crate::wire::Message::Port(port));
    }
    writer.flush().await?;
    let mut peer_ext = ExtHandshake::default();
    loop {
        tokio::select! {
            msg = reader.recv() => {
                let msg = msg?;
                handle_peer_message(idx, addr, ctx, events, &mut peer_ext, &mut writer, msg)
                    .await?;
            }
            cmd = cmds.recv() => match cmd {
                None => return Ok(()),
                Some(PeerCmd::Request(pieces)) => {
                    let Some(id) = peer_ext.ext_id(UT_METADATA) else { continue };
                    for piece in pieces {
                        writer.queue_metadata(id, &MetadataMsg::Request { piece });
                    }
                    writer.flush().await?;
                }
            },
        }
    }
}

async fn handle_peer_message<W: tokio::io::AsyncWrite + Unpin>(
    idx: PeerKey,
    addr: SocketAddr,
    ctx: &TaskCtx,
    events: &EventTx,
    peer_ext: &mut ExtHandshake,
    writer: &mut crate::wire::PeerWriter<W>,
    msg: crate::wire::Message,
) -> Result<(), PeerEnd> {
    use crate::wire::Message;
    match msg {
        Message::Extended {
            id: EXT_HANDSHAKE_ID,
            payload,
        } => {
            // An undecodable handshake is ignored: the coordinator's ext-handshake timeout
            // ends the peer if no usable one follows.
            if let Ok(hs) = ExtHandshake::decode(&payload) {
                peer_ext.update(hs);
                let _ = events.send((
                    idx,
                    PeerEvent::Ext {
                        ut_metadata: peer_ext.ext_id(UT_METADATA).is_some(),
                        metadata_size: peer_ext.metadata_size,
                        reqq: peer_ext.reqq,
                    },
                ));
            }
        }
        Message::Extended {
            id: OUR_UT_METADATA_ID,
            payload,
        } => match MetadataMsg::decode(&payload) {
            Ok(MetadataMsg::Data {
                piece,
                total_size,
                data,
            }) => {
                let data = payload.slice_ref(data);
                let _ = events.send((
                    idx,
                    PeerEvent::Data {
                        piece,
                        total_size,
                        data,
                    },
                ));
            }
            Ok(MetadataMsg::Reject { piece }) => {
                let _ = events.send((idx, PeerEvent::Reject { piece }));
            }
            Ok(MetadataMsg::Request { piece }) => {
                // We are fetching: we have nothing to give yet.
                if let Some(id) = peer_ext.ext_id(UT_METADATA) {
                    writer.queue_metadata(id, &MetadataMsg::Reject { piece });
                    writer.flush().await?;
                }
            }
            Err(_) => {
                let _ = events.send((idx, PeerEvent::Malformed));
            }
        },
        Message::Port(port) => {
            if let (Some(dht), true) = (&ctx.dht, port != 0) {
                // At the peer's IP: an IPv6 peer's PORT names its IPv6 DHT node (BEP 32).
                let _ = dht.add_contacts([SocketAddr::new(addr.ip().to_canonical(), port)]);
                let _ = events.send((idx, PeerEvent::Port));
            }
        }
        // Choke state, bitfields, haves and the like concern piece transfer, not metadata.
        _ => {}
    }
    Ok(())
}

/// Fetches and verifies the info dict of `info_hash` from the peers `source` yields.
///
/// Returns as soon as one dict verifies; connections still open are closed. Peers that lied
/// are listed in the stats with the reason ([`FetchStats::dropped`](super::FetchStats::dropped)).
pub async fn fetch_metadata(
    info_hash: InfoHash,
    mut source: PeerSource,
    cfg: &FetchConfig,
) -> Result<Fetched, FetchError> {
    let ctx = Arc::new(TaskCtx {
        info_hash,
        peer_id: cfg.peer_id,
        allow: cfg.allow.clone(),
        transports: cfg.transports.clone(),
        wire: cfg.wire,
        dht: cfg.dht.clone(),
        dht_port: cfg.dht_port,
        listen_port: cfg.listen_port,
    });
    let mut co = Coordinator::new(info_hash, CoordinatorConfig::from(cfg), Instant::now());
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    // Command channel of each peer task, by peer key; dropping one ends that task.
    let mut cmds: Vec<Option<mpsc::UnboundedSender<PeerCmd>>> = Vec::new();
    let mut source_done = false;
    loop {
        while let Some(action) = co.poll_action() {
            match action {
                Action::Connect { peer, addr } => {
                    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
                    if cmds.len() <= peer {
                        cmds.resize_with(peer + 1, || None);
                    }
                    cmds[peer] = Some(cmd_tx);
                    tasks.spawn(peer_task(
                        peer,
                        addr,
                        ctx.clone(),
                        events_tx.clone(),
                        cmd_rx,
                    ));
                }
                Action::Request { peer, pieces } => {
                    if let Some(Some(tx)) = cmds.get(peer) {
                        let _ = tx.send(PeerCmd::Request(pieces));
                    }
                }
                Action::Close { peer } => {
                    if let Some(tx) = cmds.get_mut(peer) {
                        *tx = None;
                    }
                }
                Action::Done(fetched) => {
                    tasks.abort_all();
                    return Ok(fetched);
                }
                Action::Failed(err) => {
                    tasks.abort_all();
                    return Err(err);
                }
            }
        }
        while tasks.try_join_next().is_some() {}
        let wake = co.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            Some((peer, ev)) = events_rx.recv() => co.handle(Instant::now(), peer, ev),
            addr = source.next(), if !source_done => match addr {
                Some(a) => co.offer(Instant::now(), a),
                None => {
                    source_done = true;
                    co.source_ended(Instant::now());
                }
            },
            () = sleep_until(wake) => co.handle_timeout(Instant::now()),
        }
    }
}

/// Sleeps until `wake`, or forever when the coordinator has no timer.
async fn sleep_until(wake: Option<tokio::time::Instant>) {
    match wake {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
