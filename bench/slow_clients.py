#!/usr/bin/env python3
"""Slow and hostile clients: does the others' delivery latency move, and does memory stay bounded?

    python3 bench/slow_clients.py            # results in bench/results/slow_clients/

Runs with the same load, each against a fresh gateway pinned to CPU 0 (one shard) with `loadgen`
pinned to CPU 1: a baseline, then the same plus `--stalled` connections that subscribe (spread over
every room) and never read again, with a 4 KiB receive buffer as a slow link would have; both with
the kernel's send-buffer autotuning and with `limits.socket_send_buffer_bytes` set (`--send-buffers`). A stalled connection's messages pile up in the kernel's send buffer and then in its bounded
queue (`limits.queue_bytes`) until the gateway closes it with 1013 and frees the queue. The script
samples the gateway's RSS and open descriptors, and the bytes the kernel holds for its sockets
(Send-Q from `ss`), every half second, and compares the readers' latency percentiles.
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
import run as bench  # noqa: E402  (the scale bench's helpers: build, Gateway, rss_kib)

OUT = os.path.join(bench.ROOT, "bench", "results", "slow_clients")


def fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def send_q_bytes(port):
    out = subprocess.run(["ss", "-tnH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    return sum(int(line.split()[1]) for line in out.splitlines() if line.split())


def slow_closes():
    with urllib.request.urlopen(f"http://127.0.0.1:{bench.ADMIN_PORT}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("gateway_slow_consumer_closes_total"))


class Sampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.stop, self.samples = pid, threading.Event(), []

    def run(self):
        t0 = time.time()
        while not self.stop.is_set():
            self.samples.append({"t": round(time.time() - t0, 1), "rss_kib": bench.rss_kib(self.pid),
                                 "fds": fds(self.pid), "send_q": send_q_bytes(bench.GW_PORT)})
            time.sleep(0.5)


def one(args, stalled, send_buffer):
    os.environ["GATEWAY_LIMITS__SOCKET_SEND_BUFFER_BYTES"] = str(send_buffer)
    gw = bench.Gateway()
    pid = gw.start(args.conns + stalled)
    base_rss, base_fds = bench.rss_kib(pid), fds(pid)
    sampler = Sampler(pid)
    sampler.start()
    out = os.path.join(OUT, f"stalled-{stalled}-sndbuf-{send_buffer}")
    cmd = ["taskset", "-c", "1", bench.LOADGEN, *gw.loadgen_args(), "--conns", str(args.conns),
           "--rooms", str(args.rooms), "--rate", str(args.rate), "--duration", str(args.duration),
           "--payload-bytes", str(args.payload), "--stalled", str(stalled), "--ramp", "2000",
           "--server-pid", str(pid), "--json", "--out", out]
    summary = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    closes = slow_closes()
    time.sleep(2)
    sampler.stop.set()
    sampler.join()
    gw.stop()
    s = sampler.samples
    return {
        "stalled": stalled,
        "send_buffer": send_buffer,
        "summary": summary,
        "slow_consumer_closes": closes,
        "baseline_rss_kib": base_rss,
        "baseline_fds": base_fds,
        "peak_rss_kib": max(x["rss_kib"] for x in s),
        "end_rss_kib": s[-1]["rss_kib"],
        "end_fds": s[-1]["fds"],
        "peak_send_q_bytes": max(x["send_q"] for x in s),
        "samples": s,
    }


def markdown(runs, args):
    lat = lambda r, q: r["summary"]["latency"]["delivery"].get(f"{q}_ms")  # noqa: E731
    lines = [
        f"Readers: {args.conns} connections in {args.rooms} rooms, {args.rate:g} messages/s of "
        f"{args.payload} B payload for {args.duration:g} s (gateway 1 shard on CPU 0, loadgen on CPU 1).",
        "",
        "| socket_send_buffer_bytes | stalled conns | reader p50 ms | p99 ms | p99.9 ms | max ms | delivered / expected | lost "
        "| stalled ended | 1013 closes | peak RSS MiB | end RSS MiB | peak kernel Send-Q MiB "
        "| server CPU us/delivery | client CPU us/delivery |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        s = r["summary"]
        lines.append(
            f"| {r['send_buffer'] or 'kernel'} | {r['stalled']} | {lat(r, 'p50')} | {lat(r, 'p99')} | {lat(r, 'p99.9')} | {lat(r, 'max')} "
            f"| {s['deliveries']} / {s['expected_deliveries']} | {s['lost']} | {s['stalled']['ended']} "
            f"| {r['slow_consumer_closes']:.0f} | {r['peak_rss_kib'] / 1024:.1f} | {r['end_rss_kib'] / 1024:.1f} "
            f"| {r['peak_send_q_bytes'] / 2**20:.1f} | {s['server_cpu_us_per_delivery'] or 0:.2f} "
            f"| {s['client_cpu_us_per_delivery']:.2f} |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conns", type=int, default=1000)
    p.add_argument("--rooms", type=int, default=20)
    p.add_argument("--rate", type=float, default=400)
    p.add_argument("--payload", type=int, default=2048)
    p.add_argument("--duration", type=float, default=30)
    p.add_argument("--stalled", type=int, default=200)
    p.add_argument("--send-buffers", default="0,65536",
                   help="limits.socket_send_buffer_bytes values to run (0 = kernel autotuning)")
    args = p.parse_args()
    subprocess.run(["cargo", "build", "--release", "--workspace"], check=True, cwd=bench.ROOT)
    os.makedirs(OUT, exist_ok=True)
    runs = [one(args, stalled, int(b)) for b in args.send_buffers.split(",")
            for stalled in (0, args.stalled)]
    with open(os.path.join(OUT, "summary.json"), "w") as f:
        json.dump({"args": vars(args), "runs": runs}, f, indent=1)
    md = markdown(runs, args)
    with open(os.path.join(OUT, "summary.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
