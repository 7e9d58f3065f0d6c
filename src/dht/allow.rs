//! The outbound allow-list: the set of IPv4 networks this process may send to.
//!
//! Every datagram the DHT core emits and every TCP connection the peer-wire code opens is
//! checked here first, so a test (or a cautious operator) can confine all traffic to, say,
//! 127.0.0.0/8 and be sure that no lookup result, `nodes` entry or PORT message from a hostile
//! or real-world packet makes us contact anything else.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

/// An IPv4 network in CIDR notation, e.g. `127.0.0.0/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// Builds a network; host bits of `addr` are cleared so equal networks compare equal.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        if prefix > 32 {
            return None;
        }
        let masked = u32::from(addr) & Self::mask(prefix);
        Some(Ipv4Net {
            addr: Ipv4Addr::from(masked),
            prefix,
        })
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == u32::from(self.addr)
    }

    /// The loopback network, 127.0.0.0/8: what every test and tool in this project uses.
    pub const LOOPBACK: Ipv4Net = Ipv4Net {
        addr: Ipv4Addr::new(127, 0, 0, 0),
        prefix: 8,
    };
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;

    /// Accepts `a.b.c.d/len` or a bare address (a /32).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => {
                let p: u8 = p
                    .parse()
                    .map_err(|_| format!("invalid prefix length in network {s:?}"))?;
                (a, p)
            }
            None => (s, 32),
        };
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("invalid IPv4 address in network {s:?}"))?;
        Ipv4Net::new(addr, prefix).ok_or_else(|| format!("prefix length above 32 in {s:?}"))
    }
}

/// Which destinations outbound traffic may go to. An empty list allows everything (the
/// default for a node on the public internet); a non-empty one allows only its networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    nets: Vec<Ipv4Net>,
}

impl AllowList {
    /// Allows every destination.
    pub fn any() -> Self {
        AllowList { nets: Vec::new() }
    }

    /// Allows only the given networks (an empty vector allows everything).
    pub fn only(nets: Vec<Ipv4Net>) -> Self {
        AllowList { nets }
    }

    /// Only 127.0.0.0/8.
    pub fn loopback() -> Self {
        AllowList {
            nets: vec![Ipv4Net::LOOPBACK],
        }
    }

    /// Whether the list restricts anything at all.
    pub fn is_restricted(&self) -> bool {
        !self.nets.is_empty()
    }

    /// The configured networks.
    pub fn nets(&self) -> &[Ipv4Net] {
        &self.nets
    }

    /// Whether sending to `ip` is allowed. IPv6 is refused whenever a list is set, because
    /// the list is IPv4-only and "only these networks" must not leak through another family.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        if self.nets.is_empty() {
            return true;
        }
        match ip {
            IpAddr::V4(v4) => self.nets.iter().any(|n| n.contains(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.nets.iter().any(|n| n.contains(v4)),
                None => false,
            },
        }
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
        let net: Ipv4Net = "127.0.0.0/8".parse().unwrap();
        assert!(net.contains(Ipv4Addr::new(127, 3, 4, 5)));
        assert!(!net.contains(Ipv4Addr::new(10, 0, 0, 1)));
        let host: Ipv4Net = "192.0.2.7".parse().unwrap();
        assert!(host.contains(Ipv4Addr::new(192, 0, 2, 7)));
        assert!(!host.contains(Ipv4Addr::new(192, 0, 2, 8)));
        let all: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(8, 8, 8, 8)));
        assert_eq!(
            "10.1.2.3/8".parse::<Ipv4Net>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        for bad in ["", "127.0.0.0/33", "127.0.0/8", "abc/8", "1.2.3.4/x"] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad}");
        }
    }

    #[test]
    fn allow_list_semantics() {
        let lo = AllowList::loopback();
        assert!(lo.allows("127.0.0.1:1".parse().unwrap()));
        assert!(!lo.allows("10.0.0.1:6881".parse().unwrap()));
        assert!(!lo.allows("[2001:db8::1]:6881".parse().unwrap()));
        assert!(lo.allows("[::ffff:127.0.0.2]:6881".parse().unwrap()));
        assert!(AllowList::any().allows("10.0.0.1:6881".parse().unwrap()));
    }
}
