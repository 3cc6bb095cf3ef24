#!/usr/bin/env python3
"""Upgrades with JWT per second on one shard, and RSS per idle subscribed connection. One command:

    python3 bench/connect_rate.py                      # memory run + ramp 2k..30k/s
    python3 bench/connect_rate.py --rates 5000,20000 --conns 12000 --json

Every run starts a fresh one-shard gateway (in-process bus, HS256 tokens) pinned to CPU 0 and drives
`loadgen hold` pinned to CPU 1, spread over 8 loopback source addresses. Each connection is its own
user with its own HS256 token (minted by loadgen just before it connects: a few microseconds of the
latency); its connect latency runs from there to the `welcome` frame, so it covers the TCP connect,
accept, the upgrade request, the JWT check, the slots and the session's start.

1. memory: `--mem-conns` connections at 2,000/s, each subscribes to one of 100 rooms, then idle for
   `--idle` s: RSS per idle subscribed connection = (RSS held - RSS before) / connections;
2. ramp: for each rate in `--rates`, `--conns` connections (at most `--secs` s of the rate) at that
   rate; reports connect p50/p99, failures, the rate achieved, and the server's CPU per upgrade
   (utime+stime from /proc over the connect phase). The upgrade rate of the goal is the highest rate
   whose connect p99 stays within 10 ms.
"""
import argparse
import datetime
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtools  # noqa: E402

SECRET = "connect-rate-bench-secret"
API_KEY = "connect-rate-bench-key"
P99_LIMIT_MS = 10.0
GOAL_RATE = 20000
GOAL_P99_AT_5K_MS = 2.0
GOAL_RSS_KIB = 4.0


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(args, gateway, loadgen, conns, rate, subscribe, tag):
    gw = gwtools.Gateway(gateway, ["--shards", "1", "--jwt-secret", SECRET, "--api-key", API_KEY,
                                   "--max-handshakes-per-shard", "100000"],
                         log_path=os.path.join(args.out, f"gateway-{tag}.log"))
    lg = None
    try:
        gw.start()
        subprocess.run(["taskset", "-a", "-cp", "0", str(gw.pid)], check=True,
                       stdout=subprocess.DEVNULL)
        time.sleep(1)
        rss0 = gw.rss_kib()
        cmd = ["taskset", "-c", "1", loadgen, "hold", "--url", f"ws://{gw.ws}/ws",
               "--conns", str(conns), "--ramp", str(rate), "--rooms", "100",
               "--subscribe-rate", "5000", "--secret", SECRET, "--sub-prefix", f"{tag}-",
               "--source-ips", ",".join(gwtools.source_ips(8))]
        lg = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
        cpu0 = cpu_secs(gw.pid)
        connected = gwtools.read_phase(lg, "connected", conns / rate + 90)
        cpu_connect = cpu_secs(gw.pid) - cpu0
        out = {"rate": rate, "conns": conns, "connected": connected["ok"],
               "failed": connected["failed"], "connect_secs": round(connected["secs"], 2),
               "achieved_per_sec": round(connected["ok"] / connected["secs"]) if connected["secs"] else None,
               "p50_ms": connected["latency"]["p50_ms"], "p99_ms": connected["latency"]["p99_ms"],
               "max_ms": connected["latency"].get("max_ms"),
               "server_us_per_connect": round(cpu_connect / max(connected["ok"], 1) * 1e6, 1),
               "rss_connected_kib": gw.rss_kib(), "rss_before_kib": rss0}
        if subscribe:
            lg.stdin.write("subscribe\n")
            lg.stdin.flush()
            subscribed = gwtools.read_phase(lg, "subscribed", conns / 5000 + 90)
            time.sleep(args.idle)
            held = gw.rss_kib()
            out.update({"subscribed": subscribed["ok"], "rss_held_kib": held,
                        "rss_per_conn_kib": round((held - rss0) / max(subscribed["ok"], 1), 2),
                        "rss_per_conn_connected_only_kib":
                            round((out["rss_connected_kib"] - rss0) / max(connected["ok"], 1), 2)})
        lg.stdin.write("stop\n")
        lg.stdin.flush()
        done = gwtools.read_phase(lg, "done", 60)
        # The client's CPU over the whole run (connect, subscribe, close), per connection: whether
        # the client, on its one core, could have gone faster.
        out["client_us_per_conn"] = round(done.get("client_cpu_secs", 0) / max(connected["ok"], 1) * 1e6, 1)
        lg.wait(timeout=30)
    finally:
        gwtools.kill_tree(lg)
        gw.stop()
    print(out, file=sys.stderr)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway")
    ap.add_argument("--loadgen")
    ap.add_argument("--rates", default="2000,5000,10000,15000,20000,25000,30000")
    ap.add_argument("--conns", type=int, default=12000, help="connections per ramp run (at most)")
    ap.add_argument("--secs", type=float, default=3.0, help="at most this long at each rate")
    ap.add_argument("--mem-conns", type=int, default=10000)
    ap.add_argument("--idle", type=float, default=5.0)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--out", default=os.path.join(gwtools.ROOT, "bench", "results", "connect_rate"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    gateway = gwtools.binary("gateway", args.gateway)
    loadgen = gwtools.binary("loadgen", args.loadgen)
    os.makedirs(args.out, exist_ok=True)
    mem = None if args.skip_memory else run(args, gateway, loadgen, args.mem_conns, 2000, True, "mem")
    ramp = []
    for rate in [int(r) for r in args.rates.split(",")]:
        conns = min(args.conns, int(rate * args.secs))
        ramp.append(run(args, gateway, loadgen, conns, rate, False, f"r{rate}"))
    lines = ["| rate asked (/s) | conns | achieved (/s) | connect p50 (ms) | p99 (ms) | failed | "
             "server us CPU/upgrade | client us CPU/conn (whole run) |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in ramp:
        lines.append(f"| {r['rate']} | {r['connected']} | {r['achieved_per_sec']} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {sum(r['failed'].values()) or 0} | {r['server_us_per_connect']} | "
                     f"{r['client_us_per_conn']} |")
    within = [r for r in ramp if r["p99_ms"] <= P99_LIMIT_MS and not sum(r["failed"].values())]
    best = max((r["rate"] for r in within), default=0)
    at5k = next((r for r in ramp if r["rate"] == 5000), None)
    verdicts = [f"highest rate with connect p99 <= {P99_LIMIT_MS:.0f} ms: {best}/s "
                f"(goal >= {GOAL_RATE}: {'met' if best >= GOAL_RATE else 'NOT met'})"]
    if at5k:
        ok = at5k["p99_ms"] <= GOAL_P99_AT_5K_MS
        verdicts.append(f"connect p99 at 5,000/s: {at5k['p99_ms']:.2f} ms "
                        f"(goal <= {GOAL_P99_AT_5K_MS} ms: {'met' if ok else 'NOT met'})")
    if mem:
        ok = mem["rss_per_conn_kib"] <= GOAL_RSS_KIB
        verdicts.append(f"RSS per idle subscribed connection: {mem['rss_per_conn_kib']} KiB at "
                        f"{mem['subscribed']} connections (goal <= {GOAL_RSS_KIB} KiB: "
                        f"{'met' if ok else 'NOT met'})")
    doc = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
           "conditions": {"server_cpu": 0, "client_cpu": 1, "shards": 1, "source_ips": 8,
                          "jwt": "HS256", "conns_per_rate": args.conns, "secs_per_rate": args.secs},
           "memory": mem, "ramp": ramp, "verdicts": verdicts}
    gwtools.write_summary(args.out, "\n".join(lines) + "\n\n" + "\n".join(verdicts), doc, args.json)


if __name__ == "__main__":
    main()
