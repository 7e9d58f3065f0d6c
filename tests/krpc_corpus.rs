//! The real-world corpus (tests/data/krpc-real: 2,761 datagrams captured from the live DHT)
//! must decode in full.

use std::path::PathBuf;

use trackerless::krpc::{self, Body};

/// All corpus datagrams with their file names.
pub fn corpus() -> Vec<(String, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/krpc-real");
    let mut out = Vec::new();
    for source in std::fs::read_dir(&root).expect("corpus directory") {
        let source = source.unwrap().path();
        if !source.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&source).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "bin") {
                out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_real_datagram_decodes() {
    let corpus = corpus();
    assert_eq!(corpus.len(), 2761, "corpus is incomplete");
    let (mut queries, mut replies) = (0, 0);
    for (name, bytes) in &corpus {
        match krpc::decode(bytes) {
            Ok(m) => match m.body {
                Body::Query(_) => queries += 1,
                Body::Response(_) => replies += 1,
                Body::Error(_) => {}
            },
            Err(e) => panic!("{name}: {e}"),
        }
    }
    assert_eq!((queries, replies), (1972, 789));
}
