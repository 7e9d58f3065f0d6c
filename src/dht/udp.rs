//! UDP sockets for the node and the router: one way to bind (large buffers, set through
//! socket2 before traffic flows) and batched I/O.
//!
//! Serving a small reply costs far less than the two system calls around it, so on Linux
//! [`RecvBatch`] reads up to [`BATCH`] datagrams per `recvmmsg` and [`SendQueue`] sends them
//! with `sendmmsg`, which moves most of the per-packet cost out of the kernel entry path.
//! Elsewhere both fall back to one `recv_from`/`send_to` per datagram. The buffers are
//! allocated once and reused: no allocation per packet.

// Fully documented, and kept so (issue 11, part 5).
#![deny(missing_docs)]

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Instant;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams per batched system call.
pub const BATCH: usize = 32;

/// Receive and send buffer size the node asks the kernel for. The default (~208 KiB, some
/// 150-250 queued datagrams) overflowed under benchmark load (BENCHMARKS.md (b): a burst of
/// 256 outstanding queries lost 62-126 datagrams, counted by the kernel as `RcvbufErrors`),
/// and a public node sees bursts too: a lookup's replies arrive together, and a busy node may
/// be descheduled for a few milliseconds. Linux caps the request at `net.core.rmem_max` /
/// `wmem_max` without failing, which is fine: we take what we are given.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// A non-blocking std UDP socket bound to `addr` with `buffer`-byte kernel buffers (best
/// effort). Std, not tokio, so the router can bind before its runtime exists.
pub fn bind_std(addr: SocketAddr, buffer: usize) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    // BEP 32 runs the IPv6 DHT on its own socket: IPv4 arrives on the IPv4 socket, never as
    // IPv4-mapped datagrams on this one (which would reach the wrong family's node).
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Bigger buffers are an optimisation: run with the defaults rather than not at all.
    if let Err(e) = socket.set_recv_buffer_size(buffer) {
        tracing::debug!("cannot enlarge the UDP receive buffer: {e}");
    }
    if let Err(e) = socket.set_send_buffer_size(buffer) {
        tracing::debug!("cannot enlarge the UDP send buffer: {e}");
    }
    socket.bind(&addr.into())?;
    // Linux reports twice the usable size (it counts its bookkeeping overhead).
    let size =
        |r: io::Result<usize>| r.map_or_else(|e| format!("unknown ({e})"), |n| n.to_string());
    tracing::debug!(
        "UDP {addr}: asked for {buffer}-byte buffers; kernel reports receive {}, send {}",
        size(socket.recv_buffer_size()),
        size(socket.send_buffer_size())
    );
    Ok(socket.into())
}

/// The node's socket: [`bind_std`] with [`SOCKET_BUFFER`], registered with tokio (needs a
/// runtime).
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    UdpSocket::from_std(bind_std(addr, SOCKET_BUFFER)?)
}

/// Outgoing datagrams copied out of a sans-IO core, sent in batches.
#[derive(Default)]
pub struct SendQueue {
    bytes: Vec<u8>,
    items: Vec<(SocketAddrV4, usize, usize)>,
    /// Items already sent.
    done: usize,
}

impl SendQueue {
    /// Queues one datagram (copied into a reused buffer).
    pub fn push(&mut self, to: SocketAddrV4, payload: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(payload);
        self.items.push((to, start, payload.len()));
    }

    /// Datagrams waiting.
    pub fn len(&self) -> usize {
        self.items.len() - self.done
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops everything queued.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.items.clear();
        self.done = 0;
    }

    /// Drops the next datagram (one the socket refused for good, e.g. unreachable).
    pub fn skip_one(&mut self) {
        self.done += 1;
        if self.is_empty() {
            self.clear();
        }
    }

    /// Sends as much as the socket takes; `Ok` once everything is out, `WouldBlock` when
    /// the socket is full (what was sent stays sent).
    #[cfg(target_os = "linux")]
    pub fn send(&mut self, socket: &UdpSocket) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        while self.done < self.items.len() {
            let batch = &self.items[self.done..(self.done + BATCH).min(self.items.len())];
            let mut names: [libc::sockaddr_in; BATCH] = [sockaddr_zero(); BATCH];
            // SAFETY: plain C structs, all-zero is a valid initial state.
            let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
            for (i, &(to, start, len)) in batch.iter().enumerate() {
                names[i] = sockaddr_from(to);
                iovs[i] = libc::iovec {
                    iov_base: self.bytes[start..start + len].as_ptr() as *mut libc::c_void,
                    iov_len: len,
                };
                hdrs[i].msg_hdr.msg_name =
                    &mut names[i] as *mut libc::sockaddr_in as *mut libc::c_void;
                hdrs[i].msg_hdr.msg_namelen =
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
                hdrs[i].msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: every header points at live entries of `names`, `iovs` and
            // `self.bytes`, which outlive the call; `batch.len()` headers are initialised.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    batch.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            self.done += n as usize;
        }
        self.clear();
        Ok(())
    }

    /// Portable fallback: one `send_to` per datagram.
    #[cfg(not(target_os = "linux"))]
    pub fn send(&mut self, socket: &UdpSocket) -> io::Result<()> {
        while self.done < self.items.len() {
            let (to, start, len) = self.items[self.done];
            socket.try_send_to(&self.bytes[start..start + len], SocketAddr::V4(to))?;
            self.done += 1;
        }
        self.clear();
        Ok(())
    }
}

#[cfg(target_os = "linux")]
fn sockaddr_zero() -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is a plain C struct; all-zero is valid.
    unsafe { std::mem::zeroed() }
}

#[cfg(target_os = "linux")]
fn sockaddr_from(a: SocketAddrV4) -> libc::sockaddr_in {
    let mut s = sockaddr_zero();
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr = libc::in_addr {
        s_addr: u32::from(*a.ip()).to_be(),
    };
    s
}

/// Receive buffers for one batch, with what the last call filled in.
pub struct RecvBatch {
    /// `BATCH` buffers of `buf_len` bytes, back to back.
    bufs: Vec<u8>,
    buf_len: usize,
    lens: [usize; BATCH],
    froms: [Option<SocketAddrV4>; BATCH],
}

impl RecvBatch {
    /// Buffers for [`BATCH`] datagrams of up to `buf_len` bytes; longer ones are reported
    /// as unreadable rather than handled truncated.
    pub fn new(buf_len: usize) -> Self {
        RecvBatch {
            bufs: vec![0u8; BATCH * buf_len],
            buf_len,
            lens: [0; BATCH],
            froms: [None; BATCH],
        }
    }

    /// The `i`th datagram of the last batch; `None` for one that was truncated (longer than
    /// the buffer) or came from a non-IPv4 source.
    pub fn datagram(&self, i: usize) -> Option<(SocketAddrV4, &[u8])> {
        let start = i * self.buf_len;
        Some((self.froms[i]?, &self.bufs[start..start + self.lens[i]]))
    }

    /// Reads what is queued, up to [`BATCH`] datagrams, without waiting; `WouldBlock` when
    /// nothing is.
    #[cfg(target_os = "linux")]
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let mut names: [libc::sockaddr_in; BATCH] = [sockaddr_zero(); BATCH];
        // SAFETY: plain C structs, all-zero is a valid initial state.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (i, chunk) in self.bufs.chunks_exact_mut(self.buf_len).enumerate() {
            iovs[i] = libc::iovec {
                iov_base: chunk.as_mut_ptr() as *mut libc::c_void,
                iov_len: self.buf_len,
            };
            hdrs[i].msg_hdr.msg_name = &mut names[i] as *mut libc::sockaddr_in as *mut libc::c_void;
            hdrs[i].msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: BATCH headers, each pointing at a live buffer of buf_len bytes and a live
        // sockaddr_in, all outliving the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            let h = &hdrs[i];
            let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let is_v4 = names[i].sin_family == libc::AF_INET as libc::sa_family_t;
            self.lens[i] = (h.msg_len as usize).min(self.buf_len);
            self.froms[i] = (is_v4 && !truncated).then(|| {
                SocketAddrV4::new(
                    u32::from_be(names[i].sin_addr.s_addr).into(),
                    u16::from_be(names[i].sin_port),
                )
            });
        }
        Ok(n)
    }

    /// Portable fallback: one `recv_from`.
    #[cfg(not(target_os = "linux"))]
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let (len, from) = socket.try_recv_from(&mut self.bufs[..self.buf_len])?;
        self.lens[0] = len.min(self.buf_len);
        self.froms[0] = match from {
            SocketAddr::V4(a) if len <= self.buf_len => Some(a),
            _ => None,
        };
        Ok(1)
    }
}

/// A sans-IO core that a [`BatchedSocket`] serves: the DHT node or the bootstrap router.
pub trait Core {
    /// One received datagram.
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]);
    /// A datagram longer than the receive buffer, dropped unread (counted by the core).
    fn note_oversized(&mut self, len: usize);
    /// Hands every queued outgoing datagram to `f`, in order.
    fn drain_transmits(&mut self, f: impl FnMut(SocketAddrV4, &[u8]));
}

/// A UDP socket with its batch buffers: the I/O half of the node's and the router's
/// drivers, written once.
pub struct BatchedSocket {
    socket: UdpSocket,
    recv: RecvBatch,
    send: SendQueue,
    /// Datagrams the socket refused for good (unreachable and the like).
    send_errors: u64,
}

impl BatchedSocket {
    /// Wraps `socket`, receiving datagrams of up to `buf_len` bytes.
    pub fn new(socket: UdpSocket, buf_len: usize) -> Self {
        BatchedSocket {
            socket,
            recv: RecvBatch::new(buf_len),
            send: SendQueue::default(),
            send_errors: 0,
        }
    }

    /// The socket, for its address and readiness.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Datagrams dropped on sending so far.
    pub fn send_errors(&self) -> u64 {
        self.send_errors
    }

    /// Reads and hands to `core` up to `rounds` batches (fewer once the socket is drained:
    /// bounded, so the caller's timers and commands get their turn under a flood), sending
    /// what the core queued after each batch.
    pub fn receive(&mut self, core: &mut impl Core, rounds: usize) {
        for _ in 0..rounds {
            let recv = &mut self.recv;
            let got = self
                .socket
                .try_io(Interest::READABLE, || recv.recv(&self.socket));
            let n = match got {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!("recv error: {e}");
                    break;
                }
            };
            let now = Instant::now();
            for i in 0..n {
                match self.recv.datagram(i) {
                    Some((from, data)) => core.handle_datagram(now, SocketAddr::V4(from), data),
                    None => core.note_oversized(self.recv.buf_len),
                }
            }
            self.try_flush(core);
            if n < BATCH {
                break;
            }
        }
    }

    /// Sends what `core` queued without waiting; false if the socket is full (the rest
    /// stays queued for [`BatchedSocket::flush`]).
    pub fn try_flush(&mut self, core: &mut impl Core) -> bool {
        let send = &mut self.send;
        core.drain_transmits(|to, payload| send.push(to, payload));
        while !self.send.is_empty() {
            let sock = &self.socket;
            let send = &mut self.send;
            match sock.try_io(Interest::WRITABLE, || send.send(sock)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    // An unreachable destination and the like: drop that datagram, go on.
                    self.send_errors += 1;
                    tracing::debug!("send error: {e}");
                    self.send.skip_one();
                }
            }
        }
        true
    }

    /// Sends everything `core` queued, waiting for the socket when it is full.
    pub async fn flush(&mut self, core: &mut impl Core) {
        while !self.try_flush(core) {
            if self.socket.writable().await.is_err() {
                self.send_errors += self.send.len() as u64;
                self.send.clear();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_round_trip_and_long_datagrams_are_flagged() {
        let a = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let SocketAddr::V4(to) = b.local_addr().unwrap() else {
            unreachable!("bound to IPv4")
        };
        let mut q = SendQueue::default();
        for i in 0..40u8 {
            q.push(to, &[i; 10]);
        }
        q.push(to, &[7; 100]);
        while !q.is_empty() {
            a.writable().await.unwrap();
            let _ = a.try_io(Interest::WRITABLE, || q.send(&a));
        }
        let mut batch = RecvBatch::new(64);
        let mut got = Vec::new();
        let mut unreadable = 0;
        while got.len() + unreadable < 41 {
            b.readable().await.unwrap();
            let Ok(n) = b.try_io(Interest::READABLE, || batch.recv(&b)) else {
                continue;
            };
            assert!(n <= BATCH);
            for i in 0..n {
                match batch.datagram(i) {
                    Some((from, data)) => {
                        assert_eq!(SocketAddr::V4(from), a.local_addr().unwrap());
                        got.push(data.to_vec());
                    }
                    None => unreadable += 1,
                }
            }
        }
        assert_eq!(got, (0..40u8).map(|i| vec![i; 10]).collect::<Vec<_>>());
        assert_eq!(unreadable, 1, "the 100-byte datagram does not fit 64 bytes");
    }
}
