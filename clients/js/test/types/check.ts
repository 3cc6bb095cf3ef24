// Type-checked only (npm run typecheck): the declarations in src/index.d.ts describe the API the
// README shows, and misuse is rejected.
import { Client, GatewayError, type Message, type Presence } from '../../src/index.js';

const client = new Client({ url: 'ws://127.0.0.1:8080/ws', token: async () => 'jwt', backoff: { maxMs: 5000 } });
client.on('state', ({ state }) => console.log(state.toUpperCase()));
client.on('disconnected', ({ code, reconnectInMs }) => console.log(code, reconnectInMs ?? 'giving up'));
const sub = client.subscribe('room_1', { joinLeave: true, filter: { kind: ['a', 1, null] } });
sub.on('message', (m: Message) => console.log(m.pos, m.data));
sub.on('gap', ({ since }) => console.log(since.length));
sub.on('join', ({ users }) => console.log(users.join()));
async function use(): Promise<void> {
  await client.connect().ready();
  const p: Presence = await sub.presence();
  const n: number = p.members['42'] ?? 0;
  const { pos } = await client.publish('room_1', { text: 'hi' }, { event: 'chat', priority: 2 });
  console.log(n, pos.length, (await client.presenceStats('room_1')).users);
  try {
    await sub.unsubscribe();
  } catch (e) {
    if (e instanceof GatewayError) console.log(e.code);
  }
}
void use;
// @ts-expect-error: priority is 1..4
void client.publish('room_1', 1, { priority: 9 });
// @ts-expect-error: no such event
client.on('nonsense', () => {});
