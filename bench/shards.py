#!/usr/bin/env python3
"""How per-connection and per-shard costs scale with the shard count. One command:

    python3 bench/shards.py                      # shards 1,2,8,32,64; 10,000 connections each
    python3 bench/shards.py --shards 1,2 --conns 2000 --json

For each shard count N it starts `gateway serve --shards N` on free loopback ports (waiting for its
ready line and for /health to answer 200), reads its idle RSS, then drives `loadgen hold`:

1. connect: C connections (distinct users, tokens allowing room_*) at a steady ramp, spread over
   several 127.0.0.x source addresses; latency is TCP connect to the welcome frame;
2. subscribe: each connection subscribes to one of R rooms (round-robin) and waits for the reply;
3. hold idle for a few seconds, then read RSS again.

Around each phase it reads `gateway_mesh_messages_total` (summed over its shard and lane labels)
from /metrics: mesh messages per connect and per subscribe are the deltas divided by the
connections. RSS per connection is (RSS held - idle RSS) / connections; idle RSS per shard is idle
RSS / N. Ratios are taken to the 1-shard run (mesh: the 2-shard run; one shard has no mesh).

On a 2-core machine the larger shard counts are oversubscribed: this measures counts and memory,
not speed. A metric the gateway does not export is reported as n/a.
"""
import argparse
import datetime
import os
import platform
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtools  # noqa: E402

SECRET = "shards-bench-secret"
API_KEY = "shards-bench-key"
MESH = "gateway_mesh_messages_total"
GOAL_RATIO = 0.10          # RSS per connection and mesh messages per connect: within 10%
GOAL_IDLE_PER_SHARD = 2.0  # MiB


def mesh_read(gw):
    """(total, {lane: count}) of gateway_mesh_messages_total; (None, {}) if not exported."""
    try:
        text = gw.metrics()
    except RuntimeError:
        return None, {}
    return gwtools.counter_sum(text, MESH), gwtools.counter_by_label(text, MESH, "lane")


def lanes_delta(a, b):
    return {k: b[1].get(k, 0) - a[1].get(k, 0) for k in sorted(set(a[1]) | set(b[1]))}


def delta(a, b):
    return None if a is None or b is None else b - a


def per(x, n):
    return None if x is None or not n else x / n


def one(args, n, gateway, loadgen, out):
    """One shard count: returns the run's figures."""
    flags = ["--shards", str(n), "--jwt-secret", SECRET, "--api-key", API_KEY]
    if "--drain-timeout-ms" in args.serve_flags:
        flags += ["--drain-timeout-ms", "2000"]
    gw = gwtools.Gateway(gateway, flags, log_path=os.path.join(out, f"gateway-{n}.log"))
    lg = None
    try:
        t_start = time.time()
        gw.start(timeout=120)
        startup_secs = time.time() - t_start
        time.sleep(args.settle)
        idle_rss = gw.rss_kib()
        m0 = mesh_read(gw)
        cmd = [loadgen, "hold", "--url", f"ws://{gw.ws}/ws", "--conns", str(args.conns),
               "--rooms", str(args.rooms), "--ramp", str(args.ramp),
               "--subscribe-rate", str(args.subscribe_rate), "--secret", SECRET,
               "--sub-prefix", f"shards{n}-", "--source-ips", ",".join(gwtools.source_ips(args.source_ips))]
        lg = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
        slack = 60
        connected = gwtools.read_phase(lg, "connected", args.conns / args.ramp + slack)
        m1, rss_connected = mesh_read(gw), gw.rss_kib()
        lg.stdin.write("subscribe\n")
        lg.stdin.flush()
        subscribed = gwtools.read_phase(lg, "subscribed", args.conns / args.subscribe_rate + slack)
        m2 = mesh_read(gw)
        time.sleep(args.idle)
        rss_held, m3 = gw.rss_kib(), mesh_read(gw)
        lg.stdin.write("stop\n")
        lg.stdin.flush()
        done = gwtools.read_phase(lg, "done", 60)
        lg.wait(timeout=30)
    finally:
        gwtools.kill_tree(lg)
        gw.stop()
    conns, subs = connected["ok"], subscribed["ok"]
    return {
        "shards": n,
        "startup_secs": round(startup_secs, 2),
        "idle_rss_kib": idle_rss,
        "rss_connected_kib": rss_connected,
        "rss_held_kib": rss_held,
        "idle_rss_mib": idle_rss / 1024,
        "idle_rss_per_shard_mib": idle_rss / 1024 / n,
        "rss_per_conn_kib": per(rss_held - idle_rss, conns),
        "rss_per_conn_connected_only_kib": per(rss_connected - idle_rss, conns),
        "connected": conns,
        "connect_failed": connected["failed"],
        "subscribed": subs,
        "subscribe_failed": subscribed["failed"],
        "closes_while_held": done.get("closes_while_held", {}),
        "mesh_connect": delta(m0[0], m1[0]),
        "mesh_subscribe": delta(m1[0], m2[0]),
        "mesh_idle": delta(m2[0], m3[0]),
        "mesh_lanes": {"connect": lanes_delta(m0, m1), "subscribe": lanes_delta(m1, m2),
                       "idle": lanes_delta(m2, m3)},
        "mesh_per_connect": per(delta(m0[0], m1[0]), conns),
        "mesh_per_subscribe": per(delta(m1[0], m2[0]), subs),
        "connect_ms": connected["latency"],
        "subscribe_ms": subscribed["latency"],
        "connect_secs": connected["secs"],
        "subscribe_secs": subscribed["secs"],
        "client_cpu_secs": done.get("client_cpu_secs"),
    }


def add_ratios(runs):
    """Ratios to the 1-shard run (RSS per connection) and the 2-shard run (mesh per connect), or
    to the smallest shard count measured if those were not."""
    if not runs:
        return
    base_rss = min(runs, key=lambda r: r["shards"])
    meshed = [r for r in runs if r["shards"] >= 2 and r["mesh_per_connect"] is not None]
    base_mesh = min(meshed, key=lambda r: r["shards"]) if meshed else None
    for r in runs:
        # What each shard beyond the smallest count adds to the idle process.
        extra = r["shards"] - base_rss["shards"]
        r["idle_rss_per_added_shard_mib"] = \
            (r["idle_rss_kib"] - base_rss["idle_rss_kib"]) / 1024 / extra if extra else None
        b = base_rss["rss_per_conn_kib"]
        r["rss_per_conn_ratio"] = r["rss_per_conn_kib"] / b if b and r["rss_per_conn_kib"] is not None else None
        r["rss_ratio_base_shards"] = base_rss["shards"]
        b = base_mesh["mesh_per_connect"] if base_mesh else None
        ok = b and r["shards"] >= 2 and r["mesh_per_connect"] is not None
        r["mesh_per_connect_ratio"] = r["mesh_per_connect"] / b if ok else None
        r["mesh_ratio_base_shards"] = base_mesh["shards"] if base_mesh else None


def within(runs, key):
    """The goal 'within 10%' over the runs' ratios: met, and the largest change."""
    ratios = [(r["shards"], r[key]) for r in runs if r.get(key) is not None]
    if len(ratios) < 2:
        return {"met": None}
    worst = max(ratios, key=lambda x: abs(x[1] - 1))
    return {"met": abs(worst[1] - 1) <= GOAL_RATIO, "worst_shards": worst[0],
            "worst_change_pct": (worst[1] - 1) * 100}


def goals(runs):
    """Each goal: the figure, and whether it was met (None when it cannot be told)."""
    out = {"rss_per_conn_within_10pct": within(runs, "rss_per_conn_ratio"),
           "mesh_per_connect_within_10pct": within(runs, "mesh_per_connect_ratio")}
    if runs:
        worst = max(runs, key=lambda r: r["idle_rss_per_shard_mib"])
        out["idle_rss_per_shard_at_most_2mib"] = {
            "met": all(r["idle_rss_per_shard_mib"] <= GOAL_IDLE_PER_SHARD for r in runs),
            "worst_shards": worst["shards"], "worst_mib": worst["idle_rss_per_shard_mib"]}
    else:
        out["idle_rss_per_shard_at_most_2mib"] = {"met": None}
    return out


def shards_txt(n):
    return f"{n} shard" if n == 1 else f"{n} shards"


def fmt(v, spec=".2f", suffix=""):
    return "n/a" if v is None else f"{v:{spec}}{suffix}"


def table(runs, args):
    done = [r for r in runs if "error" not in r]
    rb = done[0]["rss_ratio_base_shards"] if done else 1
    mb = done[0]["mesh_ratio_base_shards"] if done else None
    lines = [
        f"{args.conns:,} connections, {args.rooms} rooms, ramp {args.ramp:g}/s, subscribe {args.subscribe_rate:g}/s, "
        f"{args.source_ips} source addresses, idle hold {args.idle:g} s",
        "",
        f"| shards | idle RSS MiB | idle RSS/shard MiB | idle RSS per added shard MiB | RSS/conn KiB | RSS/conn vs {shards_txt(rb)} | mesh msgs/connect "
        f"| mesh/connect vs {shards_txt(mb) if mb else '2 shards'} | mesh msgs/subscribe | connect p50 ms | connect p99 ms "
        "| connected, subscribed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        if "error" in r:
            short = r["error"].split("; command:")[0].split(" (log:")[0]
            lines.append(f"| {r['shards']} | failed: {short} ||||||||||| ")
            continue
        ok = f"{r['connected']:,}, {r['subscribed']:,}"
        if r["connect_failed"] or r["subscribe_failed"]:
            ok += f" (failed: {dict(r['connect_failed'], **r['subscribe_failed'])})"
        lines.append(
            f"| {r['shards']} | {r['idle_rss_mib']:.1f} | {r['idle_rss_per_shard_mib']:.2f} "
            f"| {fmt(r['idle_rss_per_added_shard_mib'])} | {fmt(r['rss_per_conn_kib'])} | {fmt(r['rss_per_conn_ratio'], '.2f', 'x')} "
            f"| {fmt(r['mesh_per_connect'])} | {fmt(r['mesh_per_connect_ratio'], '.2f', 'x')} "
            f"| {fmt(r['mesh_per_subscribe'])} | {r['connect_ms']['p50_ms']:.2f} | {r['connect_ms']['p99_ms']:.2f} | {ok} |")
    return "\n".join(lines)


def goals_text(g, runs, idle_secs, failed=()):
    def verdict(x):
        return {True: "met", False: "MISSED", None: "n/a"}[x["met"]]
    a, b, c = (g["rss_per_conn_within_10pct"], g["mesh_per_connect_within_10pct"],
               g["idle_rss_per_shard_at_most_2mib"])
    counts = [r["shards"] for r in runs]
    span = f"from {min(counts)} to {max(counts)} shards" if counts else "(no run completed)"
    lines = ["Goals:"]
    detail = "" if a["met"] is None else \
        f" (largest change {a['worst_change_pct']:+.1f}% at {shards_txt(a['worst_shards'])})"
    lines.append(f"  RSS per connection within 10% {span}: {verdict(a)}{detail}")
    if b["met"] is None:
        detail = " (gateway_mesh_messages_total not exported, or fewer than two runs with 2+ shards)"
    else:
        detail = f" (largest change {b['worst_change_pct']:+.1f}% at {shards_txt(b['worst_shards'])})"
    lines.append(f"  mesh messages per connect within 10% across the runs with 2+ shards: {verdict(b)}{detail}")
    detail = "" if c["met"] is None else \
        f" (highest {c['worst_mib']:.2f} MiB per shard at {shards_txt(c['worst_shards'])})"
    lines.append(f"  idle RSS at most {GOAL_IDLE_PER_SHARD:g} MiB per shard: {verdict(c)}{detail}")
    if failed:
        lines.append(f"  not measured: {', '.join(shards_txt(n) for n in failed)} (see the table)")
    idle = [f"{r['shards']}: {r['mesh_idle']:.0f}" for r in runs if r.get("mesh_idle")]
    if idle:
        lines.append(f"  note: mesh messages during the {idle_secs:g} s idle hold (background traffic), by shards: "
                     + ", ".join(idle))
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", default="1,2,8,32,64", help="shard counts, comma-separated")
    p.add_argument("--conns", type=int, default=10_000)
    p.add_argument("--rooms", type=int, default=100)
    p.add_argument("--ramp", type=float, default=2000, help="new connections per second")
    p.add_argument("--subscribe-rate", type=float, default=2000, help="subscribe requests per second")
    p.add_argument("--source-ips", type=int, default=8, help="spread connections over 127.0.0.1..N")
    p.add_argument("--idle", type=float, default=2.0, help="seconds held idle before reading RSS")
    p.add_argument("--settle", type=float, default=1.0, help="seconds after /health 200 before idle RSS")
    p.add_argument("--gateway", help="gateway binary (default: <target dir>/release/gateway)")
    p.add_argument("--loadgen", help="loadgen binary (default: <target dir>/release/loadgen)")
    p.add_argument("--build", action="store_true", help="cargo build both binaries first")
    p.add_argument("--attempts", type=int, default=2, help="tries per shard count when the gateway fails to start")
    p.add_argument("--out", default=os.path.join(gwtools.ROOT, "bench", "results", "shards"),
                   help="directory for summary.json, summary.md and the gateway logs")
    p.add_argument("--json", action="store_true", help="print the results as JSON (the table goes to stderr)")
    args = p.parse_args()
    shard_counts = sorted({int(x) for x in args.shards.split(",") if x.strip()})
    if not shard_counts or min(shard_counts) < 1:
        sys.exit("--shards: positive shard counts, comma-separated")
    # A SIGTERM runs the finally clauses too, so no gateway or loadgen is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    gateway = gwtools.binary("gateway", args.gateway, args.build)
    loadgen = gwtools.binary("loadgen", args.loadgen, args.build)
    args.serve_flags = gwtools.serve_flags(gateway)
    os.makedirs(args.out, exist_ok=True)
    runs = []
    for n in shard_counts:
        for attempt in range(1, args.attempts + 1):
            print(f"shards {n}: running...", file=sys.stderr, flush=True)
            try:
                r = one(args, n, gateway, loadgen, args.out)
                break
            except (RuntimeError, subprocess.SubprocessError, OSError) as e:
                r = {"shards": n, "error": str(e)}
                print(f"shards {n}: attempt {attempt} failed: {e}", file=sys.stderr, flush=True)
                if not isinstance(e, gwtools.StartError):
                    break
        if "error" not in r:
            print(f"shards {n}: idle RSS {r['idle_rss_mib']:.1f} MiB, {fmt(r['rss_per_conn_kib'])} KiB/conn, "
                  f"mesh/connect {fmt(r['mesh_per_connect'])}, connect p99 {r['connect_ms']['p99_ms']:.2f} ms",
                  file=sys.stderr, flush=True)
        runs.append(r)
    done = [r for r in runs if "error" not in r]
    add_ratios(done)
    g = goals(done)
    text = table(runs, args) + "\n\n" + goals_text(g, done, args.idle, [r["shards"] for r in runs if "error" in r])
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=gwtools.ROOT,
                            capture_output=True, text=True).stdout.strip()
    doc = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
        "gateway": gateway, "commit": commit,
        "args": {k: v for k, v in vars(args).items() if k != "serve_flags"},
        "runs": runs, "goals": g,
    }
    gwtools.write_summary(args.out, text, doc, args.json)
    if len(done) < len(runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
