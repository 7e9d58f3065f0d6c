//! The PostgreSQL the crawl tests use: `TRACKERLESS_TEST_PG` (set by tools/test.sh, which
//! starts a throwaway server with tools/pg-test.sh) names a server; each test gets a fresh
//! database on it so tests running at once never see each other's rows.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use tokio_postgres::NoTls;
use tokio_postgres::config::Host;

/// The server's connection string. Fails (not skips) when unset: tools/test.sh always sets
/// it, so an unset variable means the PostgreSQL tests would silently not run.
pub fn server_url() -> String {
    std::env::var("TRACKERLESS_TEST_PG").unwrap_or_else(|_| {
        panic!(
            "TRACKERLESS_TEST_PG is not set: run the tests with tools/test.sh, or start a \
             server with `eval \"$(tools/pg-test.sh start /tmp/pg)\"` first (see README)"
        )
    })
}

/// A client on the server's maintenance database.
pub async fn admin() -> tokio_postgres::Client {
    let url = server_url();
    let (client, conn) = tokio_postgres::connect(&url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL at {url}: {e}"));
    tokio::spawn(conn);
    client
}

/// Creates a fresh database and returns a connection string for it.
pub async fn fresh_db(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "crawl_{tag}_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    admin()
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    url_for(&name)
}

/// The server's connection string with database `db`.
pub fn url_for(db: &str) -> String {
    let cfg: tokio_postgres::Config = server_url().parse().unwrap();
    let mut q = Vec::new();
    for h in cfg.get_hosts() {
        match h {
            Host::Tcp(s) => q.push(format!("host={s}")),
            Host::Unix(p) => q.push(format!("host={}", p.display())),
        }
    }
    if let Some(p) = cfg.get_ports().first() {
        q.push(format!("port={p}"));
    }
    if let Some(u) = cfg.get_user() {
        q.push(format!("user={u}"));
    }
    format!("postgresql:///{db}?{}", q.join("&"))
}

/// A client on the database `url` names.
pub async fn client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}
