//! Runs the `dht-item` command against a loopback testnet (BEP 44 client tests).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use trackerless::sim::testnet::Testnet;

/// Runs `dht-item` bound to 127.`subnet`.9.1, joined through the first nodes of `net`
/// (node 0 as router, the next up to seven as contacts), sending only to 127.0.0.0/8;
/// `args` come after the network flags.
pub async fn run(net: &Testnet, subnet: u8, data: &Path, args: &[&str]) -> Output {
    tokio::time::timeout(
        Duration::from_secs(120),
        command(net, subnet, data, args).output(),
    )
    .await
    .expect("dht-item ends")
    .expect("dht-item runs")
}

/// The command [`run`] runs, for callers that drive the process themselves.
pub fn command(net: &Testnet, subnet: u8, data: &Path, args: &[&str]) -> tokio::process::Command {
    let bind = SocketAddrV4::new(Ipv4Addr::new(127, subnet, 9, 1), 0).to_string();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_dht-item"));
    cmd.args([
        "--bind",
        &bind,
        "--allow-net",
        "127.0.0.0/8",
        "--no-subnet-limit",
        "--rate-limit",
        "0",
        "--data-dir",
    ])
    .arg(data)
    .args(["--bootstrap", &net.addr(0).to_string()]);
    for i in 1..net.nodes.len().min(8) {
        cmd.args(["--contact", &net.addr(i).to_string()]);
    }
    cmd.args(args);
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// The last stdout line of a run, as JSON.
pub fn json_line(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text:?}; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
