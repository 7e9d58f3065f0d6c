//! UDP sockets for the node and the router: one way to bind (large buffers, set through
//! socket2 before traffic flows) and batched I/O.
//!
//! Serving a small reply costs far less than the two system calls around it, so on Linux
//! [`RecvBatch`] reads up to [`BATCH`] datagrams per `recvmmsg` and [`SendQueue`] sends them
//! with `sendmmsg`, which moves most of the per-packet cost out of the kernel entry path.
//! Elsewhere both fall back to one `recv_from`/`send_to` per datagram. The buffers are
//! allocated once and reused: no allocation per packet. Each socket is of one family (the
//! IPv6 one is `IPV6_V6ONLY`), so the batches are typed by it ([`BatchAddr`]): an IPv4
//! socket's buffers hold `sockaddr_in`s, an IPv6 one's `sockaddr_in6`s, and neither path
//! pays for the other.

// Fully documented, and kept so (issue 11, part 5).
#![deny(missing_docs)]

use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
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
        no_auto_flow_label(&socket);
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

/// Turns off Linux's automatic IPv6 flow labels on a DHT socket (best effort). A flow label
/// lets routers keep the packets of one flow on one path; every KRPC exchange is a single
/// datagram each way, so there is no flow to keep together, yet the kernel hashes each
/// datagram's addresses and ports (SipHash) to make one: about 1.3 % of an IPv6 node's CPU
/// under load (perf, BENCHMARKS.md "Queries served per second, IPv6 vs IPv4"). Routers
/// that balance on the flow label fall back to the addresses and ports for a zero label
/// (RFC 6438), so nothing is lost. A kernel without the option (before 4.8, or not Linux)
/// keeps its default.
fn no_auto_flow_label(socket: &socket2::Socket) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let off: libc::c_int = 0;
        // SAFETY: a valid socket descriptor and a pointer to a c_int of the stated length.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_AUTOFLOWLABEL,
                (&off as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            tracing::debug!(
                "cannot turn off IPv6 flow labels: {}",
                io::Error::last_os_error()
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

/// Whether a bind error says the host has no IPv6 (rather than, say, a port in use): the
/// one rule by which the node's and the router's optional IPv6 sockets are skipped.
pub fn no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::AddrNotAvailable | io::ErrorKind::Unsupported
    ) || e.raw_os_error() == Some(libc::EAFNOSUPPORT)
}

/// The node's socket: [`bind_std`] with [`SOCKET_BUFFER`], registered with tokio (needs a
/// runtime).
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    UdpSocket::from_std(bind_std(addr, SOCKET_BUFFER)?)
}

/// A socket address family the batches carry: its C `sockaddr` form for
/// `recvmmsg`/`sendmmsg`.
pub trait BatchAddr: Copy + Into<SocketAddr> + 'static {
    /// The C socket address (`sockaddr_in` or `sockaddr_in6`).
    #[cfg(target_os = "linux")]
    type Raw: Copy;
    /// An all-zero C address (a valid initial value).
    #[cfg(target_os = "linux")]
    fn raw_zero() -> Self::Raw {
        // SAFETY: both C address structs are plain data; all-zero is valid.
        unsafe { std::mem::zeroed() }
    }
    /// The C form of `self`.
    #[cfg(target_os = "linux")]
    fn to_raw(self) -> Self::Raw;
    /// The address in `raw`, or `None` if it is of another family.
    #[cfg(target_os = "linux")]
    fn from_raw(raw: &Self::Raw) -> Option<Self>;
    /// The address if it is of this family (the portable fallback's receive path).
    fn from_std(a: SocketAddr) -> Option<Self>;
}

impl BatchAddr for SocketAddrV4 {
    #[cfg(target_os = "linux")]
    type Raw = libc::sockaddr_in;

    #[cfg(target_os = "linux")]
    fn to_raw(self) -> libc::sockaddr_in {
        let mut s: libc::sockaddr_in = Self::raw_zero();
        s.sin_family = libc::AF_INET as libc::sa_family_t;
        s.sin_port = self.port().to_be();
        s.sin_addr = libc::in_addr {
            s_addr: u32::from(*self.ip()).to_be(),
        };
        s
    }

    #[cfg(target_os = "linux")]
    fn from_raw(raw: &libc::sockaddr_in) -> Option<Self> {
        (raw.sin_family == libc::AF_INET as libc::sa_family_t).then(|| {
            SocketAddrV4::new(
                u32::from_be(raw.sin_addr.s_addr).into(),
                u16::from_be(raw.sin_port),
            )
        })
    }

    fn from_std(a: SocketAddr) -> Option<Self> {
        match a {
            SocketAddr::V4(a) => Some(a),
            SocketAddr::V6(_) => None,
        }
    }
}

impl BatchAddr for SocketAddrV6 {
    #[cfg(target_os = "linux")]
    type Raw = libc::sockaddr_in6;

    #[cfg(target_os = "linux")]
    fn to_raw(self) -> libc::sockaddr_in6 {
        let mut s: libc::sockaddr_in6 = Self::raw_zero();
        s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        s.sin6_port = self.port().to_be();
        s.sin6_flowinfo = self.flowinfo().to_be();
        s.sin6_addr = libc::in6_addr {
            s6_addr: self.ip().octets(),
        };
        s.sin6_scope_id = self.scope_id();
        s
    }

    #[cfg(target_os = "linux")]
    fn from_raw(raw: &libc::sockaddr_in6) -> Option<Self> {
        (raw.sin6_family == libc::AF_INET6 as libc::sa_family_t).then(|| {
            SocketAddrV6::new(
                raw.sin6_addr.s6_addr.into(),
                u16::from_be(raw.sin6_port),
                u32::from_be(raw.sin6_flowinfo),
                raw.sin6_scope_id,
            )
        })
    }

    fn from_std(a: SocketAddr) -> Option<Self> {
        match a {
            SocketAddr::V6(a) => Some(a),
            SocketAddr::V4(_) => None,
        }
    }
}

/// Outgoing datagrams copied out of a sans-IO core, sent in batches.
pub struct SendQueue<A = SocketAddrV4> {
    bytes: Vec<u8>,
    items: Vec<(A, usize, usize)>,
    /// Items already sent.
    done: usize,
}

impl<A> Default for SendQueue<A> {
    fn default() -> Self {
        SendQueue {
            bytes: Vec::new(),
            items: Vec::new(),
            done: 0,
        }
    }
}

impl<A: BatchAddr> SendQueue<A> {
    /// Queues one datagram (copied into a reused buffer).
    pub fn push(&mut self, to: A, payload: &[u8]) {
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
            let mut names: [A::Raw; BATCH] = [A::raw_zero(); BATCH];
            // SAFETY: plain C structs, all-zero is a valid initial state.
            let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
            for (i, &(to, start, len)) in batch.iter().enumerate() {
                names[i] = to.to_raw();
                iovs[i] = libc::iovec {
                    iov_base: self.bytes[start..start + len].as_ptr() as *mut libc::c_void,
                    iov_len: len,
                };
                hdrs[i].msg_hdr.msg_name = &mut names[i] as *mut A::Raw as *mut libc::c_void;
                hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<A::Raw>() as libc::socklen_t;
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
            socket.try_send_to(&self.bytes[start..start + len], to.into())?;
            self.done += 1;
        }
        self.clear();
        Ok(())
    }
}

/// Receive buffers for one batch, with what the last call filled in.
pub struct RecvBatch<A = SocketAddrV4> {
    /// `BATCH` buffers of `buf_len` bytes, back to back.
    bufs: Vec<u8>,
    buf_len: usize,
    lens: [usize; BATCH],
    froms: [Option<A>; BATCH],
}

impl<A: BatchAddr> RecvBatch<A> {
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
    /// the buffer) or came from a source of another family.
    pub fn datagram(&self, i: usize) -> Option<(A, &[u8])> {
        let start = i * self.buf_len;
        Some((self.froms[i]?, &self.bufs[start..start + self.lens[i]]))
    }

    /// Reads what is queued, up to [`BATCH`] datagrams, without waiting; `WouldBlock` when
    /// nothing is.
    #[cfg(target_os = "linux")]
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let mut names: [A::Raw; BATCH] = [A::raw_zero(); BATCH];
        // SAFETY: plain C structs, all-zero is a valid initial state.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (i, chunk) in self.bufs.chunks_exact_mut(self.buf_len).enumerate() {
            iovs[i] = libc::iovec {
                iov_base: chunk.as_mut_ptr() as *mut libc::c_void,
                iov_len: self.buf_len,
            };
            hdrs[i].msg_hdr.msg_name = &mut names[i] as *mut A::Raw as *mut libc::c_void;
            hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<A::Raw>() as libc::socklen_t;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: BATCH headers, each pointing at a live buffer of buf_len bytes and a live
        // C address of the size given, all outliving the call.
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
            self.lens[i] = (h.msg_len as usize).min(self.buf_len);
            self.froms[i] = if truncated {
                None
            } else {
                A::from_raw(&names[i])
            };
        }
        Ok(n)
    }

    /// Portable fallback: one `recv_from`.
    #[cfg(not(target_os = "linux"))]
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let (len, from) = socket.try_recv_from(&mut self.bufs[..self.buf_len])?;
        self.lens[0] = len.min(self.buf_len);
        self.froms[0] = A::from_std(from).filter(|_| len <= self.buf_len);
        Ok(1)
    }
}

/// A sans-IO core that a [`BatchedSocket`] of family `A` serves: the DHT node or the
/// bootstrap router.
pub trait Core<A = SocketAddrV4> {
    /// One received datagram.
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]);
    /// A datagram longer than the receive buffer, dropped unread (counted by the core).
    fn note_oversized(&mut self, len: usize);
    /// Hands every queued outgoing datagram to `f`, in order.
    fn drain_transmits(&mut self, f: impl FnMut(A, &[u8]));
}

/// A UDP socket with its batch buffers: the I/O half of the node's and the router's
/// drivers, written once.
pub struct BatchedSocket<A = SocketAddrV4> {
    socket: UdpSocket,
    recv: RecvBatch<A>,
    send: SendQueue<A>,
    /// Datagrams the socket refused for good (unreachable and the like).
    send_errors: u64,
}

impl<A: BatchAddr> BatchedSocket<A> {
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
    pub fn receive(&mut self, core: &mut impl Core<A>, rounds: usize) {
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
                    Some((from, data)) => core.handle_datagram(now, from.into(), data),
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
    pub fn try_flush(&mut self, core: &mut impl Core<A>) -> bool {
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
    pub async fn flush(&mut self, core: &mut impl Core<A>) {
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

    /// 41 datagrams from `a` to `b` through one family's batches: the 40 short ones arrive
    /// in order from `a`'s address, the long one is flagged unreadable.
    async fn round_trip<A: BatchAddr + PartialEq + std::fmt::Debug>(local: &str) {
        let a = bind(local.parse().unwrap()).unwrap();
        let b = bind(local.parse().unwrap()).unwrap();
        let to = A::from_std(b.local_addr().unwrap()).expect("the family asked for");
        let mut q = SendQueue::<A>::default();
        for i in 0..40u8 {
            q.push(to, &[i; 10]);
        }
        q.push(to, &[7; 100]);
        while !q.is_empty() {
            a.writable().await.unwrap();
            let _ = a.try_io(Interest::WRITABLE, || q.send(&a));
        }
        let mut batch = RecvBatch::<A>::new(64);
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
                        assert_eq!(from.into(), a.local_addr().unwrap());
                        got.push(data.to_vec());
                    }
                    None => unreadable += 1,
                }
            }
        }
        assert_eq!(got, (0..40u8).map(|i| vec![i; 10]).collect::<Vec<_>>());
        assert_eq!(unreadable, 1, "the 100-byte datagram does not fit 64 bytes");
    }

    #[tokio::test]
    async fn batches_round_trip_and_long_datagrams_are_flagged() {
        round_trip::<SocketAddrV4>("127.0.0.1:0").await;
    }

    /// The IPv6 socket batches too, with `sockaddr_in6` names.
    #[tokio::test]
    async fn ipv6_batches_round_trip_and_long_datagrams_are_flagged() {
        round_trip::<SocketAddrV6>("[::1]:0").await;
    }

    /// An IPv6 DHT socket sends without automatic flow labels; the IPv4 socket has no such
    /// option and binds as before.
    #[cfg(target_os = "linux")]
    #[test]
    fn ipv6_sockets_turn_off_automatic_flow_labels() {
        use std::os::fd::AsRawFd;
        let label_option = |s: &std::net::UdpSocket| {
            let mut v: libc::c_int = -1;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: a valid descriptor, and a c_int with its length.
            let r = unsafe {
                libc::getsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_IPV6,
                    libc::IPV6_AUTOFLOWLABEL,
                    (&mut v as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            assert_eq!(r, 0, "{}", io::Error::last_os_error());
            v
        };
        let ours = bind_std("[::1]:0".parse().unwrap(), 1 << 16).unwrap();
        assert_eq!(label_option(&ours), 0);
        // Where the kernel labels by default (net.ipv6.auto_flowlabels = 1, "opt-out", the
        // default), a plain socket shows the setting we turn off.
        if std::fs::read_to_string("/proc/sys/net/ipv6/auto_flowlabels")
            .is_ok_and(|v| v.trim() == "1")
        {
            let plain = std::net::UdpSocket::bind("[::1]:0").unwrap();
            assert_eq!(label_option(&plain), 1);
        }
        bind_std("127.0.0.1:0".parse().unwrap(), 1 << 16).unwrap();
    }

    /// Each family's C address converts both ways, and a name of the other family is not
    /// taken for one of this family.
    #[cfg(target_os = "linux")]
    #[test]
    fn c_addresses_round_trip_and_check_the_family() {
        let v4: SocketAddrV4 = "203.0.113.7:6881".parse().unwrap();
        assert_eq!(SocketAddrV4::from_raw(&v4.to_raw()), Some(v4));
        let v6 = SocketAddrV6::new("2001:db8::1".parse().unwrap(), 6881, 0, 3);
        assert_eq!(SocketAddrV6::from_raw(&v6.to_raw()), Some(v6));
        let mut wrong = v6.to_raw();
        wrong.sin6_family = libc::AF_INET as libc::sa_family_t;
        assert_eq!(SocketAddrV6::from_raw(&wrong), None);
        let mut wrong = v4.to_raw();
        wrong.sin_family = libc::AF_INET6 as libc::sa_family_t;
        assert_eq!(SocketAddrV4::from_raw(&wrong), None);
    }
}
