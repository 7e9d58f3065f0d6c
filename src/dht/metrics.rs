//! Prometheus metrics: text-format rendering and a minimal HTTP endpoint (`--metrics ADDR`).
//!
//! Operators scrape `/metrics`; the exposition format is plain text, so a few dozen lines of
//! HTTP/1.x on tokio serve it without pulling in an HTTP stack. The server only ever answers
//! `GET /metrics` (and `/`), reads at most 8 KiB per request, times out idle clients and
//! caps concurrent connections, so exposing it cannot be used to exhaust the node.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::dht::id::Family;
use crate::dht::node::{MethodCounts, Stats};
use crate::dht::router::RouterStats;

/// Prefix of every metric name.
pub const PREFIX: &str = "trackerless";

/// Builds a Prometheus text exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Exposition::default()
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {PREFIX}_{name} {help}");
        let _ = writeln!(self.out, "# TYPE {PREFIX}_{name} {kind}");
    }

    /// A counter (monotonic since start).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, help, "counter");
        let _ = writeln!(self.out, "{PREFIX}_{name} {value}");
    }

    /// A gauge (current value).
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, help, "gauge");
        let _ = writeln!(self.out, "{PREFIX}_{name} {value}");
    }

    /// A counter with one label, e.g. queries by `method`.
    pub fn counter_by(&mut self, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
        self.header(name, help, "counter");
        for (l, v) in values {
            let _ = writeln!(self.out, "{PREFIX}_{name}{{{label}=\"{l}\"}} {v}");
        }
    }

    /// A gauge with one label, e.g. the router's contacts by `family`.
    pub fn gauge_by(&mut self, name: &str, help: &str, label: &str, values: &[(&str, f64)]) {
        self.header(name, help, "gauge");
        for (l, v) in values {
            let _ = writeln!(self.out, "{PREFIX}_{name}{{{label}=\"{l}\"}} {v}");
        }
    }

    /// Queries received by method (the router's; a node's carry its family too).
    fn queries_received(&mut self, m: &MethodCounts) {
        self.counter_by(
            "queries_received_total",
            "Queries received, by method.",
            "method",
            &by_method(m),
        );
    }

    /// UDP traffic counters of the router.
    fn traffic(&mut self, bytes_in: u64, bytes_out: u64, packets_in: u64, packets_out: u64) {
        self.counter(
            "bytes_received_total",
            "UDP payload bytes received.",
            bytes_in,
        );
        self.counter("bytes_sent_total", "UDP payload bytes sent.", bytes_out);
        self.counter("packets_received_total", "Datagrams received.", packets_in);
        self.counter("packets_sent_total", "Datagrams sent.", packets_out);
    }

    /// The exposition text, ready to serve as `text/plain; version=0.0.4`.
    pub fn finish(self) -> String {
        self.out
    }
}

/// The `method` label's values: the same in both node modes, so one dashboard serves both.
fn by_method(m: &MethodCounts) -> Vec<(&'static str, u64)> {
    vec![
        ("ping", m.ping),
        ("find_node", m.find_node),
        ("get_peers", m.get_peers),
        ("announce_peer", m.announce_peer),
        ("sample_infohashes", m.sample_infohashes),
        ("get", m.get),
        ("put", m.put),
        ("other", m.other),
    ]
}

/// `part / whole`, 0 when there is nothing yet (a gauge must stay a number).
fn share(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { part / whole } else { 0.0 }
}

/// One family's counter or gauge value, for [`Families`].
type Sample = fn(&Stats) -> f64;

/// The node's series, one line per address family (`family="ipv4"`, `"ipv6"`): each metric's
/// `HELP`/`TYPE` once, then its samples, as the exposition format wants.
struct Families<'a> {
    e: Exposition,
    stats: &'a [(Family, &'a Stats)],
}

impl Families<'_> {
    fn series(&mut self, name: &str, help: &str, kind: &str, value: Sample) {
        self.e.header(name, help, kind);
        for (f, s) in self.stats {
            let _ = writeln!(
                self.e.out,
                "{PREFIX}_{name}{{family=\"{}\"}} {}",
                f.label(),
                value(s)
            );
        }
    }

    fn counter(&mut self, name: &str, help: &str, value: Sample) {
        self.series(name, help, "counter", value);
    }

    fn gauge(&mut self, name: &str, help: &str, value: Sample) {
        self.series(name, help, "gauge", value);
    }

    /// A counter with a second label, e.g. queries by `method`.
    fn counter_by(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: fn(&Stats) -> Vec<(&'static str, u64)>,
    ) {
        self.e.header(name, help, "counter");
        for (f, s) in self.stats {
            for (l, v) in values(s) {
                let _ = writeln!(
                    self.e.out,
                    "{PREFIX}_{name}{{family=\"{}\",{label}=\"{l}\"}} {v}",
                    f.label()
                );
            }
        }
    }
}

/// The metrics of a normal DHT node, one sample per address family it runs (BEP 32: the
/// IPv4 and IPv6 DHTs are separate, with their own tables and stores).
pub fn render_node(stats: &[(Family, &Stats)]) -> String {
    let mut e = Families {
        e: Exposition::new(),
        stats,
    };
    e.counter_by(
        "queries_received_total",
        "Queries received, by method.",
        "method",
        |s| by_method(&s.queries_by_method),
    );
    e.counter("queries_sent_total", "Queries sent.", |s| {
        s.queries_out as f64
    });
    e.counter("replies_sent_total", "Replies sent.", |s| {
        s.replies_out as f64
    });
    e.counter("replies_received_total", "Replies received.", |s| {
        s.replies_in as f64
    });
    e.counter("errors_sent_total", "KRPC errors sent.", |s| {
        s.errors_out as f64
    });
    e.counter("errors_received_total", "KRPC errors received.", |s| {
        s.errors_in as f64
    });
    e.counter_by(
        "dropped_total",
        "Datagrams dropped, by reason.",
        "reason",
        |s| {
            vec![
                ("malformed", s.dropped_malformed),
                ("unmatched", s.dropped_unmatched),
                ("not_allowed", s.dropped_not_allowed),
                ("rate_limited", s.dropped_rate_limited),
                ("quota", s.dropped_quota),
                ("other", s.dropped_other),
            ]
        },
    );
    e.counter("timeouts_total", "Queries that got no answer.", |s| {
        s.timeouts as f64
    });
    e.counter("bad_tokens_total", "announce_peer with a bad token.", |s| {
        s.bad_tokens as f64
    });
    e.counter("announces_stored_total", "Announces stored.", |s| {
        s.announces_stored as f64
    });
    e.counter("bytes_received_total", "UDP payload bytes received.", |s| {
        s.bytes_in as f64
    });
    e.counter("bytes_sent_total", "UDP payload bytes sent.", |s| {
        s.bytes_out as f64
    });
    e.counter("packets_received_total", "Datagrams received.", |s| {
        s.packets_in as f64
    });
    e.counter("packets_sent_total", "Datagrams sent.", |s| {
        s.packets_out as f64
    });
    e.gauge("table_nodes", "Routing table entries.", |s| {
        (s.good_nodes + s.questionable_nodes + s.bad_nodes) as f64
    });
    e.gauge("table_good_nodes", "Good routing table entries.", |s| {
        s.good_nodes as f64
    });
    e.gauge("table_buckets", "Routing table buckets.", |s| {
        s.buckets as f64
    });
    e.gauge(
        "table_verified_ratio",
        "Share of routing table entries with a BEP 42-valid id.",
        |s| {
            let table = s.good_nodes + s.questionable_nodes + s.bad_nodes;
            share(s.valid_id_nodes as f64, table as f64)
        },
    );
    e.gauge("stored_infohashes", "Infohashes in the peer store.", |s| {
        s.infohashes as f64
    });
    e.gauge("stored_peers", "Peers in the peer store.", |s| {
        s.peers as f64
    });
    e.gauge("stored_items", "BEP 44 items held.", |s| s.items as f64);
    e.gauge(
        "stored_item_bytes",
        "Bytes the BEP 44 item store accounts for (what --max-items caps).",
        |s| s.item_bytes as f64,
    );
    e.counter_by(
        "item_puts_total",
        "BEP 44 puts, by outcome.",
        "outcome",
        |s| {
            let i = &s.item_counts;
            vec![
                ("stored", i.stored),
                ("refreshed", i.refreshed),
                ("refused", i.refused),
            ]
        },
    );
    e.counter_by(
        "items_dropped_total",
        "BEP 44 items dropped, by reason.",
        "reason",
        |s| {
            let i = &s.item_counts;
            vec![("evicted", i.evicted), ("expired", i.expired)]
        },
    );
    e.gauge("banned_ips", "IPs banned by the rate limiter.", |s| {
        s.banned_ips as f64
    });
    e.e.finish()
}

/// The metrics of a bootstrap router.
pub fn render_router(s: &RouterStats) -> String {
    let mut e = Exposition::new();
    e.queries_received(&s.queries_by_method);
    e.counter("replies_sent_total", "Replies sent.", s.replies_out);
    e.counter("errors_sent_total", "KRPC errors sent.", s.errors_out);
    e.counter(
        "verification_queries_sent_total",
        "Cookie verification queries sent.",
        s.pings_out,
    );
    e.counter_by(
        "verification_total",
        "Answers to verification queries, by outcome.",
        "outcome",
        &[
            ("admitted", s.admitted),
            ("invalid_id", s.rejected_invalid_id),
            ("duplicate_ip", s.duplicate_ip),
            ("bad_cookie", s.bad_cookie),
        ],
    );
    e.counter_by(
        "dropped_total",
        "Datagrams dropped, by reason.",
        "reason",
        &[
            ("malformed", s.dropped_malformed),
            ("not_allowed", s.dropped_not_allowed),
            ("rate_limited", s.dropped_rate_limited),
            ("quota", s.dropped_quota),
            ("queue_full", s.queue_full),
            ("other", s.dropped_other),
        ],
    );
    e.traffic(s.bytes_in, s.bytes_out, s.packets_in, s.packets_out);
    // By family, like the node's series: each ring fills (and is capped) on its own.
    let by_family = |total: usize, v6: usize| {
        [
            ("ipv4", total.saturating_sub(v6) as f64),
            ("ipv6", v6 as f64),
        ]
    };
    e.gauge_by(
        "router_stored_nodes",
        "Verified contacts in the store, by address family.",
        "family",
        &by_family(s.stored, s.stored6),
    );
    e.gauge_by(
        "router_pending_verifications",
        "Queriers waiting for verification, by address family.",
        "family",
        &by_family(s.pending, s.pending6),
    );
    let answered = s.admitted + s.rejected_invalid_id + s.duplicate_ip;
    e.gauge(
        "router_verified_ratio",
        "Share of verification answers whose node was admitted.",
        share(s.admitted as f64, answered as f64),
    );
    e.gauge(
        "router_memory_bytes",
        "Bytes held by the store and filters.",
        s.memory_bytes as f64,
    );
    e.gauge(
        "banned_ips",
        "IPs banned by the rate limiter.",
        s.banned_ips as f64,
    );
    e.finish()
}

/// Most concurrent scrapes; more wait.
const MAX_CONNECTIONS: usize = 16;
const REQUEST_LIMIT: usize = 8 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the metrics endpoint (so a bad address fails at start, not later).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `GET /metrics` forever; `render` produces the body (`None`: the node stopped,
/// answered with 503).
pub async fn serve<F, Fut>(listener: TcpListener, render: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<String>> + Send,
{
    let render = Arc::new(render);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(IO_TIMEOUT, handle(stream, &*render)).await;
            drop(permit);
        });
    }
}

async fn handle<F, Fut>(mut stream: TcpStream, render: &F) -> std::io::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<String>>,
{
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > REQUEST_LIMIT {
            return respond(&mut stream, "431 Request Header Fields Too Large", "").await;
        }
    }
    let line = buf.split(|&b| b == b'\r').next().unwrap_or(&[]);
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]));
    if method != b"GET" {
        return respond(&mut stream, "405 Method Not Allowed", "").await;
    }
    match path {
        b"/metrics" | b"/" => match render().await {
            Some(body) => respond(&mut stream, "200 OK", &body).await,
            None => respond(&mut stream, "503 Service Unavailable", "node stopped\n").await,
        },
        _ => respond(&mut stream, "404 Not Found", "try /metrics\n").await,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The router's rings are reported per family; the totals split without overlap.
    #[test]
    fn router_contacts_are_labelled_by_family() {
        let s = RouterStats {
            stored: 10,
            stored6: 3,
            pending: 4,
            pending6: 1,
            ..RouterStats::default()
        };
        let text = render_router(&s);
        for line in [
            "trackerless_router_stored_nodes{family=\"ipv4\"} 7\n",
            "trackerless_router_stored_nodes{family=\"ipv6\"} 3\n",
            "trackerless_router_pending_verifications{family=\"ipv4\"} 3\n",
            "trackerless_router_pending_verifications{family=\"ipv6\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert_eq!(
            text.matches("# TYPE trackerless_router_stored_nodes")
                .count(),
            1
        );
    }

    #[test]
    fn node_exposition_is_well_formed() {
        let mut s = Stats::default();
        s.queries_by_method.ping = 3;
        s.good_nodes = 4;
        s.valid_id_nodes = 2;
        s.queries_by_method.put = 5;
        s.items = 7;
        s.item_counts.refused = 2;
        let s6 = Stats {
            good_nodes: 9,
            ..Stats::default()
        };
        let text = render_node(&[(Family::V4, &s), (Family::V6, &s6)]);
        assert!(
            text.contains("trackerless_queries_received_total{family=\"ipv4\",method=\"put\"} 5\n")
        );
        assert!(text.contains("trackerless_stored_items{family=\"ipv4\"} 7\n"));
        assert!(
            text.contains("trackerless_item_puts_total{family=\"ipv4\",outcome=\"refused\"} 2\n")
        );
        assert!(
            text.contains(
                "trackerless_queries_received_total{family=\"ipv4\",method=\"ping\"} 3\n"
            )
        );
        assert!(text.contains("trackerless_table_verified_ratio{family=\"ipv4\"} 0.5\n"));
        // The IPv6 DHT's own series, under the same metric names.
        assert!(text.contains("trackerless_table_good_nodes{family=\"ipv6\"} 9\n"));
        assert!(text.contains("trackerless_table_good_nodes{family=\"ipv4\"} 4\n"));
        // HELP and TYPE once per metric, whatever the number of families.
        assert_eq!(
            text.matches("# TYPE trackerless_table_good_nodes ").count(),
            1
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("trackerless_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, || async {
            Some("x_total 1\n".to_string())
        }));
        let ok = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nx_total 1\n"), "{ok}");
        assert!(
            get(addr, "GET /nope HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 404")
        );
        assert!(
            get(addr, "POST /metrics HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 405")
        );
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
        assert!(get(addr, &huge).await.starts_with("HTTP/1.1 431"));
    }
}
