//! BEP 10 extension-protocol handshake.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Bytes;

use super::benc::{self, DictEntries};
use super::message::Message;
use crate::bencode::{self, MAX_DEPTH, ScanError};

/// Extended-message id of the extension handshake.
pub const EXT_HANDSHAKE_ID: u8 = 0;

/// Name of the metadata-exchange extension (BEP 9) in `m` dicts.
pub const UT_METADATA: &str = "ut_metadata";

/// The id we advertise for ut_metadata. Peers send their ut_metadata messages to us with
/// this id; it is only meaningful on our side of the connection.
pub const OUR_UT_METADATA_ID: u8 = 1;

/// The id we advertise for `ut_pex` (BEP 11), when peer exchange is on.
pub const OUR_UT_PEX_ID: u8 = 2;

/// Our client name as sent in `v`.
pub const CLIENT_NAME: &str = concat!("trackerless ", env!("CARGO_PKG_VERSION"));

/// The fields of an extension handshake we use; everything else in the dict is ignored.
///
/// Decoding is deliberately tolerant: a field of the wrong type or out of range is treated as
/// absent instead of failing the handshake, since one client's quirk in, say, `reqq` must not
/// stop us from fetching metadata with `m` and `metadata_size`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtHandshake {
    /// Extension name → the id the *sender* wants to receive that extension's messages on.
    /// An id of 0 means the sender disabled the extension (kept here so [`Self::update`] can
    /// apply it; [`Self::ext_id`] treats it as absent).
    pub m: BTreeMap<String, u8>,
    /// Client name and version.
    pub v: Option<String>,
    /// The sender's TCP listen port.
    pub p: Option<u16>,
    /// How many outstanding requests the sender queues before dropping them.
    pub reqq: Option<u32>,
    /// The address the sender sees us at (4 or 16 bytes on the wire).
    pub yourip: Option<IpAddr>,
    /// The sender's own IPv6 address (BEP 10 `ipv6`, 16 bytes), so a dual-stack peer met
    /// over IPv4 can be reached over IPv6 too (at the same `p`).
    pub ipv6: Option<Ipv6Addr>,
    /// Size of the info dict in bytes (BEP 9). Not range-checked here: the metadata layer
    /// caps it (see `MAX_METADATA_SIZE`).
    pub metadata_size: Option<u64>,
}

/// Why an extension-handshake payload was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtError {
    /// The payload is not one well-formed bencoded value.
    Bencode(ScanError),
    /// The payload is well-formed but not a dict.
    NotADict,
}

impl fmt::Display for ExtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtError::Bencode(e) => write!(f, "extension handshake: {e}"),
            ExtError::NotADict => write!(f, "extension handshake is not a dictionary"),
        }
    }
}

impl std::error::Error for ExtError {}

impl ExtHandshake {
    /// Our handshake: advertises ut_metadata on [`OUR_UT_METADATA_ID`], our client name, and
    /// the metadata size when we have the info dict.
    pub fn ours(listen_port: Option<u16>, metadata_size: Option<u64>) -> Self {
        ExtHandshake {
            m: BTreeMap::from([(UT_METADATA.to_owned(), OUR_UT_METADATA_ID)]),
            v: Some(CLIENT_NAME.to_owned()),
            p: listen_port,
            reqq: Some(250),
            yourip: None,
            ipv6: None,
            metadata_size,
        }
    }

    /// The id to *send* extension `name` messages to the peer that sent this handshake, or
    /// `None` if it does not support (or disabled) it.
    pub fn ext_id(&self, name: &str) -> Option<u8> {
        self.m.get(name).copied().filter(|&id| id != 0)
    }

    /// Applies a later handshake from the same peer. BEP 10 makes `m` additive (a re-sent
    /// handshake lists only changes, id 0 removing an extension); other fields are replaced
    /// when present.
    pub fn update(&mut self, newer: ExtHandshake) {
        for (name, id) in newer.m {
            if id == 0 {
                self.m.remove(&name);
            } else {
                self.m.insert(name, id);
            }
        }
        self.v = newer.v.or(self.v.take());
        self.p = newer.p.or(self.p);
        self.reqq = newer.reqq.or(self.reqq);
        self.yourip = newer.yourip.or(self.yourip);
        self.ipv6 = newer.ipv6.or(self.ipv6);
        self.metadata_size = newer.metadata_size.or(self.metadata_size);
    }

    /// Appends the bencoded dict (keys in canonical sorted order) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(b'd');
        // Keys in byte order: ipv6 < m < metadata_size < p < reqq < v < yourip.
        if let Some(ip) = self.ipv6 {
            benc::put_bytes(out, b"ipv6");
            benc::put_bytes(out, &ip.octets());
        }
        benc::put_bytes(out, b"m");
        out.push(b'd');
        for (name, id) in &self.m {
            benc::put_bytes(out, name.as_bytes());
            benc::put_int(out, i64::from(*id));
        }
        out.push(b'e');
        if let Some(size) = self.metadata_size {
            benc::put_bytes(out, b"metadata_size");
            benc::put_int(out, i64::try_from(size).unwrap_or(i64::MAX));
        }
        if let Some(p) = self.p {
            benc::put_bytes(out, b"p");
            benc::put_int(out, i64::from(p));
        }
        if let Some(reqq) = self.reqq {
            benc::put_bytes(out, b"reqq");
            benc::put_int(out, i64::from(reqq));
        }
        if let Some(v) = &self.v {
            benc::put_bytes(out, b"v");
            benc::put_bytes(out, v.as_bytes());
        }
        if let Some(ip) = self.yourip {
            benc::put_bytes(out, b"yourip");
            match ip {
                IpAddr::V4(v4) => benc::put_bytes(out, &v4.octets()),
                IpAddr::V6(v6) => benc::put_bytes(out, &v6.octets()),
            }
        }
        out.push(b'e');
    }

    /// The bencoded dict.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        self.encode_into(&mut out);
        out
    }

    /// The extended message (id 0) carrying this handshake.
    pub fn to_message(&self) -> Message {
        Message::Extended {
            id: EXT_HANDSHAKE_ID,
            payload: Bytes::from(self.encode()),
        }
    }

    /// Parses the payload of an extended message with id 0.
    pub fn decode(payload: &[u8]) -> Result<Self, ExtError> {
        bencode::validate(payload, MAX_DEPTH).map_err(ExtError::Bencode)?;
        let entries = DictEntries::new(payload).ok_or(ExtError::NotADict)?;
        let mut hs = ExtHandshake::default();
        for (key, raw) in entries {
            match key {
                b"m" => {
                    // Not a dict: treated like an empty one.
                    for (name, raw_id) in DictEntries::new(raw).into_iter().flatten() {
                        let id = benc::as_int(raw_id).and_then(|i| u8::try_from(i).ok());
                        if let (Ok(name), Some(id)) = (std::str::from_utf8(name), id) {
                            hs.m.insert(name.to_owned(), id);
                        }
                    }
                }
                b"v" => {
                    // Lossy: a client name is for logs, a stray byte should not hide it.
                    hs.v = benc::as_bytes(raw).map(|b| String::from_utf8_lossy(b).into_owned());
                }
                b"p" => {
                    hs.p = benc::as_int(raw)
                        .and_then(|i| u16::try_from(i).ok())
                        .filter(|&p| p != 0);
                }
                b"reqq" => hs.reqq = benc::as_int(raw).and_then(|i| u32::try_from(i).ok()),
                b"yourip" => {
                    hs.yourip = benc::as_bytes(raw).and_then(|b| match b.len() {
                        4 => <[u8; 4]>::try_from(b)
                            .ok()
                            .map(|o| IpAddr::V4(Ipv4Addr::from(o))),
                        16 => <[u8; 16]>::try_from(b)
                            .ok()
                            .map(|o| IpAddr::V6(Ipv6Addr::from(o))),
                        _ => None,
                    });
                }
                b"metadata_size" => {
                    hs.metadata_size = benc::as_int(raw).and_then(|i| u64::try_from(i).ok());
                }
                b"ipv6" => {
                    hs.ipv6 = benc::as_bytes(raw)
                        .and_then(|b| <[u8; 16]>::try_from(b).ok())
                        .map(Ipv6Addr::from);
                }
                _ => {}
            }
        }
        Ok(hs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_canonically_and_round_trips() {
        let hs = ExtHandshake {
            m: BTreeMap::from([("ut_pex".to_owned(), 2), ("ut_metadata".to_owned(), 1)]),
            v: Some("trackerless 0.1.0".to_owned()),
            p: Some(6881),
            reqq: Some(250),
            yourip: Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))),
            ipv6: None,
            metadata_size: Some(31235),
        };
        let wire = hs.encode();
        assert_eq!(
            wire,
            &b"d1:md11:ut_metadatai1e6:ut_pexi2ee13:metadata_sizei31235e1:pi6881e\
               4:reqqi250e1:v17:trackerless 0.1.06:yourip4:\x7f\x00\x00\x01e"[..]
        );
        assert_eq!(ExtHandshake::decode(&wire), Ok(hs));
        let v6 = ExtHandshake {
            yourip: Some("2001:db8::1".parse().unwrap()),
            ipv6: Some("fd77::9".parse().unwrap()),
            ..Default::default()
        };
        let wire = v6.encode();
        assert!(wire.starts_with(b"d4:ipv616:\xfd\x77"), "ipv6 sorts first");
        assert_eq!(ExtHandshake::decode(&wire), Ok(v6));
        // An `ipv6` of another length is ignored, not an error.
        let odd = ExtHandshake::decode(b"d4:ipv64:\x7f\0\0\x01e").unwrap();
        assert_eq!(odd.ipv6, None);
    }

    #[test]
    fn decodes_bep10_example() {
        let hs =
            ExtHandshake::decode(b"d1:md11:LT_metadatai1e6:ut_pexi2ee1:pi6881e1:v12:uTorrent 1.2e")
                .unwrap();
        assert_eq!(hs.ext_id("LT_metadata"), Some(1));
        assert_eq!(hs.ext_id("ut_pex"), Some(2));
        assert_eq!(hs.ext_id(UT_METADATA), None);
        assert_eq!(hs.p, Some(6881));
        assert_eq!(hs.v.as_deref(), Some("uTorrent 1.2"));
    }

    #[test]
    fn decodes_libtorrent_style_dict_with_extra_keys() {
        // Shaped like a libtorrent 2.x handshake: unknown top-level keys, extensions we do
        // not speak, a disabled one (id 0), an ipv6 interface address and a 4-byte yourip.
        let mut payload = Vec::new();
        payload.extend_from_slice(b"d12:complete_agoi1e1:md11:lt_donthavei7e10:share_modei8e");
        payload.extend_from_slice(b"11:upload_onlyi3e12:ut_holepunchi4e11:ut_metadatai2e");
        payload.extend_from_slice(b"6:ut_pexi0ee13:metadata_sizei5395e1:pi51413e4:reqqi512e");
        payload.extend_from_slice(b"11:upload_onlyi0e1:v16:libtorrent/2.0.9");
        payload.extend_from_slice(b"6:yourip4:\xc0\x00\x02\x074:ipv616:");
        payload.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        payload.push(b'e');
        let hs = ExtHandshake::decode(&payload).unwrap();
        assert_eq!(hs.ext_id(UT_METADATA), Some(2));
        assert_eq!(hs.ext_id("lt_donthave"), Some(7));
        assert_eq!(hs.ext_id("ut_pex"), None, "id 0 means disabled");
        assert_eq!(hs.m.get("ut_pex"), Some(&0));
        assert_eq!(hs.metadata_size, Some(5395));
        assert_eq!(hs.p, Some(51413));
        assert_eq!(hs.reqq, Some(512));
        assert_eq!(hs.v.as_deref(), Some("libtorrent/2.0.9"));
        assert_eq!(hs.yourip, Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))));
    }

    #[test]
    fn wrong_types_and_ranges_are_treated_as_absent() {
        let payload = b"d1:mli1ee13:metadata_sizei-5e1:pi70000e4:reqq3:abc1:vi5e6:yourip3:abce";
        assert_eq!(ExtHandshake::decode(payload), Ok(ExtHandshake::default()));
        let m = ExtHandshake::decode(b"d1:md1:ai256e1:bi-1e1:c1:x1:di9e2:\xff\xfei3eee").unwrap();
        assert_eq!(m.m, BTreeMap::from([("d".to_owned(), 9)]));
        assert_eq!(ExtHandshake::decode(b"de"), Ok(ExtHandshake::default()));
    }

    #[test]
    fn malformed_payloads_are_errors() {
        assert_eq!(ExtHandshake::decode(b"li1ee"), Err(ExtError::NotADict));
        assert_eq!(
            ExtHandshake::decode(b"d1:pi1e"),
            Err(ExtError::Bencode(ScanError::Truncated))
        );
        assert_eq!(
            ExtHandshake::decode(b"dexx"),
            Err(ExtError::Bencode(ScanError::Trailing(2)))
        );
        assert!(ExtHandshake::decode(b"").is_err());
    }

    #[test]
    fn later_handshakes_are_additive() {
        let mut hs = ExtHandshake::decode(b"d1:md11:ut_metadatai3e6:ut_pexi1ee1:pi1000ee").unwrap();
        hs.update(ExtHandshake::decode(b"d1:md6:ut_pexi0e3:x_yi4ee4:reqqi9ee").unwrap());
        assert_eq!(hs.ext_id(UT_METADATA), Some(3));
        assert_eq!(hs.ext_id("ut_pex"), None);
        assert_eq!(hs.ext_id("x_y"), Some(4));
        assert_eq!((hs.p, hs.reqq), (Some(1000), Some(9)));
    }

    #[test]
    fn our_handshake_advertises_ut_metadata() {
        let ours = ExtHandshake::ours(Some(6881), Some(1234));
        let Message::Extended { id, payload } = ours.to_message() else {
            panic!()
        };
        assert_eq!(id, EXT_HANDSHAKE_ID);
        let back = ExtHandshake::decode(&payload).unwrap();
        assert_eq!(back.ext_id(UT_METADATA), Some(OUR_UT_METADATA_ID));
        assert_eq!(back, ours);
    }
}
