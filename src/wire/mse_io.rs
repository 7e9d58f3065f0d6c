//! Tokio glue for [`mse`](super::mse): a driver running the sans-IO handshake over any
//! byte stream, and RC4 read/write adapters so the rest of the wire layer reads and writes
//! plaintext whatever the method. The adapters work on whole streams or split halves.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::mse::{MseError, MseHandshake, MseOutcome, Rc4};

/// Why a driven handshake failed: the protocol's verdict or the socket's.
#[derive(Debug)]
pub enum MseIoError {
    /// The peer's bytes, silence or policy.
    Mse(MseError),
    /// The stream failed.
    Io(io::Error),
}

impl std::fmt::Display for MseIoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MseIoError::Mse(e) => e.fmt(f),
            MseIoError::Io(e) => write!(f, "encryption handshake: {e}"),
        }
    }
}

impl std::error::Error for MseIoError {}

/// Runs `hs` over `stream` until it completes, fails or passes its deadline.
pub async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    mut hs: MseHandshake,
) -> Result<MseOutcome, MseIoError> {
    let deadline = tokio::time::Instant::from_std(hs.deadline());
    let mut buf = [0u8; 4096];
    let run = async {
        loop {
            let out = hs.take_output();
            if !out.is_empty() {
                stream.write_all(&out).await.map_err(MseIoError::Io)?;
                stream.flush().await.map_err(MseIoError::Io)?;
            }
            let n = stream.read(&mut buf).await.map_err(MseIoError::Io)?;
            if n == 0 {
                return Err(MseIoError::Mse(hs.eof()));
            }
            if let Some(o) = hs
                .feed(Instant::now(), &buf[..n])
                .map_err(MseIoError::Mse)?
            {
                let out = hs.take_output();
                stream.write_all(&out).await.map_err(MseIoError::Io)?;
                stream.flush().await.map_err(MseIoError::Io)?;
                return Ok(o);
            }
        }
    };
    match tokio::time::timeout_at(deadline, run).await {
        Ok(r) => r,
        Err(_) => Err(MseIoError::Mse(MseError::Timeout)),
    }
}

/// Decrypts everything read from `inner`, after first serving `prefix` (the handshake's
/// already-decrypted initial payload). With no cipher it only serves the prefix.
pub struct Rc4Reader<R> {
    inner: R,
    /// Boxed: a plaintext stream (most of them) then carries a pointer, not 258 bytes.
    cipher: Option<Box<Rc4>>,
    prefix: Vec<u8>,
    pos: usize,
}

impl<R> Rc4Reader<R> {
    /// Wraps `inner`; `cipher` is `None` for a plaintext stream.
    pub fn new(inner: R, cipher: Option<Rc4>, prefix: Vec<u8>) -> Self {
        Rc4Reader {
            inner,
            cipher: cipher.map(Box::new),
            prefix,
            pos: 0,
        }
    }
}

impl<R> Rc4Reader<R> {
    /// Installs (or removes) the cipher for everything read from the socket from now on.
    pub fn set_cipher(&mut self, cipher: Option<Rc4>) {
        self.cipher = cipher.map(Box::new);
    }

    /// Puts already-decrypted bytes back in front of what is still unread.
    pub fn unread(&mut self, mut bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        bytes.extend_from_slice(&self.prefix[self.pos..]);
        self.prefix = bytes;
        self.pos = 0;
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Rc4Reader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(c)) = (&r, this.cipher.as_mut()) {
            c.apply(&mut buf.filled_mut()[before..]);
        }
        r
    }
}

/// Largest chunk encrypted per `poll_write`: bounds the staging buffer, which is reused.
const WRITE_CHUNK: usize = 64 * 1024;

/// Encrypts everything written to `inner`. Bytes are accepted once encrypted into a reused
/// staging buffer (the keystream cannot be rewound, so accepted bytes must be sent), which
/// flush and shutdown drain.
pub struct Rc4Writer<W> {
    inner: W,
    cipher: Option<Box<Rc4>>,
    staged: Vec<u8>,
    sent: usize,
}

impl<W> Rc4Writer<W> {
    /// Wraps `inner`; `cipher` is `None` for a plaintext stream.
    pub fn new(inner: W, cipher: Option<Rc4>) -> Self {
        Rc4Writer {
            inner,
            cipher: cipher.map(Box::new),
            staged: Vec::new(),
            sent: 0,
        }
    }
}

impl<W> Rc4Writer<W> {
    /// Installs (or removes) the cipher for everything written from now on. Only between
    /// writes: nothing may be staged under the old one.
    pub fn set_cipher(&mut self, cipher: Option<Rc4>) {
        debug_assert!(self.staged.is_empty(), "cipher changed with bytes staged");
        self.cipher = cipher.map(Box::new);
    }
}

impl<W: AsyncWrite + Unpin> Rc4Writer<W> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.staged.len() {
            let n = match Pin::new(&mut self.inner).poll_write(cx, &self.staged[self.sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            self.sent += n;
        }
        self.staged.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Rc4Writer<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.cipher.is_none() {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other.map_ok(|()| 0),
        }
        let n = buf.len().min(WRITE_CHUNK);
        this.staged.extend_from_slice(&buf[..n]);
        if let Some(c) = this.cipher.as_mut() {
            c.apply(&mut this.staged);
        }
        // Start sending now; whatever the socket does not take waits for the next call.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torrent::InfoHash;
    use crate::wire::mse::{CryptoSet, DEFAULT_TIMEOUT, MseSecrets, Role};

    /// Both roles over an in-memory duplex (no sockets), then 1 MiB each way through the
    /// adapters in small and odd-sized writes.
    #[tokio::test]
    async fn rc4_handshake_and_adapters_over_duplex() {
        for accept in [CryptoSet::BOTH, CryptoSet::PLAIN] {
            let (mut a_io, mut b_io) = tokio::io::duplex(1000);
            let hash = InfoHash([7u8; 20]);
            let now = Instant::now();
            let a = MseHandshake::new(
                Role::Initiator {
                    info_hash: hash,
                    ia: b"hello".to_vec(),
                },
                CryptoSet::BOTH,
                MseSecrets::random(),
                now,
                DEFAULT_TIMEOUT,
            )
            .unwrap();
            let b = MseHandshake::new(
                Role::responder([&hash]),
                accept,
                MseSecrets::random(),
                now,
                DEFAULT_TIMEOUT,
            )
            .unwrap();
            let (ra, rb) = tokio::join!(drive(&mut a_io, a), drive(&mut b_io, b));
            let (ra, rb) = (ra.unwrap(), rb.unwrap());
            assert_eq!(ra.method, rb.method);
            assert_eq!(rb.initial_payload, b"hello");
            let (ca, cb) = (ra.ciphers, rb.ciphers);
            let (a_r, a_w) = tokio::io::split(a_io);
            let (b_r, b_w) = tokio::io::split(b_io);
            let mut a_w = Rc4Writer::new(a_w, ca.as_ref().map(|c| c.enc.clone()));
            let mut a_r = Rc4Reader::new(a_r, ca.map(|c| c.dec), ra.initial_payload);
            let mut b_w = Rc4Writer::new(b_w, cb.as_ref().map(|c| c.enc.clone()));
            let mut b_r = Rc4Reader::new(b_r, cb.map(|c| c.dec), Vec::new());
            let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 31 % 251) as u8).collect();
            let d1 = data.clone();
            let t1 = tokio::spawn(async move {
                for c in d1.chunks(1333) {
                    a_w.write_all(c).await.unwrap();
                }
                a_w.shutdown().await.unwrap();
            });
            let d2 = data.clone();
            let t2 = tokio::spawn(async move {
                for c in d2.chunks(4097) {
                    b_w.write_all(c).await.unwrap();
                }
                b_w.shutdown().await.unwrap();
            });
            let mut got_b = Vec::new();
            let mut got_a = Vec::new();
            let (x, y) = tokio::join!(b_r.read_to_end(&mut got_b), a_r.read_to_end(&mut got_a));
            x.unwrap();
            y.unwrap();
            t1.await.unwrap();
            t2.await.unwrap();
            assert!(got_b == data, "a→b stream differs ({accept:?})");
            assert!(got_a == data, "b→a stream differs ({accept:?})");
        }
    }
}
