//! The tokio driver of one peer connection: it owns the socket and nothing else. Messages
//! read from the peer go to the session (whose task runs the connection's sans-IO
//! [`PeerConnection`](super::connection::PeerConnection)); bytes the session hands back are
//! written. It never decides anything about the protocol.
//!
//! Reading and writing are one `select!`, so flushing never stops us from reading (two
//! peers writing to each other cannot deadlock). The channel to the session is bounded: a
//! peer that sends faster than the session handles its messages waits in its socket, not
//! in our memory. Written bytes are reported back, so the connection knows how much waits
//! for the socket (it limits disk reads by that, and detects a peer that stopped reading).
//! The driver ends when the socket fails or closes (it says why), or when the session drops
//! its sender (the session closed the connection).

use tokio::sync::mpsc;

use super::picker::PeerKey;
use crate::wire::{Message, PeerConn, PeerStream, WireConfig, WireError};

/// What a driver tells the session about its connection.
#[derive(Debug)]
pub(super) enum IoEvent {
    /// A message from the peer.
    Message(Message),
    /// The driver has written this many bytes in all of what it was handed.
    Written(u64),
    /// The socket failed, timed out or was closed by the peer; the driver has ended.
    Ended(WireError),
}

/// An [`IoEvent`] of the connection the session knows as `key`.
#[derive(Debug)]
pub(super) struct PeerIo {
    pub key: PeerKey,
    pub ev: IoEvent,
}

/// Runs the socket side of connection `key` until the socket fails or the session drops
/// `frames` (the sender of the bytes to write).
pub(super) async fn drive(
    key: PeerKey,
    stream: PeerStream,
    wire: WireConfig,
    to_session: mpsc::Sender<PeerIo>,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let PeerConn {
        mut reader,
        mut writer,
    } = PeerConn::from_peer_stream(stream, &wire);
    let mut handed: u64 = 0;
    let mut reported: u64 = 0;
    let err = loop {
        tokio::select! {
            msg = reader.recv() => match msg {
                Ok(m) => {
                    if to_session.send(PeerIo { key, ev: IoEvent::Message(m) }).await.is_err() {
                        return;
                    }
                }
                Err(e) => break e,
            },
            r = writer.flush(), if writer.pending() > 0 => {
                if let Err(e) = r {
                    break e;
                }
            }
            out = frames.recv() => match out {
                Some(buf) => {
                    handed += buf.len() as u64;
                    writer.queue_owned(buf);
                }
                // The session closed the connection.
                None => return,
            },
        }
        let written = handed - writer.pending() as u64;
        if written != reported {
            reported = written;
            if to_session
                .send(PeerIo {
                    key,
                    ev: IoEvent::Written(written),
                })
                .await
                .is_err()
            {
                return;
            }
        }
    };
    let _ = to_session
        .send(PeerIo {
            key,
            ev: IoEvent::Ended(err),
        })
        .await;
}
