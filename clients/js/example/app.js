// The example chat room: one Client, one subscription, what arrives shown in order.
// Open it as example/index.html?url=ws://127.0.0.1:8080/ws&channel=room_1&token=<JWT> to join at
// once, or fill in the form.
import { Client } from '../src/index.js';

const $ = (sel) => document.querySelector(sel);
const params = new URLSearchParams(location.search);
const joinForm = $('#join');
for (const k of ['url', 'channel', 'token']) {
  if (params.has(k)) joinForm.elements[k].value = params.get(k);
}
joinForm.elements.presence.checked = params.get('presence') === '1';

let client = null;
let sub = null;

function log(text, attrs = {}) {
  const li = document.createElement('li');
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  for (const [k, v] of Object.entries(attrs)) li.dataset[k] = v;
  $('#log').prepend(li);
}

function showCounts() {
  const s = client.stats;
  $('#counts').textContent = `${$('#messages').children.length} messages, ${s.reconnects} reconnects`;
}

function show(m) {
  const li = document.createElement('li');
  li.dataset.pos = m.pos;
  if (m.data && typeof m.data === 'object' && 'i' in m.data) li.dataset.i = String(m.data.i);
  const text = m.data && typeof m.data === 'object' && 'text' in m.data ? m.data.text : JSON.stringify(m.data);
  const from = document.createElement('span');
  from.className = 'from';
  from.textContent = `${m.from ?? m.event ?? 'service'}: `;
  li.append(from, String(text));
  const box = $('#messages');
  const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
  box.append(li);
  if (atBottom) box.scrollTop = box.scrollHeight;
  showCounts();
}

function join({ url, channel, token, presence }) {
  client?.close();
  $('#messages').replaceChildren();
  // A fixed token here; an app would pass an async function that asks its backend for a fresh
  // one, which the client also calls on `refresh_due`.
  client = new Client({ url, token });
  client.on('state', ({ state }) => {
    $('#status').textContent = state;
    $('#status').dataset.state = state;
  });
  client.on('connected', (w) => log(`connected as ${w.user} (shard ${w.shard})`));
  client.on('disconnected', ({ code, reason, reconnectInMs }) => {
    log(`connection closed ${code} ${reason}; again in ${reconnectInMs} ms`, { code: String(code) });
    showCounts();
  });
  client.on('error', (e) => log(`error ${e.message}`));
  // join/leave frames need presence enabled for the channel; the gateway refuses them otherwise.
  sub = client.subscribe(channel, { joinLeave: presence });
  sub.on('message', show);
  sub.on('subscribed', ({ resumed, recovered }) => {
    if (resumed) log(`resumed ${channel} (${recovered ? 'nothing lost' : 'could not recover'})`);
    else log(`joined ${channel}`);
  });
  sub.on('gap', () => log('messages were missed: the gateway could not replay them', { gap: '1' }));
  sub.on('join', ({ users }) => log(`${users.join(', ')} joined`));
  sub.on('leave', ({ users }) => log(`${users.join(', ')} left`));
  sub.on('error', (e) => log(`cannot join ${channel}: ${e.message}`));
  client.connect();
}

joinForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const f = joinForm.elements;
  join({ url: f.url.value, channel: f.channel.value, token: f.token.value.trim(), presence: f.presence.checked });
});

$('#send').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const input = $('#send').elements.text;
  if (!client || !input.value) return;
  try {
    await client.publish(sub.channel, { text: input.value }, { event: 'chat' });
    input.value = '';
  } catch (e) {
    log(`not sent: ${e.message}`);
  }
});

$('#who').addEventListener('click', async () => {
  if (!sub) return;
  try {
    const p = await sub.presence();
    const list = Object.entries(p.members).sort(([a], [b]) => a.localeCompare(b)).map(([u, n]) => `${u} (${n})`).join(', ');
    log(`${p.users} here: ${list}${p.truncated ? ', …' : ''}`);
  } catch (e) {
    log(`presence: ${e.message}`);
  }
});

if (params.get('token')) {
  const f = joinForm.elements;
  join({ url: f.url.value, channel: f.channel.value, token: params.get('token'), presence: f.presence.checked });
}
