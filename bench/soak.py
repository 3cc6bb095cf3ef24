#!/usr/bin/env python3
"""Soak: ~19k connections with churn under publish load for 10 minutes (not part of CI).

    python3 bench/soak.py                      # 19,000 connections, 600 s; bench/results/soak/
    python3 bench/soak.py --conns 2000 --duration 60    # a quick look

One gateway (two shards, unpinned) and one `loadgen` run on this machine. A fraction of the
connections (`--churn`) keeps disconnecting and reconnecting (connect, subscribe, receive, close)
with lifetimes around `--lifetime` seconds; the others stay for the whole run and are checked for
every message of their room (sequence gaps = lost). Connections come from several 127.0.0.x source
addresses so churn does not run out of ephemeral ports.

Before the soak, a warm-up round runs the same load for twice the history TTL, so the baseline is
the idle gateway after its allocator has seen the full load once (glibc keeps freed memory in
per-thread arenas; the question is whether the soak leaks, not whether malloc returns pages). The
history holds each room's messages for `history.ttl_secs`; the soak sets it to `--history-ttl` (60 s)
so that the history reaches its steady size within the warm-up. Baseline and end are both taken once
the gateway is idle and its history has expired. RSS, open descriptors, connections and history size
are sampled every 5 s. The script also checks that the gateway is still up and logged no panic.
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (the scale bench's helpers)

OUT = os.path.join(bench.ROOT, "bench", "results", "soak")


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def stats():
    with urllib.request.urlopen(f"http://127.0.0.1:{bench.ADMIN_PORT}/stats", timeout=5) as r:
        d = json.load(r)
    return d["connections"], sum(sh["history_messages"] for sh in d["shards"])


def loadgen(args, gw, conns, duration, churn, out):
    cmd = [bench.LOADGEN, *gw["loadgen_args"], "--conns", str(conns), "--rooms", str(args.rooms),
           "--rate", str(args.rate), "--duration", str(duration), "--payload-bytes", "256",
           "--ramp", "2000", "--source-ips", ",".join(f"127.0.0.{i}" for i in range(1, 9)),
           "--churn", str(churn), "--churn-lifetime", str(args.lifetime), "--drain", "5",
           "--server-pid", str(gw["pid"]), "--json"]
    if out:
        cmd += ["--out", out]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def settle(pid, ttl, limit=60):
    """Waits until the gateway holds no connections and its history has expired."""
    end = time.time() + limit + ttl
    while time.time() < end and stats() != (0, 0):
        time.sleep(1)
    time.sleep(5)
    return bench.rss_kib(pid), fds(pid)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conns", type=int, default=19000)
    p.add_argument("--rooms", type=int, default=190)
    p.add_argument("--rate", type=float, default=100, help="messages/s over all rooms")
    p.add_argument("--duration", type=float, default=600)
    p.add_argument("--churn", type=float, default=0.2)
    p.add_argument("--lifetime", type=float, default=30)
    p.add_argument("--history-ttl", type=int, default=60, help="history.ttl_secs for the run")
    args = p.parse_args()
    subprocess.run(["cargo", "build", "--release", "--workspace"], check=True, cwd=bench.ROOT)
    os.makedirs(OUT, exist_ok=True)
    log_path = os.path.join(OUT, "gateway.log")
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [bench.GATEWAY, "serve", "--listen", f"127.0.0.1:{bench.GW_PORT}",
         "--admin-listen", f"127.0.0.1:{bench.ADMIN_PORT}", "--shards", "2", "--jwt-secret", bench.SECRET,
         "--api-key", bench.API_KEY, "--max-connections-per-user", "100000"],
        stdout=subprocess.PIPE, stderr=log, text=True,
        env={**os.environ, "GATEWAY_LOG": "warn", "GATEWAY_HISTORY__TTL_SECS": str(args.history_ttl)})
    if not proc.stdout.readline().startswith("gateway ready"):
        raise SystemExit("gateway did not start")
    gw = {"pid": proc.pid, "loadgen_args": [
        "--server", "gateway", "--url", f"ws://127.0.0.1:{bench.GW_PORT}/ws", "--secret", bench.SECRET,
        "--publish", "http", "--publish-addr", f"127.0.0.1:{bench.ADMIN_PORT}", "--api-key", bench.API_KEY]}
    cold_rss, cold_fds = bench.rss_kib(proc.pid), fds(proc.pid)

    warmup = 2 * args.history_ttl
    print(f"warm-up: {args.conns} connections, {warmup} s", file=sys.stderr)
    warm = loadgen(args, gw, args.conns, warmup, args.churn, None)
    base_rss, base_fds = settle(proc.pid, args.history_ttl)

    samples, stop = [], threading.Event()

    def sample():
        t0 = time.time()
        while not stop.is_set():
            try:
                conns, history = stats()
                samples.append({"t": round(time.time() - t0), "rss_kib": bench.rss_kib(proc.pid),
                                "fds": fds(proc.pid), "connections": conns, "history": history})
            except OSError:
                pass
            stop.wait(5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    print(f"soak: {args.conns} connections ({args.churn:.0%} churning), {args.duration:g} s", file=sys.stderr)
    t0 = time.time()
    soak = loadgen(args, gw, args.conns, args.duration, args.churn, os.path.join(OUT, "loadgen"))
    wall = time.time() - t0
    end_rss, end_fds = settle(proc.pid, args.history_ttl)
    stop.set()
    sampler.join()
    alive = proc.poll() is None
    proc.terminate()
    proc.wait(timeout=30)
    log.close()
    with open(log_path) as f:
        panics = [line for line in f if "panic" in line.lower()]

    result = {
        "args": vars(args), "wall_secs": round(wall), "gateway_alive_after": alive,
        "panics_logged": len(panics), "warmup_connected": warm["connections"]["connected"],
        "warmup_lost": warm["lost"],
        "cold_rss_kib": cold_rss, "cold_fds": cold_fds,
        "baseline_rss_kib": base_rss, "baseline_fds": base_fds,
        "peak_rss_kib": max(s["rss_kib"] for s in samples), "peak_fds": max(s["fds"] for s in samples),
        "end_rss_kib": end_rss, "end_fds": end_fds, "loadgen": soak, "samples": samples,
    }
    with open(os.path.join(OUT, "summary.json"), "w") as f:
        json.dump(result, f, indent=1)
    s = soak
    d = s["latency"]["delivery"]
    peak_history = max(x["history"] for x in samples)
    md = f"""Soak: {args.conns} connections ({s['churn']['stable_connections']} stable, the rest churning with
~{args.lifetime:g} s lifetimes), {args.rooms} rooms, {args.rate:g} messages/s for {args.duration:g} s;
gateway 2 shards (history.ttl_secs = {args.history_ttl}), loadgen on the same 2 cores. Baseline and end:
idle, history expired.

| | RSS MiB | open fds |
|---|---|---|
| cold start | {cold_rss / 1024:.1f} | {cold_fds} |
| idle after a {warmup} s warm-up under the same load (baseline) | {base_rss / 1024:.1f} | {base_fds} |
| peak during soak ({peak_history} messages in history) | {result['peak_rss_kib'] / 1024:.1f} | {result['peak_fds']} |
| idle after soak | {end_rss / 1024:.1f} | {end_fds} |

- Gateway up afterwards: {alive}; panics logged: {len(panics)}.
- Connected {s['connections']['connected']} of {args.conns} (failed: {s['connections']['failed']}); reconnects
  {s['churn']['reconnects']}; closes seen by clients: {s['closes']}.
- Stable connections: {s['deliveries']} of {s['expected_deliveries']} expected deliveries, lost {s['lost']},
  duplicates {s['duplicates']}; churning connections received {s['churn']['received']}.
- Delivery latency (all receivers): p50 {d['p50_ms']} ms, p99 {d['p99_ms']} ms, p99.9 {d['p99.9_ms']} ms,
  max {d['max_ms']} ms. Connect + upgrade p99 {s['latency']['connect']['p99_ms']} ms.
- CPU over the {wall:.0f} s run: server {s['server_cpu_secs']:.0f} s ({s['server_cpu_secs'] / wall:.2f} cores; it
  also verifies a JWT and joins three channels per reconnect and pings every connection every 30 s),
  client {s['client_cpu_secs']:.0f} s.
"""
    with open(os.path.join(OUT, "summary.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
