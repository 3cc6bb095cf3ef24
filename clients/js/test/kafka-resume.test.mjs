// Reconnect and resume without loss in Node, against real gateways on a Tansu broker: see
// scenario.mjs for the phases (drain 1001 + restart, SIGKILL + restart, network cut, 1013 from
// bounded recoveries).

import { test } from 'node:test';
import WebSocket from 'ws';
import { Client } from '../src/index.js';
import { CHANNEL, noLossScenario } from './scenario.mjs';

test('every message arrives once across restarts, a network cut and 1013s (Node)', async (t) => {
  await noLossScenario(async (url, tok) => {
    const client = new Client({ url, token: async () => tok, WebSocket, backoff: { initialMs: 50, maxMs: 500 } });
    const got = [];
    const codes = [];
    client.on('disconnected', ({ code }) => codes.push(code));
    client.on('gap', (g) => got.push(`gap at ${g.since}`));
    const sub = client.subscribe(CHANNEL);
    sub.on('message', (m) => got.push(m.data.i));
    client.connect();
    await sub.ready;
    return {
      received: async () => got,
      closeCodes: async () => codes,
      stop: async () => client.close(),
    };
  }, (m) => t.diagnostic(m));
});
