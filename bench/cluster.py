#!/usr/bin/env python3
"""A gateway cluster on separate hosts made of Linux network namespaces, and the failure scenarios
of issue 13 run against it (docs/scaling.md has the design and the figures).

Hosts: one namespace per role, each with its own address on a bridge (the bridge lives in a
namespace of its own, so nothing is added to the machine's own network):

    10.77.0.2   kafka   Tansu (Kafka protocol), topics cluster.push (6 partitions) and cluster.upstream
    10.77.0.3   lb      HAProxy, TCP mode, leastconn, health checks on each node's admin /health
    10.77.0.4   client  loadgen --resume: clients through the load balancer, publisher to Kafka
    10.77.0.11… gw1…    gateway nodes (one shard each), listen :8080, admin :9090

Scenarios (loadgen publishes to the push topic, keyed by room; every client resumes with `since`):
    steady   all nodes up for the whole run
    kill     one node SIGKILLed a third of the way in: its clients reconnect through HAProxy
    rolling  every node in turn SIGTERMed (drain, close 1001), restarted, back in the pool
    broker   the broker unreachable from every node for 10 s (a blackhole route to it in each
             node's namespace: existing connections hang, as in a network partition)
    short    the CI version: two nodes, one SIGKILLed, a few hundred clients (tests/cluster.rs)

Needs root, `ip` (iproute2), haproxy, tansu and the gateway and loadgen binaries. Every namespace is
named gwcl<pid>-<role>; they and every process in them are removed on every exit path, and those of
an earlier run whose process is gone are removed at start. Exit status 77 (with a message) when
network namespaces are not available here. Python 3 standard library only.

    python3 bench/cluster.py --scenario all --out bench/results/cluster
    python3 bench/cluster.py --scenario kill --conns 1500 --json
"""
import argparse
import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "gwcl"
NET = "10.77.0."
SECRET = "cluster-secret-not-for-production"
API_KEY = "cluster-api-key"
PUSH_TOPIC = "cluster.push"
UPSTREAM_TOPIC = "cluster.upstream"
PARTITIONS = 6
SKIP = 77


def run(*cmd, check=True):
    """Runs a command, returns its stdout; raises with its stderr when it fails and `check`."""
    p = subprocess.run(cmd, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip() or p.returncode}")
    return p.stdout


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def netns_list():
    out = run("ip", "netns", "list", check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def delete_netns(name):
    """Kills every process in namespace `name`, then deletes it."""
    for pid in run("ip", "netns", "pids", name, check=False).split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    for _ in range(50):
        if not run("ip", "netns", "pids", name, check=False).split():
            break
        time.sleep(0.05)
    run("ip", "netns", "del", name, check=False)


def clean_stale():
    """Removes the namespaces of earlier runs whose harness process is gone (a crash, a kill -9)."""
    for name in netns_list():
        m = re.fullmatch(PREFIX + r"(\d+)-[a-z0-9]+", name)
        if m and not alive(int(m.group(1))):
            delete_netns(name)


def netns_unavailable():
    """Why network namespaces cannot be used here, or None."""
    if not shutil.which("ip"):
        return "no `ip` command (iproute2)"
    if os.geteuid() != 0:
        return "not root (creating network namespaces needs CAP_SYS_ADMIN)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    p = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if p.returncode != 0:
        return f"`ip netns add` failed: {p.stderr.strip()}"
    run("ip", "netns", "del", probe, check=False)
    return None


def find_tool(name, env):
    path = os.environ.get(env) or shutil.which(name) or os.path.expanduser(f"~/.cargo/bin/{name}")
    if not os.path.exists(path):
        sys.exit(f"cluster: {name} not found (set {env}, or run scripts/install-{name}.sh)")
    return path


class Cluster:
    """The namespaces, links and processes of one run; `close` undoes all of it."""

    def __init__(self, nodes, out, gateway, loadgen):
        self.tag = f"{PREFIX}{os.getpid()}"
        self.nodes = nodes
        self.out = out
        self.gateway = gateway
        self.loadgen = loadgen
        self.procs = {}
        self.created = []
        self.addr = {"kafka": NET + "2", "lb": NET + "3", "client": NET + "4"}
        for i in range(1, nodes + 1):
            self.addr[f"gw{i}"] = NET + str(10 + i)
        atexit.register(self.close)

    def ns(self, role):
        return f"{self.tag}-{role}"

    def up(self):
        sw = self.ns("sw")
        run("ip", "netns", "add", sw)
        self.created.append(sw)
        run("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", sw, "link", "set", "br0", "up")
        for role, addr in self.addr.items():
            ns = self.ns(role)
            run("ip", "netns", "add", ns)
            self.created.append(ns)
            run("ip", "-n", sw, "link", "add", f"p-{role}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            run("ip", "-n", sw, "link", "set", f"p-{role}", "master", "br0", "up")
            run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")

    def spawn(self, role, name, argv, env=None):
        log = open(os.path.join(self.out, f"{name}.log"), "ab")
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(role), *argv], stdin=subprocess.DEVNULL,
                             stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs[name] = p
        return p

    def get(self, role, url, timeout=2):
        """(status, body) of a GET made from inside namespace `role`; (0, error) if it failed."""
        code = ("import sys,urllib.request,urllib.error\n"
                "try:\n r=urllib.request.urlopen(sys.argv[1],timeout=float(sys.argv[2]));print(r.status);print(r.read().decode())\n"
                "except urllib.error.HTTPError as e:\n print(e.code);print(e.read().decode())\n"
                "except Exception as e:\n print(0);print(e)\n")
        out = run("ip", "netns", "exec", self.ns(role), sys.executable, "-c", code, url, str(timeout), check=False)
        status, _, body = out.partition("\n")
        return int(status or 0), body

    def health(self, i):
        status, body = self.get("lb", f"http://{self.addr[f'gw{i}']}:9090/health")
        return status, body

    def stats(self, i):
        status, body = self.get("lb", f"http://{self.addr[f'gw{i}']}:9090/stats")
        return json.loads(body) if status == 200 else None

    def start_broker(self):
        a = self.addr["kafka"]
        env = {k: v for k, v in os.environ.items()
               if k not in ("LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "CLUSTER_ID")}
        self.spawn("kafka", "tansu", [find_tool("tansu", "TANSU"), "broker", "--listener-url", f"tcp://{a}:9092",
                                      "--advertised-listener-url", f"tcp://{a}:9092",
                                      "--storage-engine", "memory://tansu/"], env)

    def start_gateway(self, i, wait=True):
        a = self.addr[f"gw{i}"]
        env = dict(os.environ, GATEWAY_LOG=os.environ.get("GATEWAY_LOG", "warn"))
        self.spawn(f"gw{i}", f"gw{i}", [
            self.gateway, "serve", "--listen", f"{a}:8080", "--admin-listen", f"{a}:9090", "--shards", "1",
            "--jwt-secret", SECRET, "--api-key", API_KEY, "--drain-timeout-ms", "5000",
            "--kafka-brokers", f"{self.addr['kafka']}:9092", "--kafka-push-topics", PUSH_TOPIC,
            "--kafka-upstream-topic", UPSTREAM_TOPIC, "--kafka-create-topics-partitions", str(PARTITIONS),
            "--kafka-fetch-max-wait-ms", "10", "--max-connections-per-user", "8"], env)
        if wait:
            self.wait_healthy(i)

    def wait_healthy(self, i, limit=60):
        """Until node i says ok with Kafka ok (it consumes every partition)."""
        deadline = time.time() + limit
        while time.time() < deadline:
            p = self.procs[f"gw{i}"]
            if p.poll() is not None:
                raise RuntimeError(f"gw{i} exited at start ({p.returncode}); see gw{i}.log")
            status, body = self.health(i)
            if status == 200 and '"kafka":"ok"' in body.replace(" ", ""):
                return
            time.sleep(0.2)
        raise RuntimeError(f"gw{i} not healthy with Kafka within {limit} s")

    def start_lb(self):
        servers = "\n".join(
            f"    server gw{i} {self.addr[f'gw{i}']}:8080 check port 9090" for i in range(1, self.nodes + 1))
        cfg = f"""global
    maxconn 8000
    log stderr format short local0 notice
defaults
    mode tcp
    log global
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout check 1s
    retries 3
    option redispatch 1
frontend ws
    bind {self.addr['lb']}:8080
    default_backend gateways
backend gateways
    balance leastconn
    option httpchk GET /health
    http-check expect status 200
    default-server inter 300ms fall 2 rise 2 observe layer4 error-limit 1 on-error mark-down
{servers}
"""
        path = os.path.join(self.out, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(cfg)
        self.spawn("lb", "haproxy", [find_tool("haproxy", "HAPROXY"), "-f", path, "-db"])
        deadline = time.time() + 20
        while time.time() < deadline:
            status, _ = self.get("client", f"http://{self.addr['lb']}:8080/ws", timeout=1)
            if status in (400, 401, 426):  # HAProxy passes the request to a gateway, which answers it.
                return
            time.sleep(0.2)
        raise RuntimeError("HAProxy does not pass connections to the gateways; see haproxy.log")

    def signal(self, name, sig):
        p = self.procs[name]
        if p.poll() is None:
            p.send_signal(sig)

    def wait_exit(self, name, limit):
        try:
            return self.procs[name].wait(limit)
        except subprocess.TimeoutExpired:
            self.signal(name, signal.SIGKILL)
            return self.procs[name].wait()

    def broker_reachable(self, yes):
        """Adds or removes a blackhole route to the broker in every node's namespace."""
        for i in range(1, self.nodes + 1):
            run("ip", "-n", self.ns(f"gw{i}"), "route", "del" if yes else "add", "blackhole",
                f"{self.addr['kafka']}/32", check=yes is False)

    def close(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for ns in reversed(self.created):
            delete_netns(ns)
        self.created = []


# The scenarios' sizes: the full ones keep the design figure (3,000 clients over three nodes).
FULL = dict(nodes=3, conns=3000, rooms=100, rate=100.0, duration=40.0, ramp=300.0, drain=10.0)
SHORT = dict(nodes=2, conns=300, rooms=20, rate=40.0, duration=12.0, ramp=300.0, drain=6.0)


def scenario(name, c, opts, at_publish):
    """Runs the fault of scenario `name`, starting `at_publish` (the time publishing starts)."""
    events = []
    third = at_publish + opts["duration"] / 3
    if name in ("kill", "short"):
        victim = opts["nodes"]
        time.sleep(max(0.0, third - time.time()))
        st = c.stats(victim)
        held = st["connections"] if st else None
        c.signal(f"gw{victim}", signal.SIGKILL)
        c.wait_exit(f"gw{victim}", 5)
        events.append({"t": round(time.time() - at_publish, 2), "event": f"SIGKILL gw{victim}",
                       "connections": held})
    elif name == "rolling":
        time.sleep(max(0.0, at_publish + 4 - time.time()))
        for i in range(1, opts["nodes"] + 1):
            st = c.stats(i)
            held = st["connections"] if st else None
            t0 = time.time()
            c.signal(f"gw{i}", signal.SIGTERM)
            code = c.wait_exit(f"gw{i}", 15)
            drained = time.time() - t0
            c.start_gateway(i)
            events.append({"t": round(t0 - at_publish, 2), "event": f"SIGTERM gw{i}", "connections": held,
                           "exit": code, "drain_secs": round(drained, 2),
                           "back_after_secs": round(time.time() - t0, 2)})
            time.sleep(3)
    elif name == "broker":
        time.sleep(max(0.0, third - time.time()))
        c.broker_reachable(False)
        events.append({"t": round(time.time() - at_publish, 2), "event": "broker unreachable"})
        time.sleep(10)
        c.broker_reachable(True)
        events.append({"t": round(time.time() - at_publish, 2), "event": "broker reachable"})
    return events


def run_one(name, args):
    opts = dict(SHORT if name == "short" else FULL)
    for k in ("nodes", "conns", "rooms", "rate", "duration"):
        if getattr(args, k) is not None:
            opts[k] = getattr(args, k)
    if name == "rolling":
        opts["duration"] = max(opts["duration"], 4 + opts["nodes"] * 10 + 5)
    out = os.path.join(args.out, name)
    os.makedirs(out, exist_ok=True)
    c = Cluster(opts["nodes"], out, args.gateway, args.loadgen)
    try:
        c.up()
        c.start_broker()
        c.start_gateway(1)  # creates the topics
        for i in range(2, opts["nodes"] + 1):
            c.start_gateway(i, wait=False)
        for i in range(2, opts["nodes"] + 1):
            c.wait_healthy(i)
        c.start_lb()
        warmup = 2.0
        lg = [args.loadgen, "--url", f"ws://{c.addr['lb']}:8080/ws", "--secret", SECRET,
              "--conns", str(opts["conns"]), "--rooms", str(opts["rooms"]), "--rate", str(opts["rate"]),
              "--duration", str(opts["duration"]), "--ramp", str(opts["ramp"]), "--warmup", str(warmup),
              "--drain", str(opts["drain"]), "--publish", "kafka", "--publishers", "1",
              "--kafka-brokers", f"{c.addr['kafka']}:9092", "--kafka-topic", PUSH_TOPIC,
              "--resume", "--json", "--out", out]
        t_start = time.time()
        summary_path = os.path.join(out, "loadgen.json")
        with open(summary_path, "w") as sout, open(os.path.join(out, "loadgen.log"), "w") as serr:
            p = subprocess.Popen(["ip", "netns", "exec", c.ns("client"), *lg], stdout=sout, stderr=serr)
            c.procs["loadgen"] = p
            # Publishing starts `warmup` after every client is connected.
            deadline = time.time() + 60 + opts["conns"] / opts["ramp"]
            while True:
                held = [c.stats(i) for i in range(1, opts["nodes"] + 1)]
                total = sum(s["connections"] for s in held if s)
                if total >= opts["conns"]:
                    break
                if p.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"clients did not all connect ({total} of {opts['conns']}); see loadgen.log")
                time.sleep(0.2)
            spread = [s["connections"] if s else None for s in held]
            at_publish = time.time() + warmup
            events = scenario(name, c, opts, at_publish)
            code = p.wait(opts["duration"] + opts["drain"] + 120)
        if code != 0:
            raise RuntimeError(f"loadgen exited with {code}; see {out}/loadgen.log")
        with open(summary_path) as f:
            lgs = json.load(f)
        return report(name, opts, lgs, events, spread, time.time() - t_start)
    finally:
        c.close()


def report(name, opts, lgs, events, spread, secs):
    resume = lgs["resume"]
    rt = resume["reconnect_time"]
    return {
        "scenario": name, "nodes": opts["nodes"], "clients": opts["conns"], "rooms": opts["rooms"],
        "rate": opts["rate"], "duration_secs": opts["duration"], "connected": lgs["connections"]["connected"],
        "spread_before": spread, "events": events, "published": lgs["published"],
        "publish_errors": lgs["publish_errors"], "deliveries": lgs["deliveries"],
        "expected_deliveries": lgs["expected_deliveries"], "lost": lgs["lost"], "duplicates": lgs["duplicates"],
        "reconnects": resume["reconnects"], "recovered": resume["recovered"],
        "unrecovered": resume["unrecovered"], "without_pos": resume["without_pos"],
        "failed_attempts": resume["failed_attempts"],
        "reconnect_p50_ms": rt["p50_ms"], "reconnect_p99_ms": rt["p99_ms"], "reconnect_max_ms": rt["max_ms"],
        "delivery_p50_ms": lgs["latency"]["delivery"]["p50_ms"],
        "delivery_p99_ms": lgs["latency"]["delivery"]["p99_ms"],
        "delivery_max_ms": lgs["latency"]["delivery"]["max_ms"],
        "closes": lgs["closes"], "client_cpu_secs": round(lgs["client_cpu_secs"], 2),
        "wall_secs": round(secs, 1),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="all", choices=["steady", "kill", "rolling", "broker", "all", "short"])
    ap.add_argument("--gateway", default=None, help="gateway binary (default: release build in the target dir)")
    ap.add_argument("--loadgen", default=None, help="loadgen binary (default: release build in the target dir)")
    ap.add_argument("--nodes", type=int)
    ap.add_argument("--conns", type=int)
    ap.add_argument("--rooms", type=int)
    ap.add_argument("--rate", type=float)
    ap.add_argument("--duration", type=float)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "cluster"))
    ap.add_argument("--check", action="store_true", help="only say whether network namespaces work here")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON document")
    args = ap.parse_args()

    why = netns_unavailable()
    if why:
        print(f"cluster: network namespaces are not available here: {why}", file=sys.stderr)
        sys.exit(SKIP)
    if args.check:
        return
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    args.gateway = os.path.abspath(args.gateway or os.path.join(target, "release", "gateway"))
    args.loadgen = os.path.abspath(args.loadgen or os.path.join(target, "release", "loadgen"))
    for b in (args.gateway, args.loadgen):
        if not os.path.exists(b):
            sys.exit(f"cluster: {b} does not exist (cargo build --release -p gateway -p loadgen)")
    find_tool("haproxy", "HAPROXY")
    find_tool("tansu", "TANSU")
    # SIGTERM/SIGINT end the run through the same cleanup as any other exit.
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, lambda *_: sys.exit(130))
    clean_stale()
    os.makedirs(args.out, exist_ok=True)
    names = ["steady", "kill", "rolling", "broker"] if args.scenario == "all" else [args.scenario]
    results = []
    for name in names:
        r = run_one(name, args)
        results.append(r)
        if not args.json:
            print(json.dumps(r), flush=True)
    with open(os.path.join(args.out, "results.json" if args.scenario == "all" else f"{args.scenario}.json"), "w") as f:
        json.dump(results, f, indent=2)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
