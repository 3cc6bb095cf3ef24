#!/usr/bin/env python3
"""What the kernel's accept backlog settings do to a connect storm (docs/deploy.md).

For each setting of `net.core.somaxconn` and `net.ipv4.tcp_max_syn_backlog` (default: 128, then 4096),
starts a one-shard gateway (its listen backlog of 4096 is clamped to somaxconn when it listens),
opens `--conns` WebSocket connections as fast as `--ramp` allows (`loadgen hold`, spread over source
addresses), and reports connect latency, failed connects, and the kernel's ListenOverflows and
ListenDrops counters (/proc/net/netstat) over the storm. The original sysctl values are put back on
every exit path. Needs root (sysctl) and the release binaries (`cargo build --release`).

    python3 bench/connect_storm.py                   # 128 vs 4096, 10,000 connections at 20,000/s
    python3 bench/connect_storm.py --backlogs 64,4096 --conns 15000 --json
"""

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtools  # noqa: E402

SECRET = "connect-storm-secret-0123456789"
API_KEY = "connect-storm-api-key"
SYSCTLS = ("net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog")


def sysctl_path(name):
    return "/proc/sys/" + name.replace(".", "/")


def read_sysctl(name):
    with open(sysctl_path(name)) as f:
        return f.read().strip()


def write_sysctl(name, value):
    with open(sysctl_path(name), "w") as f:
        f.write(str(value))


def listen_counters():
    """TcpExt ListenOverflows and ListenDrops from /proc/net/netstat."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            d = dict(zip(names.split()[1:], map(int, values.split()[1:])))
            return d.get("ListenOverflows", 0), d.get("ListenDrops", 0)
    return 0, 0


def one(args, backlog, gateway, loadgen):
    for name in SYSCTLS:
        write_sysctl(name, backlog)
    # The handshake cap answers 503 beyond it (bounded work before authentication): raised here so
    # that what is measured is the kernel's backlog.
    gw = gwtools.Gateway(gateway, ["--shards", "1", "--jwt-secret", SECRET, "--api-key", API_KEY,
                                   "--max-handshakes-per-shard", "100000"])
    lg = None
    try:
        gw.start(timeout=60)
        before = listen_counters()
        cmd = [loadgen, "hold", "--url", f"ws://{gw.ws}/ws", "--conns", str(args.conns),
               "--ramp", str(args.ramp), "--secret", SECRET, "--sub-prefix", f"storm{backlog}-",
               "--timeout-ms", "10000", "--source-ips", ",".join(gwtools.source_ips(args.source_ips))]
        lg = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
        connected = gwtools.read_phase(lg, "connected", args.conns / args.ramp + 60)
        after = listen_counters()
        lg.stdin.write("stop\n")
        lg.stdin.flush()
        lg.wait(timeout=60)
    finally:
        gwtools.kill_tree(lg)
        gw.stop()
    return {
        "backlog": backlog,
        "connected": connected["ok"],
        "failed": connected["failed"],
        "secs": connected["secs"],
        "connect_ms": connected["latency"],
        "listen_overflows": after[0] - before[0],
        "listen_drops": after[1] - before[1],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backlogs", default="128,4096", help="values for both sysctls, comma-separated")
    p.add_argument("--conns", type=int, default=10_000)
    p.add_argument("--ramp", type=float, default=20_000, help="new connections per second")
    p.add_argument("--source-ips", type=int, default=8)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("connect_storm.py sets sysctls: run it as root")
    gateway, loadgen = gwtools.binary("gateway"), gwtools.binary("loadgen")
    original = {name: read_sysctl(name) for name in SYSCTLS}
    runs = []
    try:
        for b in [int(x) for x in args.backlogs.split(",")]:
            print(f"backlog {b}: storming...", file=sys.stderr)
            runs.append(one(args, b, gateway, loadgen))
    finally:
        for name, value in original.items():
            write_sysctl(name, value)
    if args.json:
        print(json.dumps(runs, indent=2))
        return
    print(f"{args.conns:,} connections at {args.ramp:,.0f}/s, one shard, {args.source_ips} source addresses\n")
    print("| somaxconn = tcp_max_syn_backlog | connected | failed | storm secs | connect p50 ms | p99 ms | max ms | ListenOverflows | ListenDrops |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        lat = r["connect_ms"]
        failed = ", ".join(f"{k} {v}" for k, v in r["failed"].items()) or "0"
        print(f"| {r['backlog']} | {r['connected']:,} | {failed} | {r['secs']:.2f} | {lat.get('p50_ms')} | "
              f"{lat.get('p99_ms')} | {lat.get('max_ms')} | {r['listen_overflows']} | {r['listen_drops']} |")


if __name__ == "__main__":
    main()
