#!/usr/bin/env python3
"""Writes the seed corpora for the fuzz targets into fuzz/seeds/<target>/.

Seeds are small, valid (and a few deliberately broken) inputs that show the fuzzer every
message shape: BEP 5 examples and BEP 42/43/51 variants, a spread of real datagrams from
tests/data/krpc-real, peer-wire streams with every message type, BEP 9/10 payloads, and
.torrent files. `cargo fuzz run <target> fuzz/corpus/<target> fuzz/seeds/<target>` starts
from them; the minimized corpus that fuzzing grows from them is what gets checked in
(fuzz/corpus/), so this script is only needed to start over. Deterministic; stdlib only.
Run from anywhere: python3 fuzz/make_seeds.py
"""
import hashlib
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "seeds")


# ---------------------------------------------------------------- bencode

def benc(v):
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, list):
        return b"l" + b"".join(benc(x) for x in v) + b"e"
    if isinstance(v, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, x) for k, x in v.items())
        return b"d" + b"".join(benc(k) + benc(x) for k, x in items) + b"e"
    raise TypeError(type(v))


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- KRPC

def compact_node(i):
    nid = hashlib.sha1(b"node%d" % i).digest()
    return nid + bytes([127, 120, i // 250, i % 250 + 1]) + struct.pack(">H", 6881 + i)


def krpc_seeds():
    a_id, b_id = b"abcdefghij0123456789", b"mnopqrstuvwxyz123456"
    nodes = b"".join(compact_node(i) for i in range(8))
    peers = [bytes([127, 120, 9, i]) + struct.pack(">H", 6881) for i in range(1, 4)]
    msgs = {
        # BEP 5 examples (the `nodes` strings made real).
        "ping_q": {"t": "aa", "y": "q", "q": "ping", "a": {"id": a_id}},
        "ping_r": {"t": "aa", "y": "r", "r": {"id": b_id}},
        "find_node_q": {"t": "aa", "y": "q", "q": "find_node", "a": {"id": a_id, "target": b_id}},
        "find_node_r": {"t": "aa", "y": "r", "r": {"id": b_id, "nodes": nodes}},
        "get_peers_q": {"t": "aa", "y": "q", "q": "get_peers", "a": {"id": a_id, "info_hash": b_id}},
        "get_peers_r_values": {"t": "aa", "y": "r",
                               "r": {"id": a_id, "token": "aoeusnth", "values": peers}},
        "get_peers_r_nodes": {"t": "aa", "y": "r",
                              "r": {"id": a_id, "token": "aoeusnth", "nodes": nodes}},
        "announce_q": {"t": "aa", "y": "q", "q": "announce_peer",
                       "a": {"id": a_id, "info_hash": b_id, "port": 6881, "token": "aoeusnth"}},
        "announce_implied_q": {"t": "aa", "y": "q", "q": "announce_peer",
                               "a": {"id": a_id, "info_hash": b_id, "implied_port": 1,
                                     "port": 0, "token": "aoeusnth"}},
        "error": {"t": "aa", "y": "e", "e": [201, "A Generic Error Ocurred"]},
        "error_203": {"t": "xy", "y": "e", "e": [203, "bad token"], "ip": peers[0]},
        # BEP 42 `ip`, BEP 43 `ro`, client version.
        "ping_r_ip": {"t": "t1", "y": "r", "r": {"id": b_id}, "ip": peers[1], "v": "LT\x01\x02"},
        "ping_q_ro": {"t": "t2", "y": "q", "q": "ping", "a": {"id": a_id}, "ro": 1, "v": "UT\xa6\x6f"},
        # BEP 51.
        "sample_q": {"t": "s1", "y": "q", "q": "sample_infohashes", "a": {"id": a_id, "target": b_id}},
        "sample_r": {"t": "s1", "y": "r",
                     "r": {"id": b_id, "interval": 21600, "num": 3, "nodes": nodes[:52],
                           "samples": a_id + b_id + a_id}},
        # Forward compatibility: an unknown method with a target; one without.
        "vote_q": {"t": "v1", "y": "q", "q": "vote", "a": {"id": a_id, "target": b_id, "vote": 5}},
        "unknown_q": {"t": "u1", "y": "q", "q": "frobnicate", "a": {"id": a_id}},
        # Odd but seen: long tids, extra keys, wrong types.
        "long_tid": {"t": "0123456789abcdef", "y": "r", "r": {"id": b_id, "nodes6": b""}},
        "bad_id": {"t": "aa", "y": "q", "q": "ping", "a": {"id": "short"}},
        "bad_port": {"t": "aa", "y": "q", "q": "announce_peer",
                     "a": {"id": a_id, "info_hash": b_id, "port": 70000, "token": "x"}},
        "nested": {"t": "aa", "y": "r", "r": {"id": b_id, "x": [[[{"a": [1, 2]}]]]}},
    }
    for name, m in msgs.items():
        write("krpc", name, benc(m))
    write("krpc", "truncated", benc(msgs["find_node_r"])[:-7])
    write("krpc", "trailing", benc(msgs["ping_q"]) + b"x")
    write("krpc", "deep", b"l" * 40 + b"e" * 40)
    write("krpc", "int_edge", b"d1:ti-0e1:y1:qi9223372036854775808ee")
    # A spread of real datagrams: the first few of every source plus every 40th.
    real = os.path.join(ROOT, "tests", "data", "krpc-real")
    for source in sorted(os.listdir(real)):
        d = os.path.join(real, source)
        if not os.path.isdir(d):
            continue
        files = sorted(f for f in os.listdir(d) if f.endswith(".bin"))
        for i, f in enumerate(files):
            if i < 4 or i % 40 == 0:
                with open(os.path.join(d, f), "rb") as fh:
                    write("krpc", "real-%s-%s" % (source, f[:-4]), fh.read())


# ---------------------------------------------------------------- peer wire

def frame(msg_id, payload=b""):
    return struct.pack(">IB", 1 + len(payload), msg_id) + payload


def ext_handshake():
    return benc({"m": {"ut_metadata": 1, "ut_pex": 2}, "metadata_size": 31235,
                 "p": 6881, "reqq": 250, "v": "trackerless 0.1.0",
                 "yourip": bytes([127, 0, 0, 1])})


def metadata(msg_type, piece, total=None, data=b""):
    d = {"msg_type": msg_type, "piece": piece}
    if total is not None:
        d["total_size"] = total
    return benc(d) + data


def wire_seeds():
    every = b"".join([
        struct.pack(">I", 0),  # keep-alive
        frame(0), frame(1), frame(2), frame(3),
        frame(4, struct.pack(">I", 7)),
        frame(5, b"\xff\xfe"),
        frame(6, struct.pack(">III", 1, 16384, 16384)),
        frame(7, struct.pack(">II", 1, 0) + b"block-data" * 3),
        frame(8, struct.pack(">III", 1, 16384, 16384)),
        frame(9, struct.pack(">H", 6881)),
        frame(20, b"\x00" + ext_handshake()),
        frame(20, b"\x01" + metadata(1, 0, 20, b"d4:name1:xe1234567890")),
        frame(13, b"\x00\x00\x00\x01"),  # fast extension: unknown to us
    ])
    # First byte: max frame (255 = default, else n*4); second: chunking seed.
    write("wire", "every_message", b"\xff\x01" + every)
    write("wire", "every_message_bytewise", b"\xff\x81" + every)
    write("wire", "small_limit", b"\x08\x02" + every)
    write("wire", "too_long", b"\xff\x03" + struct.pack(">I", 0x7fffffff) + b"\x07")
    write("wire", "bad_have_len", b"\xff\x04" + frame(4, b"\x00\x01"))
    write("wire", "partial_piece", b"\xff\x05" + frame(7, struct.pack(">II", 0, 0) + b"x" * 40)[:30])
    hs = bytes([19]) + b"BitTorrent protocol" + bytes([0, 0, 0, 0, 0, 0x10, 0, 0x05]) \
        + hashlib.sha1(b"ih").digest() + b"-TK0001-abcdefghijkl"
    write("wire", "handshake", hs)
    write("wire", "handshake_then_frames", hs + every)


# ---------------------------------------------------------------- BEP 9 / BEP 10

def bep9_seeds():
    write("bep9", "request", metadata(0, 0))
    write("bep9", "reject", metadata(2, 3))
    write("bep9", "data", metadata(1, 0, 40, b"d4:name3:abc12:piece lengthi16384ee"[:40]))
    write("bep9", "data_last_piece", metadata(1, 2, 16384 * 2 + 100, b"z" * 100))
    write("bep9", "bad_type", metadata(7, 0))
    write("bep9", "negative_piece", metadata(0, -1))
    write("bep9", "ext_handshake", ext_handshake())
    write("bep9", "ext_bep10_example", b"d1:md11:LT_metadatai1e6:ut_pexi2ee1:pi6881e1:v12:uTorrent 1.2e")
    write("bep9", "ext_v6", benc({"m": {"ut_metadata": 3}, "yourip": bytes(range(16)),
                                  "metadata_size": 2 ** 40}))
    write("bep9", "ext_disabled", benc({"m": {"ut_metadata": 0, "ut_pex": 300}, "p": 0}))


# ---------------------------------------------------------------- metainfo

def info_dict(name, files, piece_length, single=False, private=False, extra=None):
    total = sum(size for _, size in files)
    pieces = b"".join(hashlib.sha1(b"p%d" % i).digest()
                      for i in range(-(-total // piece_length)))
    info = {"name": name, "piece length": piece_length, "pieces": pieces}
    if single:
        info["length"] = files[0][1]
    else:
        info["files"] = [{"length": size, "path": path} for path, size in files]
    if private:
        info["private"] = 1
    if extra:
        info.update(extra)
    return info


def metainfo_seeds():
    torrents = os.path.join(ROOT, "tests", "data", "torrents")
    for f in sorted(os.listdir(torrents)):
        if f.endswith(".torrent"):
            with open(os.path.join(torrents, f), "rb") as fh:
                write("metainfo", f, fh.read())
    single = info_dict("file.bin", [(["file.bin"], 100000)], 32768, single=True)
    write("metainfo", "single", benc({"info": single, "announce": "udp://t.example:1/a",
                                      "creation date": 1700000000, "comment": "hi",
                                      "created by": "make_seeds.py"}))
    multi = info_dict("dir", [(["a"], 5), (["sub", "b"], 0), (["sub", "c", "d.txt"], 70000)],
                      16384, private=True, extra={"name.utf-8": "dir"})
    write("metainfo", "multi", benc({"info": multi, "nodes": [["127.0.0.1", 6881], ["x", 0]],
                                     "announce-list": [["udp://a/1", "udp://b/2"], ["http://c/3"]]}))
    write("metainfo", "bare_info", benc(single))
    write("metainfo", "bad_traversal", benc({"info": info_dict("..", [(["x"], 1)], 16384)}))
    write("metainfo", "bad_count", benc({"info": dict(single, **{"piece length": 1 << 20})}))


# ---------------------------------------------------------------- MSE/PE

MSE_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC"
    "6F44C42E9A63A36210000000000090563", 16)


def rc4(key, discard=1024):
    S = list(range(256))
    j = 0
    for i in range(256):
        j = (j + S[i] + key[i % len(key)]) % 256
        S[i], S[j] = S[j], S[i]
    st = [S, 0, 0]

    def apply(data):
        S, i, j = st
        out = bytearray()
        for b in data:
            i = (i + 1) % 256
            j = (j + S[i]) % 256
            S[i], S[j] = S[j], S[i]
            out.append(b ^ S[(S[i] + S[j]) % 256])
        st[1], st[2] = i, j
        return bytes(out)
    apply(bytes(discard))
    return apply


def sha(*parts):
    return hashlib.sha1(b"".join(parts)).digest()


def mse_seeds():
    """The peer's side of real handshakes against fuzzing::mse's fixed keys: the first byte
    picks our role (even = we initiate), allowed methods and key (private = [ctl|1; 20])."""
    skey = bytes([0xAB]) * 20
    peer_priv = 0x1234567890ABCDEF
    peer_pub = pow(2, peer_priv, MSE_P).to_bytes(96, "big")
    for ctl in [0x00, 0x01, 0x06, 0x07, 0x02, 0x03, 0x04, 0x05, 0x0E, 0x0F, 0x20, 0x21]:
        ours = int.from_bytes(bytes([ctl | 1]) * 20, "big")
        our_pub = pow(2, ours, MSE_P)
        secret = pow(our_pub, peer_priv, MSE_P).to_bytes(96, "big")
        if ctl & 1:  # we respond: the peer sends Ya, PadA, req1, req2^req3, ENCRYPT(...)
            enc = rc4(sha(b"keyA", secret, skey))
            ia = b"\x13BitTorrent protocol" + bytes(8) + skey + b"-XX0000-012345678901"
            pad_c = bytes(ctl % 7)
            x = bytes(a ^ b for a, b in zip(sha(b"req2", skey), sha(b"req3", secret)))
            body = enc(bytes(8) + struct.pack(">IH", 3, len(pad_c)) + pad_c
                       + struct.pack(">H", len(ia)) + ia)
            data = peer_pub + bytes(ctl * 3) + sha(b"req1", secret) + x + body
        else:  # we initiate: the peer sends Yb, PadB, ENCRYPT(VC, crypto_select, PadD)
            enc = rc4(sha(b"keyB", secret, skey))
            select = 2 if ctl & 4 else 1
            data = peer_pub + bytes(ctl) + enc(bytes(8) + struct.pack(">IH", select, 3) + bytes(3))
            # After crypto_select the stream is in the selected method.
            data += enc(b"trail") if select == 2 else b"trail"
        write("mse", "handshake_%02x" % ctl, bytes([ctl]) + data)
    write("mse", "junk_responder", b"\x01" + bytes(range(256)) * 4)
    write("mse", "junk_initiator", b"\x00" + peer_pub + bytes(range(256)) * 3)
    write("mse", "bad_public", b"\x01" + bytes(96))
    write("mse", "plain_bt", b"\x01\x13BitTorrent protocol" + bytes(48))


# ---------------------------------------------------------------- BEP 44 scripts
# The script format is read by src/fuzzing/bep44.rs: a header (store size, byte cap, the
# search's salt and min_seq), then operations: 0 immutable put, 1 mutable put, 2 a `get`
# reply, 3 time passes. Mutable items are signed by the target itself.

def b44_item(salt, seq, v, extra=b""):
    assert len(v) % 5 == 0
    return bytes([len(salt)]) + salt + bytes([seq & 0xff]) + bytes([len(v) // 5]) + v + extra


def b44_put(key=0, tamper=0, cas=None, salt=b"", seq=1, v=b"3:abc", extra=b""):
    ctl = 1 | key << 2 | tamper << 3 | (0x40 if cas is not None else 0)
    return bytes([ctl]) + b44_item(salt, seq, v, extra) + (bytes([cas & 0xff]) if cas is not None else b"")


def b44_reply(frm=1, key=0, tamper=0, no_k=False, no_sig=False, salt=b"", seq=1, v=b"3:abc", extra=b""):
    ctl = 2 | key << 2 | tamper << 3 | (0x40 if no_k else 0) | (0x80 if no_sig else 0)
    return bytes([ctl, frm]) + b44_item(salt, seq, v, extra)


def b44_immutable(v):
    return bytes([0, len(v) // 5]) + v


def b44_time(units):
    return bytes([3, units])


def bep44_seeds():
    head = bytes([3, 0, 0, 0])          # 4 items, no byte cap, no salt, no min_seq
    salted = bytes([1, 1, 2]) + b"s1" + bytes([2])   # 2 items, byte cap, salt "s1", min_seq 2
    write("bep44", "immutable", head + b44_immutable(b"3:abc") + b44_immutable(b"i100e")
          + b44_reply(v=b"3:abc"))
    write("bep44", "mutable_order", head + b44_put(seq=1) + b44_put(seq=2, v=b"i200e")
          + b44_put(seq=1) + b44_put(seq=2, v=b"3:xyz") + b44_put(seq=3, cas=1)
          + b44_put(seq=3, cas=2, v=b"i300e"))
    write("bep44", "tampered", head + b44_put(tamper=4, extra=b"\x05\x03") + b44_put(tamper=5)
          + b44_put(tamper=6, extra=b"x") + b44_put(tamper=7, extra=b"e"))
    write("bep44", "two_keys", head + b44_put(key=0, salt=b"a") + b44_put(key=1, salt=b"a")
          + b44_put(key=1, salt=b"b" * 70))
    write("bep44", "expiry", head + b44_put(seq=5) + b44_time(100) + b44_time(100)
          + b44_put(seq=1))
    write("bep44", "eviction", bytes([0, 1, 0, 0]) + b"".join(
        b44_immutable(b"i%03de" % i) for i in range(5)) + b44_immutable(b"l" + b"i0e" * 333 + b"e"))
    write("bep44", "get_replies", salted
          + b44_reply(frm=1, salt=b"s1", seq=2) + b44_reply(frm=2, salt=b"s1", seq=2)
          + b44_reply(frm=3, salt=b"s1", seq=1) + b44_reply(frm=4, salt=b"s1", seq=3, v=b"i300e")
          + b44_reply(frm=5, key=1, salt=b"s1", seq=4) + b44_reply(frm=6, salt=b"s2", seq=4)
          + b44_reply(frm=7, salt=b"s1", seq=9, no_k=True) + b44_reply(frm=7, salt=b"s1", seq=9, no_sig=True)
          + b44_reply(frm=7, salt=b"s1", seq=9, tamper=4, extra=b"\x00\x00"))
    write("bep44", "extremes", head + b44_put(seq=0x7f) + b44_put(seq=0x80) + b44_put(seq=0x7f, tamper=5))


# ---------------------------------------------------------------- crawler rows

def record(version, peers, scrape=None, first=1700000000, last=1700000500, seen=3, how=5):
    b = bytes([version]) + struct.pack(">QQIB", first, last, seen, how) + bytes([len(peers)])
    for ip, port in peers:
        b += bytes(ip) + struct.pack(">H", port)
    if scrape:
        b += struct.pack(">IIQ", *scrape)
    return b


def crawl_row_seeds():
    peers = [((127, 0, 0, 1), 6881), ((10, 1, 2, 3), 51413)]
    write("crawl_row", "record_v2", record(2, peers, (3, 7, 1700000600)))
    write("crawl_row", "record_v2_plain", record(2, peers[:1]))
    write("crawl_row", "record_v1", record(1, peers))
    write("crawl_row", "record_v1_scrape", record(1, peers, (1, 1, 1)))
    write("crawl_row", "record_dup_peers", record(2, [peers[0]] * 4, seen=0xffffffff))
    write("crawl_row", "record_too_many", record(2, peers * 3))
    meta = {"name": "dir", "total_size": 70005, "file_count": 2, "fetched_at": 1700000000,
            "files": [{"path": "dir/a", "length": 5}, {"path": "dir/sub/b", "length": 70000}]}
    write("crawl_row", "meta", benc(meta))
    write("crawl_row", "meta_empty", benc(dict(meta, files=[], file_count=0)))
    write("crawl_row", "info_single", benc(info_dict("file.bin", [(["file.bin"], 100000)], 32768, single=True)))
    write("crawl_row", "info_multi", benc(info_dict("dir", [(["a"], 5), (["sub", "b"], 70000)], 16384)))
    write("crawl_row", "info_latin1", benc(info_dict(b"caf\xe9", [([b"\xe9t\xe9"], 5)], 16384)))
    write("crawl_row", "info_pad", benc(info_dict("p", [(["a"], 5), ([".pad", "16379"], 16379), (["b"], 9)], 16384,
                                                   extra={"name.utf-8": "p"})))


def main():
    if len(sys.argv) > 1:
        sys.exit("usage: python3 fuzz/make_seeds.py (no arguments)")
    krpc_seeds()
    wire_seeds()
    bep9_seeds()
    metainfo_seeds()
    mse_seeds()
    bep44_seeds()
    crawl_row_seeds()
    for t in sorted(os.listdir(OUT)):
        print(t, len(os.listdir(os.path.join(OUT, t))))


main()
