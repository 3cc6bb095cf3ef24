// The "resume without loss" scenario, shared by the Node and the Chromium tests.
//
// Two gateways on one Tansu broker: A holds the client (behind a proxy, so the client keeps one
// URL), B only publishes (HTTP publish -> the upstream topic), so messages keep being produced
// while A is down. A replays at most 3 Kafka records per `since` (GATEWAY_KAFKA__RECOVERY_MAX_RECORDS)
// and keeps 2 messages per channel in memory, so every resume over a backlog reads Kafka and is
// ended by close 1013 after a few messages: the client must reconnect and resume again, several
// times, to get the rest. Phases:
//   1. live messages;
//   2. A drains (SIGTERM: close 1001) and restarts, messages published while it is down;
//   3. A is killed (SIGKILL: no close frame) and restarts, messages published while it is down;
//   4. the network is cut (the proxy drops and refuses connections) while messages are published;
//   5. live messages again.
// Every message must reach the app exactly once and in order, and the client must have seen
// closes 1001 and 1013.

import assert from 'node:assert/strict';
import { kafkaArgs, publish, startBroker, startGateway, startProxy, token, waitFor, waitKafkaReady } from './harness.mjs';

export const CHANNEL = 'room_resume';

/**
 * @param {(url: string, token: string) => Promise<{received: () => Promise<number[]>,
 *   closeCodes: () => Promise<number[]>, stop: () => Promise<void>}>} makeClient
 * @param {(msg: string) => void} log
 */
export async function noLossScenario(makeClient, log = () => {}) {
  const cleanup = [];
  try {
    const broker = await startBroker();
    cleanup.push(() => broker.stop());
    const args = kafkaArgs(broker);
    const gwB = await startGateway({ args });
    cleanup.push(() => gwB.stop());
    await waitKafkaReady(gwB);
    const startA = async () => {
      const gw = await startGateway({
        shards: 2,
        args: [...args, '--history-size', '2'],
        env: { GATEWAY_KAFKA__RECOVERY_MAX_RECORDS: '3' },
      });
      cleanup.push(() => gw.stop());
      return gw;
    };
    let gwA = await startA();
    await waitKafkaReady(gwA);
    const proxy = await startProxy(gwA.ws);
    cleanup.push(() => proxy.close());

    const client = await makeClient(proxy.url, token('viewer', { channels: ['room_*'] }));
    cleanup.unshift(() => client.stop());

    let next = 0;
    const publishSome = async (n) => {
      for (let k = 0; k < n; k++, next++) {
        await publish(gwB, { channel: CHANNEL, event: 'chat', data: { text: `message ${next}`, i: next } });
      }
    };
    const expectAll = async (phase) => {
      let got = [];
      await waitFor(`${phase}: all ${next} messages`, async () => {
        got = await client.received();
        return got.length >= next;
      }, 60_000).catch((e) => {
        throw new Error(`${e.message}; got ${JSON.stringify(got)}`);
      });
      assert.deepEqual(got, [...Array(next).keys()], `${phase}: every message once, in order`);
      log(`${phase}: ${next} messages, closes so far ${JSON.stringify(await client.closeCodes())}`);
    };

    await publishSome(5);
    await expectAll('live');

    // 2. Drain with 1001, publish while down, restart.
    proxy.setTarget(null);
    await gwA.stop('SIGTERM');
    await publishSome(10);
    gwA = await startA();
    proxy.setTarget(gwA.ws);
    await expectAll('after a drain (1001) and restart');

    // 3. SIGKILL, publish while down, restart.
    proxy.setTarget(null);
    proxy.cut();
    await gwA.stop('SIGKILL');
    proxy.restore();
    await publishSome(10);
    gwA = await startA();
    proxy.setTarget(gwA.ws);
    await expectAll('after SIGKILL and restart');

    // 4. Network cut while publishing.
    proxy.cut();
    await publishSome(12);
    proxy.restore();
    await expectAll('after a network cut');

    // 5. Live again.
    await publishSome(5);
    await expectAll('live after everything');

    const codes = await client.closeCodes();
    assert.ok(codes.includes(1001), `a close 1001 was seen: ${JSON.stringify(codes)}`);
    assert.ok(codes.includes(1013), `a close 1013 was seen: ${JSON.stringify(codes)}`);
    return codes;
  } finally {
    for (const f of cleanup.reverse()) await f();
  }
}
