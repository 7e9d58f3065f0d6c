-- v3: the newest BEP 33 estimate of each swarm (`dht-crawl --scrape`): seeds and
-- downloaders from the DHT's bloom filters, and when (unix seconds). NULL: never scraped.
ALTER TABLE crawl_torrents
    ADD COLUMN seeds_est  integer,
    ADD COLUMN peers_est  integer,
    ADD COLUMN scraped_at bigint;
