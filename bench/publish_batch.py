#!/usr/bin/env python3
"""Batch against single HTTP publishes: messages per second per server core. One command:

    python3 bench/publish_batch.py                 # 10 s per mode, results in bench/results/publish_batch
    python3 bench/publish_batch.py --secs 5 --json

Starts a one-shard gateway (in-process bus) pinned to CPU 0; this script pins itself to CPU 1. For each
mode it publishes closed-loop over keep-alive HTTP/1.1 connections (`--conns` threads, each waiting for
its answer before the next request) for `--secs` seconds, over `--channels` channels (round-robin),
and reads the gateway's CPU time (utime+stime from /proc) around the run:

- single: one `POST /api/publish` per message (the object form);
- array: `POST /api/publish` with a JSON array of `--batch` messages;
- ndjson: the same as NDJSON;
- broadcast: `POST /api/broadcast`, one message to `--batch` channels.

messages per second per core = messages answered ok / server CPU seconds (what one fully used core would
publish). One WebSocket client subscribed to the first channel checks that every message published to it
arrives (its deliveries are a small share of the server's work). The messages are ~100 bytes of JSON.
"""
import argparse
import datetime
import http.client
import json
import os
import platform
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtools  # noqa: E402

SECRET = "publish-batch-bench-secret"
API_KEY = "publish-batch-bench-key"
GOAL = 10.0  # batch at least 10x the messages/s per core of single publishes


def cpu_secs(pid):
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def message(i, channels):
    return {"channel": f"bench_{i % channels}", "event": "load",
            "data": {"i": i, "text": "x" * 48}}


def bodies(mode, args):
    """The request bodies a connection cycles through: (path, content type, body, messages, to ch 0)."""
    out = []
    for k in range(args.channels):
        if mode == "single":
            m = message(k, args.channels)
            out.append(("/api/publish", "application/json", json.dumps(m), 1, int(k == 0)))
        elif mode == "broadcast":
            chans = [f"bench_{(k + j) % args.channels}" for j in range(args.batch)]
            body = {"channels": sorted(set(chans)), "event": "load", "data": {"text": "x" * 48}}
            out.append(("/api/broadcast", "application/json", json.dumps(body),
                        len(body["channels"]), int("bench_0" in body["channels"])))
        else:
            msgs = [message(k * args.batch + j, args.channels) for j in range(args.batch)]
            to0 = sum(1 for m in msgs if m["channel"] == "bench_0")
            if mode == "array":
                out.append(("/api/publish", "application/json", json.dumps(msgs), len(msgs), to0))
            else:
                text = "".join(json.dumps(m) + "\n" for m in msgs)
                out.append(("/api/publish", "application/x-ndjson", text, len(msgs), to0))
    return out


def publisher(addr, work, stop, counts, idx):
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    ok = failed = to0 = 0
    k = idx
    while not stop.is_set():
        path, ctype, body, n, zero = work[k % len(work)]
        k += 1
        conn.request("POST", path, body=body, headers={
            "Authorization": f"Bearer {API_KEY}", "Content-Type": ctype})
        r = conn.getresponse()
        text = r.read()
        if r.status != 200:
            failed += n
            continue
        if n == 1 and path == "/api/publish":
            good = 1 if json.loads(text).get("ok") else 0
        elif ctype == "application/x-ndjson":
            good = sum(1 for line in text.splitlines() if json.loads(line).get("ok"))
        else:
            good = sum(1 for a in json.loads(text) if a.get("ok"))
        ok += good
        failed += n - good
        to0 += zero if good == n else 0
    counts[idx] = (ok, failed, to0)
    conn.close()


def subscriber(gw, got, stop):
    token = gwtools.mint_hs256(SECRET, {"sub": "bench-sub", "exp": int(time.time()) + 3600,
                                        "channels": ["bench_*"]})
    c = gwtools.WsClient(gw.ws, "/ws", token)
    c.send(gwtools.client_frame(json.dumps({"type": "subscribe", "id": "s",
                                            "channel": "bench_0"}).encode()))
    got["ready"].set()
    c.sock.settimeout(0.5)
    while not stop.is_set() or time.time() < got["until"]:
        try:
            for op, payload in c.frames():
                if op == 1 and b'"type":"message"' in payload:
                    got["n"] += 1
        except (TimeoutError, OSError):
            if stop.is_set() and got["n"] >= got.get("want", 0):
                break
    c.close()


def one(args, gateway, mode):
    gw = gwtools.Gateway(gateway, ["--shards", "1", "--jwt-secret", SECRET, "--api-key", API_KEY])
    gw.start()
    try:
        subprocess.run(["taskset", "-a", "-cp", "0", str(gw.pid)], check=True,
                       stdout=subprocess.DEVNULL)
        got = {"n": 0, "ready": threading.Event(), "until": 0}
        stop_sub = threading.Event()
        sub = threading.Thread(target=subscriber, args=(gw, got, stop_sub), daemon=True)
        sub.start()
        got["ready"].wait(10)
        time.sleep(0.3)
        work = bodies(mode, args)
        stop = threading.Event()
        counts = [None] * args.conns
        threads = [threading.Thread(target=publisher, args=(gw.admin, work, stop, counts, i))
                   for i in range(args.conns)]
        cpu0, t0 = cpu_secs(gw.pid), time.time()
        for t in threads:
            t.start()
        time.sleep(args.secs)
        stop.set()
        for t in threads:
            t.join()
        wall, cpu = time.time() - t0, cpu_secs(gw.pid) - cpu0
        ok = sum(c[0] for c in counts)
        failed = sum(c[1] for c in counts)
        want0 = sum(c[2] for c in counts)
        got["want"], got["until"] = want0, time.time() + 5
        stop_sub.set()
        sub.join(10)
    finally:
        gw.stop()
    return {"mode": mode, "batch": 1 if mode == "single" else args.batch, "messages": ok,
            "failed": failed, "wall_secs": round(wall, 2), "server_cpu_secs": round(cpu, 3),
            "server_cpu_share": round(cpu / wall, 3), "msgs_per_sec": round(ok / wall),
            "msgs_per_core_sec": round(ok / cpu) if cpu else None,
            "server_us_per_msg": round(cpu / ok * 1e6, 2) if ok else None,
            "subscriber_expected": want0, "subscriber_got": got["n"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway", help="gateway binary (default: the release build)")
    ap.add_argument("--secs", type=float, default=10.0)
    ap.add_argument("--conns", type=int, default=4, help="publishing connections (closed loop)")
    ap.add_argument("--batch", type=int, default=100, help="messages per batch request")
    ap.add_argument("--channels", type=int, default=100)
    ap.add_argument("--modes", default="single,array,ndjson,broadcast")
    ap.add_argument("--out", default=os.path.join(gwtools.ROOT, "bench", "results", "publish_batch"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    gateway = gwtools.binary("gateway", args.gateway)
    os.sched_setaffinity(0, {1})
    os.makedirs(args.out, exist_ok=True)
    runs = [one(args, gateway, m) for m in args.modes.split(",")]
    single = next((r for r in runs if r["mode"] == "single"), None)
    lines = ["| mode | msgs/request | msgs/s | server CPU | msgs/s per core | us CPU/msg | x single | "
             "subscriber got/expected |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        ratio = (r["msgs_per_core_sec"] / single["msgs_per_core_sec"]
                 if single and single["msgs_per_core_sec"] and r["msgs_per_core_sec"] else None)
        r["ratio_to_single"] = round(ratio, 2) if ratio else None
        lines.append(f"| {r['mode']} | {r['batch']} | {r['msgs_per_sec']} | {r['server_cpu_share']:.0%} | "
                     f"{r['msgs_per_core_sec']} | {r['server_us_per_msg']} | "
                     f"{r['ratio_to_single'] or '-'} | {r['subscriber_got']}/{r['subscriber_expected']} |")
    best = max((r["ratio_to_single"] or 0) for r in runs if r["mode"] != "single") if len(runs) > 1 else 0
    verdict = (f"goal (batch >= {GOAL:.0f}x single per core): "
               f"{'met' if best >= GOAL else 'NOT met'} (best {best}x)")
    doc = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
           "conditions": {"server_cpu": 0, "client_cpu": 1, "shards": 1, "secs": args.secs,
                          "conns": args.conns, "batch": args.batch, "channels": args.channels},
           "runs": runs, "goal": verdict}
    gwtools.write_summary(args.out, "\n".join(lines) + "\n\n" + verdict, doc, args.json)


if __name__ == "__main__":
    main()
