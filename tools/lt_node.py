#!/usr/bin/env python3
"""lt_node.py - line-oriented control harness around one python-libtorrent session.

Used by trackerless' integration tests as a reference Mainline DHT / BitTorrent
node. Everything is confined to loopback: the session listens (TCP + UDP, the
UDP socket carries both uTP and the DHT) on exactly the --bind address, binds
outgoing TCP to the same IP, has no DHT bootstrap routers, no LSD/UPnP/NAT-PMP,
no trackers, and an IP filter that blocks peer connections to anything outside
127.0.0.0/8.

Usage
-----
    python3 tools/lt_node.py --bind 127.x.y.z:PORT [--save-dir DIR] [--verbose | --quiet] [--no-utp | --no-tcp]
                             [--no-dht] [--keep-redundant] [--no-pex]

PORT must be non-zero (the ready line echoes it).  --verbose copies
libtorrent's session/DHT logs and every DHT packet (bdecoded) to stderr.
--quiet asks libtorrent for error and status alerts only: no alert per DHT
query, so a serving benchmark measures libtorrent's DHT, not this script
(commands that wait for DHT or torrent alerts then time out).
--no-utp restricts peer connections to TCP (for benchmarks of TCP transfer).
--no-tcp restricts peer connections to uTP (BEP 29 interop tests).
--no-dht runs without a DHT at all (a peer reachable only by direct connection or PEX;
the ready line then carries an all-zero node_id).
--keep-redundant keeps connections libtorrent would close as redundant (both sides
upload-only, e.g. a seed and a torrent in upload mode), for PEX tests.
--no-pex adds every torrent with PEX disabled (it neither learns nor tells peers by PEX).

Protocol
--------
stdin: one command per line, words separated by blanks (shell-like quoting is
honoured, so a path with spaces can be written "in quotes").  stdout: one JSON
object per line, flushed.  Lines having an "ok" key are replies: exactly one
per command, in command order.  Lines having an "event" key are asynchronous
and may be interleaved anywhere; ignore the events you don't know.  Logs go to
stderr.

On start, once both the TCP and the UDP listen socket are open and the DHT is
running:
    {"event":"ready","node_id":"<40 hex>","bind":"ip:port"}
If a listen socket can't be opened: {"event":"error",...} and exit code 2.

Commands (INFOHASH/TARGET = 40 hex chars; every IP argument must be in
127.0.0.0/8, anything else is refused with ok:false):
  add_node IP PORT           -> {"ok":true}   session.add_dht_node((ip,port)); IP is loopback IPv4
                                or an IPv6 address in fd77::/16.
                                 libtorrent sends the node one get_peers (or
                                 ping) and inserts it only if it answers.
  status                     -> {"ok":true,"dht_nodes":N,"dht_node_cache":R,
                                 "torrents":T,"node_id":"hex",
                                 "buckets":[[live,replacements],...],
                                 "active_lookups":n}
                                 (from post_dht_stats/dht_stats_alert; N counts
                                 live routing-table nodes, R the replacement
                                 cache)
  announce INFOHASH PORT [FLAGS]
                             -> {"ok":true}   session.dht_announce(ih, port,
                                 flags); flags: 1=seed, 2=implied_port. No
                                 completion event exists (libtorrent has none).
  get_peers INFOHASH         -> {"ok":true}; each batch of peers found arrives
                                 as {"event":"peers","info_hash":"..",
                                 "peers":["ip:port",...]}. There may be several
                                 batches, possibly with repeats, and no event at
                                 all if nothing is found.
  get_node_table             -> {"ok":true,"node_id":"hex","nodes":[{"id":"hex",
                                 "addr":"ip:port"},...]} (live routing table
                                 entries, via dht_live_nodes)
  node_id                    -> {"ok":true,"node_id":"hex"}
  seed PATH                  -> {"ok":true,"info_hash":"..","magnet":"magnet:?..",
                                 "torrent":"<save-dir>/<name>-<ih[:8]>.torrent",
                                 "name":".."}
                                 v1-only torrent of the file/dir, seeded from
                                 its parent dir, force_dht_announce()d.
  seed_default PATH [PIECE_SIZE]
                             -> like seed, but with libtorrent's default
                                 create_torrent flags (2.x: hybrid v1+v2 with
                                 BEP 47 pad files); info_hash is the v1 hash.
  add_torrent_file TORRENT SAVE_DIR [upload_mode]
                             -> {"ok":true,"info_hash":".."} downloads the
                                 .torrent into SAVE_DIR (peers via add_peer);
                                 with upload_mode it never downloads (serves
                                 metadata and what it has, i.e. nothing).
  peer_info INFOHASH         -> {"ok":true,"peers":[{"ip":"ip:port","source":n,
                                 "pex":bool,"outgoing":bool,"seed":bool,
                                 "client":".."},...]} (connected peers;
                                 source is libtorrent's peer_source bitmask)
  add_magnet MAGNET SAVE_DIR -> {"ok":true,"info_hash":".."}; trackers and web
                                 seeds in the URI are dropped. Events later:
                                 {"event":"metadata","info_hash":..,"name":..}
                                 {"event":"finished","info_hash":..}
  add_peer INFOHASH IP PORT  -> {"ok":true}   handle.connect_peer((ip,port))
  torrent_status INFOHASH    -> {"ok":true,"info_hash":..,"name":..,"progress":f,
                                 "state":"..","num_peers":n,"num_seeds":n,
                                 "total_download":b,"total_upload":b,
                                 "total_payload_download":b,"total_payload_upload":b,
                                 "has_metadata":bool,"is_seeding":bool,
                                 "is_finished":bool,"error":""}
  dht_announce_torrent INFOHASH
                             -> {"ok":true}   handle.force_dht_announce()
  sample_infohashes IP PORT TARGET
                             -> {"ok":true}; later {"event":"samples",
                                 "from":"ip:port","interval":s,"num_infohashes":n,
                                 "samples":[hex...],"nodes":[{"id","addr"}...]}
  put_immutable STRING       -> {"ok":true,"target":"hex"} (the item is the
                                 bencoded string); later
                                 {"event":"put","target":..,"num_success":n}
  get_immutable TARGET       -> {"ok":true}; later {"event":"item","target":..,
                                 "found":bool,"value":<item, bytes as str or
                                 {"hex":..}>} (not found: value "")
  put_mutable SEEDHEX VALUE [SALT]
                             -> {"ok":true,"public_key":"hex","target":"hex"}
                                 (ed25519 key from the 32-byte seed; the item is
                                 the bencoded string VALUE, seq as libtorrent picks:
                                 one above what its get found); later a "put"
                                 event (target, public_key, seq, num_success)
  get_mutable PUBKEYHEX [SALT]
                             -> {"ok":true}; later {"event":"mutable_item",
                                 "public_key":..,"salt":..,"seq":n,"value":..,
                                 "authoritative":bool}
  ping                       -> {"ok":true,"pong":true}
  quit                       -> {"ok":true} then clean shutdown, exit 0.
                                 EOF on stdin (or SIGTERM) also exits 0.
Unknown command / bad arguments -> {"ok":false,"error":"..."}.

Other events:
  {"event":"incoming_announce","info_hash":..,"ip":..,"port":n}
        an announce_peer was received (libtorrent posts this *before* it checks
        the token, so it also fires for announces it then rejects)
  {"event":"incoming_get_peers","info_hash":..}   a get_peers was received
        (noisy: libtorrent's own bootstrap/refresh uses get_peers)
  {"event":"error","message":..,"kind":"<alert type>"}  dht_error, listen_failed,
        udp_error, torrent_error, file_error, metadata_failed, add_torrent errors.

libtorrent 2.1.1 gotchas found while building/testing this (all verified on
loopback, 3 sessions on 127.0.20.1-3):
 * Setting names: every setting the brief lists exists in 2.1.1 except that
   `outgoing_interfaces` is absent from lt.default_settings() (it's an empty
   string setting and the binding omits empty strings) -- it is accepted by
   apply_settings anyway.  Unknown names raise KeyError from the binding; we
   apply optional settings one by one, warn on stderr and continue.
 * The default `dht_bootstrap_nodes` is "dht.libtorrent.org:25401" and
   `enable_lsd/upnp/natpmp` default to true, so they MUST be set in the very
   settings pack given to the session constructor, otherwise the session starts
   talking to the internet before apply_settings() runs.
 * Loopback is not treated as "dark internet" (dht_ignore_dark_internet only
   drops a list of class-A networks: 3, 6, 7, 9, 11, ...), but several
   defaults break a single-host test network:
     - dht_restrict_routing_ips (default on): at most one routing-table entry
       per IP and none from the same /24 in one bucket -> all 127.0.20.x
       nodes but one would be rejected.  Must be false.
     - dht_restrict_search_ips: same per-lookup.  Must be false.
     - dht_block_ratelimit (default 5 packets/s per source IP, then the IP is
       ignored for dht_block_timeout = 300 s) -> several nodes sharing an IP,
       or a busy test, get silently banned.  Set to 1,000,000 here.
     - dht_upload_rate_limit (default 8000 bytes/s): when the send quota is
       exhausted libtorrent silently DROPS incoming queries (no error reply).
       Set to 100 MB/s.  Don't use INT_MAX: it keeps 3x the limit as burst in
       an int and would overflow.
     - BEP 42 node-id verification is skipped for local IPs (10/8, 172.16/12,
       192.168/16, 169.254/16, 127/8 are all "local" to libtorrent), so any
       node id is acceptable from 127.x; with dht_prefer_verified_node_ids
       off, unverified ids don't hamper bucket splitting either.
 * Node ID: libtorrent generates a random id at start (it can't derive a
   BEP 42 id because the external IP is unknown) and ignores an id supplied
   in the saved dht state for the same reason, so ids can't be pinned.  It
   only changes its id later if a reply's "ip" field reports a *non-local*
   external address whose BEP 42 prefix doesn't match -> keep "ip" truthful.
 * add_dht_node((ip,port)) does not need the node's id: libtorrent at once
   sends it a get_peers for a random target (a ping if the bucket is full)
   and puts the node in the live table as soon as a reply with a 20-byte "id"
   arrives (measured: < 1 ms; a reply with just {"id":..,"nodes":""} and no
   "ip" is enough).  Nodes given via dht_bootstrap_nodes are "router" nodes
   and never enter the routing table.
 * Being *queried* by an unknown node only puts it in the replacement cache
   ("heard about", unpinged).  libtorrent's refresh timer fires every 5 s; on
   it libtorrent sends the node a get_peers and promotes it to the live table
   once it answers: measured 5.05 s every time.  A node learned only from a
   "nodes" list of a reply reached the live table after ~10 s.  A query
   carrying "ro":1 (read-only) never adds the querier (verified).  A valid
   announce_peer (correct token) inserts the announcer directly.  While the
   table is small libtorrent keeps sending each node a get_peers every 5 s.
 * libtorrent uses get_peers, not find_node, for its bootstrap, bucket
   refresh and new-node probes, so a peer implementation must answer
   get_peers with "nodes" (plus "token") even for random info-hashes.
   Outgoing transaction ids are 2 bytes.  Every libtorrent message carries
   "v" = "LT\x02\x11"; every reply carries top-level "ip" (compact
   requester address, 6 bytes) and "r"."p" (requester port).  Its tokens are
   4 bytes, "values" are 6-byte compact peers, it answers ping, find_node,
   get_peers, announce_peer, get/put (BEP 44) and sample_infohashes (BEP 51;
   "interval" 21600, "num", "samples", "nodes").  Error replies
   (203 "invalid token", 203 "unknown message") are {"y":"e","e":[code,msg]}
   but ALSO carry "r":{"id","p"} and "ip": a strict parser must tolerate that.
 * Packets are ignored unless they are > 20 bytes and start with 'd' and end
   with 'e'.
 * dht_announce() = get_peers lookup, then announce_peer to the 8 closest
   nodes that returned a token; there is no completion alert.  It works with
   a tiny routing table (1-2 nodes are enough); on loopback the announce_peer
   reached the other nodes 1-2 ms after the command.  dht_get_peers() posts
   dht_get_peers_reply_alert from the lookup's peer callback (it may come
   more than once per lookup), and nothing if no peers are found.
 * dht_announce_alert ("incoming_announce") is posted before the token is
   checked, so it also fires for announces rejected as "invalid token".
 * libtorrent does not filter its own endpoint out of "nodes" lists: when a
   peer returns it, libtorrent queries itself (observed: a node receives its
   own announce_peer, and dht_put_immutable reports one extra success).
   Harmless, but don't be surprised by incoming_announce from our own IP.
 * A node with an empty live table (e.g. the bootstrap target, which only
   has its queriers in the replacement cache for the first 5 s) silently
   announces/puts to nobody: wait for status dht_nodes > 0 first.
 * A torrent is announced to the DHT when it starts (if the DHT has nodes)
   and then on a timer (dht_announce_interval, default 900 s, set to 60
   here); force_dht_announce() re-runs it now, but the lookup reaches nobody
   if the live table is still empty at that moment.  Measured: a magnet added
   on a node with 2 live DHT nodes found the seeders through the DHT, got the
   metadata and downloaded 700 KB over uTP in ~10 ms.
 * create_torrent() makes hybrid v1+v2 torrents by default in 2.x; we pass
   lt.create_torrent.v1_only.  Magnet URIs of v1-only torrents carry only
   urn:btih.
 * If the port is taken, libtorrent by default silently listens elsewhere:
   first port+1..port+10 (max_retry_port_bind), then an OS-chosen port
   (listen_system_port_fallback).  Both are disabled here, and "ready" is
   only printed if libtorrent really listens on the requested port; else an
   error event and exit code 2.
 * min_reconnect_time default is 60 s: a peer whose first connect failed is
   not retried for a minute; set to 2 s here.
 * wait_for_alert() releases the GIL, so a dedicated alert thread is fine.
"""

import argparse
import json
import os
import queue
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
import warnings

warnings.simplefilter("ignore", DeprecationWarning)

import libtorrent as lt  # noqa: E402

_out_lock = threading.Lock()


def emit(obj):
    line = json.dumps(obj, separators=(",", ":"), default=str)
    with _out_lock:
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            os._exit(0)


def log(*a):
    try:
        print("[lt_node]", *a, file=sys.stderr, flush=True)
    except Exception:
        pass


def hexhash(h):
    return str(h)  # sha1_hash.__str__ is lowercase hex


def parse_ih(s):
    s = s.strip().lower()
    if len(s) != 40:
        raise ValueError("info-hash must be 40 hex chars")
    return lt.sha1_hash(bytes.fromhex(s))


def parse_port(s):
    p = int(s)
    if not 0 < p < 65536:
        raise ValueError("port out of range: %s" % s)
    return p


def check_loopback(ip):
    try:
        b = socket.inet_aton(ip)
    except OSError:
        raise ValueError("not an IPv4 address: %r" % ip)
    if b[0] != 127 or socket.inet_ntoa(b) != ip:
        raise ValueError("refusing non-loopback address %s" % ip)
    return ip


def check_test_v6(ip):
    """An IPv6 address inside fd77::/16, the test prefix the tests add to lo inside their
    own network namespace (never a routed address)."""
    try:
        b = socket.inet_pton(socket.AF_INET6, ip)
    except OSError:
        raise ValueError("not an IPv6 address: %r" % ip)
    if b[:2] != b"\xfd\x77":
        raise ValueError("refusing IPv6 address %s outside the test prefix fd77::/16" % ip)
    return ip


def ep_str(ep):
    # endpoints come back from the binding as (ip, port) tuples; IPv6 in brackets, as
    # Rust's SocketAddr prints and parses it
    try:
        ip, port = ep[0], ep[1]
        if ":" in ip:
            return "[%s]:%d" % (ip, port)
        return "%s:%d" % (ip, port)
    except Exception:
        return str(ep)


def node_entry(n):
    # Node lists (dht_live_nodes_alert.nodes, dht_sample_infohashes_alert.nodes) come
    # back from the 2.x binding as {"nid": sha1_hash, "endpoint": (ip, port)} dicts;
    # accept (id, endpoint) tuples too in case another binding version differs.
    if isinstance(n, dict):
        return {"id": hexhash(n["nid"]), "addr": ep_str(n["endpoint"])}
    return {"id": hexhash(n[0]), "addr": ep_str(n[1])}


def ed25519_keypair(seed):
    """(public key, libtorrent's 64-byte secret key) for a 32-byte seed.

    The bindings take the secret key in ref10's expanded form (clamped SHA-512 of the seed)
    but expose no keypair function; the public key comes from the `cryptography` package.
    """
    import hashlib
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    if len(seed) != 32:
        raise ValueError("seed must be 32 bytes")
    pk = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    h = bytearray(hashlib.sha512(seed).digest())
    h[0] &= 248
    h[31] &= 63
    h[31] |= 64
    return pk, bytes(h)


def jsonable(v):
    if isinstance(v, bytes):
        try:
            return v.decode()
        except UnicodeDecodeError:
            return {"hex": v.hex()}
    if isinstance(v, dict):
        return {(k.decode() if isinstance(k, bytes) else str(k)): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


def build_settings(ip, port, verbose, quiet=False, no_utp=False, no_tcp=False, no_dht=False,
                   keep_redundant=False, encryption=None, listen6=None):
    cat = lt.alert.category_t
    mask = (cat.error_notification | cat.peer_notification | cat.port_mapping_notification
            | cat.storage_notification | cat.tracker_notification | cat.connect_notification
            | cat.status_notification | cat.ip_block_notification | cat.performance_warning
            | cat.dht_notification | cat.stats_notification | cat.dht_operation_notification)
    if quiet:
        # status_notification carries listen_succeeded_alert, which "ready" waits for.
        mask = cat.error_notification | cat.status_notification
    if verbose and not quiet:
        mask |= cat.session_log_notification | cat.dht_log_notification
    # Safety-critical settings go into the constructor pack (all exist in 2.x).
    core = {
        # With --listen6, the same port on an IPv6 test address too (TCP and uTP).
        "listen_interfaces": "%s:%d" % (ip, port)
        + ("" if listen6 is None else ",[%s]:%d" % (listen6, port)),
        "enable_dht": not no_dht,
        "dht_bootstrap_nodes": "",
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "alert_mask": int(mask),
        # never silently fall back to port+1..+10 when the port is taken
        "max_retry_port_bind": 0,
        "listen_system_port_fallback": False,
        # The DHT's DoS blocker reads these when the DHT starts: applied later (below) they
        # do not reach it, and it bans an IP after 50 packets in 10 s (measured: a load
        # source stalled after ~50 queries with them applied late, ran freely with them here).
        "dht_upload_rate_limit": 100_000_000,
        "dht_block_ratelimit": 1_000_000,
        "dht_block_timeout": 5,
    }
    # Everything else is applied one at a time; missing names only warn.
    extra = [
        # With --listen6 the kernel picks each connection's source: libtorrent binds an
        # outgoing socket to the listed interfaces in turn whatever its family (an IPv6
        # connection bound to the IPv4 address fails with EINVAL, seen with 2.1.1).
        ("outgoing_interfaces", ip if listen6 is None else ""),
        ("enable_ip_notifier", False),
        ("dht_restrict_routing_ips", False),
        ("dht_restrict_search_ips", False),
        ("dht_ignore_dark_internet", False),
        ("dht_prefer_verified_node_ids", False),
        ("dht_enforce_node_id", False),
        ("allow_multiple_connections_per_ip", True),
        ("dht_max_fail_count", 5),
        ("dht_search_branching", 5),
        ("dht_announce_interval", 60),
        ("dht_read_only", False),
        ("dht_privacy_lookups", False),
        ("min_reconnect_time", 2),
        ("alert_queue_size", 100_000),
        ("announce_to_all_trackers", False),
        ("anonymous_mode", False),
    ]
    if no_utp:
        # Peer connections over TCP only (benchmarks compare TCP implementations; uTP's
        # congestion control runs far below loopback speed).
        extra += [("enable_outgoing_utp", False), ("enable_incoming_utp", False)]
    if keep_redundant:
        extra += [("close_redundant_connections", False)]
    if encryption == "forced":
        # MSE/PE both ways, RC4 only after the handshake: plain peers are refused, as in
        # clients set to "encryption required".
        extra += [("out_enc_policy", int(lt.enc_policy.pe_forced)),
                  ("in_enc_policy", int(lt.enc_policy.pe_forced)),
                  ("allowed_enc_level", int(lt.enc_level.pe_rc4))]
    elif encryption == "disabled":
        # Plain only both ways: an MSE handshake is read as garbage.
        extra += [("out_enc_policy", int(lt.enc_policy.pe_disabled)),
                  ("in_enc_policy", int(lt.enc_policy.pe_disabled))]
    if no_tcp:
        # uTP only both ways, like Transmission 3 connecting out (tests our uTP side).
        extra += [("enable_outgoing_tcp", False), ("enable_incoming_tcp", False),
                  ("enable_outgoing_utp", True), ("enable_incoming_utp", True)]
    return core, extra


class Node:
    def __init__(self, ip, port, save_dir, verbose, quiet=False, no_utp=False, no_tcp=False,
                 no_dht=False, keep_redundant=False, no_pex=False, encryption=None, listen6=None):
        self.no_dht = no_dht
        self.no_pex = no_pex
        self.ip = ip
        self.port = port
        self.bind = "%s:%d" % (ip, port)
        self.save_dir = save_dir
        self.verbose = verbose
        self.torrents = {}  # hex info-hash -> handle
        self.waiters = {}  # alert class name -> list of queues
        self.wlock = threading.Lock()
        self.ready = threading.Event()
        self.failed = threading.Event()
        self.stop = threading.Event()
        self.listen_ok = set()
        self.listen_ports = set()

        core, extra = build_settings(ip, port, verbose, quiet, no_utp, no_tcp, no_dht,
                                     keep_redundant, encryption, listen6)
        self.ses = lt.session(core)
        for name, value in extra:
            try:
                self.ses.apply_settings({name: value})
            except KeyError:
                log("warning: setting %s does not exist in libtorrent %s; skipped" % (name, lt.__version__))
            except Exception as e:  # noqa: BLE001
                log("warning: setting %s=%r rejected: %s" % (name, value, e))
        # Only peers on loopback (and, with --listen6, in the IPv6 test prefix fd77::/16,
        # which exists only inside the test's network namespace) may ever be connected to.
        f = lt.ip_filter()
        f.add_rule("0.0.0.0", "255.255.255.255", 1)
        f.add_rule("127.0.0.0", "127.255.255.255", 0)
        f.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1)
        if listen6 is not None:
            f.add_rule("fd77::", "fd77:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 0)
        self.ses.set_ip_filter(f)

        self.thread = threading.Thread(target=self.alert_loop, name="alerts", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------ alerts
    def node_id(self):
        try:
            st = self.ses.session_state(lt.save_state_flags_t.save_dht_state)
            e = lt.write_session_params(st)
            ids = e.get(b"dht state", {}).get(b"node-id", [])
            for raw in ids:
                if isinstance(raw, bytes) and len(raw) >= 20:
                    return raw[:20].hex()
        except Exception as e:  # noqa: BLE001
            log("node_id lookup failed:", e)
        return None

    def register(self, name):
        q = queue.Queue()
        with self.wlock:
            self.waiters.setdefault(name, []).append(q)
        return q

    def unregister(self, name, q):
        with self.wlock:
            lst = self.waiters.get(name, [])
            if q in lst:
                lst.remove(q)

    def deliver(self, name, data):
        with self.wlock:
            lst = self.waiters.pop(name, [])
        for q in lst:
            q.put(data)

    def alert_loop(self):
        while not self.stop.is_set():
            try:
                self.ses.wait_for_alert(100)
                alerts = self.ses.pop_alerts()
            except Exception as e:  # noqa: BLE001
                log("pop_alerts failed:", e)
                time.sleep(0.1)
                continue
            for a in alerts:
                try:
                    self.handle_alert(a)
                except Exception:  # noqa: BLE001
                    log("error handling alert %s:\n%s" % (type(a).__name__, traceback.format_exc()))

    def torrent_ih(self, a):
        try:
            return hexhash(a.handle.info_hashes().v1)
        except Exception:  # noqa: BLE001
            try:
                return hexhash(a.handle.info_hash())
            except Exception:  # noqa: BLE001
                return None

    def handle_alert(self, a):
        name = type(a).__name__
        if name == "listen_succeeded_alert":
            st = a.socket_type
            log(a.message())
            try:
                self.listen_ports.add(int(a.port))
            except Exception:  # noqa: BLE001
                pass
            if st == lt.socket_type_t.tcp:
                self.listen_ok.add("tcp")
            elif st in (lt.socket_type_t.utp, lt.socket_type_t.udp):
                self.listen_ok.add("udp")
            if {"tcp", "udp"} <= self.listen_ok and not self.ready.is_set():
                self.ready.set()
        elif name == "listen_failed_alert":
            emit({"event": "error", "kind": name, "message": a.message()})
            self.failed.set()
        elif name == "dht_get_peers_reply_alert":
            emit({"event": "peers", "info_hash": hexhash(a.info_hash),
                  "peers": [ep_str(p) for p in a.peers()]})
        elif name == "dht_stats_alert":
            buckets = [[b.get("num_nodes", 0), b.get("num_replacements", 0)] for b in a.routing_table]
            self.deliver(name, {"buckets": buckets, "active_requests": len(a.active_requests)})
        elif name == "dht_live_nodes_alert":
            nodes = [node_entry(n) for n in a.nodes]
            self.deliver(name, {"node_id": hexhash(a.node_id), "nodes": nodes})
        elif name == "dht_announce_alert":
            emit({"event": "incoming_announce", "info_hash": hexhash(a.info_hash),
                  "ip": str(a.ip), "port": int(a.port)})
        elif name == "dht_get_peers_alert":
            emit({"event": "incoming_get_peers", "info_hash": hexhash(a.info_hash)})
        elif name == "dht_sample_infohashes_alert":
            emit({"event": "samples", "from": ep_str(a.endpoint), "interval": a.interval.total_seconds()
                  if hasattr(a.interval, "total_seconds") else a.interval,
                  "num_infohashes": a.num_infohashes,
                  "samples": [hexhash(s) for s in a.samples],
                  "nodes": [node_entry(n) for n in a.nodes]})
        elif name == "dht_put_alert":
            emit({"event": "put", "target": hexhash(a.target), "num_success": a.num_success,
                  "public_key": bytes(a.public_key).hex(), "seq": a.seq})
        elif name == "dht_mutable_item_alert":
            emit({"event": "mutable_item", "public_key": bytes(a.key).hex(),
                  "salt": jsonable(a.salt), "seq": a.seq, "value": jsonable(a.item),
                  "authoritative": bool(a.authoritative)})
        elif name == "dht_immutable_item_alert":
            v = jsonable(a.item)
            emit({"event": "item", "target": hexhash(a.target), "found": v not in (None, ""), "value": v})
        elif name == "metadata_received_alert":
            ih = self.torrent_ih(a)
            try:
                nm = a.handle.status().name
            except Exception:  # noqa: BLE001
                nm = None
            emit({"event": "metadata", "info_hash": ih, "name": nm})
        elif name == "torrent_finished_alert":
            emit({"event": "finished", "info_hash": self.torrent_ih(a)})
        elif name in ("dht_error_alert", "udp_error_alert", "torrent_error_alert", "file_error_alert",
                      "metadata_failed_alert", "session_error_alert", "fastresume_rejected_alert",
                      "hash_failed_alert", "dht_bootstrap_error_alert"):
            emit({"event": "error", "kind": name, "message": a.message()})
        elif name == "add_torrent_alert":
            if a.error.value() != 0:
                emit({"event": "error", "kind": name, "message": a.message()})
        elif name == "dht_pkt_alert":
            if self.verbose:
                try:
                    pkt = lt.bdecode(bytes(a.pkt_buf))
                except Exception:  # noqa: BLE001
                    pkt = a.pkt_buf
                msg = a.message()
                log("pkt", msg[:msg.find("]") + 1], json.dumps(jsonable(pkt), default=str))
        else:
            if self.verbose:
                log(name, a.message())
            elif name in ("peer_connect_alert", "peer_disconnected_alert", "peer_error_alert",
                          "performance_alert", "peer_blocked_alert", "state_changed_alert",
                          "dht_bootstrap_alert", "external_ip_alert"):
                log(name, a.message())

    # ---------------------------------------------------------------- commands
    def find(self, ih_hex):
        ih_hex = ih_hex.lower()
        h = self.torrents.get(ih_hex)
        if h is None or not h.is_valid():
            h = self.ses.find_torrent(parse_ih(ih_hex))
            if not h.is_valid():
                raise ValueError("unknown torrent %s" % ih_hex)
            self.torrents[ih_hex] = h
        return h

    def stats(self):
        q = self.register("dht_stats_alert")
        try:
            self.ses.post_dht_stats()
            return q.get(timeout=5)
        except queue.Empty:
            raise RuntimeError("timed out waiting for dht_stats_alert")
        finally:
            self.unregister("dht_stats_alert", q)

    def cmd_status(self, args):
        st = self.stats()
        buckets = st["buckets"]
        return {"dht_nodes": sum(b[0] for b in buckets),
                "dht_node_cache": sum(b[1] for b in buckets),
                "torrents": len(self.ses.get_torrents()),
                "node_id": self.node_id(),
                "buckets": buckets,
                "active_lookups": st["active_requests"]}

    def cmd_add_node(self, args):
        # A loopback IPv4 address, or an IPv6 one in the test prefix (BEP 32 interop).
        ip = check_test_v6(args[0]) if ":" in args[0] else check_loopback(args[0])
        port = parse_port(args[1])
        self.ses.add_dht_node((ip, port))
        return {}

    def cmd_announce(self, args):
        ih, port = parse_ih(args[0]), parse_port(args[1])
        flags = int(args[2]) if len(args) > 2 else 0
        self.ses.dht_announce(ih, port, flags)
        return {}

    def cmd_get_peers(self, args):
        self.ses.dht_get_peers(parse_ih(args[0]))
        return {}

    def cmd_node_id(self, args):
        return {"node_id": self.node_id()}

    def cmd_get_node_table(self, args):
        nid = self.node_id()
        if nid is None:
            raise RuntimeError("DHT node id unknown")
        q = self.register("dht_live_nodes_alert")
        try:
            self.ses.dht_live_nodes(lt.sha1_hash(bytes.fromhex(nid)))
            r = q.get(timeout=5)
        except queue.Empty:
            raise RuntimeError("timed out waiting for dht_live_nodes_alert")
        finally:
            self.unregister("dht_live_nodes_alert", q)
        return r

    def add_flags(self, atp):
        f = atp.flags
        f &= ~lt.torrent_flags.auto_managed
        f &= ~lt.torrent_flags.paused
        if self.no_pex:
            f |= lt.torrent_flags.disable_pex
        atp.flags = f

    def cmd_seed(self, args):
        return self.seed_path(args, lt.create_torrent.v1_only)

    def cmd_seed_default(self, args):
        # libtorrent's own default format: hybrid v1+v2, BEP 47 pad files between files.
        return self.seed_path(args, 0, piece_size=int(args[1]) if len(args) > 1 else 0)

    def cmd_add_torrent_file(self, args):
        tpath, save = os.path.abspath(args[0]), os.path.abspath(args[1])
        ti = lt.torrent_info(tpath)
        atp = lt.add_torrent_params()
        atp.ti = ti
        atp.save_path = save
        os.makedirs(save, exist_ok=True)
        self.add_flags(atp)
        if len(args) > 2 and args[2] == "upload_mode":
            atp.flags |= lt.torrent_flags.upload_mode
        ih = hexhash(ti.info_hashes().v1)
        h = self.ses.add_torrent(atp)
        self.torrents[ih] = h
        return {"info_hash": ih}

    def seed_path(self, args, flags, piece_size=0):
        path = os.path.abspath(args[0])
        if not os.path.exists(path):
            raise ValueError("no such file or directory: %s" % path)
        parent = os.path.dirname(path)
        fs = lt.file_storage()
        lt.add_files(fs, path)
        if fs.num_files() == 0:
            raise ValueError("nothing to seed in %s" % path)
        ct = lt.create_torrent(fs, piece_size, flags)
        ct.set_creator("trackerless lt_node.py")
        lt.set_piece_hashes(ct, parent)
        data = lt.bencode(ct.generate())
        ti = lt.torrent_info(data)
        ih = hexhash(ti.info_hashes().v1)
        os.makedirs(self.save_dir, exist_ok=True)
        tpath = os.path.join(self.save_dir, "%s-%s.torrent" % (ti.name(), ih[:8]))
        with open(tpath, "wb") as fh:
            fh.write(data)
        atp = lt.add_torrent_params()
        atp.ti = ti
        atp.save_path = parent
        self.add_flags(atp)
        atp.flags |= lt.torrent_flags.seed_mode
        h = self.ses.add_torrent(atp)
        self.torrents[ih] = h
        h.force_dht_announce()
        return {"info_hash": ih, "magnet": lt.make_magnet_uri(ti), "torrent": tpath, "name": ti.name()}

    def cmd_add_magnet(self, args):
        uri, save = args[0], os.path.abspath(args[1])
        atp = lt.parse_magnet_uri(uri)
        atp.trackers = []
        atp.url_seeds = []
        try:
            atp.tracker_tiers = []
        except Exception:  # noqa: BLE001
            pass
        atp.save_path = save
        os.makedirs(save, exist_ok=True)
        self.add_flags(atp)
        if self.verbose:
            log("add_magnet: x.pe peers %s" % (atp.peers,))
        ih = hexhash(atp.info_hashes.v1)
        h = self.ses.add_torrent(atp)
        self.torrents[ih] = h
        return {"info_hash": ih}

    def cmd_add_peer(self, args):
        h = self.find(args[0])
        ip, port = check_loopback(args[1]), parse_port(args[2])
        h.connect_peer((ip, port))
        return {}

    def cmd_peer_info(self, args):
        peers = []
        for p in self.find(args[0]).get_peer_info():
            peers.append({"ip": ep_str(p.ip), "source": int(p.source),
                          "pex": bool(int(p.source) & int(lt.peer_info.pex)),
                          "outgoing": bool(int(p.flags) & int(lt.peer_info.outgoing_connection)),
                          "seed": bool(int(p.flags) & int(lt.peer_info.seed)),
                          "client": jsonable(p.client)})
        return {"peers": peers}

    def cmd_dht_announce_torrent(self, args):
        self.find(args[0]).force_dht_announce()
        return {}

    def cmd_torrent_status(self, args):
        h = self.find(args[0])
        s = h.status()
        err = ""
        try:
            if s.errc.value() != 0:
                err = s.errc.message()
        except Exception:  # noqa: BLE001
            pass
        return {"info_hash": args[0].lower(), "name": s.name, "progress": s.progress,
                "state": str(s.state), "num_peers": s.num_peers, "num_seeds": s.num_seeds,
                "total_download": s.total_download, "total_upload": s.total_upload,
                "total_payload_download": s.total_payload_download,
                "total_payload_upload": s.total_payload_upload,
                "has_metadata": bool(s.has_metadata), "is_seeding": bool(s.is_seeding),
                "is_finished": bool(s.is_finished), "error": err}

    def cmd_sample_infohashes(self, args):
        ip, port = check_loopback(args[0]), parse_port(args[1])
        self.ses.dht_sample_infohashes((ip, port), parse_ih(args[2]))
        return {}

    def cmd_put_immutable(self, args):
        target = self.ses.dht_put_immutable_item(args[0])
        return {"target": hexhash(target)}

    def cmd_get_immutable(self, args):
        self.ses.dht_get_immutable_item(parse_ih(args[0]))
        return {}

    def cmd_put_mutable(self, args):
        pk, sk = ed25519_keypair(bytes.fromhex(args[0]))
        salt = args[2].encode() if len(args) > 2 else b""
        self.ses.dht_put_mutable_item(sk, pk, args[1].encode(), salt)
        import hashlib
        return {"public_key": pk.hex(), "target": hashlib.sha1(pk + salt).hexdigest()}

    def cmd_get_mutable(self, args):
        salt = args[1].encode() if len(args) > 1 else b""
        self.ses.dht_get_mutable_item(bytes.fromhex(args[0]), salt)
        return {}

    def cmd_ping(self, args):
        return {"pong": True}

    ARITY = {
        "add_node": 2, "status": 0, "announce": 2, "get_peers": 1, "node_id": 0,
        "get_node_table": 0, "seed": 1, "add_magnet": 2, "add_peer": 3,
        "seed_default": 1, "add_torrent_file": 2,
        "torrent_status": 1, "dht_announce_torrent": 1, "peer_info": 1, "sample_infohashes": 3,
        "put_immutable": 1, "get_immutable": 1, "ping": 0,
        "put_mutable": 2, "get_mutable": 1,
    }

    def dispatch(self, line):
        try:
            words = shlex.split(line)
        except ValueError:
            words = line.split()
        if not words:
            return None
        cmd, args = words[0], words[1:]
        if cmd == "quit":
            return "quit"
        if cmd not in self.ARITY:
            return {"ok": False, "error": "unknown command %r" % cmd}
        if len(args) < self.ARITY[cmd]:
            return {"ok": False, "error": "%s needs %d argument(s)" % (cmd, self.ARITY[cmd])}
        try:
            r = getattr(self, "cmd_" + cmd)(args)
            out = {"ok": True}
            out.update(r)
            return out
        except (ValueError, IndexError) as e:
            log("command %r rejected: %s" % (line, e))
            return {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
        except Exception as e:  # noqa: BLE001
            log("command %r failed:\n%s" % (line, traceback.format_exc()))
            return {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}

    def shutdown(self):
        if getattr(self, "_shut", False):
            return
        self._shut = True
        # Watchdog: never hang on exit.
        t = threading.Timer(15.0, lambda: os._exit(0))
        t.daemon = True
        t.start()
        self.stop.set()
        self.thread.join(timeout=2)
        try:
            self.ses.pause()
        except Exception:  # noqa: BLE001
            pass
        try:
            del self.ses
        except AttributeError:
            pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bind", required=True, help="127.x.y.z:PORT")
    ap.add_argument("--save-dir", default=None)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--quiet", action="store_true",
                    help="error alerts only (for serving benchmarks)")
    ap.add_argument("--no-utp", action="store_true",
                    help="peer connections over TCP only (uTP disabled both ways)")
    ap.add_argument("--no-tcp", action="store_true",
                    help="peer connections over uTP only (TCP disabled both ways)")
    ap.add_argument("--no-dht", action="store_true",
                    help="no DHT at all (peers only by direct connection or PEX)")
    ap.add_argument("--keep-redundant", action="store_true",
                    help="keep connections between two upload-only peers")
    ap.add_argument("--no-pex", action="store_true",
                    help="torrents ignore and send no ut_pex (torrent_flags.disable_pex)")
    ap.add_argument("--encryption", choices=["forced", "disabled"], default=None,
                    help="MSE/PE: forced (RC4 only, both ways) or disabled (plain only); "
                         "default: libtorrent's (plain first, either accepted)")
    ap.add_argument("--listen6", default=None, metavar="ADDR",
                    help="also listen (TCP and uTP, same port) on this IPv6 address, "
                         "which must be in the test prefix fd77::/16")
    ap.add_argument("--ready-timeout", type=float, default=20.0)
    opts = ap.parse_args()

    try:
        ip, port_s = opts.bind.rsplit(":", 1)
        check_loopback(ip)
        port = parse_port(port_s)
        if opts.listen6 is not None:
            check_test_v6(opts.listen6)
    except ValueError as e:
        emit({"event": "error", "kind": "usage", "message": str(e)})
        return 2

    created = False
    save_dir = opts.save_dir
    if save_dir is None:
        save_dir = tempfile.mkdtemp(prefix="lt_node_")
        created = True
    os.makedirs(save_dir, exist_ok=True)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)

    node = Node(ip, port, os.path.abspath(save_dir), opts.verbose, opts.quiet, opts.no_utp, opts.no_tcp,
                opts.no_dht, opts.keep_redundant, opts.no_pex, opts.encryption, opts.listen6)

    deadline = time.time() + opts.ready_timeout
    try:
        return run(node, port, deadline)
    except KeyboardInterrupt:
        return 0
    finally:
        node.shutdown()
        if created:
            shutil.rmtree(save_dir, ignore_errors=True)


def run(node, port, deadline):
    while not node.ready.is_set():
        if node.failed.is_set() or time.time() > deadline:
            if not node.failed.is_set():
                emit({"event": "error", "kind": "timeout", "message": "listen sockets not ready"})
            return 2
        node.ready.wait(0.05)
    # The DHT starts with the session; wait until it reports running and has an id.
    nid = "0" * 40 if node.no_dht else None
    while nid is None and time.time() < deadline:
        if node.ses.is_dht_running():
            nid = node.node_id()
            if nid:
                break
        time.sleep(0.05)
    if nid is None:
        emit({"event": "error", "kind": "timeout", "message": "DHT did not start"})
        return 2
    if node.listen_ports != {port}:
        emit({"event": "error", "kind": "listen_failed",
              "message": "libtorrent listens on port(s) %s, not %d" % (sorted(node.listen_ports), port)})
        return 2
    emit({"event": "ready", "node_id": nid, "bind": node.bind})

    try:
        while True:
            line = sys.stdin.readline()
            if not line:
                break  # EOF
            line = line.strip()
            if not line:
                continue
            r = node.dispatch(line)
            if r is None:
                continue
            if r == "quit":
                emit({"ok": True})
                break
            emit(r)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
