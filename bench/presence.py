#!/usr/bin/env python3
"""Presence with many members in one channel across two nodes. One command:

    cargo build --release -p gateway -p loadgen
    python3 bench/presence.py --members 10000

Starts a Tansu broker (memory storage) and two release gateways (one shard each) on it, with
presence on `room_*` shared through the presence topic. `loadgen hold` opens half of the members
on each node (each its own user) and subscribes them all to `room_0`. Then it reports:

- how long after the last subscribe reply each node's `presence_stats` counts every member
  (the other node's members arrive through Kafka: batch, produce, fetch, owner);
- the time for `presence` (the first `max_listed` members listed, 1000 by default) and
  `presence_stats` to answer on a 10,000-member channel, as a client sees it (request sent to
  reply read, one at a time, over loopback), next to `ping` on the same connection;
- the Kafka traffic presence adds per join: records and key+value bytes each node wrote to the
  presence topic while its members joined (`gateway_presence_records_written_total`,
  `..._bytes_written_total`, liveness records included), and what every node then reads (each
  node reads every record of the topic);
- the same per leave, when the members disconnect.

Writes bench/results/presence/summary.json and summary.md. Python 3 standard library only.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtools  # noqa: E402

SECRET = "bench-presence-secret-0123456789abcdef"
ROOM = "room_0"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_tansu(out):
    tansu = os.environ.get("TANSU") or shutil.which("tansu") or os.path.expanduser("~/.cargo/bin/tansu")
    if not os.path.exists(tansu):
        sys.exit("needs tansu (scripts/install-tansu.sh)")
    port = free_port()
    log = open(os.path.join(out, "tansu.log"), "w")
    proc = subprocess.Popen(
        [tansu, "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{port}", "--storage-engine", "memory://tansu/"],
        stdout=log, stderr=log, start_new_session=True)
    end = time.time() + 10
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    gwtools.kill_tree(proc)
    sys.exit("tansu did not start")


class Probe:
    """One WebSocket client that sends a request and times its reply."""

    def __init__(self, gw, user):
        claims = {"sub": user, "exp": int(time.time()) + 3600, "channels": ["room_*"]}
        self.ws = gwtools.WsClient(gw.ws, "/ws", gwtools.mint_hs256(SECRET, claims))
        self.n = 0
        self.welcome = self.frame()

    def frame(self):
        while True:
            for op, payload in self.ws.frames():
                if op == 0x1:
                    return json.loads(payload)
                if op == 0x8:
                    raise ConnectionError("closed")

    def ask(self, req):
        self.n += 1
        req = dict(req, id=str(self.n))
        t0 = time.perf_counter()
        self.ws.send(gwtools.client_frame(json.dumps(req).encode()))
        while True:
            v = self.frame()
            if v.get("id") == req["id"]:
                return v, (time.perf_counter() - t0) * 1000


def timed(probe, req, n):
    """n requests one after the other: (latency summary in ms, last reply)."""
    ms, last = [], None
    for _ in range(n):
        last, t = probe.ask(req)
        ms.append(t)
        # The client's frame budget (50/s sustained) must not refuse the probes.
        time.sleep(0.025)
    ms.sort()
    pick = lambda q: round(ms[min(len(ms) - 1, int(q * len(ms)))], 3)  # noqa: E731
    return {"n": n, "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": round(ms[-1], 3),
            "mean": round(statistics.mean(ms), 3)}, last


def written(gw):
    m = gw.metrics()
    return (gwtools.counter_sum(m, "gateway_presence_records_written_total") or 0,
            gwtools.counter_sum(m, "gateway_presence_bytes_written_total") or 0)


def wait_users(probe, want, limit):
    """Seconds until presence_stats counts `want` users (None if not within `limit`)."""
    t0 = time.time()
    while time.time() - t0 < limit:
        r, _ = probe.ask({"type": "presence_stats", "channel": ROOM})
        if r.get("users") == want:
            return round(time.time() - t0, 3), r
        time.sleep(0.05)
    return None, r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=10000, help="members of the channel, half per node")
    ap.add_argument("--requests", type=int, default=200, help="timed requests of each kind per node")
    ap.add_argument("--shards", type=int, default=1, help="shards per node")
    ap.add_argument("--ramp", type=float, default=2000.0)
    ap.add_argument("--subscribe-rate", type=float, default=2000.0)
    ap.add_argument("--out", default=os.path.join(gwtools.ROOT, "bench", "results", "presence"))
    ap.add_argument("--gateway")
    ap.add_argument("--loadgen")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    gateway = gwtools.binary("gateway", args.gateway)
    loadgen = gwtools.binary("loadgen", args.loadgen)
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write('[presence]\nchannels = ["room_*"]\n[kafka]\npresence_topic = "bench.presence"\n')
    cfg.close()
    tansu, brokers = start_tansu(args.out)
    gws, lgs = [], []
    half = args.members // 2
    try:
        for name in ("a", "b"):
            flags = ["--shards", str(args.shards), "--jwt-secret", SECRET, "--kafka-brokers", brokers,
                     "--kafka-create-topics-partitions", "1", "--config", cfg.name]
            gw = gwtools.Gateway(gateway, flags, log_path=os.path.join(args.out, f"gateway-{name}.log"))
            gws.append(gw.start(timeout=120))
        probes = [Probe(gw, f"probe-{i}") for i, gw in enumerate(gws)]
        owner_shard = [p.welcome.get("shard") for p in probes]
        _, ready = wait_users(probes[0], 0, 5)
        if ready.get("ok") is not True:
            sys.exit(f"presence_stats refused: {ready}")
        w0 = [written(gw) for gw in gws]
        for name, gw in zip("ab", gws):
            cmd = [loadgen, "hold", "--url", f"ws://{gw.ws}/ws", "--conns", str(half), "--rooms", "1",
                   "--ramp", str(args.ramp), "--subscribe-rate", str(args.subscribe_rate),
                   "--secret", SECRET, "--sub-prefix", f"{name}-"]
            lgs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        start_new_session=True))
        for lg in lgs:
            connected = gwtools.read_phase(lg, "connected", half / args.ramp + 60)
            if connected["ok"] != half:
                sys.exit(f"only {connected['ok']} of {half} connected")
        for lg in lgs:
            lg.stdin.write("subscribe\n")
            lg.stdin.flush()
        subscribed = [gwtools.read_phase(lg, "subscribed", half / args.subscribe_rate + 60) for lg in lgs]
        converge = [wait_users(p, 2 * half, 60)[0] for p in probes]
        # Let the last batch and a liveness period go out before reading the counters.
        time.sleep(1.0)
        w1 = [written(gw) for gw in gws]
        latency = []
        for p in probes:
            full, reply = timed(p, {"type": "presence", "channel": ROOM}, args.requests)
            stats_ms, stats = timed(p, {"type": "presence_stats", "channel": ROOM}, args.requests)
            ping_ms, _ = timed(p, {"type": "ping"}, args.requests)
            latency.append({"presence": full, "presence_stats": stats_ms, "ping": ping_ms,
                            "reply_bytes": len(json.dumps(reply)), "listed": len(reply.get("members", {})),
                            "users": stats.get("users"), "conns": stats.get("conns"),
                            "truncated": reply.get("truncated", False)})
        for lg in lgs:
            lg.stdin.write("stop\n")
            lg.stdin.flush()
        for lg in lgs:
            gwtools.read_phase(lg, "done", 60)
        gone = [wait_users(p, 0, 60)[0] for p in probes]
        time.sleep(1.0)
        w2 = [written(gw) for gw in gws]
    finally:
        for lg in lgs:
            gwtools.kill_tree(lg)
        for gw in gws:
            gw.stop()
        gwtools.kill_tree(tansu)
        os.unlink(cfg.name)

    joins = [w1[i][0] - w0[i][0] for i in range(2)], [w1[i][1] - w0[i][1] for i in range(2)]
    leaves = [w2[i][0] - w1[i][0] for i in range(2)], [w2[i][1] - w1[i][1] for i in range(2)]
    rec_join = sum(joins[0]) / (2 * half)
    bytes_join = sum(joins[1]) / (2 * half)
    rec_leave = sum(leaves[0]) / (2 * half)
    bytes_leave = sum(leaves[1]) / (2 * half)
    doc = {
        "conditions": {"members": 2 * half, "nodes": 2, "shards_per_node": args.shards, "broker": "tansu memory",
                       "batch_ms": 250, "max_listed": 1000, "requests": args.requests,
                       "subscribe_rate_per_node": args.subscribe_rate,
                       "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
                       "probe_shards": owner_shard},
        "subscribe_secs": [s["secs"] for s in subscribed],
        "converge_secs_after_subscribed": converge,
        "all_gone_secs_after_stop": gone,
        "latency_ms": {"a": latency[0], "b": latency[1]},
        "kafka": {"records_written_joining": joins[0], "bytes_written_joining": joins[1],
                  "records_written_leaving": leaves[0], "bytes_written_leaving": leaves[1],
                  "records_per_join": round(rec_join, 3), "bytes_per_join": round(bytes_join, 1),
                  "records_per_leave": round(rec_leave, 3), "bytes_per_leave": round(bytes_leave, 1),
                  "records_read_per_join_all_nodes": round(rec_join * 2, 3)},
    }
    la = latency[0]
    text = "\n".join([
        f"Presence, {2 * half} members of {ROOM} across 2 nodes ({args.shards} shard(s) each, Tansu in memory), "
        f"{args.requests} requests of each kind per node, one at a time",
        "",
        "| | node a | node b |",
        "|---|---|---|",
        f"| `presence` ({la['listed']} of {la['users']} listed, {la['reply_bytes']} bytes) p50 / p99 ms | "
        + " | ".join(f"{x['presence']['p50']} / {x['presence']['p99']}" for x in latency) + " |",
        "| `presence_stats` p50 / p99 ms | "
        + " | ".join(f"{x['presence_stats']['p50']} / {x['presence_stats']['p99']}" for x in latency) + " |",
        "| `ping` p50 / p99 ms (same connection) | "
        + " | ".join(f"{x['ping']['p50']} / {x['ping']['p99']}" for x in latency) + " |",
        f"| all members counted, s after the last subscribe reply (b asked after a) | {converge[0]} | {converge[1]} |",
        f"| presence records written while its {half} joined | {joins[0][0]:.0f} | {joins[0][1]:.0f} |",
        f"| presence bytes written (key+value) while joining | {joins[1][0]:.0f} | {joins[1][1]:.0f} |",
        "",
        f"Per join: {rec_join:.3f} records, {bytes_join:.0f} bytes written (key+value; liveness included), "
        f"read by each of the 2 nodes. Per leave: {rec_leave:.3f} records, {bytes_leave:.0f} bytes.",
    ])
    gwtools.write_summary(args.out, text, doc, args.json)


if __name__ == "__main__":
    main()
