//! Helpers shared by the process-level benchmarks (`download`, `interop`): timing a child
//! process's wall time, CPU and peak RSS, writing a pseudo-random file, comparing files.
//! Included with `#[path]`, since a bench target cannot import another.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use trackerless::sim::testnet::Testnet;

use crate::lt::LtNode;

/// One downloader's cost.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    pub secs: f64,
    pub cpu: f64,
    pub rss_mib: f64,
}

/// A child process whose stdout lines arrive on a channel as they are printed (so a
/// completion line can be timed), with its stderr kept for failure messages.
pub struct Proc {
    pub child: std::process::Child,
    /// Each line with the seconds since the start it was read at.
    pub lines: std::sync::mpsc::Receiver<(f64, String)>,
    pub stderr: std::thread::JoinHandle<String>,
}

/// How a [`Proc`] ended: exit status, CPU seconds and peak RSS from `wait4`'s rusage.
pub struct Ended {
    pub success: bool,
    pub cpu: f64,
    pub rss_mib: f64,
    pub stderr: String,
}

impl Proc {
    pub fn spawn(bin: &str, args: &[String]) -> Proc {
        let mut child = Command::new(bin)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let t0 = Instant::now();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((t0.elapsed().as_secs_f64(), l));
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut s);
            s
        });
        Proc {
            child,
            lines,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn interrupt(&self) {
        // SAFETY: kill(2) on our own child's pid (not yet reaped, so not reused).
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
    }

    /// Waits for exit; the stdout lines not yet taken stay readable on `self.lines`.
    pub fn wait(self) -> (Ended, std::sync::mpsc::Receiver<(f64, String)>) {
        let mut status = 0;
        // SAFETY: wait4 on our own child's pid with valid pointers to locals.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(self.child.id() as i32, &mut status, 0, &mut ru) };
        assert!(r > 0, "wait4 failed");
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let ended = Ended {
            success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
            rss_mib: ru.ru_maxrss as f64 / 1024.0,
            stderr: self.stderr.join().unwrap_or_default(),
        };
        (ended, self.lines)
    }
}

/// Runs a downloader to completion: wall time, CPU seconds, peak RSS; panics (with its
/// stderr) if it fails.
pub fn run_measured(bin: &str, args: &[String]) -> Cost {
    let t = Instant::now();
    let (e, lines) = Proc::spawn(bin, args).wait();
    let secs = t.elapsed().as_secs_f64();
    if std::env::var_os("DOWNLOAD_BENCH_VERBOSE").is_some() {
        for (at, l) in lines.try_iter() {
            eprintln!("  [{at:.2} s] {l}");
        }
    }
    assert!(e.success, "{bin} failed: {}", e.stderr);
    Cost {
        secs,
        cpu: e.cpu,
        rss_mib: e.rss_mib,
    }
}

/// CPU seconds used so far by process `pid` (from /proc).
pub fn proc_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Peak RSS of process `pid` in MiB (VmHWM).
pub fn proc_peak_rss(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |k| k / 1024.0)
}

/// The 1-minute load average, to record how busy the shared machine was.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

pub fn make_file(path: &Path, mib: u64) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).unwrap();
    }
    f.flush().unwrap();
}

pub fn free_bytes(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs with a valid C string and a zeroed out-struct.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) != 0 {
            return 0;
        }
        s.f_bavail as u64 * s.f_frsize as u64
    }
}

pub fn same(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (Ok(fa), Ok(fb)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    let (mut ra, mut rb) = (
        std::io::BufReader::with_capacity(1 << 20, fa),
        std::io::BufReader::with_capacity(1 << 20, fb),
    );
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = ra.read(&mut x).unwrap();
        let mut got = 0;
        while got < n {
            let m = rb.read(&mut y[got..n]).unwrap();
            if m == 0 {
                return false;
            }
            got += m;
        }
        if n == 0 {
            return rb.read(&mut y).unwrap() == 0;
        }
        if x[..n] != y[..n] {
            return false;
        }
    }
}

/// `dht-get` arguments for a download of `magnet` through the testnet, on `ip`, into
/// `out`, state in `data`, loopback allow-list.
pub fn get_args(net: &Testnet, magnet: &str, ip: &str, out: &Path, data: &Path) -> Vec<String> {
    [
        magnet,
        "--out",
        out.to_str().unwrap(),
        "--bind",
        &format!("{ip}:0"),
        "--bootstrap",
        &net.addr(3).to_string(),
        "--allow-net",
        "127.0.0.0/8",
        "--no-subnet-limit",
        "--rate-limit",
        "0",
        "--data-dir",
        data.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub async fn lt_joined(net: &Testnet, ip: Ipv4Addr, flags: &[&str]) -> LtNode {
    let mut lt = LtNode::start_on_with(ip, flags).await;
    for i in 0..4 {
        lt.add_node(net.addr(i)).await;
    }
    lt.wait_dht_nodes(2, Duration::from_secs(30)).await;
    lt
}

/// A fresh libtorrent session downloads the magnet; returns its cost.
pub async fn lt_download(
    net: &Testnet,
    ip: Ipv4Addr,
    flags: &[&str],
    magnet: &str,
    ih: &str,
    dir: &Path,
) -> Cost {
    let mut lt = lt_joined(net, ip, flags).await;
    let pid = lt.pid();
    let cpu0 = proc_cpu(pid);
    let t = Instant::now();
    lt.add_magnet(magnet, dir).await;
    assert!(
        lt.wait_finished(ih, Duration::from_secs(600)).await,
        "libtorrent did not finish: {}",
        lt.torrent_status(ih).await
    );
    let secs = t.elapsed().as_secs_f64();
    let cost = Cost {
        secs,
        cpu: proc_cpu(pid) - cpu0,
        rss_mib: proc_peak_rss(pid),
    };
    // A clean exit, so libtorrent's last writes are out before the bytes are compared.
    lt.quit().await;
    cost
}
