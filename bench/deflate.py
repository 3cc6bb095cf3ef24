#!/usr/bin/env python3
"""What permessage-deflate costs and saves, against the goal "deflate on, 1 KiB JSON messages: CPU
per delivery at most 1.3x deflate off; bytes on the wire at most half". One command:

    python3 bench/deflate.py                      # 5,000 connections, rooms of 100, 1 msg/s each
    python3 bench/deflate.py --conns 2000 --duration 10 --json

Two runs, the same load, each against a fresh `gateway serve --shards 1` pinned to CPU 0 (all its
threads), loadgen pinned to CPU 1:

- off: `session.deflate = false` (GATEWAY_SESSION__DEFLATE=false), loadgen offers nothing;
- on:  the default configuration (deflate on, `deflate_min_bytes` 128), loadgen `--deflate`
  (offers permessage-deflate as browsers do and inflates every compressed message to check its
  sequence number).

Messages are published over HTTP, open loop; their `data` is padded with `--payload-json` records
(random ids, symbols, prices, users) to about 1 KiB per message, so they compress like real JSON
pushes rather than like one repeated character. Server CPU per delivery is loadgen's
`server_cpu_us_per_delivery` (utime+stime of the gateway over the publishing phase / deliveries);
bytes on the wire per delivery are loadgen's `frame_bytes_per_delivery` (the message frames'
headers and payloads as received; TCP/IP headers are the same count of packets either way and are
left out). The gateway's deflate counters (/metrics) are read after each run. Writes summary.json
and summary.md to bench/results/deflate/.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtools  # noqa: E402

SECRET = "deflate-bench-secret"
API_KEY = "deflate-bench-key"
GOAL_CPU = 1.3
GOAL_BYTES = 0.5


def one(args, mode, gateway, loadgen, out):
    """One run with deflate `mode` ("off" or "on"); loadgen's summary plus the gateway's counters."""
    env = {"GATEWAY_SESSION__DEFLATE": "false"} if mode == "off" else {}
    os.makedirs(os.path.join(out, mode), exist_ok=True)
    gw = gwtools.Gateway(gateway, ["--shards", "1", "--jwt-secret", SECRET, "--api-key", API_KEY,
                                   "--max-connections-per-user", "100000"],
                         log_path=os.path.join(out, mode, "gateway.log"), env=env).start()
    try:
        # Every thread of the gateway on CPU 0, loadgen on CPU 1.
        subprocess.run(["taskset", "-a", "-cp", "0", str(gw.pid)], check=True,
                       stdout=subprocess.DEVNULL)
        rooms = max(1, args.conns // args.room_size)
        run_dir = os.path.join(out, mode)
        cmd = ["taskset", "-c", "1", loadgen, "--server", "gateway", "--url", f"ws://{gw.ws}/ws",
               "--secret", SECRET, "--publish", "http", "--publish-addr", gw.admin,
               "--api-key", API_KEY, "--conns", str(args.conns), "--rooms", str(rooms),
               "--rate", f"{rooms * args.rate_per_conn:g}", "--duration", f"{args.duration:g}",
               "--ramp", "5000", "--warmup", "2", "--drain", "2", "--server-pid", str(gw.pid),
               "--publishers", "4", "--payload-bytes", str(args.payload_bytes), "--payload-json",
               "--json", "--out", run_dir]
        if mode == "on":
            cmd.append("--deflate")
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 300)
        if res.returncode != 0:
            raise RuntimeError(f"loadgen failed: {res.stderr.strip()[-800:]}")
        s = json.loads(res.stdout)
        metrics = gw.metrics()
        s["gateway_deflate_compressed"] = gwtools.counter_sum(
            metrics, "gateway_deflate_compressed_total")
        s["gateway_deflate_saved_bytes"] = gwtools.counter_sum(
            metrics, "gateway_deflate_saved_bytes_total")
        return s
    finally:
        gw.stop()


def row(mode, s):
    lat = s["latency"]["delivery"]
    return {
        "deflate": mode,
        "deliveries": s["deliveries"],
        "lost": s["lost"],
        "server_cpu_us_per_delivery": round(s["server_cpu_us_per_delivery"] or 0, 2),
        "frame_bytes_per_delivery": round(s["frame_bytes_per_delivery"], 1),
        "client_cpu_us_per_delivery": round(s["client_cpu_us_per_delivery"], 2),
        "delivery_p50_ms": lat.get("p50_ms"),
        "delivery_p99_ms": lat.get("p99_ms"),
        "compressed_per_shard": s.get("gateway_deflate_compressed"),
        "saved_bytes": s.get("gateway_deflate_saved_bytes"),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conns", type=int, default=5000)
    p.add_argument("--room-size", type=int, default=100)
    p.add_argument("--rate-per-conn", type=float, default=1.0, help="messages per second per connection")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of publishing per run")
    p.add_argument("--payload-bytes", type=int, default=830,
                   help="JSON padding per message (830: messages of about 1 KiB with the envelope)")
    p.add_argument("--gateway", help="gateway binary (default: <target dir>/release/gateway)")
    p.add_argument("--loadgen", help="loadgen binary (default: <target dir>/release/loadgen)")
    p.add_argument("--build", action="store_true", help="cargo build --release first")
    p.add_argument("--out", default=os.path.join(gwtools.ROOT, "bench", "results", "deflate"))
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = p.parse_args()
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs 2 CPUs (gateway on CPU 0, loadgen on CPU 1)")
    gateway = gwtools.binary("gateway", args.gateway, args.build)
    loadgen = gwtools.binary("loadgen", args.loadgen, args.build)
    os.makedirs(args.out, exist_ok=True)
    runs = {}
    for mode in ("off", "on"):
        print(f"deflate {mode}: {args.conns} connections, {args.duration:g} s...", file=sys.stderr)
        runs[mode] = one(args, mode, gateway, loadgen, args.out)
        time.sleep(1)
    rows = [row(m, runs[m]) for m in ("off", "on")]
    off, on = rows
    cpu = on["server_cpu_us_per_delivery"] / off["server_cpu_us_per_delivery"]
    wire = on["frame_bytes_per_delivery"] / off["frame_bytes_per_delivery"]
    ratios = {
        "cpu_on_over_off": round(cpu, 3), "cpu_goal": GOAL_CPU, "cpu_met": cpu <= GOAL_CPU,
        "bytes_on_over_off": round(wire, 3), "bytes_goal": GOAL_BYTES, "bytes_met": wire <= GOAL_BYTES,
    }
    conditions = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "cpus": os.cpu_count(),
        "conns": args.conns, "room_size": args.room_size, "rate_per_conn": args.rate_per_conn,
        "duration_secs": args.duration, "payload_bytes": args.payload_bytes, "shards": 1,
        "pinning": "gateway (all threads) CPU 0, loadgen CPU 1", "publish": "http",
    }
    cols = list(rows[0].keys())
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    lines += ["",
              f"server CPU per delivery, on / off: **{cpu:.2f}x** (goal at most {GOAL_CPU}x: "
              f"{'met' if ratios['cpu_met'] else 'NOT met'})",
              f"bytes on the wire per delivery, on / off: **{wire:.2f}x** (goal at most {GOAL_BYTES}x: "
              f"{'met' if ratios['bytes_met'] else 'NOT met'})"]
    doc = {"conditions": conditions, "rows": rows, "ratios": ratios, "runs": runs}
    gwtools.write_summary(args.out, "\n".join(lines), doc, args.json)


if __name__ == "__main__":
    main()
