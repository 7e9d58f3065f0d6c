//! Command-line pieces shared by the binaries (compiled into each of them with `#[path]`, so
//! clap stays out of the library's API): network flags, data directory, logging,
//! one-line errors.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use trackerless::dht::allow::{AllowList, IpNet};
use trackerless::dht::bootstrap;
use trackerless::dht::driver::DhtConfig;
use trackerless::dht::limits::RateLimit;
use trackerless::dht::node;
use trackerless::wire::EncryptionPolicy;

/// Peer-connection flags of the commands that talk to peers (dht-get, dht-seed).
#[derive(Debug, Clone, Args)]
pub struct PeerArgs {
    /// Address to accept peer connections on, TCP and uTP (repeatable, e.g. one per
    /// family; all share one port, and one given with port 0 takes the first one's).
    /// Default: beside each --bind address, any port; with both families on wildcard
    /// addresses, one dual-stack `[::]` listener (IPv4 only where IPv6 is missing).
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// Peer connections open at once, both directions.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=2000))]
    pub max_peers: u16,
    /// Turn off peer exchange (BEP 11 `ut_pex`): do not advertise it, ignore peers' PEX
    /// messages and send none. Without this flag PEX is on, except for private torrents.
    #[arg(long)]
    pub no_pex: bool,
}

/// Which transports peer connections use (dht-get and dht-seed).
#[derive(Debug, Clone, Copy, Args)]
pub struct TransportArgs {
    /// Do not use uTP (BEP 29): no UDP socket on the listen port, TCP only.
    #[arg(long, conflicts_with = "no_tcp")]
    pub no_utp: bool,
    /// Do not use TCP for peer connections: uTP only (the TCP listener still holds the
    /// port number, but refuses connections).
    #[arg(long)]
    pub no_tcp: bool,
    /// MSE/PE (BitTorrent protocol encryption), both directions. `default`: accept plain
    /// and encrypted; connect plain first and, if the peer hangs up during the handshake,
    /// once more encrypted (libtorrent's default). `prefer`: connect encrypted first
    /// (offering RC4 or plaintext after the handshake), plain once more if refused.
    /// `require`: RC4 only, both directions; plain peers are refused. `disable`: plain
    /// only; incoming encrypted handshakes are refused.
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = EncryptionPolicy::Default)]
    pub encryption: EncryptionPolicy,
}

/// Flags every DHT-speaking command takes.
#[derive(Debug, Clone, Args)]
pub struct NetArgs {
    /// UDP address of the DHT node, one per family (repeatable): an IPv4 address for the
    /// IPv4 DHT and/or an IPv6 one for the IPv6 DHT (BEP 32); an IPv6 address alone runs
    /// an IPv6-only node. Given, only the addresses given are bound; the default binds
    /// both, and on a host without IPv6 runs IPv4 only (one log line).
    #[arg(
        long,
        value_name = "ADDR",
        default_values = [DEFAULT_BIND4, DEFAULT_BIND6]
    )]
    pub bind: Vec<SocketAddr>,
    /// Bootstrap router host:port (repeatable); replaces the built-in list.
    #[arg(long, value_name = "ADDR")]
    pub bootstrap: Vec<String>,
    /// File with one bootstrap router host:port per line; replaces the built-in list.
    #[arg(long, value_name = "PATH")]
    pub bootstrap_file: Option<PathBuf>,
    /// A known DHT node ip:port (repeatable; either family, `[v6]:port` for IPv6): pinged
    /// at start and, unlike a bootstrap router, kept in its family's routing table once it
    /// answers.
    #[arg(long, value_name = "ADDR")]
    pub contact: Vec<SocketAddr>,
    /// Directory for persistent state (default: the per-user data directory).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Only send to this IPv4 or IPv6 network, e.g. 127.0.0.0/8 or fd77::/16 (repeatable;
    /// default: anywhere).
    #[arg(long, value_name = "CIDR", value_parser = parse_net)]
    pub allow_net: Vec<IpNet>,
    /// Allow several routing-table entries from one /24 (for private test networks).
    #[arg(long)]
    pub no_subnet_limit: bool,
    /// Packets one IP may send per 10 s before it is ignored for 5 minutes (0 = no limit).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub rate_limit: u32,
    /// Bytes per second of replies at most (0 = no quota).
    #[arg(long, value_name = "BYTES", default_value_t = node::DEFAULT_REPLY_QUOTA)]
    pub reply_quota: u64,
    /// Only admit routing-table nodes whose id is valid for their IP (BEP 42).
    #[arg(long)]
    pub enforce_node_id: bool,
    /// Save the routing table to the data directory every SECS seconds (fractions allowed).
    /// The store survives a crash at any moment, so this only bounds how many contacts a
    /// crashed node forgets; shorter means more disk writes.
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = parse_interval)]
    pub save_interval: Duration,
}

/// `--bind`'s IPv4 default.
const DEFAULT_BIND4: &str = "0.0.0.0:6881";
/// `--bind`'s IPv6 default.
const DEFAULT_BIND6: &str = "[::]:6881";

fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse()
        .map_err(|e: trackerless::dht::allow::ParseNetError| e.to_string())
}

/// A positive number of seconds, at most a day (a zero period would save in a busy loop).
fn parse_interval(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.001..=86_400.0).contains(&secs) {
        return Err(format!("{s} is outside 0.001 to 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl NetArgs {
    /// The addresses of `--bind` as [`DhtConfig`] takes them: the IPv4 one and the
    /// (optional) IPv6 one, or the IPv6 one alone for an IPv6-only node; at most one of
    /// each family.
    pub fn binds(&self) -> Result<(SocketAddr, Option<SocketAddr>), String> {
        let v4: Vec<_> = self.bind.iter().filter(|a| a.is_ipv4()).collect();
        let v6: Vec<_> = self.bind.iter().filter(|a| a.is_ipv6()).collect();
        if v4.len() > 1 || v6.len() > 1 {
            return Err("--bind: at most one address per family".into());
        }
        match (v4.first(), v6.first()) {
            (Some(&&v4), v6) => Ok((v4, v6.map(|a| **a))),
            (None, Some(&&v6)) => Ok((v6, None)),
            (None, None) => Err("--bind: an address is required".into()),
        }
    }

    /// Whether `--bind` was left at its default (both families, IPv6 optional).
    fn default_bind(&self) -> bool {
        self.bind
            == [
                DEFAULT_BIND4.parse::<SocketAddr>().expect("valid"),
                DEFAULT_BIND6.parse().expect("valid"),
            ]
    }

    /// The data directory: `--data-dir`, else `$XDG_DATA_HOME/trackerless`, else
    /// `~/.local/share/trackerless`.
    pub fn data_dir(&self) -> Result<PathBuf, String> {
        if let Some(d) = &self.data_dir {
            return Ok(d.clone());
        }
        default_data_dir()
    }

    /// The bootstrap routers: `--bootstrap`, then `--bootstrap-file`, else the built-in list.
    pub fn routers(&self) -> Result<Vec<String>, String> {
        let mut routers = Vec::new();
        for b in &self.bootstrap {
            bootstrap::validate_entry(b).map_err(|e| format!("--bootstrap: {e}"))?;
            routers.push(b.clone());
        }
        if let Some(path) = &self.bootstrap_file {
            routers.extend(bootstrap::read_list(path).map_err(|e| e.to_string())?);
        }
        if routers.is_empty() {
            routers = bootstrap::default_list();
        }
        Ok(routers)
    }

    /// A node configuration from these flags; the node store lives in `<data dir>/dht`.
    pub fn dht_config(&self) -> Result<DhtConfig, String> {
        let (bind, bind6) = self.binds()?;
        let mut cfg = DhtConfig::new(bind);
        cfg.bind6 = bind6;
        cfg.bind6_optional = self.default_bind();
        cfg.bootstrap = self.routers()?;
        cfg.contacts = self.contact.clone();
        cfg.data_dir = Some(self.data_dir()?.join("dht"));
        cfg.save_interval = self.save_interval;
        cfg.node = node::Config {
            allow: AllowList::only(self.allow_net.clone()),
            ..node::Config::default()
        };
        cfg.node.routing.restrict_subnets = !self.no_subnet_limit;
        cfg.node.routing.enforce_node_id = self.enforce_node_id;
        cfg.node.rate_limit = (self.rate_limit > 0).then(|| RateLimit {
            packets: self.rate_limit,
            ..RateLimit::default()
        });
        cfg.node.reply_quota = (self.reply_quota > 0).then_some(self.reply_quota);
        Ok(cfg)
    }
}

/// The per-user data directory.
pub fn default_data_dir() -> Result<PathBuf, String> {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("trackerless"));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".local/share/trackerless")),
        None => Err("no HOME or XDG_DATA_HOME; pass --data-dir".into()),
    }
}

/// Logs to stderr through tracing, filtered by `RUST_LOG` (default `info`).
///
/// Colour codes only go to a terminal: when stderr is a pipe or a file (systemd's journal,
/// `2> log`, a test reading the output) they would be literal `\x1b[...m` noise in every
/// line, so the output is plain text there. `NO_COLOR` (<https://no-color.org>, any
/// non-empty value) turns colour off on a terminal too.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(log_colour(std::io::stderr().is_terminal(), no_color))
        .try_init();
}

/// Whether log lines carry ANSI colour codes: only on a terminal, and not when the user
/// asked for none with `NO_COLOR`.
fn log_colour(stderr_is_terminal: bool, no_color: bool) -> bool {
    stderr_is_terminal && !no_color
}

/// Prints `error: <message>` and exits with status 1.
pub fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}

/// Resolves when the process receives Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Starts a node with its persisted state; if the store is unavailable (typically locked by
/// a running `dht-node` on the same data directory), runs without persistence instead of
/// refusing to work: a downloader or seeder beside a node should still work.
pub fn start_dht_or_without_store(
    cfg: DhtConfig,
) -> Result<trackerless::dht::driver::DhtHandle, String> {
    use trackerless::dht::driver::{Dht, StartError};
    match Dht::spawn(cfg.clone()) {
        Ok(h) => Ok(h),
        Err(StartError::Store(e)) => {
            tracing::warn!("node store unavailable ({e}); continuing without persistence");
            Dht::spawn(DhtConfig {
                data_dir: None,
                ..cfg
            })
            .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Addresses for a status line: `a, b`.
pub fn addr_list(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The client settings the shared peer, network and transport flags give (a fresh peer id;
/// the rest of [`ClientConfig`](trackerless::client::ClientConfig) at its defaults for the caller to override).
pub fn client_config(
    peer: &PeerArgs,
    net: &NetArgs,
    transport: TransportArgs,
) -> trackerless::client::ClientConfig {
    trackerless::client::ClientConfig {
        peer_id: trackerless::torrent::PeerId::generate(),
        allow: AllowList::only(net.allow_net.clone()),
        // Empty: the client listens beside the DHT's sockets (`client::default_listen`).
        listen: peer.listen.clone(),
        max_peers: usize::from(peer.max_peers),
        utp: !transport.no_utp,
        tcp: !transport.no_tcp,
        encryption: transport.encryption,
        pex: !peer.no_pex,
        ..trackerless::client::ClientConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        net: NetArgs,
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(log_colour(true, false));
        assert!(!log_colour(false, false), "a pipe or file gets plain text");
        assert!(!log_colour(true, true), "NO_COLOR wins on a terminal");
        assert!(!log_colour(false, true));
    }

    /// `--bind` per family: the default asks for both (IPv6 optional), given addresses are
    /// exactly what is bound, an IPv4 one is required, one per family at most.
    #[test]
    fn bind_takes_one_address_per_family() {
        let parse = |args: &[&str]| {
            let mut v = vec!["x"];
            v.extend_from_slice(args);
            T::try_parse_from(v).unwrap().net.dht_config()
        };
        let d = parse(&[]).unwrap();
        assert_eq!(d.bind, "0.0.0.0:6881".parse().unwrap());
        assert_eq!(d.bind6, Some("[::]:6881".parse().unwrap()));
        assert!(d.bind6_optional);
        let one = parse(&["--bind", "127.0.0.5:7000"]).unwrap();
        assert_eq!((one.bind6, one.bind6_optional), (None, false));
        let two = parse(&["--bind", "127.0.0.5:7000", "--bind", "[fd77::5]:7000"]).unwrap();
        assert_eq!(two.bind6, Some("[fd77::5]:7000".parse().unwrap()));
        assert!(!two.bind6_optional, "an IPv6 address given must bind");
        let contacts = parse(&["--contact", "127.0.0.7:1", "--contact", "[fd77::7]:2"]).unwrap();
        assert_eq!(
            contacts.contacts,
            vec![
                "127.0.0.7:1".parse::<SocketAddr>().unwrap(),
                "[fd77::7]:2".parse().unwrap()
            ],
            "--contact takes either family"
        );
        let v6_only = parse(&["--bind", "[fd77::5]:7000"]).unwrap();
        assert_eq!(v6_only.bind, "[fd77::5]:7000".parse().unwrap());
        assert_eq!((v6_only.bind6, v6_only.bind6_optional), (None, false));
        assert!(parse(&["--bind", "127.0.0.5:1", "--bind", "127.0.0.6:1"]).is_err());
    }

    #[test]
    fn flags_build_a_config() {
        let t = T::try_parse_from([
            "x",
            "--bind",
            "127.0.0.5:7000",
            "--bootstrap",
            "127.0.0.6:6881",
            "--contact",
            "127.0.0.7:6881",
            "--contact",
            "127.0.0.8:6881",
            "--allow-net",
            "127.0.0.0/8",
            "--data-dir",
            "/tmp/x",
            "--no-subnet-limit",
            "--rate-limit",
            "0",
            "--reply-quota",
            "1000",
            "--enforce-node-id",
            "--save-interval",
            "0.25",
        ])
        .unwrap();
        let cfg = t.net.dht_config().unwrap();
        assert_eq!(cfg.bind, "127.0.0.5:7000".parse().unwrap());
        assert_eq!(cfg.bootstrap, vec!["127.0.0.6:6881".to_string()]);
        assert_eq!(
            cfg.contacts,
            vec![
                "127.0.0.7:6881".parse().unwrap(),
                "127.0.0.8:6881".parse().unwrap()
            ]
        );
        assert_eq!(cfg.data_dir, Some(PathBuf::from("/tmp/x/dht")));
        assert!(cfg.node.allow.allows("127.1.1.1:1".parse().unwrap()));
        assert!(!cfg.node.allow.allows("10.0.0.1:1".parse().unwrap()));
        assert!(!cfg.node.routing.restrict_subnets);
        assert!(cfg.node.routing.enforce_node_id);
        assert_eq!(cfg.node.rate_limit, None);
        assert_eq!(cfg.node.reply_quota, Some(1000));
        assert_eq!(cfg.save_interval, Duration::from_millis(250));
        assert!(T::try_parse_from(["x", "--allow-net", "10.0.0.0/40"]).is_err());
        for bad in ["0", "-1", "nan", "inf", "1e9", "soon"] {
            assert!(
                T::try_parse_from(["x", "--save-interval", bad]).is_err(),
                "{bad}"
            );
        }
        let t = T::try_parse_from(["x", "--bootstrap", "nope"]).unwrap();
        assert!(t.net.dht_config().is_err());
        let t = T::try_parse_from(["x"]).unwrap();
        assert_eq!(t.net.routers().unwrap(), bootstrap::default_list());
        let cfg = t.net.dht_config().unwrap();
        assert_eq!(cfg.node.rate_limit, Some(RateLimit::default()));
        assert_eq!(cfg.node.reply_quota, Some(node::DEFAULT_REPLY_QUOTA));
        assert_eq!(cfg.save_interval, DhtConfig::new(cfg.bind).save_interval);
    }
}
