//! Body of the `crawl_row` fuzz target: the values the crawler reads back from its stores.
//!
//! Why these bytes deserve a fuzzer: a crawl database outlives the binary that wrote it (a
//! store is reopened by newer versions, copied between machines, or damaged by a disk), and
//! `dht-crawl` and its web page read every row back. A row that does not parse must read
//! as "unknown", never panic the crawler or its web server, and a row that parses must be
//! written back byte for byte, or a merge would silently change history.
//!
//! The input is tried as each kind of stored value:
//! - a sled record (`store::Record`, versions 1 and 2): decodes, re-encodes to the same
//!   bytes (version 2) or to a version 2 record that decodes to the same value (version 1),
//!   and merging it with itself keeps the peer cap and adds the sighting counts;
//! - a stored `TorrentMeta` (bencoded, in sled and in PostgreSQL's `meta` column):
//!   re-encodes into bytes that decode to the same value;
//! - a fetched info dict, as `TorrentMeta::from_info` indexes it: never more files than the
//!   cap, never more files than it counts, and what it builds stores and reads back.

use crate::crawl::store::{MAX_META_FILES, MAX_PEERS, Record, TorrentMeta};

/// The fuzz body (see the module documentation).
pub fn crawl_row(data: &[u8]) {
    if let Some(record) = Record::decode(data) {
        assert!(record.peers.len() <= MAX_PEERS);
        let mut out = Vec::new();
        record.encode(&mut out);
        if data[0] == 2 {
            assert_eq!(out, data, "a version 2 record is not written back as read");
        }
        assert_eq!(
            Record::decode(&out).as_ref(),
            Some(&record),
            "a record does not read back as written"
        );
        let mut merged = record.clone();
        merged.merge(&record);
        assert!(merged.peers.len() <= MAX_PEERS);
        assert_eq!(
            merged.times_seen,
            record.times_seen.saturating_add(record.times_seen)
        );
        assert_eq!(
            (
                merged.first_seen,
                merged.last_seen,
                merged.how,
                merged.scrape
            ),
            (
                record.first_seen,
                record.last_seen,
                record.how,
                record.scrape
            )
        );
        for p in &merged.peers {
            assert!(record.peers.contains(p), "a merge invented a peer");
        }
    }
    if let Ok(meta) = serde_bencode::from_bytes::<TorrentMeta>(data) {
        stores_and_reads_back(&meta);
    }
    if let Some(meta) = TorrentMeta::from_info(data, 1) {
        assert!(meta.files.len() <= MAX_META_FILES);
        assert!(meta.files.len() as u64 <= meta.file_count);
        stores_and_reads_back(&meta);
    }
}

fn stores_and_reads_back(meta: &TorrentMeta) {
    let bytes = serde_bencode::to_bytes(meta).expect("a TorrentMeta always encodes");
    let again: TorrentMeta =
        serde_bencode::from_bytes(&bytes).expect("a stored TorrentMeta reads back");
    assert_eq!(&again, meta, "a TorrentMeta does not read back as stored");
}
