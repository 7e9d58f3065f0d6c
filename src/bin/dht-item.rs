//! `dht-item`: stores and reads BEP 44 items (immutable and mutable) in the DHT.

#[path = "common/cli.rs"]
#[allow(dead_code)] // each binary uses a different part of it
mod cli;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use cli::NetArgs;
use ed25519_dalek::{SigningKey, VerifyingKey};
use trackerless::dht::driver::{DhtHandle, GotItem, ItemsError, PutSummary};
use trackerless::dht::id::NodeId;
use trackerless::dht::item_search::PutOutcome;

/// Store or read a BEP 44 item in the Mainline DHT.
///
/// `put VALUE` stores an immutable item and prints its target (the SHA-1 of the bencoded
/// value); `put --mutable --key-file K` signs the value with the ed25519 key in K (created,
/// mode 0600, if missing) and stores it under SHA-1(public key + salt), with the next
/// sequence number unless --seq is given. `get TARGET` reads an immutable item (only a value
/// whose hash is TARGET is believed); `get --pubkey HEX` reads the mutable item with the
/// highest valid sequence number. Exit status 0 means stored by at least one node / found.
#[derive(Parser, Debug)]
#[command(name = "dht-item", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Output: `json` (one line per result) or `bencode` (get: the raw bencoded value; put:
    /// the target in hex).
    #[arg(long, value_enum, default_value = "json", global = true)]
    format: Format,
    /// Same as --format json.
    #[arg(long, global = true, conflicts_with = "format")]
    json: bool,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Json,
    Bencode,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Store an item.
    Put(PutCmd),
    /// Read an item.
    Get(GetCmd),
}

#[derive(Args, Debug)]
struct PutCmd {
    /// The value: stored as a bencoded string unless --bencoded.
    #[arg(
        value_name = "VALUE",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    value: Option<String>,
    /// Read the value from this file instead.
    #[arg(long, value_name = "F")]
    file: Option<PathBuf>,
    /// VALUE (or the file) is already one bencoded value; store it as is.
    #[arg(long)]
    bencoded: bool,
    /// Store a mutable item signed with --key-file.
    #[arg(long, requires = "key_file")]
    mutable: bool,
    /// ed25519 seed as 64 hex digits; created (mode 0600) with a new key if missing.
    #[arg(long, value_name = "K", requires = "mutable")]
    key_file: Option<PathBuf>,
    /// Salt (BEP 44: at most 64 bytes), for several items under one key.
    #[arg(long, value_name = "S", requires = "mutable")]
    salt: Option<String>,
    /// Sequence number to sign (default: the current one found in the DHT plus one, or 1).
    #[arg(long, value_name = "N", requires = "mutable")]
    seq: Option<i64>,
    /// Compare-and-swap: nodes store only if their current sequence number is N (301 else).
    #[arg(long, value_name = "N", requires = "mutable")]
    cas: Option<i64>,
    /// Republish every hour until interrupted (BEP 44 items expire after 2 h without one).
    #[arg(long)]
    keep: bool,
}

#[derive(Args, Debug)]
struct GetCmd {
    /// Immutable item target: 40 hex digits.
    #[arg(
        value_name = "TARGET",
        required_unless_present = "pubkey",
        conflicts_with = "pubkey"
    )]
    target: Option<String>,
    /// Mutable item: the signer's ed25519 public key, 64 hex digits.
    #[arg(long, value_name = "HEX")]
    pubkey: Option<String>,
    /// Mutable item salt.
    #[arg(long, value_name = "S", requires = "pubkey")]
    salt: Option<String>,
    /// Ignore mutable values with a lower sequence number.
    #[arg(long, value_name = "N", requires = "pubkey")]
    min_seq: Option<i64>,
}

/// Republish period for --keep.
const REPUBLISH: Duration = Duration::from_secs(3600);

fn main() {
    // A short-lived client should not fight a resident `dht-node` for port 6881.
    let matches = Cli::command()
        .mut_arg("bind", |a| a.default_value("0.0.0.0:0"))
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    cli::init_logging();
    let format = if cli.json { Format::Json } else { cli.format };
    // Every argument is checked before the node starts: a typo costs no network traffic.
    let job = Job::parse(&cli.command).unwrap_or_else(|e| cli::fail(e));
    let cfg = cli.net.dht_config().unwrap_or_else(|e| cli::fail(e));
    let dht = cli::start_dht_or_without_store(cfg).unwrap_or_else(|e| cli::fail(e));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| cli::fail(e));
    let result = rt.block_on(async {
        join(&dht).await;
        job.run(&dht, format).await
    });
    rt.block_on(async {
        if let Err(e) = dht.shutdown().await {
            tracing::warn!("could not save the DHT state: {e}");
        }
    });
    if let Err(e) = result {
        cli::fail(e);
    }
}

/// Waits (bounded) for the routing table to hold a few nodes, so the first lookup starts
/// from real contacts rather than from the routers alone.
async fn join(dht: &DhtHandle) {
    let _ = tokio::time::timeout(Duration::from_secs(15), dht.wait_for_nodes(1)).await;
    let _ = tokio::time::timeout(Duration::from_secs(3), dht.wait_for_nodes(8)).await;
}

/// A parsed command.
enum Job {
    PutImmutable {
        v: Vec<u8>,
        keep: bool,
    },
    PutMutable {
        key: SigningKey,
        salt: Vec<u8>,
        v: Vec<u8>,
        seq: Option<i64>,
        cas: Option<i64>,
        keep: bool,
    },
    GetImmutable(NodeId),
    GetMutable {
        key: VerifyingKey,
        salt: Vec<u8>,
        min_seq: Option<i64>,
    },
}

impl Job {
    fn parse(cmd: &Cmd) -> Result<Job, String> {
        match cmd {
            Cmd::Put(p) => {
                let raw = match (&p.value, &p.file) {
                    (Some(v), _) => v.as_bytes().to_vec(),
                    (None, Some(f)) => {
                        std::fs::read(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?
                    }
                    (None, None) => return Err("give VALUE or --file".into()),
                };
                let v = if p.bencoded {
                    raw
                } else {
                    let mut v = Vec::with_capacity(raw.len() + 6);
                    trackerless::bencode::put_bytes(&mut v, &raw);
                    v
                };
                trackerless::dht::item_search::check_value(&v).map_err(|e| e.to_string())?;
                if !p.mutable {
                    return Ok(Job::PutImmutable { v, keep: p.keep });
                }
                let path = p.key_file.as_ref().ok_or("--mutable needs --key-file")?;
                let (key, created) =
                    trackerless::dht::item_keys::load_or_create(path).map_err(|e| e.to_string())?;
                if created {
                    tracing::info!("created a new signing key in {}", path.display());
                }
                let salt = salt_bytes(p.salt.as_deref())?;
                Ok(Job::PutMutable {
                    key,
                    salt,
                    v,
                    seq: p.seq,
                    cas: p.cas,
                    keep: p.keep,
                })
            }
            Cmd::Get(g) => match (&g.target, &g.pubkey) {
                (Some(t), _) => {
                    let mut id = [0u8; 20];
                    hex::decode_to_slice(t.trim(), &mut id)
                        .map_err(|_| format!("TARGET must be 40 hex digits: {t:?}"))?;
                    Ok(Job::GetImmutable(NodeId(id)))
                }
                (None, Some(pk)) => {
                    let mut k = [0u8; 32];
                    hex::decode_to_slice(pk.trim(), &mut k)
                        .map_err(|_| format!("--pubkey must be 64 hex digits: {pk:?}"))?;
                    let key = VerifyingKey::from_bytes(&k)
                        .map_err(|_| format!("--pubkey is not an ed25519 public key: {pk}"))?;
                    Ok(Job::GetMutable {
                        key,
                        salt: salt_bytes(g.salt.as_deref())?,
                        min_seq: g.min_seq,
                    })
                }
                (None, None) => Err("give TARGET or --pubkey".into()),
            },
        }
    }

    async fn run(self, dht: &DhtHandle, format: Format) -> Result<(), String> {
        match self {
            Job::GetImmutable(t) => {
                print_got(&dht.get_immutable(t).await.map_err(fmt_err)?, format);
                Ok(())
            }
            Job::GetMutable { key, salt, min_seq } => {
                let got = dht
                    .get_mutable(&key, &salt, min_seq)
                    .await
                    .map_err(fmt_err)?;
                print_got(&got, format);
                Ok(())
            }
            Job::PutImmutable { v, keep } => {
                let mut stop = keep.then(Stop::listen).transpose()?;
                loop {
                    let r = dht.put_immutable(v.clone()).await;
                    report_put(r, format, keep)?;
                    if !Stop::again(&mut stop).await {
                        return Ok(());
                    }
                }
            }
            Job::PutMutable {
                key,
                salt,
                v,
                seq,
                cas,
                keep,
            } => {
                let mut stop = keep.then(Stop::listen).transpose()?;
                loop {
                    let r = dht.put_mutable(&key, &salt, v.clone(), seq, cas).await;
                    report_put(r, format, keep)?;
                    if !Stop::again(&mut stop).await {
                        return Ok(());
                    }
                }
            }
        }
    }
}

fn salt_bytes(s: Option<&str>) -> Result<Vec<u8>, String> {
    let salt = s.unwrap_or("").as_bytes().to_vec();
    if salt.len() > trackerless::dht::krpc::MAX_ITEM_SALT {
        return Err(format!("--salt is {} bytes, BEP 44 allows 64", salt.len()));
    }
    Ok(salt)
}

fn fmt_err(e: ItemsError) -> String {
    e.to_string()
}

/// SIGINT and SIGTERM for `--keep`, caught from before the first put: a signal that arrives
/// while a put runs then ends the program at the next wait, cleanly, instead of killing it.
struct Stop {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Stop {
    fn listen() -> Result<Stop, String> {
        use tokio::signal::unix::{SignalKind, signal};
        let err = |e: std::io::Error| format!("cannot catch signals: {e}");
        Ok(Stop {
            int: signal(SignalKind::interrupt()).map_err(err)?,
            term: signal(SignalKind::terminate()).map_err(err)?,
        })
    }

    /// Whether to put again: after the republish period with --keep (`Some`), unless
    /// interrupted; never without.
    async fn again(stop: &mut Option<Stop>) -> bool {
        match stop {
            Some(stop) => stop.wait_republish().await,
            None => false,
        }
    }

    /// Sleeps until the next republish; false when interrupted.
    async fn wait_republish(&mut self) -> bool {
        tokio::select! {
            () = tokio::time::sleep(REPUBLISH) => true,
            _ = self.int.recv() => false,
            _ = self.term.recv() => false,
        }
    }
}

/// Prints a put's result; with --keep a put no node took is reported and retried at the next
/// round rather than ending the program.
fn report_put(r: Result<PutSummary, ItemsError>, format: Format, keep: bool) -> Result<(), String> {
    match r {
        Ok(s) => {
            print_put(&s, format);
            Ok(())
        }
        Err(ItemsError::NotStored(s)) if keep => {
            print_put(&s, format);
            tracing::warn!("no node stored the item; retrying in an hour");
            Ok(())
        }
        Err(e) => {
            if let ItemsError::NotStored(s) = &e {
                print_put(s, format);
            }
            Err(e.to_string())
        }
    }
}

fn print_put(s: &PutSummary, format: Format) {
    if format == Format::Bencode {
        println!("{}", hex::encode(s.target.0));
        return;
    }
    let nodes: Vec<serde_json::Value> = s
        .nodes
        .iter()
        .map(|(addr, o)| match o {
            PutOutcome::Stored => serde_json::json!({"node": addr.to_string(), "result": "stored"}),
            PutOutcome::Refused { code, message } => serde_json::json!({
                "node": addr.to_string(), "result": "refused", "code": code, "message": message
            }),
            PutOutcome::NoAnswer => {
                serde_json::json!({"node": addr.to_string(), "result": "no answer"})
            }
        })
        .collect();
    let line = serde_json::json!({
        "target": hex::encode(s.target.0),
        "seq": s.seq,
        "stored": s.stored,
        "nodes": nodes,
    });
    println!("{line}");
}

fn print_got(g: &GotItem, format: Format) {
    use std::io::Write;
    if format == Format::Bencode {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&g.item.v).and_then(|()| out.flush());
        return;
    }
    let mut line = serde_json::json!({
        "target": hex::encode(g.target.0),
        "value": bencode_to_json(&g.item.v),
        "bencoded_hex": hex::encode(&g.item.v),
        "confirmations": g.confirmations,
        "forged_ignored": g.forged,
    });
    if let Some(m) = &g.item.mutable {
        line["pubkey"] = hex::encode(m.k).into();
        line["seq"] = m.seq.into();
        line["sig"] = hex::encode(m.sig).into();
    }
    println!("{line}");
}

/// A bencoded value as JSON: byte strings as text when they are UTF-8, else as
/// `{"hex": ...}`; integers, lists and dictionaries as themselves.
fn bencode_to_json(v: &[u8]) -> serde_json::Value {
    use serde_bencode::value::Value as B;
    fn conv(b: &B) -> serde_json::Value {
        match b {
            B::Bytes(s) => match std::str::from_utf8(s) {
                Ok(t) => t.into(),
                Err(_) => serde_json::json!({ "hex": hex::encode(s) }),
            },
            B::Int(i) => (*i).into(),
            B::List(l) => l.iter().map(conv).collect::<Vec<_>>().into(),
            B::Dict(d) => {
                let mut keys: Vec<_> = d.keys().collect();
                keys.sort();
                let map = keys
                    .into_iter()
                    .map(|k| (String::from_utf8_lossy(k).into_owned(), conv(&d[k])))
                    .collect::<serde_json::Map<_, _>>();
                serde_json::Value::Object(map)
            }
        }
    }
    // The value came from a node and passed its hash or signature check, but it was only
    // size-checked: validate before handing it to the recursive decoder.
    if trackerless::bencode::validate(v, trackerless::bencode::MAX_DEPTH).is_err() {
        return serde_json::json!({ "hex": hex::encode(v) });
    }
    match serde_bencode::from_bytes::<B>(v) {
        Ok(b) => conv(&b),
        Err(_) => serde_json::json!({ "hex": hex::encode(v) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_render_as_json() {
        assert_eq!(bencode_to_json(b"5:hello"), serde_json::json!("hello"));
        assert_eq!(
            bencode_to_json(b"d1:ai1e1:bl2:\xff\xfeee"),
            serde_json::json!({"a": 1, "b": [{"hex": "fffe"}]})
        );
        // Not bencode (cannot come from a checked item, but must not panic).
        assert_eq!(bencode_to_json(b"x"), serde_json::json!({"hex": "78"}));
    }

    #[test]
    fn bad_arguments_are_refused_before_starting() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from(std::iter::once("dht-item").chain(args.iter().copied()))
                .expect("flags parse");
            Job::parse(&cli.command).err()
        };
        assert!(parse(&["get", "abcd"]).unwrap().contains("40 hex digits"));
        assert!(
            parse(&["get", "--pubkey", "00"])
                .unwrap()
                .contains("64 hex")
        );
        assert!(
            parse(&["put", "--bencoded", "i1"])
                .unwrap()
                .contains("bencoded")
        );
        let big = "x".repeat(1000);
        assert!(parse(&["put", &big]).unwrap().contains("1000"));
        let salt = "s".repeat(65);
        assert!(parse(&["get", "--pubkey", &"ab".repeat(32), "--salt", &salt]).is_some());
        assert!(parse(&["put", "ok"]).is_none());
        assert!(
            Cli::try_parse_from(["dht-item", "put", "--seq", "3", "x"]).is_err(),
            "--seq needs --mutable"
        );
    }
}
