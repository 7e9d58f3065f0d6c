//! Metainfo and magnet handling against real files: torrents made by libtorrent (checked-in
//! fixtures and live cross-checks through its Python binding) and torrents we create from
//! directories on disk, with every piece hash verified by re-reading the data.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha1::{Digest, Sha1};
use trackerless::torrent::InfoHash;
use trackerless::torrent::magnet::Magnet;
use trackerless::torrent::metainfo::{
    Info, Metainfo, MetainfoError, create_info, default_piece_length, torrent_file_from_info,
};

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/torrents")
        .join(name);
    fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The content `make_fixtures.py` writes into file `n` of a fixture.
fn fixture_content(n: usize, size: usize) -> Vec<u8> {
    (0..size).map(|i| ((i * 7 + n) % 251) as u8).collect()
}

/// Checks every piece hash of `info` against `data`, the torrent's concatenated content,
/// using `piece_spans` to cut the pieces out of the per-file slices.
fn verify_pieces(info: &Info, file_data: &[Vec<u8>]) {
    assert_eq!(info.files.len(), file_data.len());
    for (f, data) in info.files.iter().zip(file_data) {
        assert_eq!(f.length, data.len() as u64, "{:?}", f.path);
    }
    for index in 0..info.num_pieces() {
        let mut hasher = Sha1::new();
        let mut len = 0;
        for span in info.piece_spans(index).unwrap() {
            let start = span.file_offset as usize;
            hasher.update(&file_data[span.file][start..start + span.length as usize]);
            len += span.length;
        }
        assert_eq!(Some(len), info.piece_size(index));
        let digest: [u8; 20] = hasher.finalize().into();
        assert_eq!(digest, info.pieces[index], "piece {index}");
    }
}

const FIXTURE_FILES: [(&str, usize); 3] = [("a.bin", 40000), ("sub/b.txt", 5), ("sub/c", 17000)];

#[test]
fn libtorrent_v1_fixture_parses_and_writes_back_identically() {
    let bytes = fixture("v1_multi.torrent");
    let meta = Metainfo::from_bytes(&bytes).unwrap();
    assert_eq!(
        meta.info_hash.to_hex(),
        "16723f7899b415631e2469941cf1b4f0aa43d146"
    );
    assert_eq!(
        meta.announce.as_deref(),
        Some("udp://tracker.example:6969/announce")
    );
    assert_eq!(
        meta.announce_list,
        vec![
            vec!["udp://tracker.example:6969/announce".to_string()],
            vec!["http://tracker.example/announce".to_string()]
        ]
    );
    assert_eq!(meta.nodes, vec![("router.example".to_string(), 6881)]);
    assert_eq!(meta.comment.as_deref(), Some("fixture: v1 with nodes"));
    assert_eq!(meta.created_by.as_deref(), Some("make_fixtures.py"));
    let info = &meta.info;
    assert_eq!(info.name, "fixture");
    assert_eq!(info.piece_length, 16384);
    assert_eq!(info.total_length(), 57005);
    assert_eq!(info.num_pieces(), 4);
    assert_eq!(info.piece_size(3), Some(57005 - 3 * 16384));
    let paths: Vec<String> = info.files.iter().map(|f| f.path.join("/")).collect();
    assert_eq!(paths, FIXTURE_FILES.map(|f| f.0));
    assert_eq!(
        info.file_path_on_disk(1),
        Some(PathBuf::from("fixture/sub/b.txt"))
    );
    let data: Vec<Vec<u8>> = FIXTURE_FILES
        .iter()
        .enumerate()
        .map(|(n, f)| fixture_content(n, f.1))
        .collect();
    verify_pieces(info, &data);
    // libtorrent and we agree on canonical bencode for every key we keep.
    assert_eq!(meta.to_bytes(), bytes);
}

#[test]
fn libtorrent_hybrid_fixture_keeps_v2_keys_in_the_v1_hash() {
    let bytes = fixture("hybrid_multi.torrent");
    let meta = Metainfo::from_bytes(&bytes).unwrap();
    // The v1 info hash covers `file tree` and `meta version`, which we do not parse.
    assert_eq!(
        meta.info_hash.to_hex(),
        "2a27efc66f0513dce51525d47b0a60d2feef6f8d"
    );
    let info_text = String::from_utf8_lossy(&meta.info_bytes);
    assert!(info_text.contains("9:file tree") && info_text.contains("12:meta version"));
    // BEP 47 pad files are ordinary entries to a v1 reader; their content is zeros.
    let paths: Vec<String> = meta.info.files.iter().map(|f| f.path.join("/")).collect();
    assert_eq!(
        paths,
        [
            "a.bin",
            ".pad/9152",
            "sub/b.txt",
            ".pad/16379",
            "sub/c",
            ".pad/15768"
        ]
    );
    let mut data = Vec::new();
    for (n, (_, size)) in FIXTURE_FILES.iter().enumerate() {
        data.push(fixture_content(n, *size));
        let pad = meta.info.files[2 * n + 1].length as usize;
        data.push(vec![0; pad]);
    }
    verify_pieces(&meta.info, &data);
    // Pad files are recognised, and the v2 `piece layers` are written back verbatim.
    assert_eq!(meta.info.files.iter().filter(|f| f.pad).count(), 3);
    assert!(meta.info.hybrid);
    let written = meta.to_bytes();
    let layers = |b: &[u8]| {
        trackerless::bencode::dict_value_span(b, b"piece layers")
            .unwrap()
            .map(|r| b[r].to_vec())
    };
    assert!(layers(&bytes).is_some());
    assert_eq!(layers(&written), layers(&bytes));
    assert_eq!(
        Metainfo::from_bytes(&written).unwrap().info_hash,
        meta.info_hash
    );
}

/// Writes a tree of files with awkward sizes (around piece boundaries, empty, one byte).
fn make_tree(root: &Path) -> Vec<(&'static str, usize)> {
    let files: Vec<(&'static str, usize)> = vec![
        ("z_last.bin", 16385),
        ("a.txt", 1),
        ("a/inner.dat", 16383),
        ("a/deeper/x", 50_001),
        ("B_upper", 4096),
        ("empty", 0),
        ("mid/one", 16384),
        ("mid/two", 7),
    ];
    for (n, (path, size)) in files.iter().enumerate() {
        let full = root.join(path);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(&full, fixture_content(n + 11, *size)).unwrap();
    }
    fs::create_dir_all(root.join("empty_dir/nested")).unwrap();
    files
}

/// Reads back every file of `info` from under `base` and checks all piece hashes.
fn verify_on_disk(info: &Info, base: &Path) {
    let data: Vec<Vec<u8>> = (0..info.files.len())
        .map(|i| fs::read(base.join(info.file_path_on_disk(i).unwrap())).unwrap())
        .collect();
    verify_pieces(info, &data);
}

#[test]
fn created_multi_file_torrent_parses_back_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("share");
    let files = make_tree(&root);
    let total: u64 = files.iter().map(|f| f.1 as u64).sum();

    let mut reports = Vec::new();
    let (raw, info) = create_info(&root, Some(16384), |n| reports.push(n)).unwrap();
    assert!(
        reports.windows(2).all(|w| w[0] < w[1]),
        "progress must only grow"
    );
    assert_eq!(reports.last(), Some(&total));

    // Sorted by path components, byte-wise: uppercase first, a directory's files right
    // after its name (so `a/...` before `a.txt`), the empty file included.
    let paths: Vec<String> = info.files.iter().map(|f| f.path.join("/")).collect();
    assert_eq!(
        paths,
        [
            "B_upper",
            "a/deeper/x",
            "a/inner.dat",
            "a.txt",
            "empty",
            "mid/one",
            "mid/two",
            "z_last.bin"
        ]
    );
    assert_eq!(info.name, "share");
    assert!(!info.single_file && !info.private);
    assert_eq!(info.total_length(), total);
    assert_eq!(info.num_pieces() as u64, total.div_ceil(16384));

    let torrent = torrent_file_from_info(&raw);
    let meta = Metainfo::from_bytes(&torrent).unwrap();
    assert_eq!(meta.info, info);
    assert_eq!(meta.info_bytes, raw);
    let expected_hash: [u8; 20] = Sha1::digest(&raw).into();
    assert_eq!(meta.info_hash, InfoHash(expected_hash));
    verify_on_disk(&meta.info, tmp.path());

    // Deterministic: the same tree gives the same bytes.
    let (again, _) = create_info(&root, Some(16384), |_| {}).unwrap();
    assert_eq!(again, raw);
}

#[test]
fn created_torrent_with_odd_and_default_piece_lengths() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("odd");
    make_tree(&root);
    for piece in [Some(1000), Some(3), Some(1 << 20), None] {
        let (raw, info) = create_info(&root, piece, |_| {}).unwrap();
        let expected = piece.unwrap_or_else(|| default_piece_length(info.total_length()));
        assert_eq!(info.piece_length, expected);
        assert_eq!(Info::from_bytes(&raw).unwrap(), info);
        verify_on_disk(&info, tmp.path());
    }
}

#[test]
fn created_single_file_torrent() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("video.mkv");
    fs::write(&path, fixture_content(3, 100_000)).unwrap();
    let (raw, info) = create_info(&path, Some(32768), |_| {}).unwrap();
    assert!(info.single_file);
    assert_eq!(info.name, "video.mkv");
    assert_eq!(info.files.len(), 1);
    assert_eq!(info.files[0].path, ["video.mkv"]);
    assert_eq!(info.num_pieces(), 4);
    assert_eq!(info.piece_size(3), Some(100_000 - 3 * 32768));
    assert!(String::from_utf8_lossy(&raw).starts_with("d6:lengthi100000e4:name9:video.mkv"));
    verify_on_disk(&info, tmp.path());
}

#[cfg(unix)]
#[test]
fn created_torrent_follows_file_links_but_not_directory_links() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret"), b"not shared").unwrap();
    let root = tmp.path().join("links");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("real"), b"12345").unwrap();
    symlink(root.join("real"), root.join("alias")).unwrap();
    symlink(&outside, root.join("dir_link")).unwrap();
    symlink(root.join("missing"), root.join("dangling")).unwrap();
    // A loop that would never end if directory links were followed.
    symlink(&root, root.join("loop")).unwrap();
    let (_, info) = create_info(&root, None, |_| {}).unwrap();
    let paths: Vec<String> = info.files.iter().map(|f| f.path.join("/")).collect();
    assert_eq!(paths, ["alias", "real"]);
    verify_on_disk(&info, tmp.path());
}

#[test]
fn create_info_refuses_what_it_cannot_share() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    fs::create_dir_all(empty.join("sub")).unwrap();
    assert!(matches!(
        create_info(&empty, None, |_| {}),
        Err(MetainfoError::NothingToShare(_))
    ));
    fs::write(empty.join("sub/zero"), b"").unwrap();
    let err = create_info(&empty, None, |_| {}).unwrap_err();
    assert!(matches!(err, MetainfoError::NothingToShare(_)));
    assert!(err.to_string().contains("no regular files"), "{err}");

    let missing = tmp.path().join("nope");
    let err = create_info(&missing, None, |_| {}).unwrap_err();
    assert!(matches!(err, MetainfoError::Io { .. }));
    assert!(err.to_string().contains("nope"), "{err}");

    fs::write(empty.join("data"), b"x").unwrap();
    for bad in [0, (256 << 20) + 1] {
        assert!(matches!(
            create_info(&empty, Some(bad), |_| {}),
            Err(MetainfoError::BadPieceLength(_))
        ));
    }
}

#[cfg(unix)]
#[test]
fn create_info_refuses_names_other_clients_would_refuse() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("win");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("a\\b"), b"x").unwrap();
    match create_info(&root, None, |_| {}) {
        Err(MetainfoError::UnsafePath { path, .. }) => assert_eq!(path, ["a\\b"]),
        other => panic!("{other:?}"),
    }

    use std::os::unix::ffi::OsStrExt;
    let root = tmp.path().join("latin1");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join(std::ffi::OsStr::from_bytes(b"caf\xe9")), b"x").unwrap();
    assert!(matches!(
        create_info(&root, None, |_| {}),
        Err(MetainfoError::UnsupportedFileName(_))
    ));
}

/// Builds the same torrent with libtorrent (v1 only, files added in `paths` order) and
/// returns its bencoded info dict.
fn libtorrent_info(base: &Path, paths: &[String], piece_length: u64) -> Vec<u8> {
    const SCRIPT: &str = r#"
import os, sys, warnings
warnings.simplefilter("ignore")
import libtorrent as lt
base, piece = sys.argv[1], int(sys.argv[2])
fs = lt.file_storage()
for p in sys.argv[3:]:
    fs.add_file(p, os.path.getsize(os.path.join(base, p)))
ct = lt.create_torrent(fs, piece, flags=lt.create_torrent.v1_only)
lt.set_piece_hashes(ct, base)
sys.stdout.write(lt.bencode(ct.generate()[b"info"]).hex())
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(base)
        .arg(piece_length.to_string())
        .args(paths)
        .output()
        .expect("this test needs python3 with libtorrent (pip install libtorrent)");
    assert!(
        out.status.success(),
        "python3 libtorrent failed (this test needs python3 with libtorrent):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    hex::decode(String::from_utf8(out.stdout).unwrap().trim()).unwrap()
}

#[test]
fn info_hash_matches_libtorrent() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cross");
    make_tree(&root);
    let single = tmp.path().join("single.iso");
    fs::write(&single, fixture_content(5, 70_000)).unwrap();

    for piece_length in [16384, 32768] {
        let (raw, info) = create_info(&root, Some(piece_length), |_| {}).unwrap();
        let paths: Vec<String> = (0..info.files.len())
            .map(|i| {
                info.file_path_on_disk(i)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        let theirs = libtorrent_info(tmp.path(), &paths, piece_length);
        assert_eq!(
            String::from_utf8_lossy(&raw),
            String::from_utf8_lossy(&theirs),
            "multi-file, piece length {piece_length}"
        );
        assert_eq!(Sha1::digest(&raw), Sha1::digest(&theirs));

        let (raw, _) = create_info(&single, Some(piece_length), |_| {}).unwrap();
        let theirs = libtorrent_info(tmp.path(), &["single.iso".to_owned()], piece_length);
        assert_eq!(raw, theirs, "single-file, piece length {piece_length}");
    }
}

#[test]
fn magnet_of_a_torrent_round_trips() {
    let meta = Metainfo::from_bytes(&fixture("v1_multi.torrent")).unwrap();
    let mut magnet = Magnet::from_info_hash(meta.info_hash);
    magnet.display_name = Some(meta.info.name.clone());
    magnet.trackers = meta.announce.iter().cloned().collect();
    magnet.peers = vec!["192.0.2.1:6881".parse().unwrap()];
    let uri = magnet.to_uri();
    assert_eq!(
        uri,
        "magnet:?xt=urn:btih:16723f7899b415631e2469941cf1b4f0aa43d146&dn=fixture\
         &tr=udp%3A%2F%2Ftracker.example%3A6969%2Fannounce&x.pe=192.0.2.1:6881"
    );
    assert_eq!(uri.parse::<Magnet>().unwrap(), magnet);
    // After a BEP 9 fetch the raw info dict is checked against the magnet and saved.
    let fetched = meta.info_bytes.clone();
    let digest: [u8; 20] = Sha1::digest(&fetched).into();
    assert_eq!(InfoHash(digest), magnet.info_hash);
    let saved = Metainfo::from_bytes(&torrent_file_from_info(&fetched)).unwrap();
    assert_eq!(saved.info, meta.info);
    assert_eq!(saved.info_hash, magnet.info_hash);
}
