// The client against a scripted server speaking the documented protocol (docs/protocol.md),
// for what the real gateway does not do on demand: duplicate deliveries, `recovered: false`,
// requests that are never answered, transient refusals, presence and join/leave frames (the
// gateway's presence requests are specified but served by a later change), and the bounds.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import WebSocket, { WebSocketServer } from 'ws';
import { Backoff, Client, GatewayError } from '../src/index.js';
import { waitFor } from './harness.mjs';

/** A server on a free port; `onConn(ws, frames, n)` per connection (n counts from 0). */
async function scripted(onConn) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((r) => wss.on('listening', r));
  let n = 0;
  const seen = [];
  wss.on('connection', (ws, req) => {
    const conn = { ws, frames: [], url: req.url, n: n++ };
    seen.push(conn);
    ws.on('message', (d) => {
      const f = JSON.parse(String(d));
      conn.frames.push(f);
      conn.onFrame?.(f);
    });
    onConn(conn);
  });
  return {
    url: `ws://127.0.0.1:${wss.address().port}/ws`,
    conns: seen,
    close: () => new Promise((r) => { for (const c of wss.clients) c.terminate(); wss.close(r); }),
  };
}

const welcome = (ws, channels = ['user:1', 'broadcast']) =>
  ws.send(JSON.stringify({ type: 'welcome', conn_id: 'c', user: '1', shard: 0, heartbeat_ms: 30000, expires: 2e9, channels }));
const send = (ws, f) => ws.send(JSON.stringify(f));
const msg = (channel, pos, data) => ({ type: 'message', channel, id: pos, data, priority: 3, ts: 1, pos });
const fast = { initialMs: 20, maxMs: 200 };

test('duplicates are dropped, resumes send since, recovered:false is a gap', async (t) => {
  const server = await scripted((c) => {
    welcome(c.ws);
    c.onFrame = (f) => {
      if (f.type !== 'subscribe') return;
      if (c.n === 0) {
        send(c.ws, { type: 'reply', id: f.id, ok: true });
        for (const p of ['p1', 'p2', 'p2', 'p3', 'p1']) send(c.ws, msg(f.channel, p, p));
        setTimeout(() => c.ws.close(1013, 'slow'), 50);
      } else if (c.n === 1) {
        // A resume that replays the last message again, then a new one.
        send(c.ws, { type: 'reply', id: f.id, ok: true, recovered: true });
        send(c.ws, msg(f.channel, 'p3', 'p3'));
        send(c.ws, msg(f.channel, 'p4', 'p4'));
        setTimeout(() => c.ws.close(1001, 'going away'), 50);
      } else {
        send(c.ws, { type: 'reply', id: f.id, ok: true, recovered: false });
        send(c.ws, msg(f.channel, 'q1', 'q1'));
      }
    };
  });
  t.after(() => server.close());
  const client = new Client({ url: server.url, token: 'tok', WebSocket, backoff: fast });
  t.after(() => client.close());
  const sub = client.subscribe('room_1');
  const got = [];
  const gaps = [];
  sub.on('message', (m) => got.push(m.data));
  sub.on('gap', (g) => gaps.push(g.since));
  const codes = [];
  client.on('disconnected', (d) => codes.push(d.code));
  client.connect();
  await waitFor('the third connection delivers', () => got.includes('q1'));
  assert.deepEqual(got, ['p1', 'p2', 'p3', 'p4', 'q1']);
  assert.equal(client.stats.duplicates, 3);
  assert.deepEqual(codes, [1013, 1001]);
  const subs = server.conns.map((c) => c.frames.find((f) => f.type === 'subscribe'));
  assert.equal(subs[0].since, undefined);
  assert.equal(subs[1].since, 'p3');
  assert.equal(subs[2].since, 'p4');
  assert.deepEqual(gaps, ['p4']);
  assert.equal(server.conns[0].url, '/ws?token=tok');
});

test('automatic channels are resumed with since after a reconnect', async (t) => {
  const server = await scripted((c) => {
    welcome(c.ws);
    if (c.n === 0) {
      send(c.ws, msg('user:1', 'u1', 'hello'));
      setTimeout(() => c.ws.close(1013), 50);
    } else {
      c.onFrame = (f) => send(c.ws, { type: 'reply', id: f.id, ok: true, recovered: true });
    }
  });
  t.after(() => server.close());
  const client = new Client({ url: server.url, token: 'tok', WebSocket, backoff: fast });
  t.after(() => client.close());
  const got = collect(client);
  client.connect();
  await waitFor('a resume of user:1', () => server.conns[1]?.frames.length === 1);
  assert.deepEqual(server.conns[1].frames[0], { type: 'subscribe', channel: 'user:1', since: 'u1', id: server.conns[1].frames[0].id });
  assert.equal(got.length, 1);
});

test('presence, presence_stats, join and leave', async (t) => {
  const server = await scripted((c) => {
    welcome(c.ws);
    c.onFrame = (f) => {
      if (f.type === 'subscribe') {
        send(c.ws, { type: 'reply', id: f.id, ok: true });
        if (f.join_leave) {
          send(c.ws, { type: 'join', channel: f.channel, users: ['42'] });
          send(c.ws, { type: 'leave', channel: f.channel, users: ['43'] });
        }
      } else if (f.type === 'presence' && f.channel === 'room_1') {
        send(c.ws, { type: 'reply', id: f.id, ok: true, channel: 'room_1', users: 2, conns: 3, members: { 42: 2, 43: 1 } });
      } else if (f.type === 'presence_stats') {
        send(c.ws, { type: 'reply', id: f.id, ok: true, channel: f.channel, users: 2, conns: 3 });
      } else if (f.type === 'presence') {
        send(c.ws, { type: 'reply', id: f.id, ok: false, error: { code: 'forbidden', message: 'no' } });
      }
    };
  });
  t.after(() => server.close());
  const client = new Client({ url: server.url, token: 'tok', WebSocket });
  t.after(() => client.close());
  const sub = client.subscribe('room_1', { joinLeave: true });
  const events = [];
  sub.on('join', (e) => events.push(['join', e]));
  sub.on('leave', (e) => events.push(['leave', e]));
  client.connect();
  assert.deepEqual(await sub.presence(), { channel: 'room_1', users: 2, conns: 3, members: { 42: 2, 43: 1 } });
  assert.deepEqual(await client.presenceStats('room_1'), { channel: 'room_1', users: 2, conns: 3 });
  await assert.rejects(client.presence('room_2'), (e) => e instanceof GatewayError && e.code === 'forbidden');
  assert.deepEqual(events, [
    ['join', { channel: 'room_1', users: ['42'] }],
    ['leave', { channel: 'room_1', users: ['43'] }],
  ]);
  assert.equal(server.conns[0].frames[0].join_leave, true);
});

test('requests time out, the queue is bounded, transient refusals are retried', async (t) => {
  let refusals = 2;
  const server = await scripted((c) => {
    welcome(c.ws);
    c.onFrame = (f) => {
      if (f.type === 'subscribe' && refusals > 0) {
        refusals -= 1;
        send(c.ws, { type: 'reply', id: f.id, ok: false, error: { code: refusals ? 'internal' : 'limit_exceeded', message: 'later' } });
      } else if (f.type === 'subscribe') {
        send(c.ws, { type: 'reply', id: f.id, ok: true });
      }
      // publish: never answered
    };
  });
  t.after(() => server.close());
  const client = new Client({ url: server.url, token: 'tok', WebSocket, requestTimeoutMs: 300, maxQueuedRequests: 3, backoff: fast });
  t.after(() => client.close());
  const sub = client.subscribe('room_1');
  // Not connected yet: these wait in the queue, the fourth does not fit.
  const waiting = [1, 2, 3].map((i) => client.publish('room_1', i));
  await assert.rejects(client.publish('room_1', 4), (e) => e.code === 'queue_full');
  client.connect();
  for (const p of waiting) await assert.rejects(p, (e) => e.code === 'timeout');
  await sub.ready;
  const subscribes = server.conns[0].frames.filter((f) => f.type === 'subscribe');
  assert.equal(subscribes.length, 3, 'two refusals, then success');
  assert.equal(server.conns.length, 1, 'on the same connection');
});

test('a server that sends nothing after the handshake is left after connectTimeoutMs', async (t) => {
  const server = await scripted((c) => {
    if (c.n > 0) welcome(c.ws);
  });
  t.after(() => server.close());
  const client = new Client({ url: server.url, token: async () => 'tok', WebSocket, connectTimeoutMs: 200, backoff: fast });
  t.after(() => client.close());
  const codes = [];
  client.on('disconnected', (d) => codes.push(d.code));
  await client.connect().ready();
  assert.deepEqual(codes, [4000]);
  assert.equal(server.conns.length, 2);
});

test('close() stops reconnecting and rejects waiting requests', async (t) => {
  const server = await scripted((c) => welcome(c.ws));
  t.after(() => server.close());
  const client = new Client({ url: server.url, token: 'tok', WebSocket });
  await client.connect().ready();
  const p = client.publish('room_1', 1);
  client.close();
  await assert.rejects(p, (e) => ['closed', 'disconnected'].includes(e.code));
  await assert.rejects(client.publish('room_1', 2), (e) => e.code === 'closed');
  assert.equal(client.state, 'closed');
});

test('backoff waits grow, are jittered and never exceed maxMs', () => {
  const lo = new Backoff({ initialMs: 100, maxMs: 1000, random: () => 0 });
  const hi = new Backoff({ initialMs: 100, maxMs: 1000, random: () => 0.999999 });
  assert.deepEqual([1, 2, 3, 4, 5, 6].map(() => lo.next()), [50, 100, 200, 400, 500, 500]);
  assert.deepEqual([1, 2, 3, 4, 5, 6].map(() => hi.next()), [100, 200, 400, 800, 1000, 1000]);
  hi.reset();
  assert.equal(hi.next(), 100);
  assert.throws(() => new Backoff({ initialMs: 0 }), RangeError);
});

test('the constructor needs a WebSocket where there is no global one', () => {
  const saved = globalThis.WebSocket;
  try {
    globalThis.WebSocket = undefined;
    assert.throws(() => new Client({ url: 'ws://x/ws', token: 't' }), /WebSocket/);
  } finally {
    globalThis.WebSocket = saved;
  }
});

function collect(target) {
  const got = [];
  target.on('message', (m) => got.push(m));
  return got;
}

test('a token function that fails or hangs is reported and tried again', async (t) => {
  const server = await scripted((c) => welcome(c.ws));
  t.after(() => server.close());
  let calls = 0;
  const token = () => {
    calls += 1;
    if (calls === 1) return Promise.reject(new Error('backend down'));
    if (calls === 2) return new Promise(() => {}); // never answers
    return Promise.resolve('tok');
  };
  const client = new Client({ url: server.url, token, WebSocket, connectTimeoutMs: 200, backoff: fast });
  t.after(() => client.close());
  const errors = [];
  client.on('error', (e) => errors.push(e.message));
  await client.connect().ready();
  assert.equal(calls, 3);
  assert.equal(errors.length, 2);
  assert.match(errors[0], /backend down/);
  assert.match(errors[1], /no answer in time/);
  assert.equal(server.conns.length, 1, 'no socket without a token');
});

test('a connection that goes silent is detected by the ping watchdog and replaced', async (t) => {
  const server = await scripted((c) => {
    c.ws.send(JSON.stringify({ type: 'welcome', conn_id: 'c', user: '1', shard: 0, heartbeat_ms: 150, expires: 2e9, channels: [] }));
    // The first connection never answers; the second answers pings.
    c.onFrame = (f) => {
      if (c.n > 0 && f.type === 'ping') send(c.ws, { type: 'pong', id: f.id });
    };
  });
  t.after(() => server.close());
  const client = new Client({ url: server.url, token: 'tok', WebSocket, backoff: fast });
  t.after(() => client.close());
  const codes = [];
  client.on('disconnected', (d) => codes.push(d.code));
  client.connect();
  await waitFor('pings answered on a second connection', () => server.conns[1]?.frames.filter((f) => f.type === 'ping').length >= 2);
  assert.deepEqual(codes, [4000]);
  assert.equal(server.conns[0].frames.filter((f) => f.type === 'ping').length, 1);
  assert.equal(client.state, 'connected');
});

test('the bounds: subscriptions and the duplicate window', async () => {
  const { RecentPositions } = await import('../src/positions.js');
  const client = new Client({ url: 'ws://127.0.0.1:9/ws', token: 't', WebSocket, maxSubscriptions: 1 });
  client.subscribe('a');
  assert.throws(() => client.subscribe('b'), (e) => e.code === 'limit_exceeded');
  assert.equal(client.subscribe('a'), client.getSubscription('a'), 'the same channel is not a second one');
  // A window of 2: the oldest position is forgotten first, so memory stays bounded per channel.
  const r = new RecentPositions(2);
  r.track('c');
  assert.deepEqual(['p1', 'p2', 'p1', 'p3', 'p2', 'p1'].map((p) => r.see('c', p)), ['new', 'new', 'duplicate', 'new', 'duplicate', 'new']);
  assert.equal(r.last('c'), 'p1');
  assert.equal(r.see('other', 'p1'), 'untracked');
});
