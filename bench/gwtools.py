"""Helpers for the bench scripts that start their own gateway on free ports (shards.py,
history_memory.py): finding and building the binaries, starting and stopping the gateway, reading
its RSS, /health, /metrics and /stats. Python 3 standard library only.
"""
import base64
import hashlib
import hmac
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def target_dir():
    """Cargo's target directory: $CARGO_TARGET_DIR if set, else target/ in the repository."""
    d = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return d if os.path.isabs(d) else os.path.join(ROOT, d)


def binary(name, explicit=None, build=False):
    """Path of a release binary (gateway or loadgen); builds it if asked or if it is missing."""
    path = explicit or os.path.join(target_dir(), "release", name)
    if explicit and not os.path.exists(path):
        sys.exit(f"{path} does not exist")
    if not explicit and (build or not os.path.exists(path)):
        cmd = ["cargo", "build", "--release", "--bin", name, "-p", name]
        print(f"building: {' '.join(cmd)}", file=sys.stderr)
        subprocess.run(cmd, check=True, cwd=ROOT)
    return path


def rss_kib(pid):
    """VmRSS of a process in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def serve_flags(path):
    """The long flags `gateway serve --help` lists (to skip options an older binary lacks)."""
    out = subprocess.run([path, "serve", "--help"], capture_output=True, text=True).stdout
    return set(re.findall(r"--[a-z0-9-]+", out))


def http(addr, path, timeout=5):
    """GET http://addr/path -> (status, body text); status None if nothing answered."""
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return None, ""


class StartError(RuntimeError):
    """The gateway did not come up (no ready line, or /health never said 200)."""


class Gateway:
    """A gateway process on free loopback ports: start() waits for its ready line and a 200 from
    /health; stop() ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, path, args, log_path=None, env=None):
        self.path, self.args, self.log_path = path, list(args), log_path
        self.env = {**os.environ, "GATEWAY_LOG": "warn", **(env or {})}
        self.proc = None
        self.ws = self.admin = None

    def start(self, timeout=60):
        log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        cmd = [self.path, "serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
               *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                     env=self.env, start_new_session=True)
        if log is not subprocess.DEVNULL:
            log.close()
        line = self._readline(timeout)
        m = re.match(r"gateway ready ws=(\S+) admin=(\S+) shards=(\d+)", line or "")
        if not m:
            self.stop()
            raise StartError(f"gateway did not start: {self._why(line)}; command: {' '.join(cmd)}")
        self.ws, self.admin, self.shards = m.group(1), m.group(2), int(m.group(3))
        # Anything else it prints must not fill the pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        end = time.time() + timeout
        while True:
            status, body = http(self.admin, "/health", timeout=2)
            if status == 200:
                break
            if self.proc.poll() is not None:
                raise StartError(f"gateway exited with {self.proc.returncode} before /health said 200")
            if time.time() > end:
                self.stop()
                raise StartError(f"/health did not answer 200 within {timeout} s (last: {status} {body!r})")
            time.sleep(0.1)
        return self

    def _why(self, line):
        """The gateway's own error line from its log, else what it printed."""
        if self.log_path:
            try:
                with open(self.log_path, errors="replace") as f:
                    for text in f:
                        if text.startswith("Error"):
                            return f"{text.strip()} (log: {self.log_path})"
            except OSError:
                pass
        return repr(line)

    def _readline(self, timeout):
        end = time.time() + timeout
        buf = ""
        fd = self.proc.stdout
        while time.time() < end:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                line = fd.readline()
                if not line:
                    return buf or None
                if line.startswith("gateway ready"):
                    return line.strip()
                buf = line.strip()
            elif self.proc.poll() is not None:
                return buf or None
        return buf or None

    @property
    def pid(self):
        return self.proc.pid

    def rss_kib(self):
        return rss_kib(self.proc.pid)

    def metrics(self):
        status, text = http(self.admin, "/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return text

    def stats(self):
        status, text = http(self.admin, "/stats", timeout=30)
        if status != 200:
            raise RuntimeError(f"/stats answered {status}")
        return json.loads(text)

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def counter_sum(metrics_text, name):
    """Sum of every sample of counter `name` (OpenMetrics `<name>_total{...} v`) over all label
    sets; None when the gateway does not export the metric at all."""
    total, seen = 0.0, False
    family = name[:-len("_total")] if name.endswith("_total") else name
    for line in metrics_text.splitlines():
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "TYPE" and parts[2] in (family, name):
                seen = True
            continue
        if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "):
            seen = True
            total += float(line.split(" # ")[0].split()[-1])  # drop an exemplar, if any
    return total if seen else None


def counter_by_label(metrics_text, name, label):
    """Counter `name` summed per value of `label` ({} when absent)."""
    out = {}
    pat = re.compile(r'^' + re.escape(name) + r'\{([^}]*)\}\s+(\S+)')
    for line in metrics_text.splitlines():
        m = pat.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        key = labels.get(label, "")
        out[key] = out.get(key, 0.0) + float(m.group(2))
    return out


def source_ips(n):
    """n loopback source addresses 127.0.0.1, 127.0.0.2, ... (all of 127/8 is local on Linux)."""
    return [f"127.0.0.{i}" for i in range(1, n + 1)]


def kill_tree(proc):
    """Ends a child started with start_new_session=True and everything in its process group."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def mint_hs256(secret, claims):
    """An HS256 JWT (the gateway's dev tokens) with hmac/hashlib."""
    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=")
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = b64(hmac.new(secret.encode(), head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


def client_frame(payload, opcode=0x1):
    """A masked client frame (a fresh random mask per frame, XORed as one big integer)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n <= 0xFFFF:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + masked


class WsClient:
    """A minimal blocking WebSocket client: upgrade, masked frames out, unmasked frames in."""

    def __init__(self, addr, path, token, timeout=10):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path}?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the upgrade")
            buf += chunk
            if len(buf) > 16384:
                raise ConnectionError("oversized upgrade response")
        head, self.buf = buf.split(b"\r\n\r\n", 1)
        status = head.split(b" ", 2)[1] if head.count(b" ") >= 1 else b"?"
        if status != b"101":
            raise ConnectionError(f"upgrade refused: {head.decode(errors='replace').splitlines()[0]}")
        self.sock.settimeout(None)

    def send(self, data):
        self.sock.sendall(data)

    def frames(self):
        """The complete frames as (opcode, payload): those already buffered, else what one read
        from the socket brings; answers pings. Raises ConnectionError at the end of the stream."""
        out = self._parse()
        while not out:
            chunk = self.sock.recv(1 << 18)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buf += chunk
            out = self._parse()
        return out

    def _parse(self):
        out, buf, at = [], self.buf, 0
        while len(buf) - at >= 2:
            b0, b1 = buf[at], buf[at + 1]
            n, head = b1 & 0x7F, 2
            if n == 126:
                if len(buf) - at < 4:
                    break
                n, head = struct.unpack_from("!H", buf, at + 2)[0], 4
            elif n == 127:
                if len(buf) - at < 10:
                    break
                n, head = struct.unpack_from("!Q", buf, at + 2)[0], 10
            if len(buf) - at < head + n:
                break
            payload = buf[at + head:at + head + n]
            at += head + n
            opcode = b0 & 0x0F
            if opcode == 0x9:
                self.send(client_frame(payload, 0xA))
                continue
            out.append((opcode, payload))
        self.buf = buf[at:]
        return out

    def close(self):
        try:
            self.send(client_frame(struct.pack("!H", 1000), 0x8))
        except OSError:
            pass
        self.sock.close()

def read_phase(proc, phase, timeout):
    """The next JSON line `loadgen hold` prints for `phase` (other lines are skipped)."""
    end = time.time() + timeout
    while time.time() < end:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            try:
                v = json.loads(line)
            except ValueError:
                continue
            if v.get("phase") == phase:
                return v
        elif proc.poll() is not None:
            break
    raise RuntimeError(f"loadgen hold did not report {phase!r} (exit code {proc.poll()})")


def write_summary(out_dir, text, doc, as_json):
    """summary.md and summary.json in `out_dir`; the table (or the JSON) on stdout."""
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(doc, f, indent=1)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(text + "\n")
    if as_json:
        print(text, file=sys.stderr)
        print(json.dumps(doc, indent=1))
    else:
        print()
        print(text)
