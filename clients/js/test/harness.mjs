// Test harness: the real gateway binary on ephemeral ports, a Tansu broker, HS256 tokens, HTTP
// publish through the admin listener, and a TCP proxy in front of the gateway that stays on one
// port while the gateway behind it restarts, and can cut and refuse connections.
//
// The gateway binary: $GATEWAY_BIN, else $CARGO_TARGET_DIR/debug/gateway, else
// ../../target/debug/gateway (build it with `cargo build`). Tansu: $TANSU, else PATH, else
// ~/.cargo/bin/tansu (scripts/install-tansu.sh). GATEWAY_TEST_LOG=debug shows the gateway's logs.

import { spawn, execFileSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { homedir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const SECRET = 'js-client-test-secret-0123456789';
export const API_KEY = 'js-client-test-api-key';
/** How long something that should happen may take (generous: 2 cores shared with builds). */
export const WAIT = 30_000;

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '../../..');

/** Where the gateway binary is; throws with how to build it. */
export function gatewayBinary() {
  const candidates = [];
  if (process.env.GATEWAY_BIN) candidates.push(process.env.GATEWAY_BIN);
  else {
    if (process.env.CARGO_TARGET_DIR) candidates.push(path.join(process.env.CARGO_TARGET_DIR, 'debug/gateway'));
    candidates.push(path.join(repoRoot, 'target/debug/gateway'));
  }
  const found = candidates.find((p) => existsSync(p));
  if (!found) {
    throw new Error(`no gateway binary at ${candidates.join(' or ')}: run \`cargo build\` or set GATEWAY_BIN`);
  }
  return found;
}

/** Polls `f` (sync or async) every 20 ms until it returns a truthy value; throws after `limit`. */
export async function waitFor(what, f, limit = WAIT) {
  const deadline = Date.now() + limit;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${limit} ms`);
    await sleep(20);
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// --- tokens --------------------------------------------------------------------------------

const b64url = (b) => Buffer.from(b).toString('base64url');

/** An HS256 JWT signed with `secret` (default: the test secret). */
export function sign(claims, secret = SECRET) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

/** A token for `sub` valid `ttl` seconds, with subscribe and publish grants. */
export function token(sub, { channels = [], publish = [], ttl = 3600 } = {}) {
  return sign({ sub, exp: Math.floor(Date.now() / 1000) + ttl, channels, publish });
}

// --- the gateway ---------------------------------------------------------------------------

/**
 * Starts `gateway serve` on ephemeral ports with the test secret and API key plus `args`
 * (and `env`); resolves once it printed its ready line.
 */
export async function startGateway({ shards = 1, args = [], env = {} } = {}) {
  const all = ['serve', '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--shards', String(shards),
    '--jwt-secret', SECRET, '--api-key', API_KEY, ...args];
  const cleanEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('GATEWAY_')));
  const log = process.env.GATEWAY_TEST_LOG;
  const proc = spawn(gatewayBinary(), all, {
    env: { ...cleanEnv, GATEWAY_LOG: log || 'error', ...env },
    stdio: ['ignore', 'pipe', log ? 'inherit' : 'pipe'],
  });
  // The end of stderr, for the error when it does not get ready.
  let stderr = '';
  proc.stderr?.on('data', (d) => {
    stderr = (stderr + d).slice(-4000);
  });
  const line = await new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`no ready line within 30 s (${all.join(' ')})`)), 30_000);
    proc.stdout.on('data', (d) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl >= 0) {
        clearTimeout(timer);
        resolve(buf.slice(0, nl));
      }
    });
    proc.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the gateway exited (${code}) before it was ready: ${all.join(' ')}\n${stderr}`));
    });
  });
  proc.stdout.resume();
  const fields = Object.fromEntries(line.replace(/^gateway ready /, '').split(/\s+/).map((kv) => kv.split('=')));
  if (!fields.ws || !fields.admin) throw new Error(`unexpected ready line ${JSON.stringify(line)}`);
  const exited = new Promise((r) => proc.on('exit', (code, signal) => r({ code, signal })));
  return {
    proc,
    ws: fields.ws,
    admin: fields.admin,
    url: `ws://${fields.ws}/ws`,
    exited,
    /** Sends `signal` and waits for the exit. */
    async stop(signal = 'SIGKILL') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return exited;
    },
  };
}

/** `POST /api/publish` with the test key; resolves with the JSON answer (asserting 200). */
export async function publish(gw, body) {
  const r = await fetch(`http://${gw.admin}/api/publish`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await r.text();
  if (r.status !== 200) throw new Error(`publish ${JSON.stringify(body)}: ${r.status} ${text}`);
  return JSON.parse(text);
}

/** `GET` an admin path as JSON: {status, body}. */
export async function adminGet(gw, p) {
  const r = await fetch(`http://${gw.admin}${p}`);
  return { status: r.status, body: await r.json() };
}

/** The shard that owns `channel` (FNV-1a, as src/topology.rs computes it). */
export function ownerOf(channel, shards) {
  let h = 0xcbf29ce484222325n;
  for (const b of Buffer.from(channel)) {
    h ^= BigInt(b);
    h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return Number(h % BigInt(shards));
}

// --- Kafka ---------------------------------------------------------------------------------

/** The Tansu binary: $TANSU, else PATH, else ~/.cargo/bin/tansu. */
export function tansuBinary() {
  if (process.env.TANSU) return process.env.TANSU;
  for (const dir of (process.env.PATH ?? '').split(':')) {
    if (dir && existsSync(path.join(dir, 'tansu'))) return path.join(dir, 'tansu');
  }
  const p = path.join(homedir(), '.cargo/bin/tansu');
  if (existsSync(p)) return p;
  throw new Error('Tansu not found in $TANSU, PATH or ~/.cargo/bin: run scripts/install-tansu.sh');
}

export async function freePort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

/** A Tansu broker with in-memory storage on a free port; `stop()` kills it. */
export async function startBroker() {
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const env = { ...process.env };
    for (const k of ['LISTENER_URL', 'ADVERTISED_LISTENER_URL', 'STORAGE_ENGINE', 'SCHEMA_REGISTRY', 'CLUSTER_ID']) delete env[k];
    const proc = spawn(tansuBinary(), ['broker', '--listener-url', `tcp://127.0.0.1:${port}`,
      '--advertised-listener-url', `tcp://127.0.0.1:${port}`, '--storage-engine', 'memory://tansu/'], {
      env, stdio: ['ignore', process.env.GATEWAY_TEST_LOG ? 'inherit' : 'ignore', process.env.GATEWAY_TEST_LOG ? 'inherit' : 'ignore'],
    });
    const exited = new Promise((r) => proc.on('exit', r));
    const up = await Promise.race([
      waitFor('tansu accepting', () => canConnect(port), 10_000).then(() => true, () => false),
      exited.then(() => false),
    ]);
    if (up && proc.exitCode === null) {
      return { port, addr: `127.0.0.1:${port}`, stop: () => { proc.kill('SIGKILL'); return exited; } };
    }
    proc.kill('SIGKILL');
  }
  throw new Error('could not start Tansu on a free port in 5 attempts');
}

function canConnect(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('connect', () => { s.destroy(); resolve(true); });
    s.on('error', () => resolve(false));
  });
}

/** Flags for a gateway on `broker` with push topic `push` and upstream topic `up` (1 partition each). */
export function kafkaArgs(broker) {
  return ['--kafka-brokers', broker.addr, '--kafka-push-topics', 'push', '--kafka-upstream-topic', 'up',
    '--kafka-start-from', 'latest', '--kafka-fetch-max-wait-ms', '10', '--kafka-metadata-refresh-ms', '200',
    '--kafka-create-topics-partitions', '1'];
}

/** Waits until the gateway says Kafka is ok and consumes push/0 and up/0. */
export async function waitKafkaReady(gw) {
  await waitFor('the gateway consuming Kafka', async () => {
    const h = await adminGet(gw, '/health').catch(() => null);
    if (!h || h.status !== 200 || h.body.kafka !== 'ok') return false;
    const s = await adminGet(gw, '/stats');
    const parts = s.body?.kafka?.partitions ?? [];
    return ['push', 'up'].every((t) => parts.some((p) => p.topic === t && p.partition === 0));
  }, 60_000);
}

// --- a proxy in front of the gateway ------------------------------------------------------

/**
 * A TCP proxy on a fixed port to the gateway's current address (`setTarget`), so clients keep
 * one URL while the gateway restarts on another port. `cut()` closes every connection and
 * refuses new ones until `restore()`. While there is no target, connections are refused too.
 */
export async function startProxy(target) {
  const conns = new Set();
  const state = { target, refusing: false };
  const server = net.createServer((down) => {
    if (state.refusing || !state.target) {
      down.destroy();
      return;
    }
    const [host, port] = splitAddr(state.target);
    const up = net.connect(port, host);
    const pair = { down, up };
    conns.add(pair);
    const end = () => {
      conns.delete(pair);
      down.destroy();
      up.destroy();
    };
    down.on('error', end).on('close', end);
    up.on('error', end).on('close', end);
    down.pipe(up);
    up.pipe(down);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  return {
    port,
    url: `ws://127.0.0.1:${port}/ws`,
    setTarget(t) { state.target = t; },
    cut() {
      state.refusing = true;
      for (const { down, up } of conns) { down.destroy(); up.destroy(); }
      conns.clear();
    },
    restore() { state.refusing = false; },
    close() {
      this.cut();
      return new Promise((r) => server.close(r));
    },
  };
}

function splitAddr(a) {
  const i = a.lastIndexOf(':');
  return [a.slice(0, i), Number(a.slice(i + 1))];
}

/** Whether a command runs (for skipping with a reason). */
export function hasCommand(cmd, args = ['--version']) {
  try {
    execFileSync(cmd, args, { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
