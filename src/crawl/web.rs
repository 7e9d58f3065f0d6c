//! `dht-crawl serve`: a small read-only web page over a crawl store — status, search,
//! newest torrents, a page per torrent — and the same data as JSON.
//!
//! Server-side HTML with no JavaScript: every value that came from the network (torrent
//! names and paths are chosen by whoever made the torrent) goes through [`esc`] before it
//! reaches a page, and into JSON through serde_json. The handlers only read; the store's
//! calls block (sled reads, the PostgreSQL thread), so they run on the blocking pool.
//! Pages are limited to [`PAGE_SIZE`] rows and queries to [`MAX_QUERY`] characters, so no
//! request can ask for an unbounded answer.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::backend::Store;
use super::export::record_json;
use super::run::{CrawlStatus, FamilyStatus};
use super::store::{Record, StoreError, TorrentMeta};
use crate::dht::id::Family;
use crate::dht::id::InfoHash;

/// Rows per page.
pub const PAGE_SIZE: usize = 50;
/// Longest search query kept (characters).
pub const MAX_QUERY: usize = 200;
/// Deepest page served: OFFSET cost grows with it.
pub const MAX_PAGE: usize = 1000;

/// What the handlers share.
#[derive(Clone)]
pub struct WebState {
    /// The store the pages read; `None` on a crawler whose sled store it holds itself
    /// (sled is single-process), where only the status, `/api/stats` and `/metrics` work.
    pub store: Option<Arc<Store>>,
    /// The running crawl's latest status, when the page is served by a crawler.
    pub status: Option<Arc<Mutex<CrawlStatus>>>,
}

/// HTML-escapes `s` (text and attribute values).
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            // NUL and other controls have no business in a page.
            c if c.is_control() && c != '\n' && c != '\t' => o.push('\u{FFFD}'),
            c => o.push(c),
        }
    }
    o
}

/// A query-string component, percent-encoded.
fn url_enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The magnet link of a torrent (with its name when known).
pub fn magnet(ih: &InfoHash, meta: Option<&TorrentMeta>) -> String {
    let mut m = format!("magnet:?xt=urn:btih:{}", ih.to_hex());
    if let Some(meta) = meta {
        m.push_str("&dn=");
        m.push_str(&url_enc(&meta.name));
    }
    m
}

/// `bytes` as a short human size.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC` (civil-from-days, no time zone database).
fn when(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The routes; read-only (GET only).
pub fn router(state: WebState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/search", get(search_page))
        .route("/torrent/{hash}", get(torrent_page))
        .route("/api/search", get(api_search))
        .route("/api/torrent/{hash}", get(api_torrent))
        .route("/api/stats", get(api_stats))
        .route("/metrics", get(metrics))
        .fallback(|| async { error_page(StatusCode::NOT_FOUND, "no such page") })
        .with_state(state)
}

/// Serves `router(state)` on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: WebState,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(stop)
        .await
}

#[derive(Deserialize, Default)]
struct SearchParams {
    q: Option<String>,
    page: Option<usize>,
}

impl SearchParams {
    fn query(&self) -> String {
        self.q
            .as_deref()
            .unwrap_or("")
            .trim()
            .chars()
            .take(MAX_QUERY)
            .collect()
    }
    fn page(&self) -> usize {
        self.page.unwrap_or(1).clamp(1, MAX_PAGE)
    }
}

type Rows = Vec<(InfoHash, Record, Option<TorrentMeta>)>;

/// Runs a blocking store read off the async workers.
async fn read<T: Send + 'static>(
    state: &WebState,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Response> {
    let Some(store) = state.store.clone() else {
        return Err(error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "this crawler's sled store is read by `dht-crawl serve` once the crawl stops \
             (PostgreSQL stores are readable while crawling)",
        ));
    };
    match tokio::task::spawn_blocking(move || f(&store)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::warn!("web: store read failed: {e}");
            Err(error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the store cannot be read right now",
            ))
        }
        Err(_) => Err(error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error",
        )),
    }
}

fn layout(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{} · dht-crawl</title><style>\
         body{{font-family:sans-serif;margin:1.5em auto;max-width:70em;padding:0 1em}}\
         table{{border-collapse:collapse;width:100%}}td,th{{padding:.2em .5em;text-align:left;\
         border-bottom:1px solid #ddd}}code{{font-size:.9em}}.num{{text-align:right}}\
         </style></head><body><header><a href=\"/\">dht-crawl</a> \
         <form action=\"/search\" method=\"get\" style=\"display:inline\">\
         <input type=\"search\" name=\"q\" placeholder=\"search names\" id=\"q\">\
         <button type=\"submit\">Search</button></form></header>\n<main>{}</main></body></html>",
        esc(title),
        body
    ))
}

fn error_page(code: StatusCode, msg: &str) -> Response {
    (
        code,
        layout(
            msg,
            &format!("<h1>{}</h1><p id=\"error\">{}</p>", code.as_u16(), esc(msg)),
        ),
    )
        .into_response()
}

fn torrent_table(rows: &Rows) -> String {
    let mut h = String::from(
        "<table class=\"torrents\"><thead><tr><th>name</th><th class=\"num\">size</th>\
         <th>first seen</th><th>last seen</th><th class=\"num\">seen</th></tr></thead><tbody>",
    );
    for (ih, r, m) in rows {
        let name = m
            .as_ref()
            .map(|m| esc(&m.name))
            .unwrap_or_else(|| format!("<code>{}</code>", ih.to_hex()));
        let size = m.as_ref().map(|m| human(m.total_size)).unwrap_or_default();
        let _ = write!(
            h,
            "<tr class=\"torrent\"><td><a href=\"/torrent/{hex}\">{name}</a></td>\
             <td class=\"num\">{size}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            when(r.first_seen),
            when(r.last_seen),
            r.times_seen,
            hex = ih.to_hex(),
        );
    }
    h.push_str("</tbody></table>");
    h
}

fn status_json(state: &WebState, totals: (u64, u64)) -> Value {
    let mut v = json!({
        "store": state.store.as_ref().map(|s| s.describe()),
        "records": totals.0,
        "with_metadata": totals.1,
    });
    if let Some(s) = &state.status {
        let s = s.lock().map(|s| s.clone()).unwrap_or_default();
        v["crawl"] = json!({
            "infohashes": s.infohashes,
            "new_per_min": s.new_per_min,
            "nodes_known": s.nodes_known,
            "visited": s.visited,
            "ipv4": family_json(&s.ipv4),
            "ipv6": s.ipv6.as_ref().map(family_json),
            "queries_per_sec": s.queries_per_sec,
            "passive": s.passive,
            "metadata_fetched": s.metadata_fetched,
            "metadata_failed": s.metadata_failed,
            "metadata_skipped": s.metadata_skipped,
            "scrapes": s.scrapes,
            "scrapes_skipped": s.scrapes_skipped,
            "elapsed_secs": s.elapsed.as_secs(),
            "stalled": s.stalled,
            "stalls": s.stalls,
        });
    }
    v
}

/// One family's numbers in `/api/stats`.
fn family_json(f: &FamilyStatus) -> Value {
    json!({
        "nodes_known": f.nodes_known,
        "visited": f.visited,
        "responses": f.responses,
        "samples": f.samples,
        "samples_new": f.samples_new,
        "passive": f.passive,
    })
}

/// Store totals and the newest records; with no store, the crawl's own count.
async fn overview(state: &WebState, newest: usize) -> Result<((u64, u64), Rows), Response> {
    if state.store.is_none() {
        let n = state
            .status
            .as_ref()
            .and_then(|s| s.lock().ok().map(|s| (s.infohashes, s.metadata_fetched)))
            .unwrap_or_default();
        return Ok((n, Vec::new()));
    }
    read(state, move |s| Ok((s.totals()?, s.newest(0, newest)?))).await
}

async fn index(State(state): State<WebState>) -> Response {
    let (totals, newest) = match overview(&state, 20).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let mut b = String::from("<h1>Status</h1><table id=\"status\">");
    let status = status_json(&state, totals);
    let mut row = |k: &str, v: String| {
        let _ = write!(
            b,
            "<tr><th>{}</th><td class=\"num\" id=\"stat-{}\">{}</td></tr>",
            esc(k),
            esc(&k.replace(' ', "-")),
            esc(&v)
        );
    };
    row(
        "store",
        state
            .store
            .as_ref()
            .map(|s| s.describe())
            .unwrap_or_else(|| "held by the crawl".into()),
    );
    row("records", totals.0.to_string());
    row("with metadata", totals.1.to_string());
    if let Some(c) = status.get("crawl") {
        for (k, label) in [
            ("new_per_min", "new per minute"),
            ("nodes_known", "nodes known"),
            ("visited", "nodes visited"),
            ("queries_per_sec", "queries per second"),
            ("passive", "passive sightings"),
            ("metadata_fetched", "metadata fetched"),
            ("metadata_failed", "metadata failed"),
            ("elapsed_secs", "running seconds"),
            ("stalled", "stalled"),
            ("stalls", "stalls"),
        ] {
            let v = match &c[k] {
                Value::Number(n) if n.is_f64() => format!("{:.1}", n.as_f64().unwrap_or(0.0)),
                v => v.to_string(),
            };
            row(label, v);
        }
        // A dual-stack crawl: each DHT's own progress (an IPv4-only page stays as it was).
        if c["ipv6"].is_object() {
            for fam in ["ipv4", "ipv6"] {
                for (k, label) in [
                    ("nodes_known", "nodes known"),
                    ("visited", "nodes visited"),
                    ("samples_new", "new from samples"),
                ] {
                    row(&format!("{fam} {label}"), c[fam][k].to_string());
                }
            }
        }
    }
    b.push_str("</table><h2>Newest</h2>");
    b.push_str(&torrent_table(&newest));
    layout("status", &b).into_response()
}

async fn search_page(State(state): State<WebState>, Query(p): Query<SearchParams>) -> Response {
    let (q, page) = (p.query(), p.page());
    if q.is_empty() {
        return layout(
            "search",
            "<h1>Search</h1><p id=\"results-empty\">Type a name to search for.</p>",
        )
        .into_response();
    }
    let q2 = q.clone();
    let rows = match read(&state, move |s| {
        s.search(&q2, (page - 1) * PAGE_SIZE, PAGE_SIZE + 1)
    })
    .await
    {
        Ok(r) => r,
        Err(r) => return r,
    };
    let more = rows.len() > PAGE_SIZE;
    let rows: Rows = rows.into_iter().take(PAGE_SIZE).collect();
    let mut b = format!(
        "<h1>Search: <span id=\"query\">{}</span></h1><p id=\"result-count\">{} result{} on page {page}</p>",
        esc(&q),
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
    b.push_str(&torrent_table(&rows));
    b.push_str("<nav>");
    if page > 1 {
        let _ = write!(
            b,
            "<a rel=\"prev\" href=\"/search?q={}&amp;page={}\">previous</a> ",
            esc(&url_enc(&q)),
            page - 1
        );
    }
    if more && page < MAX_PAGE {
        let _ = write!(
            b,
            "<a rel=\"next\" href=\"/search?q={}&amp;page={}\">next</a>",
            esc(&url_enc(&q)),
            page + 1
        );
    }
    b.push_str("</nav>");
    layout(&format!("search {q}"), &b).into_response()
}

fn parse_hash(h: &str) -> Option<InfoHash> {
    if h.len() != 40 {
        return None;
    }
    InfoHash::from_slice(&hex::decode(h).ok()?)
}

async fn torrent_page(State(state): State<WebState>, Path(hash): Path<String>) -> Response {
    let Some(ih) = parse_hash(&hash) else {
        return error_page(StatusCode::BAD_REQUEST, "not an infohash (40 hex digits)");
    };
    let found = match read(&state, move |s| Ok(s.get_many(&[ih])?.remove(&ih))).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Some((r, m)) = found else {
        return error_page(StatusCode::NOT_FOUND, "this infohash is not in the store");
    };
    let title = m
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_else(|| ih.to_hex());
    let mut b = format!(
        "<h1 id=\"name\">{}</h1><table id=\"torrent\">\
         <tr><th>info hash</th><td><code>{}</code></td></tr>\
         <tr><th>magnet</th><td><a id=\"magnet\" href=\"{}\">magnet link</a></td></tr>",
        esc(&title),
        ih.to_hex(),
        esc(&magnet(&ih, m.as_ref()))
    );
    if let Some(m) = &m {
        let _ = write!(
            b,
            "<tr><th>size</th><td id=\"size\">{} ({} bytes)</td></tr>\
             <tr><th>files</th><td>{}</td></tr>",
            human(m.total_size),
            m.total_size,
            m.file_count
        );
    }
    let _ = write!(
        b,
        "<tr><th>first seen</th><td>{}</td></tr><tr><th>last seen</th><td>{}</td></tr>\
         <tr><th>times seen</th><td>{}</td></tr><tr><th>how</th><td>{}</td></tr>\
         <tr><th>peers</th><td>{}</td></tr></table>",
        when(r.first_seen),
        when(r.last_seen),
        r.times_seen,
        esc(&r.how_names().join(", ")),
        esc(&r
            .peers
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(" "))
    );
    if let Some(m) = &m {
        b.push_str("<h2>Files</h2><table id=\"files\"><tbody>");
        for f in &m.files {
            let _ = write!(
                b,
                "<tr><td>{}</td><td class=\"num\">{}</td></tr>",
                esc(&f.path),
                human(f.length)
            );
        }
        b.push_str("</tbody></table>");
        if m.file_count > m.files.len() as u64 {
            let _ = write!(
                b,
                "<p>and {} more files</p>",
                m.file_count - m.files.len() as u64
            );
        }
    }
    layout(&title, &b).into_response()
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

async fn api_search(State(state): State<WebState>, Query(p): Query<SearchParams>) -> Response {
    let (q, page) = (p.query(), p.page());
    let q2 = q.clone();
    let rows = match read(&state, move |s| {
        if q2.is_empty() {
            s.newest((page - 1) * PAGE_SIZE, PAGE_SIZE + 1)
        } else {
            s.search(&q2, (page - 1) * PAGE_SIZE, PAGE_SIZE + 1)
        }
    })
    .await
    {
        Ok(r) => r,
        Err(_) => {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": "the store cannot be read right now"}),
            );
        }
    };
    let more = rows.len() > PAGE_SIZE;
    let results: Vec<Value> = rows
        .iter()
        .take(PAGE_SIZE)
        .map(|(ih, r, m)| record_json(ih, r, m.as_ref()))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"query": q, "page": page, "page_size": PAGE_SIZE, "more": more, "results": results}),
    )
}

async fn api_torrent(State(state): State<WebState>, Path(hash): Path<String>) -> Response {
    let Some(ih) = parse_hash(&hash) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "not an infohash (40 hex digits)"}),
        );
    };
    match read(&state, move |s| Ok(s.get_many(&[ih])?.remove(&ih))).await {
        Ok(Some((r, m))) => {
            let mut v = record_json(&ih, &r, m.as_ref());
            v["magnet"] = json!(magnet(&ih, m.as_ref()));
            json_response(StatusCode::OK, &v)
        }
        Ok(None) => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "this infohash is not in the store"}),
        ),
        Err(_) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "the store cannot be read right now"}),
        ),
    }
}

async fn api_stats(State(state): State<WebState>) -> Response {
    match overview(&state, 0).await {
        Ok((t, _)) => json_response(StatusCode::OK, &status_json(&state, t)),
        Err(_) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "the store cannot be read right now"}),
        ),
    }
}

/// Prometheus text exposition of the crawl's status (when served by a crawler) and the
/// store's totals.
pub fn render_metrics(status: Option<&CrawlStatus>, totals: Option<(u64, u64)>) -> String {
    let mut o = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, v: f64| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    };
    if let Some(s) = status {
        metric(
            "dht_crawl_infohashes",
            "gauge",
            "Durable infohashes this crawler counts.",
            s.infohashes as f64,
        );
        metric(
            "dht_crawl_new_per_minute",
            "gauge",
            "New durable infohashes per minute (last status interval).",
            s.new_per_min,
        );
        metric(
            "dht_crawl_nodes_known",
            "gauge",
            "Nodes the walk knows.",
            s.nodes_known as f64,
        );
        metric(
            "dht_crawl_nodes_visited",
            "gauge",
            "Distinct nodes that answered.",
            s.visited as f64,
        );
        metric(
            "dht_crawl_queries_per_second",
            "gauge",
            "Queries the node sent per second.",
            s.queries_per_sec,
        );
        metric(
            "dht_crawl_passive_total",
            "counter",
            "Infohashes others' queries told us about.",
            s.passive as f64,
        );
        metric(
            "dht_crawl_metadata_fetched_total",
            "counter",
            "Metadata fetches that succeeded.",
            s.metadata_fetched as f64,
        );
        metric(
            "dht_crawl_metadata_failed_total",
            "counter",
            "Metadata fetches that failed.",
            s.metadata_failed as f64,
        );
        metric(
            "dht_crawl_metadata_skipped_total",
            "counter",
            "New infohashes not queued for metadata (queue full).",
            s.metadata_skipped as f64,
        );
        metric(
            "dht_crawl_scrapes_total",
            "counter",
            "BEP 33 scrapes done (--scrape).",
            s.scrapes as f64,
        );
        metric(
            "dht_crawl_scrapes_skipped_total",
            "counter",
            "New infohashes not scraped (scrape queue full).",
            s.scrapes_skipped as f64,
        );
        metric(
            "dht_crawl_stalled",
            "gauge",
            "1 while no new infohash has come for --stall-after.",
            f64::from(u8::from(s.stalled)),
        );
        metric(
            "dht_crawl_stalls_total",
            "counter",
            "Discovery stalls detected.",
            s.stalls as f64,
        );
        metric(
            "dht_crawl_responses_total",
            "counter",
            "Answers to the walk's queries.",
            s.responses as f64,
        );
        metric(
            "dht_crawl_query_failures_total",
            "counter",
            "Walk queries that failed (timeouts, errors, refusals).",
            s.query_failures as f64,
        );
        metric(
            "dht_crawl_samples_total",
            "counter",
            "Infohashes received in BEP 51 samples, with repeats.",
            s.samples as f64,
        );
        metric(
            "dht_crawl_samples_new_total",
            "counter",
            "Sampled infohashes that were new to the store.",
            s.samples_new as f64,
        );
        metric(
            "dht_crawl_rediscovery_ratio",
            "gauge",
            "Share of sampled infohashes already known (1 - new / all).",
            if s.samples == 0 {
                0.0
            } else {
                1.0 - s.samples_new as f64 / s.samples as f64
            },
        );
        metric(
            "dht_crawl_queries_in_flight",
            "gauge",
            "Walk queries waiting for an answer.",
            s.queries_in_flight as f64,
        );
        metric(
            "dht_crawl_store_pending",
            "gauge",
            "Sightings buffered for the next store flush.",
            s.store_pending as f64,
        );
        metric(
            "dht_crawl_store_flushes_total",
            "counter",
            "Store flushes.",
            s.flushes as f64,
        );
        metric(
            "dht_crawl_store_flush_seconds",
            "gauge",
            "How long the last store flush took (write latency).",
            s.flush_last.as_secs_f64(),
        );
        metric(
            "dht_crawl_store_flush_seconds_max",
            "gauge",
            "The slowest store flush so far.",
            s.flush_max.as_secs_f64(),
        );
        metric(
            "dht_crawl_resident_memory_bytes",
            "gauge",
            "Resident memory of the crawler process.",
            s.rss_bytes as f64,
        );
        metric(
            "dht_crawl_uptime_seconds",
            "gauge",
            "Seconds since the crawl started.",
            s.elapsed.as_secs_f64(),
        );
    }
    if let Some((records, meta)) = totals {
        metric(
            "dht_crawl_store_records",
            "gauge",
            "Records in the store.",
            records as f64,
        );
        metric(
            "dht_crawl_store_metadata_records",
            "gauge",
            "Records with metadata in the store.",
            meta as f64,
        );
    }
    if let Some(s) = status {
        family_metrics(&mut o, s);
    }
    o
}

/// The per-family series: `dht_crawl_family_*{family="ipv4"|"ipv6"}`, one sample per DHT
/// walked (IPv6 only when the crawler runs it). Separate names from the totals above, so
/// that summing a metric over its labels never counts anything twice.
fn family_metrics(o: &mut String, s: &CrawlStatus) {
    let fams: Vec<(Family, &FamilyStatus)> = [Family::V4, Family::V6]
        .into_iter()
        .filter_map(|f| s.family(f).map(|st| (f, st)))
        .collect();
    type Get = fn(&FamilyStatus) -> f64;
    let series: [(&str, &str, &str, Get); 6] = [
        (
            "nodes_known",
            "gauge",
            "Nodes the walk of this address family knows.",
            |f| f.nodes_known as f64,
        ),
        (
            "nodes_visited",
            "gauge",
            "Distinct nodes of this address family that answered.",
            |f| f.visited as f64,
        ),
        (
            "responses_total",
            "counter",
            "Answers to walk queries from nodes of this address family.",
            |f| f.responses as f64,
        ),
        (
            "samples_total",
            "counter",
            "Infohashes in BEP 51 samples from this address family (with repeats).",
            |f| f.samples as f64,
        ),
        (
            "samples_new_total",
            "counter",
            "Sampled infohashes from this address family that were new to the store.",
            |f| f.samples_new as f64,
        ),
        (
            "passive_total",
            "counter",
            "get_peers/announce_peer queries received over this address family.",
            |f| f.passive as f64,
        ),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(
            o,
            "# HELP dht_crawl_family_{name} {help}\n# TYPE dht_crawl_family_{name} {kind}"
        );
        for (f, st) in &fams {
            let _ = writeln!(o, "dht_crawl_family_{name}{{family=\"{f}\"}} {}", get(st));
        }
    }
}

async fn metrics(State(state): State<WebState>) -> Response {
    let status = state
        .status
        .as_ref()
        .and_then(|s| s.lock().ok().map(|s| s.clone()));
    let totals = match &state.store {
        Some(_) => read(&state, |s| s.totals()).await.ok(),
        None => None,
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render_metrics(status.as_ref(), totals),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_dates_sizes_and_magnets() {
        assert_eq!(
            esc("<script>alert('x')&\"</script>\0"),
            "&lt;script&gt;alert(&#39;x&#39;)&amp;&quot;&lt;/script&gt;\u{FFFD}"
        );
        assert_eq!(when(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(when(1_767_225_600), "2026-01-01 00:00:00 UTC");
        assert_eq!(when(951_827_696), "2000-02-29 12:34:56 UTC");
        assert_eq!(human(5), "5 B");
        assert_eq!(human(1536), "1.5 KiB");
        let ih = InfoHash([0xab; 20]);
        let m = TorrentMeta {
            name: "a b&c".into(),
            total_size: 1,
            file_count: 1,
            files: vec![],
            fetched_at: 0,
        };
        assert_eq!(
            magnet(&ih, Some(&m)),
            format!("magnet:?xt=urn:btih:{}&dn=a%20b%26c", "ab".repeat(20))
        );
        assert_eq!(parse_hash(&"AB".repeat(20)), Some(ih));
        assert_eq!(parse_hash("zz"), None);
        assert_eq!(parse_hash(&"g".repeat(40)), None);
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let s = CrawlStatus {
            infohashes: 7,
            stalled: true,
            stalls: 2,
            samples: 40,
            samples_new: 10,
            flush_last: std::time::Duration::from_millis(250),
            ipv4: FamilyStatus {
                nodes_known: 40,
                samples_new: 6,
                ..Default::default()
            },
            ipv6: Some(FamilyStatus {
                nodes_known: 12,
                samples_new: 4,
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = render_metrics(Some(&s), Some((9, 3)));
        for want in [
            "# TYPE dht_crawl_family_nodes_known gauge\n\
             dht_crawl_family_nodes_known{family=\"ipv4\"} 40\n\
             dht_crawl_family_nodes_known{family=\"ipv6\"} 12\n",
            "dht_crawl_family_samples_new_total{family=\"ipv6\"} 4\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
        assert_eq!(
            text.matches("# TYPE dht_crawl_family_samples_total ")
                .count(),
            1
        );
        // IPv4 only: no IPv6 samples at all.
        let v4_only = render_metrics(
            Some(&CrawlStatus {
                ipv6: None,
                ..s.clone()
            }),
            None,
        );
        assert!(v4_only.contains("dht_crawl_family_nodes_known{family=\"ipv4\"} 40\n"));
        assert!(!v4_only.contains("ipv6"));
        for want in [
            "# TYPE dht_crawl_infohashes gauge\ndht_crawl_infohashes 7\n",
            "# TYPE dht_crawl_stalls_total counter\ndht_crawl_stalls_total 2\n",
            "dht_crawl_stalled 1\n",
            "dht_crawl_store_records 9\n",
            "dht_crawl_store_metadata_records 3\n",
            "dht_crawl_rediscovery_ratio 0.75\n",
            "dht_crawl_store_flush_seconds 0.25\n",
            "# TYPE dht_crawl_resident_memory_bytes gauge\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
        assert!(render_metrics(None, None).is_empty());
    }
}
