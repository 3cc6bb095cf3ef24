// Presence against the real gateway: `presence` / `presence_stats` through the client, and
// `join` / `leave` events for a subscription made with `joinLeave`, in Node and on the example
// page in Chromium, with the gateway's `presence.channels` set.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import WebSocket from 'ws';
import { Client, GatewayError } from '../src/index.js';
import { newPage, openExample, staticServer, waitForLog } from './browser.mjs';
import { startGateway, token, waitFor } from './harness.mjs';

const fast = { initialMs: 50, maxMs: 500 };

/** A 2-shard gateway with presence on room_*. */
async function presenceGateway(t) {
  const gw = await startGateway({ shards: 2, env: { GATEWAY_PRESENCE__CHANNELS: '["room_*"]' } });
  t.after(() => gw.stop());
  return gw;
}

function connector(t, gw) {
  return (sub) => {
    const c = new Client({ url: gw.url, WebSocket, backoff: fast, token: token(sub, { channels: ['room_*'] }) });
    t.after(() => c.close());
    return c.connect();
  };
}

test('presence, presence_stats, join and leave from the gateway', async (t) => {
  const gw = await presenceGateway(t);
  const connect = connector(t, gw);
  const alice = connect('alice');
  const room = alice.subscribe('room_p', { joinLeave: true });
  const joined = new Set();
  const left = new Set();
  room.on('join', ({ users }) => users.forEach((u) => joined.add(u)));
  room.on('leave', ({ users }) => users.forEach((u) => left.add(u)));
  await room.ready;

  const bob = connect('bob');
  await bob.subscribe('room_p').ready;
  await waitFor('bob joins', () => joined.has('bob'));
  const p = await room.presence();
  assert.equal(p.channel, 'room_p');
  assert.equal(p.users, 2);
  assert.equal(p.conns, 2);
  assert.deepEqual(p.members, { alice: 1, bob: 1 });
  assert.deepEqual(await alice.presenceStats('room_p'), { channel: 'room_p', users: 2, conns: 2 });
  await assert.rejects(alice.presence('secret_p'), (e) => e instanceof GatewayError && e.code === 'forbidden');

  bob.close();
  await waitFor('bob leaves', () => left.has('bob'));
  await waitFor('one member left', async () => (await room.presenceStats()).users === 1);
});

test('the example page shows who joins, who is here and who leaves (Chromium)', async (t) => {
  const gw = await presenceGateway(t);
  const origin = await staticServer(t);
  const { page, errors } = await newPage(t);
  await openExample(page, origin, { url: gw.url, channel: 'room_w', presence: '1', token: token('alice', { channels: ['room_*'] }) });
  const bob = connector(t, gw)('bob');
  await bob.subscribe('room_w').ready;
  await waitForLog(page, 'bob joined');
  await page.click('#who');
  await waitForLog(page, '2 here: alice (1), bob (1)');
  bob.close();
  await waitForLog(page, 'bob left');
  if (errors.length) throw new Error(`errors in the page: ${errors.join('; ')}`);
});
