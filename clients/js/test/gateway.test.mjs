// The client against the real gateway binary (in-process bus): subscribe, receive, publish,
// refusals, unsubscribe; token refresh on `refresh_due`; a refused refresh followed by close 1008
// and a reconnect that resumes without loss.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import WebSocket from 'ws';
import { Client, GatewayError } from '../src/index.js';
import { publish, sign, startGateway, startProxy, token, waitFor } from './harness.mjs';

const fast = { initialMs: 50, maxMs: 500 };

function collect(target) {
  const got = [];
  target.on('message', (m) => got.push(m));
  return got;
}

test('subscribe, receive, publish, refusals and unsubscribe', async (t) => {
  const gw = await startGateway();
  t.after(() => gw.stop());
  let calls = 0;
  const client = new Client({
    url: gw.url,
    WebSocket,
    backoff: fast,
    token: async () => {
      calls += 1;
      return token('42', { channels: ['room_*'], publish: ['room_*'] });
    },
  });
  t.after(() => client.close());
  const states = [];
  client.on('state', ({ state }) => states.push(state));
  const welcome = await client.connect().ready();
  assert.equal(welcome.user, '42');
  assert.deepEqual(states, ['connecting', 'connected']);
  assert.equal(calls, 1, 'the token function is called once per connection');

  const sub = client.subscribe('room_1');
  const got = collect(sub);
  await sub.ready;
  assert.equal(sub.state, 'subscribed');
  assert.equal(client.subscribe('room_1'), sub, 'subscribing again returns the same subscription');

  const http = await publish(gw, { channel: 'room_1', event: 'verdict', data: { run: 7 } });
  const own = await client.publish('room_1', { text: 'hi' }, { event: 'chat' });
  assert.match(own.pos, /-/);
  await waitFor('two messages', () => got.length === 2);
  assert.deepEqual(got.map((m) => m.pos), [http.pos, own.pos]);
  assert.equal(got[1].from, '42');
  assert.equal(got[1].event, 'chat');
  assert.equal(sub.lastPos, own.pos);

  // Refusals come back as GatewayError with the gateway's code.
  const denied = client.subscribe('secret_1');
  const errors = [];
  denied.on('error', (e) => errors.push(e));
  await assert.rejects(denied.ready, (e) => e instanceof GatewayError && e.code === 'forbidden');
  assert.equal(errors.length, 1);
  assert.equal(client.getSubscription('secret_1'), undefined, 'a refused subscription is forgotten');
  await assert.rejects(client.publish('other', 1), (e) => e.code === 'forbidden');
  await client.ping();

  // After unsubscribing nothing more arrives on the channel (checked with a marker on another).
  await sub.unsubscribe();
  const marker = client.subscribe('room_marker');
  const markers = collect(marker);
  await marker.ready;
  await publish(gw, { channel: 'room_1', data: 'after' });
  await publish(gw, { channel: 'room_marker', data: 'marker' });
  await waitFor('the marker', () => markers.length === 1);
  assert.equal(got.length, 2, 'nothing after unsubscribe');
  assert.equal(client.stats.duplicates, 0);
});

test('refresh_due calls the token function and the connection outlives the first token', async (t) => {
  const gw = await startGateway({ args: ['--refresh-notice-secs', '4'] });
  t.after(() => gw.stop());
  const issued = [];
  const client = new Client({
    url: gw.url,
    WebSocket,
    backoff: fast,
    token: async () => {
      // The first token lives 6 s; refresh_due comes 4 s before its exp (3 s if the connection
      // took long: at most half the remaining life), ample time on a loaded machine.
      const ttl = issued.length === 0 ? 6 : 3600;
      const exp = Math.floor(Date.now() / 1000) + ttl;
      issued.push(exp);
      return sign({ sub: '7', exp, channels: ['room_*'] });
    },
  });
  t.after(() => client.close());
  const disconnects = [];
  client.on('disconnected', (d) => disconnects.push(d));
  const refreshed = new Promise((r) => client.once('refreshed', r));
  const welcome = await client.connect().ready();
  const sub = client.subscribe('room_r');
  const got = collect(sub);
  await sub.ready;
  const r = await refreshed;
  assert.equal(issued.length, 2, 'the token function was called for the refresh');
  assert.equal(r.expires, issued[1]);
  // Past the first token's exp the same connection still delivers.
  await waitFor('the first token expired', () => Date.now() / 1000 > issued[0] + 1, 10_000);
  await publish(gw, { channel: 'room_r', data: 1 });
  await waitFor('the message', () => got.length === 1);
  assert.equal(client.welcome.conn_id, welcome.conn_id, 'the same connection');
  assert.deepEqual(disconnects, []);
  assert.equal(client.stats.refreshes, 1);
});

test('a refused refresh leads to 1008 at exp, then a reconnect that resumes without loss', async (t) => {
  const gw = await startGateway({ args: ['--refresh-notice-secs', '2'] });
  t.after(() => gw.stop());
  let closed1008 = false;
  let client;
  const tokenFn = async () => {
    // While connected (a refresh), a token for another user: the gateway refuses it.
    if (client?.state === 'connected' && !closed1008) return token('mallory', { channels: ['room_*'] });
    return token('9', { channels: ['room_*'], ttl: closed1008 ? 3600 : 3 });
  };
  client = new Client({ url: gw.url, WebSocket, backoff: fast, token: tokenFn });
  t.after(() => client.close());
  const errors = [];
  client.on('error', (e) => errors.push(e));
  const sub = client.subscribe('room_f');
  const got = [];
  sub.on('message', (m) => got.push(m.data));
  sub.on('gap', () => got.push('gap'));
  const published = [];
  client.on('disconnected', ({ code }) => {
    if (code !== 1008) return;
    closed1008 = true;
    // Published while the client is (about to be) away.
    for (const i of [3, 4, 5]) published.push(publish(gw, { channel: 'room_f', data: i }));
  });
  client.connect();
  await sub.ready;
  for (const i of [0, 1, 2]) await publish(gw, { channel: 'room_f', data: i });
  await waitFor('close 1008 at exp', () => closed1008, 15_000);
  await Promise.all(published);
  await waitFor('every message', () => got.length >= 6, 15_000);
  assert.deepEqual(got, [0, 1, 2, 3, 4, 5]);
  assert.ok(errors.some((e) => e.code === 'forbidden'), `the refused refresh was reported: ${errors}`);
  assert.equal(client.state, 'connected');
  assert.equal(client.welcome.user, '9');
});

test('150 subscriptions are paced below the frame-rate limit and all resumed after a cut', async (t) => {
  const N = 150;
  const gw = await startGateway({ shards: 2, args: ['--max-subscriptions', String(N)] });
  t.after(() => gw.stop());
  const proxy = await startProxy(gw.ws);
  t.after(() => proxy.close());
  const client = new Client({ url: proxy.url, WebSocket, backoff: fast, token: token('5', { channels: ['room_*'] }) });
  t.after(() => client.close());
  const codes = [];
  client.on('disconnected', ({ code }) => codes.push(code));
  const got = new Map();
  const errors = [];
  const subs = [...Array(N).keys()].map((i) => {
    const sub = client.subscribe(`room_${i}`);
    sub.on('message', (m) => got.set(m.channel, [...(got.get(m.channel) ?? []), m.data]));
    sub.on('error', (e) => errors.push(e));
    return sub;
  });
  client.connect();
  await Promise.all(subs.map((s) => s.ready));
  // A first message on each gives the client a pos to resume from (a channel that delivered
  // nothing yet is resubscribed without `since`: the protocol has no position before the first).
  for (let i = 0; i < N; i++) await publish(gw, { channel: `room_${i}`, data: i });
  await waitFor('a message on every channel', () => got.size === N);
  proxy.cut();
  await waitFor('the client noticed the cut', () => codes.length > 0);
  for (let i = 0; i < N; i++) await publish(gw, { channel: `room_${i}`, data: N + i });
  proxy.restore();
  await waitFor('two messages on every channel', () => [...got.values()].every((v) => v.length >= 2));
  for (let i = 0; i < N; i++) assert.deepEqual(got.get(`room_${i}`), [i, N + i], `room_${i}`);
  assert.deepEqual(errors, []);
  assert.ok(!codes.includes(1008), `never closed for its frame rate: ${codes}`);
  const metrics = await (await fetch(`http://${gw.admin}/metrics`)).text();
  const limited = metrics.split('\n').filter((l) => l.startsWith('gateway_client_frames_rate_limited_total'));
  assert.ok(limited.length > 0, 'the gateway exports its rate-limit counter');
  assert.deepEqual(limited.map((l) => Number(l.split(' ').pop())).filter((v) => v !== 0), [], 'no frame was refused');
  assert.ok(subs.every((s) => s.state === 'subscribed'));
});

test('a refreshed token that no longer allows a channel ends its subscription', async (t) => {
  const gw = await startGateway({ args: ['--refresh-notice-secs', '4'] });
  t.after(() => gw.stop());
  let calls = 0;
  const client = new Client({
    url: gw.url,
    WebSocket,
    backoff: fast,
    token: async () => {
      calls += 1;
      // The first token (6 s) allows room_*; the refreshed one only news_*.
      return calls === 1 ? token('3', { channels: ['room_*', 'news_*'], ttl: 6 }) : token('3', { channels: ['news_*'] });
    },
  });
  t.after(() => client.close());
  const room = client.subscribe('room_x');
  const news = client.subscribe('news_x');
  const ended = new Promise((r) => room.once('unsubscribed', r));
  const refreshed = new Promise((r) => client.once('refreshed', r));
  client.connect();
  await Promise.all([room.ready, news.ready]);
  const { reason } = await ended;
  assert.match(reason, /./, 'the gateway gives a reason');
  await refreshed;
  assert.equal(room.state, 'unsubscribed');
  assert.equal(client.getSubscription('room_x'), undefined);
  assert.equal(client.getSubscription('news_x'), news);
  const got = [];
  news.on('message', (m) => got.push(m.data));
  await publish(gw, { channel: 'news_x', data: 'still here' });
  await waitFor('news after the refresh', () => got.length === 1);
});
