//! Test-support code shared by the integration tests (each test crate that needs it says
//! `mod common;`). Not every test uses every helper, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::process::Command;

pub mod item_cli;
pub mod lt;

/// Adds `addr`/128 to `lo` unless it is there already. Only possible as root of a network
/// namespace (`unshare -rn`, as `tools/test.sh` runs the tests); anywhere else the test
/// stops here with that explanation rather than touch a real interface.
pub fn ensure_ipv6_on_lo(addr: &str) {
    let has = |a: &str| {
        Command::new("ip")
            .args(["-6", "addr", "show", "dev", "lo"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{a}/128")))
    };
    if has(addr) {
        return;
    }
    let added = Command::new("ip")
        .args([
            "-6",
            "addr",
            "add",
            &format!("{addr}/128"),
            "dev",
            "lo",
            "nodad",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        added && has(addr),
        "cannot add {addr} to lo: run the tests in their own network namespace \
         (tools/test.sh, or unshare -rn sh -c 'ip link set lo up && cargo test ...')"
    );
}
