//! Bootstrap routers: the embedded default list, list files, and name resolution.

use std::fmt;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::dht::id::Family;
use crate::util::Backoff;

use crate::dht::id::NodeAddr;
use std::path::{Path, PathBuf};

/// The default routers (`bootstrap-nodes.txt`, embedded at build time).
pub const DEFAULT_LIST: &str = include_str!("../../bootstrap-nodes.txt");

/// What is wrong with a router entry or list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapError {
    /// The entry has no `:port`.
    NotHostPort(String),
    /// The entry has an empty host.
    NoHost(String),
    /// The port is not a number from 1 to 65535.
    BadPort(String),
    /// A line of a list file is bad.
    Line {
        /// The 1-based line number in the list.
        line: usize,
        /// What is wrong with the entry on that line.
        error: Box<BootstrapError>,
    },
    /// A list file cannot be read.
    Read {
        /// The list file.
        path: PathBuf,
        /// The I/O error, as text.
        detail: String,
    },
    /// A list file holds no entry.
    Empty {
        /// The list file.
        path: PathBuf,
    },
    /// A list file has a bad line (the file named).
    InFile {
        /// The list file.
        path: PathBuf,
        /// The [`BootstrapError::Line`] error for the bad line.
        error: Box<BootstrapError>,
    },
}

impl fmt::Display for BootstrapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootstrapError::NotHostPort(e) => write!(f, "{e:?} is not host:port"),
            BootstrapError::NoHost(e) => write!(f, "{e:?} has no host"),
            BootstrapError::BadPort(e) => write!(f, "{e:?} has an invalid port"),
            BootstrapError::Line { line, error } => write!(f, "line {line}: {error}"),
            BootstrapError::Read { path, detail } => {
                write!(f, "cannot read bootstrap file {}: {detail}", path.display())
            }
            BootstrapError::Empty { path } => {
                write!(f, "{}: no bootstrap nodes in file", path.display())
            }
            BootstrapError::InFile { path, error } => write!(f, "{}: {error}", path.display()),
        }
    }
}

impl std::error::Error for BootstrapError {}

/// Parses a router list: one `host:port` per line, `#` comments and blank lines ignored.
/// Errors name the offending line.
pub fn parse_list(text: &str) -> Result<Vec<String>, BootstrapError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        validate_entry(line).map_err(|e| BootstrapError::Line {
            line: n + 1,
            error: Box::new(e),
        })?;
        out.push(line.to_string());
    }
    Ok(out)
}

/// Reads and parses a router list file.
pub fn read_list(path: &Path) -> Result<Vec<String>, BootstrapError> {
    let text = std::fs::read_to_string(path).map_err(|e| BootstrapError::Read {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let list = parse_list(&text).map_err(|e| BootstrapError::InFile {
        path: path.to_path_buf(),
        error: Box::new(e),
    })?;
    if list.is_empty() {
        return Err(BootstrapError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(list)
}

/// Checks that `entry` looks like `host:port` with a non-zero port.
pub fn validate_entry(entry: &str) -> Result<(), BootstrapError> {
    let (host, port) = entry
        .rsplit_once(':')
        .ok_or_else(|| BootstrapError::NotHostPort(entry.to_string()))?;
    if host.is_empty() {
        return Err(BootstrapError::NoHost(entry.to_string()));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(BootstrapError::BadPort(entry.to_string())),
    }
}

/// The default list, parsed.
pub fn default_list() -> Vec<String> {
    parse_list(DEFAULT_LIST).expect("embedded bootstrap list is valid")
}

/// Resolves `host:port` entries to addresses of both families (A and AAAA records; an
/// IPv4-mapped answer counts as IPv4). Entries that do not resolve are skipped (and reported
/// in the error list) so one dead name does not stop the others; each node takes its own
/// family's.
pub async fn resolve(entries: &[String]) -> (Vec<SocketAddr>, Vec<String>) {
    let mut addrs = Vec::new();
    let mut errors = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for e in entries.iter().filter(|e| seen.insert(e.as_str())) {
        match tokio::net::lookup_host(e.as_str()).await {
            Ok(it) => {
                let before = addrs.len();
                for a in it {
                    let a = match SocketAddrV4::from_socket(a) {
                        Some(v4) => SocketAddr::V4(v4),
                        None => a,
                    };
                    if !addrs.contains(&a) {
                        addrs.push(a);
                    }
                }
                if addrs.len() == before {
                    errors.push(format!("{e}: no address"));
                }
            }
            Err(err) => errors.push(format!("{e}: {err}")),
        }
    }
    (addrs, errors)
}

/// When to resolve the bootstrap routers again, for each family a node runs.
///
/// Why per family: the IPv4 and IPv6 DHTs join separately (BEP 32), and a router list
/// often has A records but no AAAA (or a host resolves one family only for a while). One
/// retry clock for both would either re-bootstrap a family that already joined or give up
/// on the one still waiting; here each family that got no address retries on its own
/// doubling pause, and a family that got one is done. Sans-IO: the caller passes `now`.
#[derive(Debug, Clone)]
pub struct ResolveSchedule {
    families: [Retry; 2],
}

#[derive(Debug, Clone)]
struct Retry {
    /// Still waiting for a first address (and the node runs this family).
    pending: bool,
    /// When to try again; `None` before the first attempt.
    next: Option<Instant>,
    backoff: Backoff,
    /// Failed attempts so far (only the first is worth a warning).
    failures: u32,
}

impl ResolveSchedule {
    /// A schedule for a node running IPv4 (`v4`) and/or IPv6 (`v6`): both due at once.
    pub fn new(v4: bool, v6: bool) -> Self {
        let retry = |runs: bool| Retry {
            pending: runs,
            next: None,
            backoff: Backoff::new(Duration::from_secs(5), Duration::from_secs(300)),
            failures: 0,
        };
        ResolveSchedule {
            families: [retry(v4), retry(v6)],
        }
    }

    fn index(f: Family) -> usize {
        match f {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }

    /// Whether `family` should be resolved (again) at `now`.
    pub fn due(&self, now: Instant, family: Family) -> bool {
        let r = &self.families[Self::index(family)];
        r.pending && r.next.is_none_or(|t| t <= now)
    }

    /// Whether any family still waits for an address.
    pub fn pending(&self) -> bool {
        self.families.iter().any(|r| r.pending)
    }

    /// When the next family is due, if any still waits.
    pub fn next_at(&self) -> Option<Instant> {
        self.families
            .iter()
            .filter(|r| r.pending)
            .map(|r| r.next)
            .min()
            .flatten()
    }

    /// Records a resolution attempt for `family` at `now` that found `found` addresses of
    /// it. Returns the number of failed attempts so far (0 when it found some: the family
    /// is done).
    pub fn attempted(&mut self, now: Instant, family: Family, found: usize) -> u32 {
        let r = &mut self.families[Self::index(family)];
        if found > 0 {
            r.pending = false;
            r.next = None;
            return 0;
        }
        r.failures += 1;
        r.next = Some(now + r.backoff.next_pause());
        r.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each family retries on its own clock: the one that resolved is done, the other
    /// doubles its pause; a family the node does not run is never due.
    #[test]
    fn each_family_retries_on_its_own_backoff() {
        let t0 = Instant::now();
        let mut s = ResolveSchedule::new(true, true);
        assert!(s.due(t0, Family::V4) && s.due(t0, Family::V6));
        assert_eq!(s.next_at(), None, "both due now");
        assert_eq!(s.attempted(t0, Family::V4, 2), 0);
        assert_eq!(s.attempted(t0, Family::V6, 0), 1);
        assert!(
            !s.due(t0 + Duration::from_secs(3600), Family::V4),
            "v4 is done"
        );
        assert!(s.pending());
        assert_eq!(s.next_at(), Some(t0 + Duration::from_secs(5)));
        assert!(!s.due(t0 + Duration::from_secs(4), Family::V6));
        let t1 = t0 + Duration::from_secs(5);
        assert!(s.due(t1, Family::V6));
        assert_eq!(s.attempted(t1, Family::V6, 0), 2);
        assert_eq!(s.next_at(), Some(t1 + Duration::from_secs(10)), "doubled");
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(s.attempted(t2, Family::V6, 1), 0);
        assert!(!s.pending());
        assert_eq!(s.next_at(), None);

        let v4_only = ResolveSchedule::new(true, false);
        assert!(!v4_only.due(t0, Family::V6));
        let mut v6_only = ResolveSchedule::new(false, true);
        assert!(!v6_only.due(t0, Family::V4) && v6_only.due(t0, Family::V6));
        v6_only.attempted(t0, Family::V6, 0);
        assert_eq!(v6_only.next_at(), Some(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn embedded_list_has_the_well_known_routers() {
        let l = default_list();
        assert_eq!(l.len(), 5);
        assert!(l.contains(&"router.bittorrent.com:6881".to_string()));
        assert!(l.contains(&"dht.libtorrent.org:25401".to_string()));
    }

    #[test]
    fn parse_rejects_bad_lines_with_line_numbers() {
        assert_eq!(
            parse_list("# c\n\n127.0.0.1:6881 # local\nhost:1\n").unwrap(),
            vec!["127.0.0.1:6881", "host:1"]
        );
        let e = parse_list("127.0.0.1:6881\nnoport\n").unwrap_err();
        assert!(e.to_string().starts_with("line 2:"), "{e}");
        assert!(matches!(e, BootstrapError::Line { line: 2, .. }));
        assert!(parse_list("h:0").is_err());
        assert!(parse_list(":5").is_err());
        assert!(parse_list("h:99999").is_err());
    }

    #[tokio::test]
    async fn resolves_ip_literals_without_dns() {
        let (a, e) = resolve(&["127.0.0.1:6881".to_string(), "127.0.0.2:1".to_string()]).await;
        assert_eq!(a.len(), 2);
        assert!(e.is_empty());
    }
}
