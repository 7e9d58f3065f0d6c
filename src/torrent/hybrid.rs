//! Creating BEP 52 hybrid (v1 + v2) torrents, the format libtorrent 2.x and qBittorrent
//! produce by default, so that `dht-seed --hybrid` publishes what those clients expect.
//!
//! A hybrid info dict carries both descriptions of the same bytes: the v1 `files` list and
//! SHA-1 `pieces`, and the v2 `file tree` (a SHA-256 merkle root per file) with
//! `meta version` 2. v2 hashes every file on its own, starting at a piece boundary, so the
//! v1 list gets a BEP 47 pad file (zeros, `attr` `p`, path `.pad/<size>`) after every file
//! that does not end on one; both views then put every file at the same offset. The v2
//! per-piece hashes (`piece layers`) live outside the info dict, in the `.torrent`.
//!
//! We download and seed only through the v1 part; the v2 part exists so that v2-capable
//! clients accept the torrent and join the same swarm (the v1 info hash).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;

use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::metainfo::{
    Info, MAX_PIECE_LENGTH, MetainfoError, default_piece_length, files_to_share, io_err,
};

/// BEP 52's merkle leaf size.
const BLOCK: u64 = 16 << 10;

/// A created hybrid torrent.
#[derive(Debug, Clone)]
pub struct Created {
    /// The info dict, canonical bencode (its SHA-1 is the v1 info hash).
    pub info_bytes: Vec<u8>,
    /// Its validated typed view (pad files marked).
    pub info: Info,
    /// The bencoded `piece layers` dict for the `.torrent` (empty dict when no file is
    /// longer than a piece).
    pub piece_layers: Vec<u8>,
}

/// A bencode value with sorted dict keys: enough to write canonical dicts whose keys are
/// data (file names, merkle roots), which serde structs cannot name.
enum B {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<B>),
    Dict(BTreeMap<Vec<u8>, B>),
}

impl B {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            B::Int(n) => crate::bencode::put_int(out, *n),
            B::Bytes(b) => crate::bencode::put_bytes(out, b),
            B::List(items) => {
                out.push(b'l');
                items.iter().for_each(|i| i.encode(out));
                out.push(b'e');
            }
            B::Dict(map) => {
                out.push(b'd');
                for (k, v) in map {
                    B::Bytes(k.clone()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    fn dict(pairs: impl IntoIterator<Item = (&'static str, B)>) -> B {
        B::Dict(
            pairs
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v))
                .collect(),
        )
    }

    fn str(s: &str) -> B {
        B::Bytes(s.as_bytes().to_vec())
    }
}

/// The merkle tree of one file: its root and, when the file is longer than a piece, the
/// layer of per-piece subtree roots. Leaves past the end are zero hashes (BEP 52).
fn merkle(leaves: &[[u8; 32]], piece_length: u64, file_length: u64) -> ([u8; 32], Vec<u8>) {
    let per_piece = (piece_length / BLOCK) as usize;
    let mut level: Vec<[u8; 32]> = leaves.to_vec();
    level.resize(leaves.len().next_power_of_two().max(1), [0u8; 32]);
    let mut width = 1usize;
    let mut layer = Vec::new();
    loop {
        if width == per_piece && file_length > piece_length {
            let pieces = file_length.div_ceil(piece_length) as usize;
            layer = level[..pieces].concat();
        }
        if level.len() == 1 {
            break;
        }
        level = level
            .chunks_exact(2)
            .map(|pair| {
                let mut h = Sha256::new();
                h.update(pair[0]);
                h.update(pair[1]);
                h.finalize().into()
            })
            .collect();
        width *= 2;
    }
    (level[0], layer)
}

/// Builds a hybrid info dict for a file or directory (see the module docs). The piece
/// length must be a power of two of at least 16 KiB, as BEP 52 requires; by default it is
/// [`default_piece_length`] (always such a power). `progress` gets the running total of
/// file bytes hashed.
pub fn create_hybrid_info(
    path: &Path,
    piece_length: Option<u64>,
    mut progress: impl FnMut(u64),
) -> Result<Created, MetainfoError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    let canonical = fs::canonicalize(path).map_err(io_err(path))?;
    let name = path
        .file_name()
        .or_else(|| canonical.file_name())
        .and_then(|n| n.to_str())
        .ok_or_else(|| MetainfoError::UnsupportedFileName(path.to_path_buf()))?
        .to_owned();
    let is_dir = meta.is_dir();
    let (files, total) = files_to_share(path, &meta, vec![name.clone()])?;
    let piece_length = piece_length.unwrap_or_else(|| default_piece_length(total));
    if !piece_length.is_power_of_two() || !(BLOCK..=MAX_PIECE_LENGTH).contains(&piece_length) {
        return Err(MetainfoError::BadPieceLength(
            i64::try_from(piece_length).unwrap_or(i64::MAX),
        ));
    }

    let mut v1 = V1Hasher::new(piece_length);
    let mut v1_files = Vec::new();
    let mut tree: BTreeMap<Vec<u8>, B> = BTreeMap::new();
    let mut layers: BTreeMap<Vec<u8>, B> = BTreeMap::new();
    let mut hashed = 0u64;
    let mut buf = vec![0u8; 256 << 10];
    let last = files.iter().rposition(|f| f.length > 0).unwrap_or(0);
    for (index, file) in files.iter().enumerate() {
        let mut leaves: Vec<[u8; 32]> = Vec::new();
        let mut block = Sha256::new();
        let mut in_block = 0u64;
        let mut reader = fs::File::open(&file.source)
            .map_err(io_err(&file.source))?
            .take(file.length);
        let mut left = file.length;
        while left > 0 {
            let n = reader.read(&mut buf).map_err(io_err(&file.source))?;
            if n == 0 {
                return Err(MetainfoError::FileChanged(file.source.clone()));
            }
            let mut data = &buf[..n];
            v1.update(data);
            while !data.is_empty() {
                let take = data.len().min((BLOCK - in_block) as usize);
                block.update(&data[..take]);
                in_block += take as u64;
                data = &data[take..];
                if in_block == BLOCK {
                    leaves.push(block.finalize_reset().into());
                    in_block = 0;
                }
            }
            left -= n as u64;
            hashed += n as u64;
            progress(hashed);
        }
        if in_block > 0 {
            leaves.push(block.finalize().into());
        }
        let mut entry = vec![("length", B::Int(file.length as i64))];
        if file.length > 0 {
            let (root, layer) = merkle(&leaves, piece_length, file.length);
            entry.push(("pieces root", B::Bytes(root.to_vec())));
            if !layer.is_empty() {
                layers.insert(root.to_vec(), B::Bytes(layer));
            }
        }
        insert_tree(&mut tree, &file.components, B::dict(entry));
        v1_files.push(B::dict([
            ("length", B::Int(file.length as i64)),
            (
                "path",
                B::List(file.components.iter().map(|c| B::str(c)).collect()),
            ),
        ]));
        // Align the next file to a piece boundary, as v2 lays it out.
        let tail = file.length % piece_length;
        if is_dir && index < last && tail != 0 {
            let pad = piece_length - tail;
            v1.zeros(pad);
            v1_files.push(B::dict([
                ("attr", B::str("p")),
                ("length", B::Int(pad as i64)),
                (
                    "path",
                    B::List(vec![B::str(".pad"), B::str(&pad.to_string())]),
                ),
            ]));
        }
    }
    let pieces = v1.finish();

    let mut info = BTreeMap::new();
    let mut put = |k: &str, v: B| {
        info.insert(k.as_bytes().to_vec(), v);
    };
    put("file tree", B::Dict(tree));
    put("meta version", B::Int(2));
    put("name", B::str(&name));
    put("piece length", B::Int(piece_length as i64));
    put("pieces", B::Bytes(pieces));
    if is_dir {
        put("files", B::List(v1_files));
    } else {
        put("length", B::Int(total as i64));
    }
    let mut info_bytes = Vec::new();
    B::Dict(info).encode(&mut info_bytes);
    let mut piece_layers = Vec::new();
    B::Dict(layers).encode(&mut piece_layers);
    let info = Info::from_bytes(&info_bytes)?;
    Ok(Created {
        info_bytes,
        info,
        piece_layers,
    })
}

/// Puts a file's `{"": entry}` leaf at its path in the v2 file tree.
fn insert_tree(tree: &mut BTreeMap<Vec<u8>, B>, path: &[String], entry: B) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let node = tree
        .entry(first.as_bytes().to_vec())
        .or_insert_with(|| B::Dict(BTreeMap::new()));
    let B::Dict(children) = node else { return };
    if rest.is_empty() {
        children.insert(Vec::new(), entry);
    } else {
        insert_tree(children, rest, entry);
    }
}

/// SHA-1 of the v1 byte stream (files and pad zeros) in pieces.
struct V1Hasher {
    piece_length: u64,
    hasher: Sha1,
    in_piece: u64,
    pieces: Vec<u8>,
}

impl V1Hasher {
    fn new(piece_length: u64) -> Self {
        V1Hasher {
            piece_length,
            hasher: Sha1::new(),
            in_piece: 0,
            pieces: Vec::new(),
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = data.len().min((self.piece_length - self.in_piece) as usize);
            self.hasher.update(&data[..take]);
            self.in_piece += take as u64;
            data = &data[take..];
            if self.in_piece == self.piece_length {
                self.pieces.extend_from_slice(&self.hasher.finalize_reset());
                self.in_piece = 0;
            }
        }
    }

    fn zeros(&mut self, mut n: u64) {
        let zeros = [0u8; 16 << 10];
        while n > 0 {
            let take = n.min(zeros.len() as u64) as usize;
            self.update(&zeros[..take]);
            n -= take as u64;
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.in_piece > 0 {
            self.pieces.extend_from_slice(&self.hasher.finalize());
        }
        self.pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_align_every_file_but_the_last_and_the_v2_keys_are_present() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        fs::create_dir_all(t.join("sub")).unwrap();
        fs::write(t.join("a"), vec![1u8; 40_000]).unwrap();
        fs::write(t.join("b"), vec![2u8; 40_000]).unwrap();
        fs::write(t.join("empty"), b"").unwrap();
        fs::write(t.join("sub/c"), vec![3u8; 100]).unwrap();
        let c = create_hybrid_info(&t, Some(32 << 10), |_| {}).unwrap();
        let kinds: Vec<(Vec<String>, u64, bool)> = c
            .info
            .files
            .iter()
            .map(|f| (f.path.clone(), f.length, f.pad))
            .collect();
        let p = |s: &[&str]| s.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        assert_eq!(
            kinds,
            vec![
                (p(&["a"]), 40_000, false),
                (p(&[".pad", "25536"]), 25_536, true),
                (p(&["b"]), 40_000, false),
                (p(&[".pad", "25536"]), 25_536, true),
                (p(&["empty"]), 0, false),
                (p(&["sub", "c"]), 100, false),
            ]
        );
        assert!(c.info.hybrid);
        assert_eq!(c.info.real_files(), 4);
        // Every real file starts on a piece boundary.
        for f in c.info.files.iter().filter(|f| !f.pad && f.length > 0) {
            assert_eq!(f.offset % (32 << 10), 0, "{:?}", f.path);
        }
        let raw = &c.info_bytes;
        assert!(
            crate::bencode::dict_value_span(raw, b"file tree")
                .unwrap()
                .is_some()
        );
        // `a` and `b` are longer than a piece: two layers of two 32-byte hashes each.
        assert_eq!(c.piece_layers.len(), 2 + 2 * (3 + 32 + 3 + 64));
    }

    #[test]
    fn merkle_root_of_one_block_is_its_hash_and_layers_pad_with_zeros() {
        let leaf = [7u8; 32];
        assert_eq!(merkle(&[leaf], 16 << 10, 100), (leaf, Vec::new()));
        // Three blocks, 32 KiB pieces: the second piece's hash pairs a leaf with a zero.
        let leaves = [[1u8; 32], [2u8; 32], [3u8; 32]];
        let (_, layer) = merkle(&leaves, 32 << 10, 3 * BLOCK);
        let pair = |a: [u8; 32], b: [u8; 32]| -> [u8; 32] {
            let mut h = Sha256::new();
            h.update(a);
            h.update(b);
            h.finalize().into()
        };
        assert_eq!(
            layer,
            [pair(leaves[0], leaves[1]), pair(leaves[2], [0; 32])].concat()
        );
    }

    #[test]
    fn piece_length_must_be_a_power_of_two() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, b"x").unwrap();
        assert!(matches!(
            create_hybrid_info(&f, Some(20_000), |_| {}),
            Err(MetainfoError::BadPieceLength(20_000))
        ));
        let c = create_hybrid_info(&f, None, |_| {}).unwrap();
        assert!(c.info.single_file && c.info.hybrid);
    }
}
