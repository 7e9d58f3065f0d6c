-- v1: one row per infohash: when and how it was seen, and a few live peers.
-- Times are unix seconds (as in the sled store and the JSON export); `how` holds the
-- HOW_* bits; peers are "ip:port" strings, oldest first, at most MAX_PEERS of them.
CREATE TABLE crawl_torrents (
    info_hash  bytea    PRIMARY KEY CHECK (octet_length(info_hash) = 20),
    first_seen bigint   NOT NULL,
    last_seen  bigint   NOT NULL,
    times_seen bigint   NOT NULL,
    how        smallint NOT NULL,
    peers      text[]   NOT NULL DEFAULT '{}'
);
CREATE INDEX crawl_torrents_first_seen ON crawl_torrents (first_seen);

-- The newest `keep` distinct peers of old ++ new, a peer seen again counting as new: the
-- same rule as the sled store's add_peer, applied inside the upsert so that concurrent
-- crawlers merge instead of overwriting each other.
CREATE FUNCTION crawl_merge_peers(old text[], new text[], keep integer) RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(array_agg(p ORDER BY ord), '{}')
    FROM (
        SELECT p, max(ord) AS ord
        FROM (
            SELECT p, ord FROM unnest(old) WITH ORDINALITY AS a(p, ord)
            UNION ALL
            SELECT p, ord + 1000000 FROM unnest(new) WITH ORDINALITY AS b(p, ord)
        ) u
        GROUP BY p
        ORDER BY max(ord) DESC
        LIMIT keep
    ) k
$$;
