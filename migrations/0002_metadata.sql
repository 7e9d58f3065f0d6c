-- v2: torrent metadata in its own table (written independently of sightings, and much
-- larger), with a full-text index over the name and the file paths, and the --out outbox.
CREATE TABLE crawl_metadata (
    info_hash  bytea  PRIMARY KEY,
    -- For search and display; NUL characters (which text cannot hold) become U+FFFD.
    name       text   NOT NULL,
    total_size bigint NOT NULL,
    file_count bigint NOT NULL,
    -- File paths, one a line (NULs replaced as in name), for the full-text index.
    file_paths text   NOT NULL,
    fetched_at bigint NOT NULL,
    -- The exact TorrentMeta (bencoded, as in the sled store): a lossless round trip.
    meta       bytea  NOT NULL,
    -- Words of the name and paths; separators common in release names and paths
    -- ("Some.Show.S01/ep_1.mkv") split words, which the parser alone would keep as one
    -- file-path token. The 'simple' config: names are in every language, so no stemming.
    search     tsvector GENERATED ALWAYS AS
        (to_tsvector('simple'::regconfig,
                     translate(name || ' ' || file_paths, '/._-', '    '))) STORED
);
CREATE INDEX crawl_metadata_search ON crawl_metadata USING gin (search);

-- Records whose --out line may not have been written yet, per out file (see store.rs).
CREATE TABLE crawl_outbox (
    owner     text  NOT NULL,
    info_hash bytea NOT NULL,
    PRIMARY KEY (owner, info_hash)
);
