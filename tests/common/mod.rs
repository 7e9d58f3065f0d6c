//! Test-support code shared by the integration tests (each test crate that needs it says
//! `mod common;`). Not every test uses every helper, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::process::Command;

pub mod item_cli;
pub mod lt;

/// One HTTP/1.1 GET on loopback (a `--metrics` or `--http` endpoint): (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

/// The value of the sample `name{labels}` in a Prometheus exposition.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// Adds `addr`/128 to `lo` unless it is there already. Only possible as root of a network
/// namespace (`unshare -rn`, as `tools/test.sh` runs the tests); anywhere else the test
/// stops here with that explanation rather than touch a real interface.
pub fn ensure_ipv6_on_lo(addr: &str) {
    // glibc's getaddrinfo with AI_ADDRCONFIG (aria2 binds every socket through it) treats
    // a host whose only non-loopback addresses are IPv6 as IPv6-only and refuses IPv4
    // binds ("Name or service not known"). The namespace is shared by every test binary
    // of a run, so an IPv6 test address would break the aria2 tests that run after it;
    // an IPv4 test address (RFC 2544 benchmarking range, never routed) keeps it dual-stack.
    ensure_addr_on_lo("-4", "198.18.0.1/32");
    ensure_addr_on_lo("-6", &format!("{addr}/128"));
}

/// Adds `cidr` to `lo` unless it is there already; `family` is `ip`'s `-4` or `-6`.
fn ensure_addr_on_lo(family: &str, cidr: &str) {
    let has = || {
        Command::new("ip")
            .args([family, "addr", "show", "dev", "lo"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(cidr))
    };
    if has() {
        return;
    }
    let mut args = vec![family, "addr", "add", cidr, "dev", "lo"];
    if family == "-6" {
        args.push("nodad");
    }
    // Tests of one binary race to add the same address: the loser's "already assigned"
    // is not an error, so stderr is dropped and the address checked again below.
    let added = Command::new("ip")
        .args(&args)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        added || has(),
        "cannot add {cidr} to lo: run the tests in their own network namespace \
         (tools/test.sh, or unshare -rn sh -c 'ip link set lo up && cargo test ...')"
    );
}
