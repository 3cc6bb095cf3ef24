#!/usr/bin/env python3
"""Does a byte bound on history hold with a million channels? One command:

    python3 bench/history_memory.py                          # 1,000,000 channels, 2 shards, 64 MiB per shard
    python3 bench/history_memory.py --channels 100000 --history-max-bytes 8MiB --json

It starts `gateway serve` on free loopback ports with `--history-max-bytes` (history.max_bytes,
per shard) and client frame limits high enough for pipelining, reads its idle RSS, then publishes
one message to each of `user:0` .. `user:<channels - 1>` from a few WebSocket clients (stdlib-only
client; token claim `"publish":["user:*"]`), each keeping a bounded window of requests in flight and
counting the replies. After a short settle it reads RSS again and /stats, and reports RSS before,
after and at its peak, the growth, the growth and the final RSS minus the bound (bound = max_bytes x
shards), `history_bytes` per shard if /stats has it, and the publish rate.

If the gateway binary has no `--history-max-bytes` flag yet, the run goes on without a bound (to
show the unbounded cost) and the bound columns say n/a.
"""
import argparse
import datetime
import multiprocessing
import os
import platform
import queue
import re
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtools  # noqa: E402

SECRET = "history-bench-secret"
API_KEY = "history-bench-key"


def size(text):
    """'64MiB', '64M', '1048576' -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(i?B)?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64MiB, 1048576)")
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2).upper()]


def publisher(k, clients, channels, prefix, window, ws_addr, results):
    """Client k publishes to channels k, k + clients, ... with at most `window` requests in flight."""
    try:
        token = gwtools.mint_hs256(SECRET, {"sub": f"history-pub-{k}", "exp": int(time.time()) + 86400,
                                            "channels": [], "publish": [f"{prefix}*"]})
        ws = gwtools.WsClient(ws_addr, "/ws", token)
        todo = range(k, channels, clients)
        total, nxt, sent, ok, errors, first_error = len(todo), 0, 0, 0, 0, None
        # Drop the welcome frame first.
        while not any(op == 0x1 and b'"welcome"' in p for op, p in ws.frames()):
            pass
        t0 = time.time()

        def batch(n):
            nonlocal nxt
            out = []
            for i in todo[nxt:nxt + n]:
                out.append(gwtools.client_frame(
                    b'{"type":"publish","id":%d,"channel":"%s%d","data":{"i":%d}}' % (i, prefix.encode(), i, i)))
            nxt += len(out)
            ws.send(b"".join(out))
            return len(out)

        sent += batch(min(window, total))
        while ok + errors < total:
            answered = 0
            for op, payload in ws.frames():
                if op == 0x8:
                    raise ConnectionError(f"closed by the gateway: {payload[:2].hex()} {payload[2:]!r}")
                if op != 0x1 or b'"type":"reply"' not in payload:
                    continue
                answered += 1
                if b'"ok":true' in payload:
                    ok += 1
                else:
                    errors += 1
                    first_error = first_error or payload.decode(errors="replace")
            if answered and nxt < total:
                sent += batch(min(answered, total - nxt))
        secs = time.time() - t0
        ws.close()
        results.put({"client": k, "sent": sent, "ok": ok, "errors": errors, "first_error": first_error,
                     "secs": secs})
    except Exception as e:  # reported to the main process, which fails the run
        results.put({"client": k, "error": f"{type(e).__name__}: {e}"})


class PeakRss(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.stop, self.peak = pid, threading.Event(), 0

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, gwtools.rss_kib(self.pid))
            time.sleep(0.2)


def fmt_mib(kib):
    return "n/a" if kib is None else f"{kib / 1024:.1f}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channels", type=int, default=1_000_000)
    p.add_argument("--prefix", default="user:", help="channel name prefix")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--history-max-bytes", type=size, default=64 << 20,
                   help="history.max_bytes per shard (e.g. 64MiB; 0 = do not pass the flag)")
    p.add_argument("--clients", type=int, default=2, help="publishing WebSocket clients (processes)")
    p.add_argument("--window", type=int, default=1000, help="requests in flight per client")
    p.add_argument("--settle", type=float, default=2.0, help="seconds before and after publishing")
    p.add_argument("--gateway", help="gateway binary (default: <target dir>/release/gateway)")
    p.add_argument("--build", action="store_true", help="cargo build the gateway first")
    p.add_argument("--out", default=os.path.join(gwtools.ROOT, "bench", "results", "history_memory"),
                   help="directory for summary.json, summary.md and the gateway log")
    p.add_argument("--json", action="store_true", help="print the results as JSON (the table goes to stderr)")
    args = p.parse_args()
    if args.channels < 1 or args.clients < 1 or args.window < 1 or args.shards < 1:
        sys.exit("--channels, --clients, --window and --shards must be positive")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    gateway = gwtools.binary("gateway", args.gateway, args.build)
    have = gwtools.serve_flags(gateway)
    flags = ["--shards", str(args.shards), "--jwt-secret", SECRET, "--api-key", API_KEY,
             "--client-frames-per-sec", "1000000", "--client-frames-burst", "1000000"]
    bound = None
    if args.history_max_bytes and "--history-max-bytes" in have:
        flags += ["--history-max-bytes", str(args.history_max_bytes)]
        bound = args.history_max_bytes * args.shards
    elif args.history_max_bytes:
        print("note: this gateway has no --history-max-bytes flag; running without a byte bound",
              file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    gw = gwtools.Gateway(gateway, flags, log_path=os.path.join(args.out, "gateway.log"))
    procs, sampler = [], None
    try:
        gw.start(timeout=60)
        time.sleep(args.settle)
        rss_before = gw.rss_kib()
        sampler = PeakRss(gw.pid)
        sampler.start()
        results = multiprocessing.Queue()
        procs = [multiprocessing.Process(target=publisher, daemon=True, args=(
            k, args.clients, args.channels, args.prefix, args.window, gw.ws, results))
            for k in range(args.clients)]
        t0 = time.time()
        for pr in procs:
            pr.start()
        print(f"publishing to {args.channels:,} channels from {args.clients} clients...", file=sys.stderr, flush=True)
        got = [results.get(timeout=max(600, args.channels / 1000)) for _ in procs]
        wall = time.time() - t0
        for pr in procs:
            pr.join(timeout=10)
        failed = [r["error"] for r in got if "error" in r]
        if failed:
            raise RuntimeError(f"publisher failed: {failed}")
        time.sleep(args.settle)
        sampler.stop.set()
        rss_after = gw.rss_kib()
        peak = max(sampler.peak, rss_after)
        try:
            shards = gw.stats().get("shards", [])
        except (RuntimeError, ValueError) as e:
            print(f"note: /stats failed: {e}", file=sys.stderr)
            shards = []
    except (RuntimeError, OSError, queue.Empty) as e:
        sys.exit(f"history_memory: {type(e).__name__}: {e}")
    finally:
        if sampler:
            sampler.stop.set()
        for pr in procs:
            if pr.is_alive():
                pr.kill()
        gw.stop()

    def per_shard(key):
        vals = [s.get(key) for s in shards]
        return vals if vals and all(isinstance(v, (int, float)) for v in vals) else None

    ok = sum(r["ok"] for r in got)
    errors = sum(r["errors"] for r in got)
    hist_bytes = per_shard("history_bytes")
    res = {
        "channels": args.channels, "shards": args.shards, "clients": args.clients, "window": args.window,
        "history_max_bytes_per_shard": args.history_max_bytes if bound else None,
        "bound_bytes": bound,
        "published_ok": ok, "errors": errors,
        "first_error": next((r["first_error"] for r in got if r["first_error"]), None),
        # From each client's first publish to its last reply (connecting not included).
        "publish_secs": max(r["secs"] for r in got), "wall_secs": wall,
        "messages_per_sec": ok / max(max(r["secs"] for r in got), 1e-9),
        "rss_before_kib": rss_before, "rss_after_kib": rss_after, "rss_peak_kib": peak,
        "rss_growth_kib": rss_after - rss_before,
        "rss_after_minus_bound_kib": rss_after - bound / 1024 if bound else None,
        "rss_growth_minus_bound_kib": rss_after - rss_before - bound / 1024 if bound else None,
        "rss_growth_per_channel_bytes": (rss_after - rss_before) * 1024 / args.channels,
        "history_bytes_per_shard": hist_bytes,
        "history_bytes_total": sum(hist_bytes) if hist_bytes else None,
        "history_messages_per_shard": per_shard("history_messages"),
        "history_channels_per_shard": per_shard("history_channels"),
        "owned_channels_per_shard": per_shard("owned_channels"),
    }
    bound_txt = f"{bound / 2**20:.0f} MiB ({args.history_max_bytes / 2**20:g} MiB x {args.shards} shards)" \
        if bound else "n/a (no --history-max-bytes)"
    hb = res["history_bytes_per_shard"]
    hm = res["history_messages_per_shard"]
    hc = res["history_channels_per_shard"]
    lines = [
        f"{args.channels:,} channels ({args.prefix}0..), one message each, {args.shards} shards, "
        f"{args.clients} clients x {args.window} in flight; history bound {bound_txt}",
        "",
        "| RSS before MiB | RSS after MiB | RSS peak MiB | growth MiB | after - bound MiB | growth - bound MiB "
        "| growth per channel B | history_bytes per shard MiB | history messages | history channels | published (errors) "
        "| messages/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {fmt_mib(rss_before)} | {fmt_mib(rss_after)} | {fmt_mib(peak)} | {fmt_mib(res['rss_growth_kib'])} "
        f"| {fmt_mib(res['rss_after_minus_bound_kib'])} | {fmt_mib(res['rss_growth_minus_bound_kib'])} "
        f"| {res['rss_growth_per_channel_bytes']:.0f} "
        f"| {'n/a' if hb is None else ', '.join(f'{b / 2**20:.1f}' for b in hb)} "
        f"| {'n/a' if hm is None else f'{sum(hm):,}'} | {'n/a' if hc is None else f'{sum(hc):,}'} "
        f"| {ok:,} ({errors}) | {res['messages_per_sec']:,.0f} |",
    ]
    if res["first_error"]:
        lines.append(f"\nfirst publish error: {res['first_error']}")
    text = "\n".join(lines)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=gwtools.ROOT,
                            capture_output=True, text=True).stdout.strip()
    doc = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
           "gateway": gateway, "commit": commit, "args": vars(args), "result": res, "stats_shards": shards}
    gwtools.write_summary(args.out, text, doc, args.json)


if __name__ == "__main__":
    main()
