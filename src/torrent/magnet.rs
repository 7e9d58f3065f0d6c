//! Magnet links (BEP 9) and bare info hashes: the way a user names a torrent to a trackerless
//! downloader, which then finds peers through the DHT and fetches the metadata from them.
//!
//! Only the parts a trackerless client acts on are interpreted: the v1 info hash (`xt`), the
//! display name (`dn`), direct peers (`x.pe`, tried before the DHT answers) and trackers (`tr`,
//! kept so a link can be handed on unchanged, never contacted). Every other parameter is
//! ignored, as the magnet format asks of clients that do not understand it.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use super::InfoHash;

/// Characters left bare in an encoded parameter value: RFC 3986 "unreserved", the only set
/// every URI parser agrees needs no escaping. Everything else (`&`, `=`, `+`, `#`, `%`,
/// spaces, non-ASCII) is escaped so the value cannot be misread as URI structure.
const VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `x.pe` values keep `:` bare (legal in a query) so `1.2.3.4:6881` stays readable, and the
/// brackets of an IPv6 address too: libtorrent 2.x reads `x.pe` without unescaping it, so
/// `%5B...%5D` makes it drop the peer (seen with 2.1.1), while `[fd77::1]:6881` works. The `%`
/// of a scope id is still escaped. Reading accepts both forms.
const PEER: &AsciiSet = &VALUE.remove(b':').remove(b'[').remove(b']');

/// The URN prefix of a BitTorrent v1 info hash inside `xt`.
const BTIH: &str = "urn:btih:";

/// A parsed magnet link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Magnet {
    /// The v1 info hash: SHA-1 of the torrent's bencoded `info` dict.
    pub info_hash: InfoHash,
    /// `dn`: a name to show until the metadata (which holds the real name) has arrived.
    pub display_name: Option<String>,
    /// `tr` entries in link order, duplicates removed. Kept only to reproduce the link.
    pub trackers: Vec<String>,
    /// `x.pe` entries that are literal `ip:port` addresses, in link order, duplicates removed.
    /// Host names are dropped rather than resolved: resolving would leak the download to DNS
    /// and the DHT finds peers anyway. A malformed peer never fails the whole link.
    pub peers: Vec<SocketAddr>,
}

/// Why a string is not a usable magnet link or info hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MagnetError {
    /// Neither `magnet:?...` nor a bare 40-hex / 32-base32 info hash.
    NotMagnet,
    /// `magnet:` without the `?` that starts the parameters.
    NoQuery,
    /// No `xt` parameter at all.
    MissingXt,
    /// `xt` parameters were present but none is a `urn:btih:` or `urn:btmh:`.
    UnsupportedUrn(String),
    /// Only a BEP 52 `urn:btmh:` (v2 info hash) topic: we speak v1 only, and a v2 swarm
    /// cannot be joined through a v1 hash we do not know. A hybrid torrent's magnet also
    /// carries its `urn:btih:` and works.
    V2Only,
    /// Two `urn:btih:` topics naming different torrents: which one was meant is unknowable.
    ConflictingHashes,
    /// The hash text has a length that is neither 40 (hex) nor 32 (base32).
    BadHashLength(usize),
    /// A 40-character hash containing a non-hex character (the character, its position).
    BadHex(char, usize),
    /// A 32-character hash containing a non-base32 character (the character, its position).
    BadBase32(char, usize),
}

impl fmt::Display for MagnetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MagnetError::NotMagnet => write!(
                f,
                "not a magnet link or info hash: expected `magnet:?xt=urn:btih:...` or a \
                 40-character hex / 32-character base32 info hash"
            ),
            MagnetError::NoQuery => {
                write!(
                    f,
                    "magnet link has no parameters: expected `magnet:?xt=urn:btih:...`"
                )
            }
            MagnetError::MissingXt => {
                write!(f, "magnet link has no `xt` parameter (the info hash)")
            }
            MagnetError::UnsupportedUrn(urn) => write!(
                f,
                "magnet link's `xt` is `{urn}`, not a BitTorrent v1 info hash (`urn:btih:`)"
            ),
            MagnetError::V2Only => write!(f, "v2-only torrents are not supported yet"),
            MagnetError::ConflictingHashes => {
                write!(
                    f,
                    "magnet link has several different `urn:btih:` info hashes"
                )
            }
            MagnetError::BadHashLength(n) => write!(
                f,
                "info hash has {n} characters; expected 40 (hex) or 32 (base32)"
            ),
            MagnetError::BadHex(c, i) => {
                write!(f, "info hash has non-hex character {c:?} at position {i}")
            }
            MagnetError::BadBase32(c, i) => {
                write!(
                    f,
                    "info hash has non-base32 character {c:?} at position {i}"
                )
            }
        }
    }
}

impl std::error::Error for MagnetError {}

/// Decodes an info hash written as 40 hex or 32 base32 characters, either case. Unlike
/// [`InfoHash::from_hex`] it also takes base32 (older magnet links use it) and says what is
/// wrong with a bad hash, since the text comes from a user.
pub fn parse_info_hash(text: &str) -> Result<InfoHash, MagnetError> {
    let mut out = [0u8; 20];
    match text.chars().count() {
        40 => {
            if let Some((i, c)) = text
                .chars()
                .enumerate()
                .find(|(_, c)| !c.is_ascii_hexdigit())
            {
                return Err(MagnetError::BadHex(c, i));
            }
            hex::decode_to_slice(text, &mut out).map_err(|_| MagnetError::BadHashLength(40))?;
        }
        32 => {
            let upper = text.to_ascii_uppercase();
            if let Some((i, c)) = upper
                .chars()
                .enumerate()
                .find(|(_, c)| !matches!(c, 'A'..='Z' | '2'..='7'))
            {
                // Report the character as the user wrote it, not upper-cased.
                let original = text.chars().nth(i).unwrap_or(c);
                return Err(MagnetError::BadBase32(original, i));
            }
            // 32 symbols are exactly 160 bits, so no padding is involved and every symbol
            // string of the right alphabet decodes; the error arm is unreachable in practice.
            let bytes = data_encoding::BASE32
                .decode(upper.as_bytes())
                .map_err(|_| MagnetError::BadHashLength(32))?;
            out.copy_from_slice(&bytes);
        }
        n => return Err(MagnetError::BadHashLength(n)),
    }
    Ok(InfoHash(out))
}

/// Percent-decodes a query value; invalid UTF-8 is replaced rather than refused because the
/// values we keep (names, tracker URLs) are informational and a link with a Latin-1 `dn`
/// should still download.
fn decode_value(raw: &str) -> String {
    percent_decode_str(raw).decode_utf8_lossy().into_owned()
}

/// Whether a parameter key is `base` or an indexed form `base.N` (`xt.1`, `tr.2`, ...), which
/// the magnet format uses to number repeated parameters.
fn key_is(key: &str, base: &str) -> bool {
    match key.strip_prefix(base) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('.')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

impl Magnet {
    /// Parses a magnet link, or a bare 40-hex / 32-base32 info hash (surrounding whitespace
    /// is ignored: links are usually pasted).
    pub fn parse(input: &str) -> Result<Magnet, MagnetError> {
        let input = input.trim();
        let Some(rest) = strip_prefix_ignore_case(input, "magnet:") else {
            if !input.is_empty() && input.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Ok(Magnet::from_info_hash(parse_info_hash(input)?));
            }
            return Err(MagnetError::NotMagnet);
        };
        let query = rest.strip_prefix('?').ok_or(MagnetError::NoQuery)?;
        // A fragment is not part of the query.
        let query = query.split('#').next().unwrap_or("");

        let mut info_hash: Option<InfoHash> = None;
        let mut other_urn: Option<String> = None;
        let mut magnet = Magnet::from_info_hash(InfoHash::default());
        // Sets, not `Vec::contains`: a pasted link can be arbitrarily long.
        let mut seen_trackers = HashSet::new();
        let mut seen_peers = HashSet::new();
        for param in query.split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = param.split_once('=').unwrap_or((param, ""));
            if key_is(key, "xt") && !raw.is_empty() {
                let value = decode_value(raw);
                match strip_prefix_ignore_case(&value, BTIH) {
                    Some(hash) => {
                        let hash = parse_info_hash(hash)?;
                        if info_hash.is_some_and(|h| h != hash) {
                            return Err(MagnetError::ConflictingHashes);
                        }
                        info_hash = Some(hash);
                    }
                    None => {
                        other_urn.get_or_insert(value);
                    }
                }
            } else if key == "dn" {
                // `+` is a space only in form-encoded names; a literal plus arrives as %2B.
                magnet.display_name = Some(decode_value(&raw.replace('+', " ")));
            } else if key_is(key, "tr") {
                let tracker = decode_value(raw);
                if !tracker.is_empty() && seen_trackers.insert(tracker.clone()) {
                    magnet.trackers.push(tracker);
                }
            } else if key_is(key, "x.pe")
                && let Ok(addr) = decode_value(raw).parse::<SocketAddr>()
                && addr.port() != 0
                && seen_peers.insert(addr)
            {
                magnet.peers.push(addr);
            }
        }
        magnet.info_hash = match (info_hash, other_urn) {
            (Some(hash), _) => hash,
            (None, Some(urn)) if strip_prefix_ignore_case(&urn, "urn:btmh:").is_some() => {
                return Err(MagnetError::V2Only);
            }
            (None, Some(urn)) => return Err(MagnetError::UnsupportedUrn(urn)),
            (None, None) => return Err(MagnetError::MissingXt),
        };
        Ok(magnet)
    }

    /// A magnet carrying nothing but the info hash.
    pub fn from_info_hash(info_hash: InfoHash) -> Magnet {
        Magnet {
            info_hash,
            display_name: None,
            trackers: Vec::new(),
            peers: Vec::new(),
        }
    }

    /// The canonical link: lowercase hex hash, then `dn`, `tr` and `x.pe` in that order, each
    /// value percent-encoded so that [`Magnet::parse`] gives back an equal `Magnet`.
    pub fn to_uri(&self) -> String {
        let mut uri = format!("magnet:?xt={BTIH}{}", self.info_hash.to_hex());
        if let Some(name) = &self.display_name {
            uri.push_str("&dn=");
            uri.extend(utf8_percent_encode(name, VALUE));
        }
        for tracker in &self.trackers {
            uri.push_str("&tr=");
            uri.extend(utf8_percent_encode(tracker, VALUE));
        }
        for peer in &self.peers {
            uri.push_str("&x.pe=");
            uri.extend(utf8_percent_encode(&peer.to_string(), PEER));
        }
        uri
    }
}

/// `strip_prefix` with an ASCII-case-insensitive prefix (`MAGNET:?`, `urn:BTIH:` occur).
fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

impl FromStr for Magnet {
    type Err = MagnetError;

    fn from_str(s: &str) -> Result<Magnet, MagnetError> {
        Magnet::parse(s)
    }
}

impl fmt::Display for Magnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_uri())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The info hash of the Ubuntu-style example used throughout: 20 distinct bytes.
    const HEX: &str = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";

    fn hash() -> InfoHash {
        InfoHash::from_hex(HEX).unwrap()
    }

    fn base32_of(h: &InfoHash) -> String {
        data_encoding::BASE32.encode(h.as_bytes())
    }

    #[test]
    fn parses_hex_link() {
        let m = Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}")).unwrap();
        assert_eq!(m, Magnet::from_info_hash(hash()));
    }

    #[test]
    fn hex_is_case_insensitive_and_prefixes_too() {
        let upper = HEX.to_ascii_uppercase();
        let m = Magnet::parse(&format!("MAGNET:?xt=URN:BTIH:{upper}")).unwrap();
        assert_eq!(m.info_hash, hash());
    }

    #[test]
    fn parses_base32_upper_and_lower() {
        let b32 = base32_of(&hash());
        assert_eq!(b32.len(), 32);
        for text in [b32.clone(), b32.to_ascii_lowercase()] {
            let m = Magnet::parse(&format!("magnet:?xt=urn:btih:{text}")).unwrap();
            assert_eq!(m.info_hash, hash(), "{text}");
        }
    }

    #[test]
    fn bare_hashes_are_accepted() {
        assert_eq!(Magnet::parse(HEX).unwrap(), Magnet::from_info_hash(hash()));
        assert_eq!(
            Magnet::parse(&format!("  {}\n", HEX.to_uppercase()))
                .unwrap()
                .info_hash,
            hash()
        );
        let b32 = base32_of(&hash()).to_lowercase();
        assert_eq!(Magnet::parse(&b32).unwrap().info_hash, hash());
        assert_eq!(
            "c12fe1c06bba254a9dc9f519b335aa7c1367a88a"
                .parse::<Magnet>()
                .unwrap()
                .info_hash,
            hash()
        );
    }

    #[test]
    fn bad_inputs_name_the_problem() {
        let cases: &[(&str, MagnetError)] = &[
            ("", MagnetError::NotMagnet),
            ("http://example.com/?xt=urn:btih:x", MagnetError::NotMagnet),
            ("magnet:xt=urn:btih:abc", MagnetError::NoQuery),
            ("magnet:?dn=foo&tr=udp%3A%2F%2Fa", MagnetError::MissingXt),
            ("magnet:?", MagnetError::MissingXt),
            (
                "magnet:?xt=urn:sha1:abcdef",
                MagnetError::UnsupportedUrn("urn:sha1:abcdef".into()),
            ),
            ("magnet:?xt=urn:btih:abc", MagnetError::BadHashLength(3)),
            ("magnet:?xt=urn:btih:", MagnetError::BadHashLength(0)),
            ("magnet:?xt&xt=", MagnetError::MissingXt),
            (
                "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a00",
                MagnetError::BadHashLength(42),
            ),
            (
                "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88g",
                MagnetError::BadHex('g', 39),
            ),
            (
                "magnet:?xt=urn:btih:zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz1",
                MagnetError::BadBase32('1', 31),
            ),
            ("abc", MagnetError::BadHashLength(3)),
            (
                "c12fe1c06bba254a9dc9f519b335aa7c1367a8é8",
                MagnetError::NotMagnet,
            ),
            // Non-ASCII is counted in characters, not bytes, and reported as written.
            (
                "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a8é8",
                MagnetError::BadHex('é', 38),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(Magnet::parse(input).as_ref(), Err(want), "{input}");
            assert!(!want.to_string().is_empty());
        }
    }

    #[test]
    fn error_messages_mention_the_culprit() {
        let e = Magnet::parse("magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88g");
        let msg = e.unwrap_err().to_string();
        assert!(msg.contains("'g'") && msg.contains("39"), "{msg}");
        let msg = Magnet::parse("magnet:?xt=urn:btih:abc")
            .unwrap_err()
            .to_string();
        assert!(msg.contains('3') && msg.contains("40"), "{msg}");
        let msg = Magnet::parse("magnet:?tr=x").unwrap_err().to_string();
        assert!(msg.contains("xt"), "{msg}");
    }

    #[test]
    fn v2_only_topic_is_refused_but_hybrid_uses_btih() {
        let v2 = "urn:btmh:1220caf1e1c30e81cb361b9ee167c4aa64228a7fa4fa9f6105232b28ad099f3a302e";
        assert_eq!(
            Magnet::parse(&format!("magnet:?xt={v2}")),
            Err(MagnetError::V2Only)
        );
        assert_eq!(
            MagnetError::V2Only.to_string(),
            "v2-only torrents are not supported yet"
        );
        let m = Magnet::parse(&format!("magnet:?xt={v2}&xt=urn:btih:{HEX}")).unwrap();
        assert_eq!(m.info_hash, hash());
    }

    #[test]
    fn indexed_and_repeated_topics() {
        let b32 = base32_of(&hash());
        // The same hash in two spellings is fine; two different hashes are not.
        let m = Magnet::parse(&format!("magnet:?xt.1=urn:btih:{HEX}&xt.2=urn:btih:{b32}")).unwrap();
        assert_eq!(m.info_hash, hash());
        let other = "0".repeat(40);
        assert_eq!(
            Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{other}")),
            Err(MagnetError::ConflictingHashes)
        );
        // `xtx` and `xt.` are not indexed forms of `xt`.
        assert_eq!(
            Magnet::parse(&format!("magnet:?xtx=urn:btih:{HEX}&xt.=urn:btih:{HEX}")),
            Err(MagnetError::MissingXt)
        );
    }

    #[test]
    fn display_name_is_percent_and_plus_decoded() {
        let m = Magnet::parse(&format!(
            "magnet:?xt=urn:btih:{HEX}&dn=Big+Buck%20Bunny%2B%26%3D%C3%A9"
        ))
        .unwrap();
        assert_eq!(m.display_name.as_deref(), Some("Big Buck Bunny+&=é"));
        // Invalid UTF-8 and broken escapes are kept rather than failing the link.
        let m = Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}&dn=a%FFb%zz")).unwrap();
        assert_eq!(m.display_name.as_deref(), Some("a\u{FFFD}b%zz"));
    }

    #[test]
    fn trackers_are_kept_in_order_without_duplicates() {
        let m = Magnet::parse(&format!(
            "magnet:?tr=udp%3A%2F%2Ftracker.example%3A1337%2Fannounce&xt=urn:btih:{HEX}\
             &tr=http://b.example/a+b&tr.1=udp%3A%2F%2Ftracker.example%3A1337%2Fannounce&tr="
        ))
        .unwrap();
        assert_eq!(
            m.trackers,
            vec![
                "udp://tracker.example:1337/announce".to_string(),
                "http://b.example/a+b".into()
            ]
        );
    }

    #[test]
    fn direct_peers_keep_only_ip_port() {
        let m = Magnet::parse(&format!(
            "magnet:?xt=urn:btih:{HEX}&x.pe=10.0.0.1:6881&x.pe=%5B2001:db8::1%5D:51413\
             &x.pe=host.example:6881&x.pe=10.0.0.2&x.pe=10.0.0.3:0&x.pe=10.0.0.4:70000\
             &x.pe=10.0.0.1:6881&x.pe=[::1]:1&x.pe.1=192.0.2.9%3A80"
        ))
        .unwrap();
        let want: Vec<SocketAddr> = [
            "10.0.0.1:6881",
            "[2001:db8::1]:51413",
            "[::1]:1",
            "192.0.2.9:80",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(m.peers, want);
    }

    #[test]
    fn unknown_parameters_and_fragments_are_ignored() {
        let m = Magnet::parse(&format!(
            "magnet:?xl=1234&xt=urn:btih:{HEX}&&ws=http%3A%2F%2Fw&so=0-3&kt=a+b&=x&dn=n#dn=frag"
        ))
        .unwrap();
        assert_eq!(m.info_hash, hash());
        assert_eq!(m.display_name.as_deref(), Some("n"));
        assert!(m.trackers.is_empty() && m.peers.is_empty());
    }

    #[test]
    fn canonical_uri_round_trips() {
        let mut m = Magnet::from_info_hash(hash());
        assert_eq!(m.to_uri(), format!("magnet:?xt=urn:btih:{HEX}"));
        m.display_name = Some("a b+c&d=e%f#g?h/é~-._".into());
        m.trackers = vec![
            "udp://t.example:80/announce?x=1&y=2".into(),
            "http://u/+".into(),
        ];
        m.peers = vec![
            "10.1.2.3:6881".parse().unwrap(),
            "[2001:db8::7]:443".parse().unwrap(),
            "[fe80::1%3]:9".parse().unwrap(),
        ];
        let uri = m.to_uri();
        assert!(
            uri.starts_with(&format!(
                "magnet:?xt=urn:btih:{HEX}&dn=a%20b%2Bc%26d%3De%25f%23g%3Fh%2F%C3%A9~-._&tr="
            )),
            "{uri}"
        );
        assert!(
            uri.contains("&x.pe=10.1.2.3:6881&x.pe=[2001:db8::7]:443"),
            "{uri}"
        );
        assert!(!uri.contains(' '));
        assert_eq!(Magnet::parse(&uri), Ok(m.clone()));
        assert_eq!(m.to_string(), uri);
        assert_eq!(uri.parse::<Magnet>(), Ok(m));
    }

    #[test]
    fn base32_link_canonicalises_to_hex() {
        let b32 = base32_of(&hash());
        let m = Magnet::parse(&format!("magnet:?xt=urn:btih:{b32}&dn=x")).unwrap();
        assert_eq!(m.to_uri(), format!("magnet:?xt=urn:btih:{HEX}&dn=x"));
    }

    #[test]
    fn huge_links_parse_in_linear_time() {
        // 100k distinct trackers and peers: quadratic de-duplication would take many seconds.
        let mut uri = format!("magnet:?xt=urn:btih:{HEX}");
        for i in 0..100_000u32 {
            let [_, a, b, c] = i.to_be_bytes();
            uri.push_str(&format!("&tr=udp%3A%2F%2Ft{i}&x.pe=10.{a}.{b}.{c}:1"));
        }
        let started = std::time::Instant::now();
        let m = Magnet::parse(&uri).unwrap();
        // clock-ok: a complexity check, not a speed test: linear parsing takes milliseconds,
        // a quadratic one minutes; 5 s sits three orders of magnitude from both.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!((m.trackers.len(), m.peers.len()), (100_000, 100_000));
    }

    #[test]
    fn arbitrary_garbage_never_panics() {
        // Slicing by a byte count could split a multi-byte character; make sure it cannot.
        for input in [
            "mag",
            "magné:?",
            "é",
            "magnet:?xt=urn:bti",
            "magnet:?xt=urn:btihé",
            "magnet:?xt=%",
            "magnet:?xt=urn:btih:%FF%FE",
        ] {
            assert!(Magnet::parse(input).is_err(), "{input}");
        }
    }
}
