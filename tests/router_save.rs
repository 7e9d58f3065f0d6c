//! `dht-node --router` honours `--save-interval` (it used to save every 300 s whatever the
//! flag said), and its saves leave a store the next start loads.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn router_saves_every_save_interval() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("router").join("router-nodes.bin");
    let child = Command::new(env!("CARGO_BIN_EXE_dht-node"))
        .args(["--router", "--bind", "127.133.0.1:0"])
        // A router that answers nothing: the ring stays empty, which still saves a header.
        .args(["--bootstrap", "127.133.0.2:9"])
        .args(["--allow-net", "127.0.0.0/8", "--stats-interval", "0"])
        .args(["--save-interval", "0.2", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Kill(child);
    // Event wait with a generous deadline: only the periodic save (not the one on exit,
    // since the process is still running) can create the file.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !store.exists() {
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "dht-node --router exited early"
        );
        assert!(
            Instant::now() < deadline,
            "no periodic save within 60 s with --save-interval 0.2"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let data = std::fs::read(&store).unwrap();
    assert!(
        data.starts_with(b"TLROUTE2"),
        "not a version-2 router store"
    );
    assert_eq!(data.len(), 24, "empty rings save just the header");
    assert!(child.0.try_wait().unwrap().is_none(), "still serving");
}
