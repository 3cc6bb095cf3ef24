#!/usr/bin/env python3
"""Idle-connection memory and one-publish fan-out time, measured with real WebSocket clients.

Starts the release gateway, opens N connections (PyPI `websockets`, spread over worker
processes), subscribes them all to one channel, then reports:
  * gateway RSS per connection (VmRSS after connecting minus before, divided by N);
  * for each of P publishes (HTTP POST /api/publish, one second apart): the time from just
    before the POST until the last of the N clients received the message (client view, which
    includes the Python clients' own receive cost), and the gateway's own view: its delivery
    latency p50/max from /stats (message accepted -> frame written to the socket);
  * gateway CPU time (utime+stime) per delivered message during the publishes, next to the
    clients' CPU time, so the reader can see who was the limit.

Usage: python3 bench/fanout_probe.py [--conns 5000] [--workers 4] [--publishes 5] [--shards 2]
"""
import argparse
import asyncio
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GATEWAY = os.path.join(ROOT, "target", "release", "gateway")
SECRET = "probe-secret"
API_KEY = "probe-key"


def proc_stat(pid):
    """(utime, stime) of a process in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def worker(idx, url, count, publishes, ready, results):
    import websockets  # imported in the child so the parent need not have it loaded

    async def one(i, arrivals, opened):
        ws = await websockets.connect(url, max_queue=None, ping_interval=None, compression=None)
        await ws.recv()  # welcome
        await ws.send(json.dumps({"type": "subscribe", "id": "s", "channel": "probe"}))
        reply = json.loads(await ws.recv())
        assert reply.get("ok"), reply
        opened.append(ws)
        return ws

    async def main():
        opened = []
        arrivals = [[] for _ in range(publishes)]
        batch = 100
        for start in range(0, count, batch):
            await asyncio.gather(*(one(i, arrivals, opened) for i in range(start, min(count, start + batch))))
        ready.put(idx)

        async def listen(ws):
            got = 0
            while got < publishes:
                msg = json.loads(await ws.recv())
                if msg.get("type") == "message":
                    arrivals[msg["data"]["n"]].append(time.time())
                    got += 1

        await asyncio.gather(*(listen(ws) for ws in opened))
        cpu = os.times()
        results.put((idx, [(len(a), min(a), max(a)) for a in arrivals], cpu.user + cpu.system))
        for ws in opened:
            await ws.close()

    asyncio.run(main())


def http(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--publishes", type=int, default=5)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--pin", action="store_true",
                    help="run the gateway with 1 shard on CPU 0 and the clients on CPU 1 (taskset)")
    args = ap.parse_args()
    if not os.path.exists(GATEWAY):
        sys.exit("build first: cargo build --release")

    if args.pin:
        args.shards = 1
    pin_gw = ["taskset", "-c", "0"] if args.pin else []
    gw = subprocess.Popen(
        pin_gw + [GATEWAY, "serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
         "--shards", str(args.shards), "--jwt-secret", SECRET, "--api-key", API_KEY,
         "--max-connections-per-user", str(args.conns + 10)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "GATEWAY_LOG": "warn"})
    try:
        line = gw.stdout.readline()
        if not line.startswith("gateway ready"):
            sys.exit(f"gateway did not start: {line!r}")
        parts = dict(kv.split("=") for kv in line.split()[2:])
        ws_addr, admin = parts["ws"], parts["admin"]
        token = subprocess.check_output(
            [GATEWAY, "token", "--sub", "probe", "--channels", "probe", "--secret", SECRET], text=True).strip()
        url = f"ws://{ws_addr}/ws?token={token}"
        time.sleep(0.5)
        rss0 = rss_kib(gw.pid)

        ready, results = mp.Queue(), mp.Queue()
        per = args.conns // args.workers
        procs = [mp.Process(target=worker, args=(i, url, per, args.publishes, ready, results))
                 for i in range(args.workers)]
        t0 = time.time()
        for p in procs:
            p.start()
            if args.pin:
                subprocess.run(["taskset", "-p", "-c", "1", str(p.pid)], stdout=subprocess.DEVNULL, check=True)
        for _ in procs:
            ready.get(timeout=300)
        connect_s = time.time() - t0
        total = per * args.workers
        time.sleep(2)
        rss1 = rss_kib(gw.pid)
        stats = http("GET", f"http://{admin}/stats")

        idle0 = proc_stat(gw.pid)
        time.sleep(3)
        idle1 = proc_stat(gw.pid)
        idle_cpu = sum(idle1) - sum(idle0)
        cpu0 = proc_stat(gw.pid)
        sent = []
        for n in range(args.publishes):
            body = json.dumps({"channel": "probe", "event": "probe", "data": {"n": n}}).encode()
            sent.append(time.time())
            http("POST", f"http://{admin}/api/publish", body, {"Authorization": f"Bearer {API_KEY}"})
            time.sleep(1.0)
        cpu1 = proc_stat(gw.pid)
        user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        got = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        after = http("GET", f"http://{admin}/stats")

        print(f"connections: {total} ({args.workers} client processes), gateway shards: {stats['connections']} open, "
              f"{[s['connections'] for s in stats['shards']]} per shard; connect+subscribe took {connect_s:.1f} s")
        print(f"gateway RSS: {rss0} KiB idle -> {rss1} KiB with {total} subscribed connections: "
              f"{(rss1 - rss0) / total:.2f} KiB per connection")
        for n in range(args.publishes):
            cnt = sum(r[1][n][0] for r in got)
            first = min(r[1][n][1] for r in got)
            last = max(r[1][n][2] for r in got)
            print(f"publish {n}: {cnt}/{total} received; first after {(first - sent[n]) * 1e3:.1f} ms, "
                  f"last after {(last - sent[n]) * 1e3:.1f} ms (client view)")
        lat = [s["delivery_latency_us"] for s in after["shards"]]
        delivered = sum(s["delivered"] for s in after["shards"])
        print("gateway view, accepted -> written to socket, per shard: " + "; ".join(
            f"p50 {l['p50']} us, p99 {l['p99']} us, max {l['max']} us over {l['count']}" for l in lat))
        client_cpu = sum(r[2] for r in got)
        print(f"gateway CPU while idle with {total} connections: {idle_cpu * 1e3:.0f} ms over 3 s")
        cpu = user + system
        print(f"gateway CPU during publishes: {cpu * 1e3:.0f} ms (user {user * 1e3:.0f}, system {system * 1e3:.0f}) "
              f"for {delivered} deliveries ({cpu / max(delivered, 1) * 1e6:.2f} us per delivered message, "
              f"includes HTTP and idle timers); "
              f"client processes' CPU over their whole run: {client_cpu:.1f} s")
    finally:
        gw.terminate()
        gw.wait(timeout=15)


if __name__ == "__main__":
    main()
