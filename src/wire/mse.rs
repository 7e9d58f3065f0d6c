//! Message Stream Encryption / Protocol Encryption (MSE/PE): the obfuscation handshake that
//! libtorrent, Transmission and aria2 speak, so peers that refuse plaintext (or ISPs that
//! throttle recognisable BitTorrent) can still be reached.
//!
//! The exchange, with A the initiator (knows the info hash, SKEY) and B the responder:
//! 1. A → B: `Ya`, `PadA`
//! 2. B → A: `Yb`, `PadB`
//! 3. A → B: `HASH('req1', S)`, `HASH('req2', SKEY) xor HASH('req3', S)`,
//!    `ENCRYPT(VC, crypto_provide, len(PadC), PadC, len(IA))`, `ENCRYPT(IA)`
//! 4. B → A: `ENCRYPT(VC, crypto_select, len(PadD), PadD)`, then the stream in the selected
//!    method.
//!
//! `Y` are 768-bit Diffie-Hellman public values (G = 2, the well-known prime [`DH_PRIME`]),
//! `S` the shared secret, `VC` eight zero bytes, pads at most 512 bytes. `ENCRYPT` is RC4
//! keyed with `SHA1('keyA'|S|SKEY)` (A → B) or `SHA1('keyB'|S|SKEY)` (B → A) after discarding
//! 1024 keystream bytes. Because the pads have random length, each side finds the start of
//! the next part by *synchronising* on a value it can predict: B scans for `HASH('req1', S)`,
//! A for the encrypted `VC`.
//!
//! [`MseHandshake`] is sans-IO in the style of the DHT `Node`: the driver feeds received
//! bytes with the current time, sends whatever [`MseHandshake::take_output`] returns, and
//! stops at the [`MseOutcome`]. Buffers are bounded, junk is an [`MseError`], never a panic.

use std::time::{Duration, Instant};

use num_bigint::BigUint;
use sha1::{Digest, Sha1};

use crate::torrent::InfoHash;

/// The 768-bit MSE prime (the Oakley group 1 prime), big-endian hex.
pub const DH_PRIME: &str = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74\
020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC\
6F44C42E9A63A36210000000000090563";
/// Length of a DH public value or shared secret on the wire (768 bits).
pub const DH_LEN: usize = 96;
/// Longest `PadA`/`PadB`/`PadC`/`PadD` the protocol allows.
pub const MAX_PAD: usize = 512;
/// Longest initial payload (`IA`) we accept or send: a BitTorrent handshake and an extension
/// handshake fit many times over, and it bounds the responder's buffer.
pub const MAX_IA: usize = 16 * 1024;
/// Keystream bytes both directions discard before use (the RC4 early-bytes weakness).
const RC4_DISCARD: usize = 1024;
/// Verification constant: eight zero bytes, encrypted, mark where the encrypted part starts.
const VC: [u8; 8] = [0; 8];
/// Bytes after `S` is known that the initiator sends before `ENCRYPT(IA)`.
const REQ_LEN: usize = 20 + 20 + 8 + 4 + 2;
/// How long a whole handshake may take by default (libtorrent allows the same order).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// The plain BitTorrent handshake's first 20 bytes: what tells plain from MSE on accept.
const BT_PREFIX: &[u8; 20] = b"\x13BitTorrent protocol";

/// RC4, hand-written: twenty lines, and the stream cipher every MSE peer uses. It is not a
/// security primitive here (MSE is obfuscation), only a compatibility one.
#[derive(Clone)]
pub struct Rc4 {
    s: [u8; 256],
    i: u8,
    j: u8,
}

impl std::fmt::Debug for Rc4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rc4 { .. }")
    }
}

impl Rc4 {
    /// Key schedule; `key` must be 1..=256 bytes (MSE keys are 20).
    pub fn new(key: &[u8]) -> Rc4 {
        assert!(!key.is_empty() && key.len() <= 256, "RC4 key length");
        let mut s = [0u8; 256];
        for (i, b) in s.iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut j = 0u8;
        for i in 0..256 {
            j = j.wrapping_add(s[i]).wrapping_add(key[i % key.len()]);
            s.swap(i, j as usize);
        }
        Rc4 { s, i: 0, j: 0 }
    }

    /// XORs the keystream into `buf` in place (encrypt and decrypt are the same operation).
    pub fn apply(&mut self, buf: &mut [u8]) {
        let (mut i, mut j) = (self.i, self.j);
        for b in buf {
            i = i.wrapping_add(1);
            j = j.wrapping_add(self.s[i as usize]);
            self.s.swap(i as usize, j as usize);
            let k = self.s[self.s[i as usize].wrapping_add(self.s[j as usize]) as usize];
            *b ^= k;
        }
        self.i = i;
        self.j = j;
    }

    /// Advances the keystream by `n` bytes without using them.
    pub fn discard(&mut self, n: usize) {
        let mut scratch = [0u8; 256];
        let mut left = n;
        while left > 0 {
            let k = left.min(scratch.len());
            self.apply(&mut scratch[..k]);
            left -= k;
        }
    }
}

/// The two directions' ciphers after an RC4 handshake: `enc` for what we send, `dec` for
/// what we receive. Both are positioned exactly after the handshake's own encrypted bytes.
#[derive(Debug, Clone)]
pub struct Ciphers {
    /// Encrypts our outgoing stream.
    pub enc: Rc4,
    /// Decrypts the peer's incoming stream.
    pub dec: Rc4,
}

/// The `crypto_provide`/`crypto_select` bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CryptoSet(pub u32);

impl CryptoSet {
    /// Plaintext after the handshake (bit 0x01).
    pub const PLAIN: CryptoSet = CryptoSet(0x01);
    /// RC4 after the handshake (bit 0x02).
    pub const RC4: CryptoSet = CryptoSet(0x02);
    /// Both methods.
    pub const BOTH: CryptoSet = CryptoSet(0x03);

    fn has(self, m: Method) -> bool {
        self.0 & m.bit() != 0
    }
}

/// The method the handshake settled on for the rest of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The BitTorrent stream continues unencrypted (only the handshake was obfuscated).
    Plain,
    /// The BitTorrent stream is RC4-encrypted both ways.
    Rc4,
}

impl Method {
    fn bit(self) -> u32 {
        match self {
            Method::Plain => 0x01,
            Method::Rc4 => 0x02,
        }
    }
}

/// Why a handshake failed. None of these is a bug on our side: they are the peer's junk,
/// silence or a policy mismatch, and end the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MseError {
    /// The deadline passed before the handshake completed.
    Timeout,
    /// The peer closed the stream before the handshake completed.
    Eof,
    /// The synchronisation value did not appear within the longest allowed padding.
    NoSync,
    /// The decrypted verification constant was not eight zero bytes.
    BadVc,
    /// The peer asked for an info hash we do not serve.
    UnknownInfoHash,
    /// No method both sides allow (e.g. we require RC4 and the peer offers plaintext only).
    NoCommonMethod {
        /// What the peer offered or selected.
        peer: u32,
        /// What we allow.
        ours: u32,
    },
    /// A length field beyond the protocol's or our bound.
    BadLength(usize),
    /// The peer's DH public value is not in 2..P-1 (would give a guessable secret).
    BadPublicKey,
}

impl std::fmt::Display for MseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MseError::Timeout => write!(f, "encryption handshake timed out"),
            MseError::Eof => write!(
                f,
                "peer closed the connection during the encryption handshake"
            ),
            MseError::NoSync => {
                write!(f, "encryption handshake: no sync marker within the padding")
            }
            MseError::BadVc => write!(f, "encryption handshake: bad verification constant"),
            MseError::UnknownInfoHash => write!(
                f,
                "encryption handshake: peer asked for an info hash we do not serve"
            ),
            MseError::NoCommonMethod { peer, ours } => write!(
                f,
                "encryption handshake: no common method (peer offers {}, we allow {})",
                method_names(*peer),
                method_names(*ours)
            ),
            MseError::BadLength(n) => write!(f, "encryption handshake: bad length field {n}"),
            MseError::BadPublicKey => write!(f, "encryption handshake: invalid DH public key"),
        }
    }
}

impl std::error::Error for MseError {}

fn method_names(bits: u32) -> &'static str {
    match bits & 3 {
        0 => "nothing",
        1 => "plaintext only",
        2 => "RC4 only",
        _ => "plaintext or RC4",
    }
}

/// What a completed handshake leaves to the driver.
#[derive(Debug)]
pub struct MseOutcome {
    /// The method for the rest of the stream.
    pub method: Method,
    /// The info hash (SKEY) the connection is about: ours as initiator, the one the peer
    /// asked for as responder.
    pub info_hash: InfoHash,
    /// Application bytes already received, already decrypted: the initiator's `IA` plus
    /// anything after it (responder), or whatever followed `PadD` (initiator). The driver
    /// must consume these before reading the stream again.
    pub initial_payload: Vec<u8>,
    /// The ciphers, positioned after the handshake, when `method` is [`Method::Rc4`].
    pub ciphers: Option<Ciphers>,
}

/// What the first bytes of an accepted connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// A plain BitTorrent handshake (`19`, `"BitTorrent protocol"`).
    Plain,
    /// Anything else: try it as MSE.
    Mse,
    /// Too few bytes to tell yet.
    NeedMore,
}

/// Tells a plain BitTorrent handshake from an MSE one by its first bytes, as every client
/// does: a DH public value starting with exactly those 20 bytes is vanishingly unlikely.
pub fn classify_incoming(first: &[u8]) -> Incoming {
    let n = first.len().min(BT_PREFIX.len());
    if first[..n] != BT_PREFIX[..n] {
        Incoming::Mse
    } else if n < BT_PREFIX.len() {
        Incoming::NeedMore
    } else {
        Incoming::Plain
    }
}

fn sha1(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn prime() -> BigUint {
    BigUint::parse_bytes(DH_PRIME.as_bytes(), 16).expect("DH_PRIME is valid hex")
}

fn to_wire(n: &BigUint) -> [u8; DH_LEN] {
    let b = n.to_bytes_be();
    let mut out = [0u8; DH_LEN];
    out[DH_LEN - b.len()..].copy_from_slice(&b);
    out
}

/// One side's Diffie-Hellman key pair over the MSE group.
pub struct DhKey {
    private: BigUint,
    public: [u8; DH_LEN],
}

impl DhKey {
    /// A key pair from a 160-bit private exponent (what libtorrent and others use: the
    /// protocol only needs the secret to be unguessable, not full-length).
    pub fn from_private(private: [u8; 20]) -> DhKey {
        let private = BigUint::from_bytes_be(&private);
        let public = to_wire(&BigUint::from(2u32).modpow(&private, &prime()));
        DhKey { private, public }
    }

    /// A fresh random key pair.
    pub fn random() -> DhKey {
        DhKey::from_private(rand::random())
    }

    /// Our public value `Y`, as sent.
    pub fn public(&self) -> &[u8; DH_LEN] {
        &self.public
    }

    /// The shared secret `S` from the peer's public value; rejects 0, 1 and P-1 and values
    /// at or above P, which would make `S` predictable.
    pub fn shared(&self, peer_public: &[u8]) -> Result<[u8; DH_LEN], MseError> {
        let p = prime();
        let y = BigUint::from_bytes_be(peer_public);
        if y <= BigUint::from(1u32) || y >= &p - 1u32 {
            return Err(MseError::BadPublicKey);
        }
        Ok(to_wire(&y.modpow(&self.private, &p)))
    }
}

fn rc4_for(label: &[u8], s: &[u8; DH_LEN], skey: &[u8; 20]) -> Rc4 {
    let mut c = Rc4::new(&sha1(&[label, s, skey]));
    c.discard(RC4_DISCARD);
    c
}

/// The random choices of one handshake, separate so tests can fix them.
pub struct MseSecrets {
    /// Our DH key pair.
    pub key: DhKey,
    /// Length of the pad after our public value (`PadA`/`PadB`), at most [`MAX_PAD`].
    pub pad_len: usize,
    /// Length of `PadC`/`PadD`.
    pub pad2_len: usize,
}

impl MseSecrets {
    /// Random key and random pad lengths (the pads' content is random too).
    pub fn random() -> MseSecrets {
        MseSecrets {
            key: DhKey::random(),
            pad_len: rand::random_range(0..=MAX_PAD),
            pad2_len: 0,
        }
    }
}

fn random_pad(out: &mut Vec<u8>, len: usize) {
    let start = out.len();
    out.resize(start + len.min(MAX_PAD), 0);
    rand::fill(&mut out[start..]);
}

#[derive(Debug)]
enum State {
    /// Initiator: waiting for `Yb`.
    AwaitYb,
    /// Initiator: scanning for `ENCRYPT(VC)`, then reading `crypto_select` and `len(PadD)`.
    AwaitVc {
        enc: Rc4,
        dec: Rc4,
        enc_vc: [u8; 8],
    },
    /// Initiator: reading `PadD`.
    AwaitPadD {
        enc: Rc4,
        dec: Rc4,
        method: Method,
        len: usize,
    },
    /// Responder: waiting for `Ya`.
    AwaitYa,
    /// Responder: scanning for `HASH('req1', S)`, then reading the rest up to `len(IA)`.
    AwaitReq {
        s: Box<[u8; DH_LEN]>,
        req1: [u8; 20],
    },
    /// Responder: reading `PadC`, `len(IA)` and `IA`.
    AwaitIa {
        dec: Rc4,
        enc: Rc4,
        info_hash: InfoHash,
        method: Method,
        pad_c: usize,
    },
    Done,
}

/// Who we are in the handshake.
#[derive(Debug, Clone)]
pub enum Role {
    /// We connected: we know the info hash and send `IA` (usually our BitTorrent handshake).
    Initiator {
        /// The torrent's info hash, which MSE uses as the shared secret SKEY.
        info_hash: InfoHash,
        /// The initial payload, sent encrypted in step 3.
        ia: Vec<u8>,
    },
    /// We accepted: any of these info hashes may be asked for.
    Responder {
        /// `(HASH('req2', info_hash), info_hash)` for every info hash we serve.
        req2: Vec<([u8; 20], InfoHash)>,
    },
}

impl Role {
    /// A responder serving `info_hashes`.
    pub fn responder<'a>(info_hashes: impl IntoIterator<Item = &'a InfoHash>) -> Role {
        Role::Responder {
            req2: info_hashes
                .into_iter()
                .map(|h| (sha1(&[b"req2", h.as_bytes()]), *h))
                .collect(),
        }
    }
}

/// The sans-IO MSE handshake, either side. Feed it with [`feed`](Self::feed), send
/// [`take_output`](Self::take_output), enforce [`deadline`](Self::deadline).
pub struct MseHandshake {
    role: Role,
    allowed: CryptoSet,
    secrets: MseSecrets,
    state: State,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    deadline: Instant,
}

impl std::fmt::Debug for MseHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MseHandshake")
            .field("state", &self.state)
            .field("buffered", &self.inbuf.len())
            .finish()
    }
}

/// Longest the receive buffer can legitimately grow: a public value, the longest pad, and
/// the largest step-3 message.
const MAX_INBUF: usize = DH_LEN + MAX_PAD + REQ_LEN + MAX_PAD + 2 + MAX_IA;

impl MseHandshake {
    /// Starts a handshake. `allowed` is what we provide (initiator) or accept (responder);
    /// the initiator's first message (`Ya`, `PadA`) is queued immediately.
    pub fn new(
        role: Role,
        allowed: CryptoSet,
        secrets: MseSecrets,
        now: Instant,
        timeout: Duration,
    ) -> Result<MseHandshake, MseError> {
        if let Role::Initiator { ia, .. } = &role
            && ia.len() > MAX_IA
        {
            return Err(MseError::BadLength(ia.len()));
        }
        let mut out = Vec::with_capacity(DH_LEN + MAX_PAD);
        let state = match role {
            Role::Initiator { .. } => {
                out.extend_from_slice(secrets.key.public());
                random_pad(&mut out, secrets.pad_len);
                State::AwaitYb
            }
            Role::Responder { .. } => State::AwaitYa,
        };
        Ok(MseHandshake {
            role,
            allowed,
            secrets,
            state,
            inbuf: Vec::new(),
            out,
            deadline: now + timeout,
        })
    }

    /// When the driver must give up if the handshake has not completed.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Bytes to send to the peer, in order; empties the queue.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// The peer closed the stream: the handshake cannot complete.
    pub fn eof(&mut self) -> MseError {
        self.state = State::Done;
        MseError::Eof
    }

    /// Feeds received bytes. `Ok(Some(outcome))` once complete (queued output must still be
    /// sent); after that, or after an error, the handshake takes no more input.
    pub fn feed(&mut self, now: Instant, data: &[u8]) -> Result<Option<MseOutcome>, MseError> {
        if matches!(self.state, State::Done) {
            return Err(MseError::Eof);
        }
        if now >= self.deadline {
            self.state = State::Done;
            return Err(MseError::Timeout);
        }
        if self.inbuf.len() + data.len() > MAX_INBUF {
            // Everything legitimate is consumed as soon as it is complete, so an overfull
            // buffer means the peer never sent what we wait for.
            self.state = State::Done;
            return Err(MseError::NoSync);
        }
        self.inbuf.extend_from_slice(data);
        let r = self.advance();
        if !matches!(r, Ok(None)) {
            self.state = State::Done;
        }
        r
    }

    /// Runs the state machine as far as the buffered input allows.
    fn advance(&mut self) -> Result<Option<MseOutcome>, MseError> {
        loop {
            let state = std::mem::replace(&mut self.state, State::Done);
            let (next, outcome) = self.step(state)?;
            if let Some(o) = outcome {
                return Ok(Some(o));
            }
            match next {
                Ok(s) => self.state = s,
                Err(waiting) => {
                    self.state = waiting;
                    return Ok(None);
                }
            }
        }
    }

    /// One transition: `Ok(state)` made progress, `Err(state)` needs more input.
    #[allow(clippy::type_complexity)]
    fn step(
        &mut self,
        state: State,
    ) -> Result<(Result<State, State>, Option<MseOutcome>), MseError> {
        let wait = |s| Ok((Err(s), None));
        match state {
            State::AwaitYb => {
                if self.inbuf.len() < DH_LEN {
                    return wait(State::AwaitYb);
                }
                let s = self.secrets.key.shared(&self.inbuf[..DH_LEN])?;
                self.inbuf.drain(..DH_LEN);
                let Role::Initiator { info_hash, ia } = &self.role else {
                    unreachable!("AwaitYb is an initiator state")
                };
                let mut enc = rc4_for(b"keyA", &s, info_hash.as_bytes());
                let dec = rc4_for(b"keyB", &s, info_hash.as_bytes());
                // What B's encrypted VC looks like: its keystream's first 8 bytes.
                let mut enc_vc = VC;
                dec.clone().apply(&mut enc_vc);
                self.out.extend_from_slice(&sha1(&[b"req1", &s]));
                let req2 = sha1(&[b"req2", info_hash.as_bytes()]);
                let req3 = sha1(&[b"req3", &s]);
                self.out.extend(req2.iter().zip(req3).map(|(a, b)| a ^ b));
                let start = self.out.len();
                self.out.extend_from_slice(&VC);
                self.out.extend_from_slice(&self.allowed.0.to_be_bytes());
                let pad_c = self.secrets.pad2_len.min(MAX_PAD);
                self.out.extend_from_slice(&(pad_c as u16).to_be_bytes());
                self.out.resize(self.out.len() + pad_c, 0);
                self.out.extend_from_slice(&(ia.len() as u16).to_be_bytes());
                self.out.extend_from_slice(ia);
                enc.apply(&mut self.out[start..]);
                // PadB is skipped until the encrypted VC: B's keystream starts there.
                Ok((Ok(State::AwaitVc { enc, dec, enc_vc }), None))
            }
            State::AwaitVc {
                enc,
                mut dec,
                enc_vc,
            } => {
                let Some(pos) = find(&self.inbuf, &enc_vc, MAX_PAD) else {
                    if self.inbuf.len() >= MAX_PAD + enc_vc.len() {
                        return Err(MseError::NoSync);
                    }
                    return wait(State::AwaitVc { enc, dec, enc_vc });
                };
                if self.inbuf.len() < pos + 8 + 4 + 2 {
                    return wait(State::AwaitVc { enc, dec, enc_vc });
                }
                self.inbuf.drain(..pos);
                let mut head = [0u8; 14];
                head.copy_from_slice(&self.inbuf[..14]);
                self.inbuf.drain(..14);
                dec.apply(&mut head);
                if head[..8] != VC {
                    return Err(MseError::BadVc);
                }
                let select = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
                let method = match select {
                    0x01 => Method::Plain,
                    0x02 => Method::Rc4,
                    _ => {
                        return Err(MseError::NoCommonMethod {
                            peer: select,
                            ours: self.allowed.0,
                        });
                    }
                };
                if !self.allowed.has(method) {
                    return Err(MseError::NoCommonMethod {
                        peer: select,
                        ours: self.allowed.0,
                    });
                }
                let len = u16::from_be_bytes([head[12], head[13]]) as usize;
                if len > MAX_PAD {
                    return Err(MseError::BadLength(len));
                }
                Ok((
                    Ok(State::AwaitPadD {
                        enc,
                        dec,
                        method,
                        len,
                    }),
                    None,
                ))
            }
            State::AwaitPadD {
                enc,
                mut dec,
                method,
                len,
            } => {
                if self.inbuf.len() < len {
                    return wait(State::AwaitPadD {
                        enc,
                        dec,
                        method,
                        len,
                    });
                }
                let mut pad: Vec<u8> = self.inbuf.drain(..len).collect();
                dec.apply(&mut pad);
                let Role::Initiator { info_hash, .. } = &self.role else {
                    unreachable!("AwaitPadD is an initiator state")
                };
                let info_hash = *info_hash;
                Ok((
                    Ok(State::Done),
                    Some(self.finish(method, info_hash, enc, dec)),
                ))
            }
            State::AwaitYa => {
                if self.inbuf.len() < DH_LEN {
                    return wait(State::AwaitYa);
                }
                let s = self.secrets.key.shared(&self.inbuf[..DH_LEN])?;
                self.inbuf.drain(..DH_LEN);
                self.out.extend_from_slice(self.secrets.key.public());
                random_pad(&mut self.out, self.secrets.pad_len);
                let req1 = sha1(&[b"req1", &s]);
                Ok((
                    Ok(State::AwaitReq {
                        s: Box::new(s),
                        req1,
                    }),
                    None,
                ))
            }
            State::AwaitReq { s, req1 } => {
                let Some(pos) = find(&self.inbuf, &req1, MAX_PAD) else {
                    if self.inbuf.len() >= MAX_PAD + req1.len() {
                        return Err(MseError::NoSync);
                    }
                    return wait(State::AwaitReq { s, req1 });
                };
                if self.inbuf.len() < pos + REQ_LEN {
                    return wait(State::AwaitReq { s, req1 });
                }
                self.inbuf.drain(..pos + 20);
                let req3 = sha1(&[b"req3", &s[..]]);
                let mut req2 = [0u8; 20];
                for (i, b) in req2.iter_mut().enumerate() {
                    *b = self.inbuf[i] ^ req3[i];
                }
                self.inbuf.drain(..20);
                let Role::Responder { req2: served } = &self.role else {
                    unreachable!("AwaitReq is a responder state")
                };
                let info_hash = served
                    .iter()
                    .find(|(r, _)| *r == req2)
                    .map(|(_, h)| *h)
                    .ok_or(MseError::UnknownInfoHash)?;
                let mut dec = rc4_for(b"keyA", &s, info_hash.as_bytes());
                let mut enc = rc4_for(b"keyB", &s, info_hash.as_bytes());
                let mut head = [0u8; 14];
                head.copy_from_slice(&self.inbuf[..14]);
                self.inbuf.drain(..14);
                dec.apply(&mut head);
                if head[..8] != VC {
                    return Err(MseError::BadVc);
                }
                let provide = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
                let common = provide & self.allowed.0;
                // Plaintext after the handshake when both allow it, as libtorrent selects
                // by default (`prefer_rc4` off): the obfuscated handshake is what hides the
                // protocol from header matching, and RC4 would cost both sides CPU for the
                // whole transfer (a libtorrent offering both made a 32 MiB download ~3×
                // slower when we picked RC4). A policy that wants RC4 allows only RC4.
                let method = if common & 0x01 != 0 {
                    Method::Plain
                } else if common & 0x02 != 0 {
                    Method::Rc4
                } else {
                    return Err(MseError::NoCommonMethod {
                        peer: provide,
                        ours: self.allowed.0,
                    });
                };
                let pad_c = u16::from_be_bytes([head[12], head[13]]) as usize;
                if pad_c > MAX_PAD {
                    return Err(MseError::BadLength(pad_c));
                }
                // Step 4 does not depend on IA: send it now.
                let start = self.out.len();
                self.out.extend_from_slice(&VC);
                self.out.extend_from_slice(&method.bit().to_be_bytes());
                let pad_d = self.secrets.pad2_len.min(MAX_PAD);
                self.out.extend_from_slice(&(pad_d as u16).to_be_bytes());
                self.out.resize(self.out.len() + pad_d, 0);
                enc.apply(&mut self.out[start..]);
                Ok((
                    Ok(State::AwaitIa {
                        dec,
                        enc,
                        info_hash,
                        method,
                        pad_c,
                    }),
                    None,
                ))
            }
            State::AwaitIa {
                mut dec,
                enc,
                info_hash,
                method,
                pad_c,
            } => {
                if self.inbuf.len() < pad_c + 2 {
                    return wait(State::AwaitIa {
                        dec,
                        enc,
                        info_hash,
                        method,
                        pad_c,
                    });
                }
                let mut len = [0u8; 2];
                len.copy_from_slice(&self.inbuf[pad_c..pad_c + 2]);
                let mut dec_peek = dec.clone();
                dec_peek.discard(pad_c);
                dec_peek.apply(&mut len);
                let ia_len = u16::from_be_bytes(len) as usize;
                if ia_len > MAX_IA {
                    return Err(MseError::BadLength(ia_len));
                }
                if self.inbuf.len() < pad_c + 2 + ia_len {
                    return wait(State::AwaitIa {
                        dec,
                        enc,
                        info_hash,
                        method,
                        pad_c,
                    });
                }
                dec = dec_peek;
                self.inbuf.drain(..pad_c + 2);
                // IA is always RC4-encrypted; what follows it is in the selected method.
                let mut ia: Vec<u8> = self.inbuf.drain(..ia_len).collect();
                dec.apply(&mut ia);
                let mut outcome = self.finish(method, info_hash, enc, dec);
                ia.extend_from_slice(&outcome.initial_payload);
                outcome.initial_payload = ia;
                Ok((Ok(State::Done), Some(outcome)))
            }
            State::Done => Err(MseError::Eof),
        }
    }

    /// Hands over whatever followed the handshake (decrypted under RC4) and the ciphers.
    fn finish(
        &mut self,
        method: Method,
        info_hash: InfoHash,
        enc: Rc4,
        mut dec: Rc4,
    ) -> MseOutcome {
        let mut rest = std::mem::take(&mut self.inbuf);
        let ciphers = match method {
            Method::Rc4 => {
                dec.apply(&mut rest);
                Some(Ciphers { enc, dec })
            }
            Method::Plain => None,
        };
        MseOutcome {
            method,
            info_hash,
            initial_payload: rest,
            ciphers,
        }
    }
}

/// Position of `needle` in `hay` starting at most `max_skip` bytes in.
fn find(hay: &[u8], needle: &[u8], max_skip: usize) -> Option<usize> {
    hay.windows(needle.len())
        .take(max_skip + 1)
        .position(|w| w == needle)
}

#[cfg(test)]
#[path = "mse_tests.rs"]
mod tests;
