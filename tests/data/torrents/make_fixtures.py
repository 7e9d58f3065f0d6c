"""Regenerates the fixture torrents with libtorrent (python3 -c 'import libtorrent').

Content is deterministic: file N of a fixture holds bytes (i * 7 + N) % 251, so a test can
rebuild it and check every piece hash. Run from this directory; it prints the v1 info hashes
that tests/metainfo_magnet.rs expects.
"""
import os, shutil, tempfile
import libtorrent as lt

def content(n, size):
    return bytes((i * 7 + n) % 251 for i in range(size))

def make(name, files, piece_size, flags, out, extra=None):
    tmp = tempfile.mkdtemp()
    fs = lt.file_storage()
    for n, (path, size) in enumerate(files):
        full = os.path.join(tmp, name, *path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(content(n, size))
        fs.add_file(os.path.join(name, *path), size)
    ct = lt.create_torrent(fs, piece_size, flags=flags)
    if extra:
        extra(ct)
    lt.set_piece_hashes(ct, tmp)
    e = ct.generate()
    e.pop(b"creation date", None)  # keep the fixture stable
    data = lt.bencode(e)
    with open(out, "wb") as f:
        f.write(data)
    shutil.rmtree(tmp)
    print(out, lt.torrent_info(data).info_hashes().v1)

def v1_extras(ct):
    ct.set_comment("fixture: v1 with nodes")
    ct.set_creator("make_fixtures.py")
    ct.add_node("router.example", 6881)
    ct.add_tracker("udp://tracker.example:6969/announce", 0)
    ct.add_tracker("http://tracker.example/announce", 1)

files = [(["a.bin"], 40000), (["sub", "b.txt"], 5), (["sub", "c"], 17000)]
make("fixture", files, 16384, lt.create_torrent.v1_only, "v1_multi.torrent", v1_extras)
# Hybrid v1+v2: the info dict carries v2 keys (`file tree`, `meta version`) and BEP 47 pad
# files, all unknown to a v1 parser but part of the v1 info hash.
make("hybrid", files, 16384, 0, "hybrid_multi.torrent")
