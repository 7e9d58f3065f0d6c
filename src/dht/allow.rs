//! The outbound allow-list: the set of IPv4 and IPv6 networks this process may send to.
//!
//! Every datagram the DHT core emits and every TCP connection the peer-wire code opens is
//! checked here first, so a test (or a cautious operator) can confine all traffic to, say,
//! 127.0.0.0/8 and `fd77::/16` and be sure that no lookup result, `nodes` entry or PORT
//! message from a hostile or real-world packet makes us contact anything else.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// A network of either family in CIDR notation, e.g. `127.0.0.0/8` or `fd77::/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Builds a network; host bits of `addr` are cleared so equal networks compare equal.
    /// `None` when the prefix is longer than the family's address (32 or 128 bits).
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let addr = match addr {
            IpAddr::V4(a) => {
                if prefix > 32 {
                    return None;
                }
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask4(prefix)))
            }
            IpAddr::V6(a) => {
                if prefix > 128 {
                    return None;
                }
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask6(prefix)))
            }
        };
        Some(IpNet { addr, prefix })
    }

    /// Whether `ip` lies inside this network. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
    /// is the IPv4 address it carries: a dual-stack socket reports IPv4 peers that way, and
    /// they must not slip past (or be refused by) an IPv4 list.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => u32::from(a) & mask4(self.prefix) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                u128::from(a) & mask6(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }

    /// The loopback network, 127.0.0.0/8: what every test and tool in this project uses.
    pub const LOOPBACK: IpNet = IpNet {
        addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
        prefix: 8,
    };
}

fn mask4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why text is not a network (`--allow-net`'s one-line error says which part is wrong).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseNetError {
    /// The part before `/` is not an IPv4 or IPv6 address.
    Address(String),
    /// The part after `/` is not a number from 0 to 255.
    Prefix(String),
    /// The prefix is longer than the family's address (32 or 128 bits).
    PrefixTooLong {
        /// The text that did not parse.
        input: String,
        /// The longest prefix of its family.
        max: u8,
    },
}

impl fmt::Display for ParseNetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseNetError::Address(s) => write!(f, "invalid IP address in network {s:?}"),
            ParseNetError::Prefix(s) => write!(f, "invalid prefix length in network {s:?}"),
            ParseNetError::PrefixTooLong { input, max } => {
                write!(f, "prefix length above {max} in {input:?}")
            }
        }
    }
}

impl std::error::Error for ParseNetError {}

impl FromStr for IpNet {
    type Err = ParseNetError;

    /// Accepts `address/len` of either family, or a bare address (a /32 or /128).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => {
                let p: u8 = p.parse().map_err(|_| ParseNetError::Prefix(s.to_owned()))?;
                (a, Some(p))
            }
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| ParseNetError::Address(s.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        IpNet::new(addr, prefix.unwrap_or(max)).ok_or_else(|| ParseNetError::PrefixTooLong {
            input: s.to_owned(),
            max,
        })
    }
}

/// Which destinations outbound traffic may go to. An empty list allows everything (the
/// default for a node on the public internet); a non-empty one allows only its networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    nets: Vec<IpNet>,
}

impl AllowList {
    /// Allows every destination.
    pub fn any() -> Self {
        AllowList { nets: Vec::new() }
    }

    /// Allows only the given networks (an empty vector allows everything).
    pub fn only(nets: Vec<IpNet>) -> Self {
        AllowList { nets }
    }

    /// Only 127.0.0.0/8.
    pub fn loopback() -> Self {
        AllowList {
            nets: vec![IpNet::LOOPBACK],
        }
    }

    /// Whether the list restricts anything at all.
    pub fn is_restricted(&self) -> bool {
        !self.nets.is_empty()
    }

    /// The configured networks.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// Whether sending to `ip` is allowed: the list is empty, or one of its networks (of
    /// either family) contains it. An IPv6 address needs an IPv6 network: "only these
    /// networks" must not leak through the other family.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        self.nets.is_empty() || self.nets.iter().any(|n| n.contains(ip))
    }

    /// Whether sending to `addr` is allowed.
    pub fn allows(&self, addr: SocketAddr) -> bool {
        self.allows_ip(addr.ip())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches_networks() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let net: IpNet = "127.0.0.0/8".parse().unwrap();
        assert!(net.contains(ip("127.3.4.5")));
        assert!(!net.contains(ip("10.0.0.1")));
        let host: IpNet = "192.0.2.7".parse().unwrap();
        assert!(host.contains(ip("192.0.2.7")));
        assert!(!host.contains(ip("192.0.2.8")));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        assert!(
            !all.contains(ip("2001:db8::1")),
            "an IPv4 net holds no IPv6 address"
        );
        assert_eq!(
            "10.1.2.3/8".parse::<IpNet>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        // IPv6 networks, host bits cleared, bare addresses are /128.
        let ula: IpNet = "fd77::5/16".parse().unwrap();
        assert_eq!(ula.to_string(), "fd77::/16");
        assert!(ula.contains(ip("fd77::1")));
        assert!(ula.contains(ip("fd77:1234::9")));
        assert!(!ula.contains(ip("fd78::1")));
        assert!(!ula.contains(ip("127.0.0.1")));
        let one: IpNet = "fd77::3".parse().unwrap();
        assert!(one.contains(ip("fd77::3")) && !one.contains(ip("fd77::4")));
        let any6: IpNet = "::/0".parse().unwrap();
        assert!(any6.contains(ip("2001:db8::1")));
        assert!(
            !any6.contains(ip("::ffff:10.0.0.1")),
            "mapped forms are IPv4"
        );
        // IPv4-mapped addresses match IPv4 networks.
        assert!(net.contains(ip("::ffff:127.0.0.9")));
        for bad in [
            "",
            "127.0.0.0/33",
            "127.0.0/8",
            "abc/8",
            "1.2.3.4/x",
            "fd77::/129",
            "fd77::/-1",
            "fd77:::/16",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
        assert_eq!(
            "fd77::/129".parse::<IpNet>(),
            Err(ParseNetError::PrefixTooLong {
                input: "fd77::/129".into(),
                max: 128
            })
        );
        assert_eq!(
            "10.0.0.0/40".parse::<IpNet>().unwrap_err().to_string(),
            "prefix length above 32 in \"10.0.0.0/40\""
        );
        assert!(matches!(
            "x/8".parse::<IpNet>(),
            Err(ParseNetError::Address(_))
        ));
        assert!(matches!(
            "1.2.3.4/y".parse::<IpNet>(),
            Err(ParseNetError::Prefix(_))
        ));
        assert!(IpNet::new(ip("::1"), 129).is_none());
        assert!(IpNet::new(ip("1.2.3.4"), 33).is_none());
    }

    #[test]
    fn allow_list_semantics() {
        let lo = AllowList::loopback();
        assert!(lo.allows("127.0.0.1:1".parse().unwrap()));
        assert!(!lo.allows("10.0.0.1:6881".parse().unwrap()));
        assert!(!lo.allows("[2001:db8::1]:6881".parse().unwrap()));
        assert!(!lo.allows("[::1]:6881".parse().unwrap()));
        assert!(lo.allows("[::ffff:127.0.0.2]:6881".parse().unwrap()));
        assert!(AllowList::any().allows("10.0.0.1:6881".parse().unwrap()));
        assert!(AllowList::any().allows("[2001:db8::1]:6881".parse().unwrap()));
        // A list of both families: each address needs a network of its own family.
        let both = AllowList::only(vec![IpNet::LOOPBACK, "fd77::/16".parse().unwrap()]);
        assert!(both.allows("[fd77::2]:6881".parse().unwrap()));
        assert!(both.allows("127.9.9.9:6881".parse().unwrap()));
        assert!(!both.allows("[fd78::2]:6881".parse().unwrap()));
        assert!(!both.allows("10.0.0.1:6881".parse().unwrap()));
    }
}
