#!/usr/bin/env python3
"""The benchmark: scale series, Nchan and the floor side by side, throughput ceiling. One command:

    python3 bench/run.py                       # everything, results in bench/results/
    python3 bench/run.py --series 1000,5000 --servers gateway --no-ceiling   # a quick look
    python3 bench/run.py --series 5000 --per-conn-rate 10 --write-delay-ms 0,20 --no-ceiling \
        --out bench/results/coalescing          # write coalescing against no delay, Nchan, floor

It builds the release binaries, installs Nchan from Debian if needed, and for each server and size
starts the server pinned to CPU 0 (the gateway with one shard, nginx with one worker) and `loadgen`
pinned to CPU 1. Rooms have a fixed size and every connection receives a fixed number of messages
per second, so the load grows with the connection count. Each run writes loadgen's summary.json,
.hgrm files and latency.svg under bench/results/<server>-<conns>/; the script writes
bench/results/summary.md (the table), summary.json and p99.svg (p99 against connection count).

Every size is also run by `floor` (bench/floor): the same number of loopback connections, the same
rooms and rate, the same frame size, one `send` per frame and nothing else, pinned the same way; its
CPU per frame is the floor, and the tables give each server's CPU per delivery as a ratio to it
(and the gateway's to Nchan's) from the same run. loadgen and the floor's reader spread their
connections over --source-ips loopback addresses.

The throughput ceiling raises the per-connection rate at a fixed connection count until delivery p99
goes over 50 ms (or messages are lost) and reports the highest rate that stayed under.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import gwtools  # noqa: E402

GATEWAY = os.path.join(gwtools.target_dir(), "release", "gateway")
LOADGEN = os.path.join(gwtools.target_dir(), "release", "loadgen")
FLOOR = os.path.join(gwtools.target_dir(), "release", "floor")
SECRET = "bench-secret"
API_KEY = "bench-key"
GW_PORT, ADMIN_PORT, NCHAN_PORT = 18080, 19090, 18181
P99_LIMIT_MS = 50.0
RAMP = 5000  # connections per second (--ramp)


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def wait_port(port, timeout=10):
    import socket
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


class Gateway:
    def __init__(self, write_delay_ms=0, ring_depth=None):
        self.write_delay_ms = write_delay_ms
        self.ring_depth = ring_depth
        self.name = "gateway" + (f"-delay{write_delay_ms}" if write_delay_ms else "") \
            + (f"-ring{ring_depth}" if ring_depth else "")

    def start(self, conns):
        self.proc = subprocess.Popen(
            ["taskset", "-c", "0", GATEWAY, "serve", "--listen", f"127.0.0.1:{GW_PORT}",
             "--admin-listen", f"127.0.0.1:{ADMIN_PORT}", "--shards", "1", "--jwt-secret", SECRET,
             "--api-key", API_KEY, "--max-connections-per-user", "100000",
             "--write-delay-ms", str(self.write_delay_ms),
             *(["--ring-depth", str(self.ring_depth)] if self.ring_depth else [])],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "GATEWAY_LOG": "warn"})
        line = self.proc.stdout.readline()
        if not line.startswith("gateway ready"):
            raise RuntimeError(f"gateway did not start: {line!r}")
        self.pid = self.proc.pid
        return self.pid

    def counters(self):
        """Messages delivered and socket writes so far (frames per write = their ratio)."""
        _, text = gwtools.http(f"127.0.0.1:{ADMIN_PORT}", "/metrics")
        return {"delivered": gwtools.counter_sum(text, "gateway_messages_delivered_total"),
                "writes": gwtools.counter_sum(text, "gateway_socket_writes_total")}

    def loadgen_args(self):
        return ["--server", "gateway", "--url", f"ws://127.0.0.1:{GW_PORT}/ws", "--secret", SECRET,
                "--publish", "http", "--publish-addr", f"127.0.0.1:{ADMIN_PORT}", "--api-key", API_KEY]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Nchan:
    name = "nchan"

    def __init__(self, out):
        self.dir = os.path.join(out, "nchan-run")

    @staticmethod
    def ensure_installed():
        if shutil.which("nginx") and os.path.exists("/usr/lib/nginx/modules/ngx_nchan_module.so"):
            return
        print("installing Nchan from Debian (nginx-light libnginx-mod-nchan)...", file=sys.stderr)
        sh(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL)
        sh(["apt-get", "install", "-y", "-q", "nginx-light", "libnginx-mod-nchan"], stdout=subprocess.DEVNULL)
        # Debian starts a system nginx on port 80; it is not ours.
        subprocess.run(["nginx", "-s", "stop"], stderr=subprocess.DEVNULL)

    def start(self, conns):
        os.makedirs(os.path.join(self.dir, "body"), exist_ok=True)
        with open(os.path.join(ROOT, "bench", "nchan.conf.in")) as f:
            conf = f.read().replace("@DIR@", self.dir).replace("@PORT@", str(NCHAN_PORT))
        self.conf = os.path.join(self.dir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        sh(["taskset", "-c", "0", "nginx", "-c", self.conf, "-p", self.dir])
        wait_port(NCHAN_PORT)
        with open(os.path.join(self.dir, "nginx.pid")) as f:
            master = int(f.read())
        children = subprocess.check_output(["pgrep", "-P", str(master)], text=True).split()
        self.pid = int(children[0])
        return self.pid

    def loadgen_args(self):
        return ["--server", "nchan", "--url", f"ws://127.0.0.1:{NCHAN_PORT}/sub",
                "--publish", "nchan", "--publish-addr", f"127.0.0.1:{NCHAN_PORT}"]

    def stop(self):
        subprocess.run(["nginx", "-c", self.conf, "-p", self.dir, "-s", "stop"], stderr=subprocess.DEVNULL)
        time.sleep(0.5)


def run_floor(conns, room_size, per_conn_rate, duration, frame_bytes, frames_per_send, sources, out):
    """The floor program with the same connections, rooms, rate and frame size, pinned like a
    server (CPU 0, its reader on CPU 1); returns its JSON report."""
    cmd = ["taskset", "-c", "0", FLOOR, "--conns", str(conns), "--room-size", str(room_size),
           "--per-conn-rate", f"{per_conn_rate:g}", "--duration", f"{duration:g}",
           "--frame-bytes", str(frame_bytes), "--frames-per-send", str(frames_per_send),
           "--recv-cpu", "1", "--source-ips", ",".join(sources)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 300)
    if res.returncode != 0:
        raise RuntimeError(f"floor failed: {res.stderr.strip()[-500:]}")
    rep = json.loads(res.stdout)
    run_dir = os.path.join(out, f"floor{'' if frames_per_send == 1 else f'-x{frames_per_send}'}"
                                f"-{conns}-{per_conn_rate:g}")
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(rep, f, indent=2)
    return rep


def floor_row(rep):
    return {
        "server": "floor" if rep["frames_per_send"] == 1 else f"floor-x{rep['frames_per_send']}",
        "connections": rep["conns"],
        "deliveries_per_sec": round(rep["frames_per_sec"]),
        "p50_ms": None, "p99_ms": None, "p999_ms": None, "last_member_p99_ms": None,
        "lost": (rep["bytes_expected"] - rep["receiver"]["bytes"]) if rep.get("receiver") else None,
        "duplicates": 0,
        "rss_kib_per_conn": None,
        "server_cpu_us_per_delivery": round(rep["cpu_us_per_frame"], 2),
        "client_cpu_us_per_delivery": round(rep["receiver"]["cpu_secs"] * 1e6 / max(rep["frames"], 1), 2)
        if rep.get("receiver") else None,
        "frames_per_write": rep["frames_per_send"],
    }


def run_one(server, conns, room_size, per_conn_rate, duration, out, sources, extra=()):
    """One loadgen run against a fresh server; returns loadgen's summary plus RSS figures."""
    rooms = max(1, conns // room_size)
    rate = rooms * per_conn_rate
    pid = server.start(conns)
    try:
        time.sleep(0.5)
        rss0 = gwtools.rss_kib(pid)
        peak = [rss0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], gwtools.rss_kib(pid))
                time.sleep(0.2)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        run_dir = os.path.join(out, f"{server.name}-{conns}-{per_conn_rate:g}")
        cmd = ["taskset", "-c", "1", LOADGEN, *server.loadgen_args(), "--conns", str(conns),
               "--rooms", str(rooms), "--rate", f"{rate:g}", "--duration", f"{duration:g}",
               "--ramp", str(RAMP), "--warmup", "2", "--drain", "2", "--server-pid", str(pid),
               # Each publisher connection idles publishers / rate seconds between requests; the
               # gateway's admin listener closes keep-alive connections idle for 5 s.
               "--publishers", str(max(1, min(8, int(2 * rate)))), "--source-ips", ",".join(sources), *extra, "--json", "--out", run_dir]
        before = {}
        if hasattr(server, "counters"):
            # Counted from when every client is connected and subscribed (welcomes and replies are
            # writes too), to the end.
            def mark():
                end = time.time() + conns / 5000 + 60
                while time.time() < end and not stop.is_set():
                    _, text = gwtools.http(f"127.0.0.1:{ADMIN_PORT}", "/metrics")
                    if (gwtools.counter_sum(text, "gateway_connections") or 0) >= conns:
                        time.sleep(1.0)  # within loadgen's 2 s warm-up: subscriptions done, no publish yet
                        before.update(server.counters())
                        return
                    time.sleep(0.1)
            threading.Thread(target=mark, daemon=True).start()
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 300)
        after = server.counters() if before else None
        stop.set()
        t.join()
        if res.returncode != 0:
            raise RuntimeError(f"loadgen failed: {res.stderr.strip()[-500:]}")
        summary = json.loads(res.stdout)
        summary["server_rss_kib_idle"] = rss0
        summary["server_rss_kib_peak"] = peak[0]
        summary["server_rss_kib_per_conn"] = (peak[0] - rss0) / max(conns, 1)
        summary["server"] = server.name
        if before and after and None not in before.values() and None not in after.values():
            writes = after["writes"] - before["writes"]
            summary["frames_per_write"] = (after["delivered"] - before["delivered"]) / writes if writes else None
        with open(os.path.join(run_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        return summary
    finally:
        server.stop()


def row(s):
    lat = s["latency"]["delivery"]
    last = s["latency"]["last_member"]
    return {
        "server": s["server"],
        "connections": s["connections"]["connected"],
        "deliveries_per_sec": round(s["deliveries_per_sec"]),
        "p50_ms": lat.get("p50_ms"),
        "p99_ms": lat.get("p99_ms"),
        "p999_ms": lat.get("p99.9_ms"),
        "last_member_p99_ms": last.get("p99_ms"),
        "lost": s["lost"],
        "duplicates": s["duplicates"],
        "rss_kib_per_conn": round(s["server_rss_kib_per_conn"], 2),
        "server_cpu_us_per_delivery": round(s["server_cpu_us_per_delivery"] or 0, 2),
        "client_cpu_us_per_delivery": round(s["client_cpu_us_per_delivery"], 2),
        "frames_per_write": round(s["frames_per_write"], 2) if s.get("frames_per_write") else None,
    }


def p99_svg(rows, path):
    """p99 delivery latency against connections, one line per server (plain SVG, no dependencies)."""
    rows = [r for r in rows if r["p99_ms"] is not None]  # the floor has no latency
    w, h, m = 720, 420, 60
    servers = sorted({r["server"] for r in rows})
    xs = [r["connections"] for r in rows] or [1]
    ys = [r["p99_ms"] or 0 for r in rows] or [1]
    xmax, ymax = max(xs) * 1.05, max(max(ys) * 1.2, 1.0)
    sx = lambda x: m + (w - 2 * m) * x / xmax  # noqa: E731
    sy = lambda y: h - m - (h - 2 * m) * y / ymax  # noqa: E731
    colors = {"gateway": "#1f77b4", "nchan": "#d62728"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{w / 2}" y="24" text-anchor="middle" font-size="16">p99 delivery latency vs connections</text>',
             f'<line x1="{m}" y1="{h - m}" x2="{w - m}" y2="{h - m}" stroke="black"/>',
             f'<line x1="{m}" y1="{m}" x2="{m}" y2="{h - m}" stroke="black"/>',
             f'<text x="{w / 2}" y="{h - 15}" text-anchor="middle">connections</text>',
             f'<text x="15" y="{h / 2}" transform="rotate(-90 15 {h / 2})" text-anchor="middle">p99 (ms)</text>']
    for i in range(6):
        yv = ymax * i / 5
        parts.append(f'<text x="{m - 6}" y="{sy(yv) + 4}" text-anchor="end">{yv:.1f}</text>')
        parts.append(f'<line x1="{m}" y1="{sy(yv)}" x2="{w - m}" y2="{sy(yv)}" stroke="#ddd"/>')
    for x in sorted(set(xs)):
        parts.append(f'<text x="{sx(x)}" y="{h - m + 16}" text-anchor="middle">{x}</text>')
    for k, srv in enumerate(servers):
        pts = sorted((r["connections"], r["p99_ms"] or 0) for r in rows if r["server"] == srv)
        c = colors.get(srv, "black")
        parts.append('<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>'.format(
            c, " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)))
        for x, y in pts:
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{c}"/>')
        parts.append(f'<text x="{w - m - 80}" y="{m + 18 * k}" fill="{c}">{srv}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts))


def markdown(rows, title):
    cols = ["server", "connections", "deliveries_per_sec", "p50_ms", "p99_ms", "p999_ms", "last_member_p99_ms",
            "lost", "duplicates", "rss_kib_per_conn", "server_cpu_us_per_delivery", "client_cpu_us_per_delivery",
            "frames_per_write"]
    if rows and "per_conn_rate" in rows[0]:
        cols = ["per_conn_rate", "passes"] + cols
        rows = [{**r, "server": r["server"] + (" **ceiling**" if r.get("ceiling") else "")} for r in rows]
    out = [f"### {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(str(r.get(c)) for c in cols) + " |")
    return "\n".join(out) + "\n"


def side_by_side(rows):
    """Every server next to the floor and Nchan at each size, from the same run: CPU per delivery as
    a ratio to the floor's CPU per frame and to Nchan's CPU per delivery, p99 against Nchan's, and
    the last member's p99 against the time the floor needs to write a whole room."""
    sizes = sorted({r["connections"] for r in rows if r["server"] == "floor"} or {r["connections"] for r in rows})
    out = ["### Side by side, same run (CPU ratios: below 1 is cheaper than the floor / than Nchan)", "",
           "| connections | server | deliveries/s | frames/write | p99 ms | last member p99 ms | server CPU us/delivery "
           "| x floor | x Nchan | p99 x Nchan | last member p99 / (room x floor) |", "|" + "---|" * 11]

    def near(server, n):
        return next((r for r in rows if r["server"] == server and abs(r["connections"] - n) <= n * 0.05), None)

    def ratio(a, b):
        return f"{a / b:.2f}" if a is not None and b else "-"

    for n in sizes:
        fl, nc = near("floor", n), near("nchan", n)
        for r in [r for r in rows if abs(r["connections"] - n) <= n * 0.05]:
            cpu = r["server_cpu_us_per_delivery"]
            room_ms = (r.get("room_size") or 0) * fl["server_cpu_us_per_delivery"] / 1000 if fl else None
            out.append(f"| {r['connections']} | {r['server']} | {r['deliveries_per_sec']} | {r.get('frames_per_write') or '-'} "
                       f"| {r['p99_ms'] if r['p99_ms'] is not None else '-'} "
                       f"| {r['last_member_p99_ms'] if r['last_member_p99_ms'] is not None else '-'} | {cpu} "
                       f"| {ratio(cpu, fl and fl['server_cpu_us_per_delivery'])} "
                       f"| {ratio(cpu, nc and nc['server_cpu_us_per_delivery'])} "
                       f"| {ratio(r['p99_ms'], nc and nc['p99_ms'])} "
                       f"| {ratio(r['last_member_p99_ms'], room_ms)} |")
    return "\n".join(out) + "\n"


def conditions(args):
    """What the run was and what else the machine was doing (load average), for the record."""
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {"argv": sys.argv[1:], "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "loadavg_at_end": load, "cpus": os.cpu_count(), "kernel": os.uname().release,
            "server_cpu": 0, "client_cpu": 1}


def passes(r, s):
    return (r["p99_ms"] or 1e9) <= P99_LIMIT_MS and r["lost"] == 0 and s["publish_errors"] == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", default="1000,2000,5000,10000,max")
    ap.add_argument("--servers", default="floor,gateway,nchan")
    ap.add_argument("--room-size", default="100", help="members per room, or 'all' for one room of every connection")
    ap.add_argument("--per-conn-rate", type=float, default=1.0, help="messages per second each connection receives")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--write-delay-ms", default="0",
                    help="gateway session.write_delay_ms values, each run as its own server (e.g. 0,20)")
    ap.add_argument("--ring-depths", default="",
                    help="extra gateway runs with these ring_depth values (e.g. 128, glommio's default)")
    ap.add_argument("--floor-frame-bytes", type=int, default=240,
                    help="the floor's frame size (the gateway's frame for loadgen's default payload)")
    ap.add_argument("--floor-frames-per-send", default="1",
                    help="floor variants: frames per send (1 = one send per frame; K = perfect coalescing)")
    ap.add_argument("--source-ips", type=int, default=8, help="loopback source addresses for the clients")
    ap.add_argument("--random-rooms", action="store_true",
                    help="loadgen publishes to rooms at random (Poisson-like arrivals per connection), not in turn")
    ap.add_argument("--ceiling-conns", type=int, default=5000)
    ap.add_argument("--no-ceiling", action="store_true")
    ap.add_argument("--ramp", type=int, default=5000, help="loadgen's connect rate (lower it on a busy machine)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = ap.parse_args()
    args.out = os.path.abspath(args.out)  # nginx -p needs an absolute path
    global RAMP
    RAMP = args.ramp
    if os.cpu_count() < 2:
        sys.exit("needs 2 CPUs: the server on one, loadgen on the other")
    if not args.no_build:
        sh(["cargo", "build", "--release"], cwd=ROOT)  # gateway, loadgen and floor (default-members)
    os.makedirs(args.out, exist_ok=True)
    sources = gwtools.source_ips(args.source_ips)
    servers, floors = [], []
    for name in args.servers.split(","):
        if name == "gateway":
            servers += [Gateway(int(d)) for d in args.write_delay_ms.split(",")]
            servers += [Gateway(0, int(r)) for r in args.ring_depths.split(",") if r]
        elif name == "nchan":
            Nchan.ensure_installed()
            servers.append(Nchan(args.out))
        elif name == "floor":
            floors = [int(k) for k in args.floor_frames_per_send.split(",")]
        else:
            sys.exit(f"unknown server {name}")
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    biggest = (min(hard, 20000) - 500) // 100 * 100  # what one server process can hold here
    sizes = [biggest if s == "max" else int(s) for s in args.series.split(",")]

    def room_size(n):
        return n if args.room_size == "all" else int(args.room_size)

    extra = ["--random-rooms"] if args.random_rooms else []
    rows, raw = [], []
    # Size by size, every server in turn, so the ratios compare runs minutes apart at most.
    for n in sizes:
        for k in floors:
            print(f"floor x{k}: {n} connections...", file=sys.stderr)
            rep = run_floor(n, room_size(n), args.per_conn_rate, args.duration, args.floor_frame_bytes, k,
                            sources, args.out)
            raw.append(rep)
            rows.append({**floor_row(rep), "room_size": room_size(n)})
            print(json.dumps(rows[-1]), file=sys.stderr)
        for server in servers:
            print(f"{server.name}: {n} connections...", file=sys.stderr)
            s = run_one(server, n, room_size(n), args.per_conn_rate, args.duration, args.out, sources, extra)
            raw.append(s)
            rows.append({**row(s), "room_size": room_size(n)})
            print(json.dumps(rows[-1]), file=sys.stderr)

    ceiling = []
    if not args.no_ceiling:
        for server in servers:
            def attempt(rate):
                print(f"{server.name}: ceiling at {args.ceiling_conns} conns x {rate:g} msg/s...", file=sys.stderr)
                s = run_one(server, args.ceiling_conns, room_size(args.ceiling_conns), rate,
                            min(args.duration, 10), args.out, sources, extra)
                r = row(s)
                r["per_conn_rate"] = rate
                r["passes"] = passes(r, s)
                ceiling.append(r)
                print(json.dumps(r), file=sys.stderr)
                return r

            # Double until p99 goes over the limit, then bisect twice between the last two rates.
            best, failed, rate = None, None, 2.0
            while rate <= 512:
                r = attempt(rate)
                if not r["passes"]:
                    failed = rate
                    break
                best, rate = r, rate * 2
            lo = best["per_conn_rate"] if best else 1.0
            for _ in range(2 if failed else 0):
                mid = (lo + failed) / 2
                r = attempt(mid)
                if r["passes"]:
                    best, lo = r, mid
                else:
                    failed = mid
            if best:
                best["ceiling"] = True

    p99_svg(rows, os.path.join(args.out, "p99.svg"))
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"conditions": conditions(args), "series": rows, "ceiling": ceiling, "runs": raw}, f, indent=2)
    md = markdown(rows, f"Scale series: rooms of {args.room_size}, {args.per_conn_rate:g} msg/s per connection, "
                        f"{args.duration:g} s")
    md += "\n" + side_by_side(rows)
    if ceiling:
        md += "\n" + markdown(ceiling, f"Throughput ceiling: {args.ceiling_conns} connections, rate doubled until "
                                        f"p99 > {P99_LIMIT_MS:g} ms")
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
