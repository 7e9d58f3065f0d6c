//! Output formats: one JSON object per line (the `--out` file and `export --format jsonl`)
//! and CSV (`export --format csv`).
//!
//! JSON goes through serde_json because torrent names are arbitrary strings (control
//! characters, quotes, any Unicode) and consumers must be able to parse every line.

use std::io::{self, Write};

use serde_json::{Value, json};

use super::backend::Store;
use super::store::{Record, StoreError, TorrentMeta};
use crate::dht::id::InfoHash;

/// The JSON object for one record.
pub fn record_json(ih: &InfoHash, r: &Record, meta: Option<&TorrentMeta>) -> Value {
    let mut v = json!({
        "info_hash": ih.to_hex(),
        "first_seen": r.first_seen,
        "last_seen": r.last_seen,
        "times_seen": r.times_seen,
        "how": r.how_names(),
        "peers": r.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
    });
    // BEP 33 estimates, when the crawl scraped the swarm (`--scrape`).
    if let Some(e) = &r.scrape {
        v["seeds_est"] = json!(e.seeds);
        v["peers_est"] = json!(e.peers);
        v["scraped_at"] = json!(e.at);
    }
    if let Some(m) = meta {
        v["name"] = json!(m.name);
        v["total_size"] = json!(m.total_size);
        v["file_count"] = json!(m.file_count);
        v["files"] = m
            .files
            .iter()
            .map(|f| json!({"path": f.path, "length": f.length}))
            .collect();
    }
    v
}

/// Appends one JSON line.
pub fn write_jsonl_line(
    w: &mut impl Write,
    ih: &InfoHash,
    r: &Record,
    meta: Option<&TorrentMeta>,
) -> io::Result<()> {
    serde_json::to_writer(&mut *w, &record_json(ih, r, meta))?;
    w.write_all(b"\n")
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line ([`write_jsonl_line`]).
    Jsonl,
    /// [`CSV_HEADER`], then one row per record ([`csv_row`]).
    Csv,
}

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The CSV header line.
pub const CSV_HEADER: &str = "info_hash,first_seen,last_seen,times_seen,how,peers,name,total_size,\
                              file_count,seeds_est,peers_est,scraped_at";

/// One CSV row (no newline).
pub fn csv_row(ih: &InfoHash, r: &Record, meta: Option<&TorrentMeta>) -> String {
    let peers: Vec<String> = r.peers.iter().map(|p| p.to_string()).collect();
    let (name, size, files) = match meta {
        Some(m) => (
            csv_field(&m.name),
            m.total_size.to_string(),
            m.file_count.to_string(),
        ),
        None => (String::new(), String::new(), String::new()),
    };
    let (seeds, peers_est, at) = match &r.scrape {
        Some(e) => (e.seeds.to_string(), e.peers.to_string(), e.at.to_string()),
        None => (String::new(), String::new(), String::new()),
    };
    format!(
        "{},{},{},{},{},{},{},{},{},{},{},{}",
        ih.to_hex(),
        r.first_seen,
        r.last_seen,
        r.times_seen,
        r.how_names().join("|"),
        peers.join(" "),
        name,
        size,
        files,
        seeds,
        peers_est,
        at
    )
}

/// Why an export stopped.
#[derive(Debug)]
pub enum ExportError {
    /// Reading the store failed.
    Store(StoreError),
    /// Writing the output failed.
    Write(io::Error),
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExportError::Store(e) => write!(f, "{e}"),
            ExportError::Write(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ExportError {}

impl From<io::Error> for ExportError {
    fn from(e: io::Error) -> Self {
        ExportError::Write(e)
    }
}

impl From<StoreError> for ExportError {
    fn from(e: StoreError) -> Self {
        ExportError::Store(e)
    }
}

/// Records read per page: bounded memory on a store of any size.
const PAGE: usize = 10_000;

/// Writes every record of `store` (sled or PostgreSQL) to `w`, in infohash order; returns
/// how many.
pub fn export(store: &Store, format: Format, w: &mut impl Write) -> Result<u64, ExportError> {
    let mut n = 0;
    if format == Format::Csv {
        writeln!(w, "{CSV_HEADER}")?;
    }
    let mut after = None;
    loop {
        let page = store.page(after, PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some(last.0);
        for (ih, r, meta) in &page {
            match format {
                Format::Jsonl => write_jsonl_line(w, ih, r, meta.as_ref())?,
                Format::Csv => writeln!(w, "{}", csv_row(ih, r, meta.as_ref()))?,
            }
            n += 1;
        }
    }
    w.flush()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crawl::store::{HOW_ANNOUNCE, HOW_SAMPLE, MetaFile};
    use crate::dht::id::InfoHash;

    #[test]
    fn json_and_csv_escape_hostile_names() {
        let ih = InfoHash([0xab; 20]);
        let r = Record {
            first_seen: 10,
            last_seen: 20,
            times_seen: 2,
            how: HOW_SAMPLE | HOW_ANNOUNCE,
            peers: vec!["127.0.0.1:6881".parse().unwrap()],
            scrape: None,
        };
        let m = TorrentMeta {
            name: "a,\"b\"\n\u{1}ü".into(),
            total_size: 5,
            file_count: 1,
            files: vec![MetaFile {
                path: "a/b".into(),
                length: 5,
            }],
            fetched_at: 30,
        };
        let mut out = Vec::new();
        write_jsonl_line(&mut out, &ih, &r, Some(&m)).unwrap();
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["name"], m.name.as_str());
        assert_eq!(v["how"], json!(["sample", "announce"]));
        assert_eq!(v["peers"][0], "127.0.0.1:6881");
        assert_eq!(v["info_hash"], "ab".repeat(20));
        let row = csv_row(&ih, &r, Some(&m));
        assert!(row.contains("\"a,\"\"b\"\"\n\u{1}ü\""), "{row}");
        assert!(row.starts_with(&format!(
            "{},10,20,2,sample|announce,127.0.0.1:6881,",
            "ab".repeat(20)
        )));
        assert!(row.ends_with(",5,1,,,"), "{row}");
        assert!(v.get("seeds_est").is_none());
        let scraped = Record {
            scrape: Some(crate::crawl::store::SwarmEstimate {
                seeds: 30,
                peers: 70,
                at: 40,
            }),
            ..r
        };
        let v = record_json(&ih, &scraped, None);
        assert_eq!(
            (v["seeds_est"].clone(), v["peers_est"].clone()),
            (json!(30), json!(70))
        );
        assert!(csv_row(&ih, &scraped, None).ends_with(",30,70,40"));
        assert_eq!(
            CSV_HEADER.split(',').count(),
            csv_row(&ih, &scraped, None).split(',').count()
        );
    }
}
