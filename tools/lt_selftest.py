#!/usr/bin/env python3
"""lt_selftest.py - end-to-end check of tools/lt_node.py (3 libtorrent nodes on loopback).

    python3 tools/lt_selftest.py [--verbose]

Phases (each timed, summary printed at the end, exit 0 on success):
  1. start 3 lt_node.py instances on 127.0.20.1/2/3 (free ports), wait "ready"
  2. bootstrap: nodes 2 and 3 `add_node` node 1 only (ids unknown to them);
     wait until every node has the other two in its live routing table
  3. node 1 `announce`s a random info-hash with port 7000; node 3 `get_peers`
     it (re-issued every 2 s) until 127.0.20.1:7000 comes back (<= 60 s)
  4. node 1 `seed`s a temp file, node 2 `add_magnet`s it + `add_peer` node 1;
     wait for "finished" and compare the bytes
  5. node 3 `add_magnet`s the same magnet with NO add_peer: the peer must be
     found through the DHT alone (node 1's torrent announce); compare bytes
  6. `quit` all nodes, expect exit code 0

Everything binds to and talks to 127.0.20.x only.
"""

import argparse
import json
import os
import queue
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LT_NODE = os.path.join(HERE, "lt_node.py")


def free_port(ip):
    """A port free for both TCP and UDP on ip."""
    for _ in range(200):
        port = random.randint(20000, 60000)
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            t.bind((ip, port))
            u.bind((ip, port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()
    raise RuntimeError("no free port on %s" % ip)


class LtNode:
    def __init__(self, name, ip, save_dir, verbose=False):
        self.name = name
        self.ip = ip
        self.port = free_port(ip)
        self.bind = "%s:%d" % (ip, self.port)
        self.replies = queue.Queue()
        self.events = queue.Queue()
        self.backlog = []  # events seen but not yet consumed by wait_event
        self.errors = []
        self.logf = open(os.path.join(save_dir, "%s.stderr.log" % name), "w")
        argv = [sys.executable, LT_NODE, "--bind", self.bind, "--save-dir", save_dir]
        if verbose:
            argv.append("--verbose")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.logf, text=True, bufsize=1)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.node_id = None

    def _read(self):
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                print("[%s] non-JSON stdout line: %r" % (self.name, line), file=sys.stderr)
                continue
            if "event" in obj:
                if obj["event"] == "error":
                    self.errors.append(obj)
                    print("[%s] error event: %s" % (self.name, obj), file=sys.stderr)
                self.events.put(obj)
            else:
                self.replies.put(obj)

    def wait_event(self, pred, timeout):
        deadline = time.time() + timeout
        for i, ev in enumerate(self.backlog):
            if pred(ev):
                return self.backlog.pop(i)
        while True:
            left = deadline - time.time()
            if left <= 0:
                return None
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                return None
            if pred(ev):
                return ev
            if ev.get("event") not in ("incoming_get_peers",):
                self.backlog.append(ev)

    def cmd(self, line, timeout=10):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        try:
            r = self.replies.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("%s: no reply to %r" % (self.name, line))
        return r

    def ok(self, line, timeout=10):
        r = self.cmd(line, timeout)
        if not r.get("ok"):
            raise AssertionError("%s: %r failed: %s" % (self.name, line, r))
        return r

    def quit(self):
        try:
            r = self.cmd("quit")
            assert r.get("ok"), r
        except (BrokenPipeError, AssertionError) as e:
            print("[%s] quit problem: %s" % (self.name, e), file=sys.stderr)
        try:
            rc = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = "killed"
        self.logf.close()
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def phase(name, timings, t0):
    dt = time.time() - t0
    timings.append((name, dt))
    print("PASS %-55s %7.2f s" % (name, dt), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--verbose", action="store_true", help="pass --verbose to lt_node (logs in tmp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    opts = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="lt_selftest_")
    print("work dir:", tmp, flush=True)
    timings = []
    nodes = []
    ok = False
    try:
        # ---------------------------------------------------------- phase 1
        t0 = time.time()
        for i in (1, 2, 3):
            d = os.path.join(tmp, "n%d" % i)
            os.makedirs(d)
            nodes.append(LtNode("n%d" % i, "127.0.20.%d" % i, d, opts.verbose))
        for n in nodes:
            ev = n.wait_event(lambda e: e.get("event") in ("ready", "error"), 30)
            assert ev and ev["event"] == "ready", "%s did not become ready: %s" % (n.name, ev)
            assert ev["bind"] == n.bind, ev
            n.node_id = ev["node_id"]
            print("  %s ready at %s id %s" % (n.name, n.bind, n.node_id), flush=True)
        phase("start 3 nodes, ready", timings, t0)
        n1, n2, n3 = nodes

        # ---------------------------------------------------------- phase 2
        t0 = time.time()
        n2.ok("add_node %s %d" % (n1.ip, n1.port))
        n3.ok("add_node %s %d" % (n1.ip, n1.port))
        first = {}
        full = {}
        deadline = time.time() + 60
        while time.time() < deadline and len(full) < 3:
            for n in nodes:
                st = n.ok("status")
                if st["dht_nodes"] >= 1 and n.name not in first:
                    first[n.name] = time.time() - t0
                if st["dht_nodes"] >= 2 and n.name not in full:
                    full[n.name] = time.time() - t0
            time.sleep(0.2)
        for n in nodes:
            tab = n.ok("get_node_table")
            print("  %s table: %s" % (n.name, [(x["addr"], x["id"][:8]) for x in tab["nodes"]]), flush=True)
        print("  time to >=1 live node: %s" % {k: round(v, 2) for k, v in first.items()}, flush=True)
        print("  time to  2 live nodes: %s" % {k: round(v, 2) for k, v in full.items()}, flush=True)
        assert len(full) == 3, "not every node has 2 live nodes: %s" % full
        phase("bootstrap (2,3 -> 1), all tables full", timings, t0)

        # ---------------------------------------------------------- phase 3
        t0 = time.time()
        ih = os.urandom(20).hex()
        n1.ok("announce %s 7000" % ih)
        # libtorrent has no "announce done" alert; watch the receivers instead.
        for n in (n2, n3):
            ev = n.wait_event(lambda e: e.get("event") == "incoming_announce" and e.get("info_hash") == ih, 30)
            if ev:
                print("  %s got announce_peer after %.3f s: %s" % (n.name, time.time() - t0, ev), flush=True)
            else:
                print("  %s got no announce_peer within 30 s" % n.name, flush=True)
        want = "%s:7000" % n1.ip
        found = None
        attempts = 0
        deadline = time.time() + 60
        while time.time() < deadline and not found:
            attempts += 1
            t1 = time.time()
            n3.ok("get_peers %s" % ih)
            ev = n3.wait_event(lambda e: e.get("event") == "peers" and e.get("info_hash") == ih
                               and want in e.get("peers", []), 2)
            if ev:
                found = ev
                print("  get_peers round trip (command -> peers event): %.3f s" % (time.time() - t1), flush=True)
        assert found, "get_peers never returned %s" % want
        print("  peers event: %s (after %d get_peers attempt(s))" % (found, attempts), flush=True)
        phase("announce on n1 -> get_peers on n3", timings, t0)

        # ---------------------------------------------------------- phase 4
        t0 = time.time()
        seed_dir = os.path.join(tmp, "seed")
        os.makedirs(seed_dir)
        payload = os.urandom(700 * 1024 + 123)
        fpath = os.path.join(seed_dir, "payload.bin")
        with open(fpath, "wb") as fh:
            fh.write(payload)
        s = n1.ok("seed %s" % fpath, timeout=30)
        print("  seed: %s" % s, flush=True)
        assert s["magnet"].startswith("magnet:?xt=urn:btih:" + s["info_hash"]), s
        assert "btmh" not in s["magnet"], "torrent is not v1-only: %s" % s["magnet"]
        assert os.path.isfile(s["torrent"]), s
        dl2 = os.path.join(tmp, "dl2")
        r = n2.ok("add_magnet %s %s" % (s["magnet"], dl2))
        assert r["info_hash"] == s["info_hash"], r
        n2.ok("add_peer %s %s %d" % (s["info_hash"], n1.ip, n1.port))
        md = n2.wait_event(lambda e: e.get("event") == "metadata" and e.get("info_hash") == s["info_hash"], 60)
        assert md, "no metadata event on n2"
        print("  n2 metadata after %.2f s: %s" % (time.time() - t0, md), flush=True)
        fin = n2.wait_event(lambda e: e.get("event") == "finished" and e.get("info_hash") == s["info_hash"], 60)
        assert fin, "no finished event on n2: %s" % n2.cmd("torrent_status %s" % s["info_hash"])
        ts = n2.ok("torrent_status %s" % s["info_hash"])
        print("  n2 status: %s" % ts, flush=True)
        with open(os.path.join(dl2, "payload.bin"), "rb") as fh:
            assert fh.read() == payload, "downloaded bytes differ (n2)"
        phase("seed on n1, magnet+add_peer on n2, bytes match", timings, t0)

        # ---------------------------------------------------------- phase 5
        t0 = time.time()
        dl3 = os.path.join(tmp, "dl3")
        n1.ok("dht_announce_torrent %s" % s["info_hash"])
        r = n3.ok("add_magnet %s %s" % (s["magnet"], dl3))
        fin = n3.wait_event(lambda e: e.get("event") == "finished" and e.get("info_hash") == s["info_hash"], 120)
        assert fin, "no finished event on n3 (DHT-only): %s" % n3.cmd("torrent_status %s" % s["info_hash"])
        with open(os.path.join(dl3, "payload.bin"), "rb") as fh:
            assert fh.read() == payload, "downloaded bytes differ (n3)"
        phase("magnet on n3 with peers from DHT only, bytes match", timings, t0)

        # ---------------------------------------------------------- phase 6
        t0 = time.time()
        for n in nodes:
            rc = n.quit()
            assert rc == 0, "%s exit code %s" % (n.name, rc)
        phase("quit, exit code 0", timings, t0)
        errs = [(n.name, e) for n in nodes for e in n.errors]
        if errs:
            print("error events seen (not fatal): %s" % errs, flush=True)
        ok = True
    finally:
        for n in nodes:
            n.kill()
        print("\nSUMMARY (%s)" % ("OK" if ok else "FAILED"))
        for name, dt in timings:
            print("  %-55s %7.2f s" % (name, dt))
        if opts.keep or not ok:
            print("logs kept in", tmp)
        else:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
