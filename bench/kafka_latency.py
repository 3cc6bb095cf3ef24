#!/usr/bin/env python3
"""End-to-end latency through Kafka: record produced -> client received, at a fixed publish rate.

Starts a Tansu broker (memory storage) and the release gateway with Kafka, opens N WebSocket
clients (PyPI `websockets`, in worker processes) spread over R rooms, then publishes open-loop at a
fixed rate with `POST /api/publish`, which the gateway produces to the upstream topic and answers
after the broker's acknowledgement; every node then consumes the record back and pushes it. Each
payload carries its *scheduled* send time, and latency is measured from that time (so a stalled
publisher cannot hide latency: no coordinated omission) to the client's receive.

Reports latency percentiles over all deliveries, the gateway's own view (Kafka record timestamp to
socket write, from /metrics), and the CPU time of the gateway, the broker and the clients.

Usage: python3 bench/kafka_latency.py [--conns 1000] [--rooms 10] [--rate 100] [--secs 20]
"""
import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from fanout_probe import GATEWAY, proc_stat

SECRET = "probe-secret"
API_KEY = "probe-key"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(url, rooms, count, first, ready, results, stop_at):
    import asyncio
    import websockets

    async def main():
        lat = []
        socks = []
        for i in range(count):
            ws = await websockets.connect(url, max_queue=None, ping_interval=None, compression=None)
            await ws.recv()
            room = f"room_{(first + i) % rooms}"
            await ws.send(json.dumps({"type": "subscribe", "id": "s", "channel": room}))
            reply = json.loads(await ws.recv())
            assert reply.get("ok"), reply
            socks.append(ws)
        ready.put(1)

        async def listen(ws):
            while True:
                try:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), timeout=max(0.1, stop_at.value - time.time())))
                except (asyncio.TimeoutError, websockets.ConnectionClosed):
                    return
                if msg.get("type") == "message":
                    lat.append(time.time() - msg["data"]["t"])

        while stop_at.value == 0:
            await asyncio.sleep(0.05)
        await asyncio.gather(*(listen(ws) for ws in socks))
        cpu = os.times()
        results.put((lat, cpu.user + cpu.system))

    asyncio.run(main())


def pct(sorted_vals, q):
    if not sorted_vals:
        return float("nan")
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rooms", type=int, default=10)
    ap.add_argument("--rate", type=float, default=100.0, help="publishes per second")
    ap.add_argument("--secs", type=float, default=20.0)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--fetch-wait-ms", type=int, default=10)
    args = ap.parse_args()
    tansu = shutil.which("tansu") or os.path.expanduser("~/.cargo/bin/tansu")
    if not os.path.exists(GATEWAY) or not os.path.exists(tansu):
        sys.exit("needs target/release/gateway (cargo build --release) and tansu (scripts/install-tansu.sh)")

    kport = free_port()
    broker = subprocess.Popen(
        [tansu, "broker", "--listener-url", f"tcp://127.0.0.1:{kport}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{kport}", "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gw = None
    try:
        time.sleep(0.5)
        gw = subprocess.Popen(
            [GATEWAY, "serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
             "--shards", str(args.shards), "--jwt-secret", SECRET, "--api-key", API_KEY,
             "--max-connections-per-user", str(args.conns + 10),
             "--kafka-brokers", f"127.0.0.1:{kport}", "--kafka-create-topics-partitions", str(args.partitions),
             "--kafka-fetch-max-wait-ms", str(args.fetch_wait_ms), "--kafka-metadata-refresh-ms", "500"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "GATEWAY_LOG": "warn"})
        line = gw.stdout.readline()
        if not line.startswith("gateway ready"):
            sys.exit(f"gateway did not start: {line!r}")
        parts = dict(kv.split("=") for kv in line.split()[2:])
        ws_addr, admin = parts["ws"], parts["admin"]
        expected = 2 * args.partitions  # push topic and upstream topic
        for _ in range(100):
            st = json.loads(urllib.request.urlopen(f"http://{admin}/stats").read())
            if st["kafka"]["status"] == "ok" and len(st["kafka"]["partitions"]) >= expected:
                break
            time.sleep(0.2)
        else:
            sys.exit(f"gateway did not reach Kafka: {st['kafka']}")
        token = subprocess.check_output(
            [GATEWAY, "token", "--sub", "probe", "--channels", "room_*", "--secret", SECRET], text=True).strip()
        url = f"ws://{ws_addr}/ws?token={token}"

        ready, results = mp.Queue(), mp.Queue()
        stop_at = mp.Value("d", 0.0)
        per = args.conns // args.workers
        procs = [mp.Process(target=worker, args=(url, args.rooms, per, i * per, ready, results, stop_at))
                 for i in range(args.workers)]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=300)

        n_total = int(args.rate * args.secs)
        interval = 1.0 / args.rate
        start = time.time() + 0.5
        stop_at.value = start + args.secs + 5
        errors = []
        cpu0 = proc_stat(gw.pid), proc_stat(broker.pid)

        def publisher(k, n_threads):
            # Open loop: message i is due at start + i * interval, whatever happened before.
            for i in range(k, n_total, n_threads):
                due = start + i * interval
                delay = due - time.time()
                if delay > 0:
                    time.sleep(delay)
                body = json.dumps({"channel": f"room_{i % args.rooms}", "data": {"t": due, "n": i}}).encode()
                req = urllib.request.Request(f"http://{admin}/api/publish", data=body,
                                             headers={"Authorization": f"Bearer {API_KEY}"})
                try:
                    urllib.request.urlopen(req, timeout=10).read()
                except Exception as e:  # noqa: BLE001 - counted and reported
                    errors.append(str(e))

        threads = [threading.Thread(target=publisher, args=(k, 8)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        cpu1 = proc_stat(gw.pid), proc_stat(broker.pid)
        metrics = urllib.request.urlopen(f"http://{admin}/metrics").read().decode()

        lat = sorted(x for r in got for x in r[0])
        expected_deliveries = n_total * per * args.workers // args.rooms
        ms = lambda v: f"{v * 1e3:.1f}"  # noqa: E731
        print(f"{args.conns} clients in {args.rooms} rooms, {args.shards} shards, {args.partitions} partitions, "
              f"publish rate {args.rate:g}/s for {args.secs:g} s ({n_total} publishes, {len(errors)} failed), "
              f"fetch wait {args.fetch_wait_ms} ms")
        print(f"deliveries: {len(lat)} of {expected_deliveries} expected")
        print(f"produced -> received (client view, from scheduled send): p50 {ms(pct(lat, .5))} ms, "
              f"p90 {ms(pct(lat, .9))} ms, p99 {ms(pct(lat, .99))} ms, p99.9 {ms(pct(lat, .999))} ms, "
              f"max {ms(lat[-1] if lat else float('nan'))} ms")
        buckets = {}
        for row in metrics.splitlines():
            if row.startswith("gateway_kafka_record_to_socket_seconds_bucket"):
                le = row.split('le="')[1].split('"')[0]
                buckets[le] = buckets.get(le, 0) + int(float(row.rsplit(" ", 1)[1]))
        total = buckets.get("+Inf", 0)
        if total:
            under = {le: c / total for le, c in buckets.items()}
            print("gateway view, record timestamp -> socket write: " + ", ".join(
                f"<= {float(le) * 1e3:g} ms: {frac:.1%}" for le, frac in under.items()
                if le != "+Inf" and 0.001 <= float(le) <= 0.1))
        gw_cpu = sum(cpu1[0]) - sum(cpu0[0])
        br_cpu = sum(cpu1[1]) - sum(cpu0[1])
        print(f"CPU during the run: gateway {gw_cpu:.2f} s ({gw_cpu / max(len(lat), 1) * 1e6:.1f} us per delivery, "
              f"incl. HTTP publish and Kafka I/O), broker {br_cpu:.2f} s, clients {sum(r[1] for r in got):.2f} s")
    finally:
        for p in (gw, broker):
            if p:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()
