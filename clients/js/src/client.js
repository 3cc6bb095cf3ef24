import { Emitter } from './emitter.js';
import { Backoff } from './backoff.js';
import { GatewayError } from './errors.js';
import { Subscription } from './subscription.js';
import { RecentPositions } from './positions.js';
import { Requests } from './requests.js';

const DEFAULTS = {
  requestTimeoutMs: 10_000,
  connectTimeoutMs: 10_000,
  maxQueuedRequests: 1000,
  maxSubscriptions: 1000,
  dedupWindow: 256,
  maxFramesPerSec: 40,
  framesBurst: 80,
  maxReconnectAttempts: Infinity,
};

/**
 * A connection to the gateway that stays up: it reconnects with jittered exponential backoff,
 * resubscribes every channel with `since` the last `pos` it delivered, never delivers a `pos`
 * twice, refreshes the token on `refresh_due`, and bounds everything it queues.
 *
 * States: `idle` (before connect), `connecting`, `connected` (welcome received), `disconnected`
 * (waiting to reconnect), `closed` (by the app, or after `maxReconnectAttempts`).
 *
 * Events: `state` ({state, previous}), `connected` (the welcome frame), `disconnected` ({code,
 * reason, reconnectInMs}), `message` (every delivered message), `gap` ({channel, since}),
 * `join` / `leave` ({channel, users}), `unsubscribed` ({channel, reason}), `refreshed`
 * ({expires}), `error` (GatewayError: token function failures, refused refreshes).
 */
export class Client extends Emitter {
  /** @param {import('./index.js').ClientOptions} opts */
  constructor(opts) {
    super();
    if (!opts || typeof opts.url !== 'string') throw new TypeError('options.url is required');
    if (typeof opts.token !== 'string' && typeof opts.token !== 'function') {
      throw new TypeError('options.token must be a string or a function returning one');
    }
    this._opts = { ...DEFAULTS, ...opts };
    this._WebSocket = opts.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== 'function') {
      throw new TypeError('no WebSocket: pass options.WebSocket (e.g. the `ws` package in Node)');
    }
    this._backoff = new Backoff(opts.backoff);
    this._state = 'idle';
    this._gen = 0;
    this._ws = null;
    this._welcome = null;
    /** @type {Map<string, Subscription>} */
    this._subs = new Map();
    /** Last positions per channel (subscriptions and the automatic channels), bounded. */
    this._positions = new RecentPositions(this._opts.dedupWindow);
    this._requests = new Requests(this._opts);
    this._timers = { reconnect: null, welcome: null, watchdog: null, refresh: null };
    this._lastFrameAt = 0;
    this._attempts = 0;
    this.stats = { connects: 0, reconnects: 0, duplicates: 0, gaps: 0, refreshes: 0 };
  }

  /** The connection state. */
  get state() {
    return this._state;
  }

  /** The welcome frame of the current connection (null while not connected). */
  get welcome() {
    return this._state === 'connected' ? this._welcome : null;
  }

  /** Starts connecting (idempotent); returns the client. */
  connect() {
    if (this._state === 'idle' || this._state === 'closed') {
      this._attempts = 0;
      this._open();
    }
    return this;
  }

  /** Resolves on the next welcome (at once if connected). */
  ready() {
    if (this._state === 'connected') return Promise.resolve(this._welcome);
    return new Promise((resolve, reject) => {
      const offC = this.once('connected', (w) => {
        offS();
        resolve(w);
      });
      const offS = this.on('state', ({ state }) => {
        if (state === 'closed') {
          offC();
          offS();
          reject(new GatewayError('closed', 'the client was closed'));
        }
      });
    });
  }

  /** Closes for good: no reconnect; every waiting request is rejected with `closed`. */
  close() {
    if (this._state === 'closed') return;
    this._teardown(1000, 'client closed');
    this._clearTimer('reconnect');
    for (const sub of this._subs.values()) clearTimeout(sub._retryTimer);
    this._requests.close();
    this._setState('closed');
  }

  /**
   * Subscribes to `channel` (or returns the existing subscription). It is made on the current
   * connection, or on the next one, and kept across reconnects.
   * @param {string} channel
   * @param {{filter?: object, since?: string, joinLeave?: boolean}} [opts]
   */
  subscribe(channel, opts = {}) {
    const existing = this._subs.get(channel);
    if (existing) return existing;
    if (this._subs.size >= this._opts.maxSubscriptions) {
      throw new GatewayError('limit_exceeded', `more than ${this._opts.maxSubscriptions} subscriptions`);
    }
    const sub = new Subscription(this, channel, opts);
    this._subs.set(channel, sub);
    this._positions.track(channel, opts.since);
    if (this._state === 'connected') sub._send();
    return sub;
  }

  /** The subscription to `channel`, if any. */
  getSubscription(channel) {
    return this._subs.get(channel);
  }

  /** The last `pos` delivered on `channel` (undefined before the first). */
  lastPos(channel) {
    return this._positions.last(channel);
  }

  /**
   * Publishes; resolves with the gateway's reply ({pos}) once the message is sequenced.
   * @param {string} channel
   * @param {unknown} data
   * @param {{event?: string, priority?: number}} [opts]
   */
  publish(channel, data, opts = {}) {
    const f = { type: 'publish', channel, data: data === undefined ? null : data };
    if (opts.event !== undefined) f.event = opts.event;
    if (opts.priority !== undefined) f.priority = opts.priority;
    return this._request(f).then(strip);
  }

  /** Members of `channel`: {channel, users, conns, members: {user: conns}, truncated?}. */
  presence(channel) {
    return this._request({ type: 'presence', channel }).then(strip);
  }

  /** Counts of `channel`: {channel, users, conns}. */
  presenceStats(channel) {
    return this._request({ type: 'presence_stats', channel }).then(strip);
  }

  /** A protocol-level ping; resolves on the pong. */
  ping() {
    return this._request({ type: 'ping' });
  }

  // --- connection ---------------------------------------------------------------------------

  _setState(state) {
    if (state === this._state) return;
    const previous = this._state;
    this._state = state;
    this.emit('state', { state, previous });
  }

  async _open() {
    const gen = ++this._gen;
    this._setState('connecting');
    let token;
    try {
      token = await this._token();
    } catch (e) {
      if (gen !== this._gen) return;
      this.emit('error', new GatewayError('token', `the token function failed: ${e?.message ?? e}`));
      this._lost(gen, 4001, 'no token');
      return;
    }
    if (gen !== this._gen || this._state === 'closed') return;
    const sep = this._opts.url.includes('?') ? '&' : '?';
    let ws;
    try {
      ws = new this._WebSocket(`${this._opts.url}${sep}token=${encodeURIComponent(token)}`);
    } catch (e) {
      this._lost(gen, 4002, `cannot open: ${e?.message ?? e}`);
      return;
    }
    this._ws = ws;
    this.stats.connects += 1;
    this._timers.welcome = setTimeout(() => {
      if (gen === this._gen) this._drop(gen, 4000, 'no welcome in time');
    }, this._opts.connectTimeoutMs);
    ws.onmessage = (ev) => {
      if (gen === this._gen) this._onFrame(gen, ev.data);
    };
    ws.onclose = (ev) => this._lost(gen, ev.code, ev.reason || '');
    ws.onerror = () => {}; // a close event follows every error
  }

  /** The token: the fixed one, or the function's answer within connectTimeoutMs. */
  async _token() {
    const t = this._opts.token;
    let timer;
    const late = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error('no answer in time')), this._opts.connectTimeoutMs);
    });
    try {
      const v = typeof t === 'function' ? await Promise.race([t(), late]) : t;
      if (typeof v !== 'string' || v === '') throw new Error('it returned no token');
      return v;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Closes the current socket from this side and carries on as if the gateway had. */
  _drop(gen, code, reason) {
    if (gen !== this._gen) return;
    this._lost(gen, code, reason);
  }

  /** Detaches and closes the socket of this connection (its events are ignored from now on). */
  _teardown(code, reason) {
    this._gen += 1;
    const ws = this._ws;
    this._ws = null;
    for (const k of ['welcome', 'watchdog', 'refresh']) this._clearTimer(k);
    if (ws) {
      ws.onmessage = ws.onclose = null;
      ws.onerror = () => {};
      try {
        ws.close(code >= 3000 && code <= 4999 ? code : 1000, reason.slice(0, 100));
      } catch {
        // already closed
      }
    }
    this._requests.detach();
    for (const sub of this._subs.values()) sub._onDisconnect();
  }

  /** The connection `gen` ended (or never came up): schedule the next one. */
  _lost(gen, code, reason) {
    if (gen !== this._gen || this._state === 'closed') return;
    const wasConnected = this._state === 'connected';
    this._teardown(code, reason);
    this._attempts += 1;
    if (this._attempts > this._opts.maxReconnectAttempts) {
      this.emit('disconnected', { code, reason, reconnectInMs: null });
      this.close();
      return;
    }
    const delay = this._backoff.next();
    this._setState('disconnected');
    this.emit('disconnected', { code, reason, reconnectInMs: delay, wasConnected });
    this._timers.reconnect = setTimeout(() => {
      this._timers.reconnect = null;
      this.stats.reconnects += 1;
      this._open();
    }, delay);
  }

  _clearTimer(k) {
    clearTimeout(this._timers[k]);
    this._timers[k] = null;
  }

  // --- frames from the gateway ------------------------------------------------------------

  _onFrame(gen, data) {
    if (typeof data !== 'string') return; // the gateway sends text frames only
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      return;
    }
    if (!f || typeof f !== 'object') return;
    this._lastFrameAt = Date.now();
    switch (f.type) {
      case 'welcome':
        return this._onWelcome(gen, f);
      case 'message':
        return this._onMessage(f);
      case 'reply':
      case 'pong':
        return this._requests.reply(f);
      case 'refresh_due':
        return this._refresh(gen, 0);
      case 'join':
      case 'leave': {
        const ev = { channel: f.channel, users: Array.isArray(f.users) ? f.users : [] };
        this._subs.get(f.channel)?.emit(f.type, ev);
        this.emit(f.type, ev);
        return;
      }
      case 'unsubscribed': {
        const sub = this._subs.get(f.channel);
        if (sub) sub._ended(f.reason ?? '');
        this.emit('unsubscribed', { channel: f.channel, reason: f.reason ?? '' });
        return;
      }
      default:
    }
  }

  _onWelcome(gen, w) {
    this._clearTimer('welcome');
    this._welcome = w;
    this._attempts = 0;
    this._backoff.reset();
    this._setState('connected');
    const auto = Array.isArray(w.channels) ? w.channels : [];
    // The automatic channels are delivered without subscribing; resume them too when this
    // client has seen a pos on them before.
    for (const ch of auto) {
      const since = this._positions.last(ch);
      this._positions.track(ch);
      if (since && !this._subs.has(ch)) {
        const frame = { type: 'subscribe', channel: ch, since };
        this._control(frame, (reply) => {
          if (reply && reply.recovered === false) this._gap(ch, since, null);
        });
      }
    }
    for (const sub of this._subs.values()) sub._send();
    const ws = this._ws;
    this._requests.attach(
      (frame) => ws.send(JSON.stringify(frame)),
      () => this._drop(gen, 4003, 'send failed'),
    );
    this._watch(gen, Number(w.heartbeat_ms) || 30_000);
    this.emit('connected', w);
  }

  _onMessage(m) {
    if (typeof m.channel !== 'string') return;
    const sub = this._subs.get(m.channel);
    const verdict = this._positions.see(m.channel, m.pos);
    if (verdict === 'untracked') return; // after an unsubscribe, or never asked for
    if (verdict === 'duplicate') {
      this.stats.duplicates += 1;
      return;
    }
    sub?.emit('message', m);
    this.emit('message', m);
  }

  _gap(channel, since, sub) {
    this.stats.gaps += 1;
    sub?.emit('gap', { since });
    this.emit('gap', { channel, since });
  }

  /**
   * Asks for a pong when nothing came for a heartbeat (browsers do not show the gateway's
   * WebSocket pings to scripts); nothing at all in the next heartbeat ends the connection.
   */
  _watch(gen, heartbeatMs) {
    const tick = () => {
      if (gen !== this._gen) return;
      const now = Date.now();
      if (now - this._lastFrameAt >= heartbeatMs) {
        this._control({ type: 'ping' }, (r, err) => {
          // Frames that came meanwhile (a long replay ahead of the pong) show it is alive.
          if (err?.code === 'timeout' && this._lastFrameAt < now) this._drop(gen, 4000, 'no pong in time');
        }, heartbeatMs);
      }
      this._timers.watchdog = setTimeout(tick, heartbeatMs);
    };
    this._timers.watchdog = setTimeout(tick, heartbeatMs);
  }

  /** `refresh_due`: a new token from the token function, sent as `refresh`; retried a few times. */
  async _refresh(gen, attempt) {
    if (typeof this._opts.token !== 'function') {
      this.emit('error', new GatewayError('refresh_unavailable', 'refresh_due, but the token is a fixed string'));
      return;
    }
    const retry = (err) => {
      this.emit('error', err);
      if (gen !== this._gen || attempt >= 3) return; // the 1008 at exp leads to a reconnect
      this._timers.refresh = setTimeout(() => this._refresh(gen, attempt + 1), this._retryDelay(attempt));
    };
    let token;
    try {
      token = await this._token();
    } catch (e) {
      retry(new GatewayError('token', `the token function failed: ${e?.message ?? e}`));
      return;
    }
    if (gen !== this._gen) return;
    this._control({ type: 'refresh', token }, (reply, err) => {
      if (err) {
        if (err.code !== 'disconnected') retry(new GatewayError(err.code, `refresh refused: ${err.message}`));
        return;
      }
      this.stats.refreshes += 1;
      this.emit('refreshed', { expires: reply.expires });
    });
  }

  /** Pause before retrying a refused request: the reconnect backoff's shape. */
  _retryDelay(attempt) {
    const b = this._backoff;
    const ceiling = Math.min(b.maxMs, b.initialMs * b.factor ** Math.min(attempt, 64));
    return Math.round(ceiling / 2 + (b.random() * ceiling) / 2);
  }

  // --- requests ----------------------------------------------------------------------------

  /** An app request: queued (bounded) until connected, rejected after requestTimeoutMs. */
  _request(frame) {
    if (this._state === 'closed') return Promise.reject(new GatewayError('closed', 'the client was closed'));
    return this._requests.request(frame);
  }

  /** A client-made request for the current connection; `done(reply, err)`. Returns its id. */
  _control(frame, done, timeoutMs) {
    return this._requests.control(frame, done, timeoutMs);
  }

  // --- subscriptions -----------------------------------------------------------------------

  /** @param {Subscription} sub */
  _unsubscribe(sub) {
    if (this._subs.get(sub.channel) !== sub) return Promise.resolve();
    const wasLive = sub.state === 'subscribed' || sub._currentId !== null;
    sub.state = 'unsubscribed';
    clearTimeout(sub._retryTimer);
    this._forget(sub);
    if (this._state !== 'connected' || !wasLive) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this._control({ type: 'unsubscribe', channel: sub.channel }, (r, err) => {
        // not_found: it had already ended; disconnected: it ends with the connection anyway.
        if (!err || err.code === 'not_found' || err.code === 'disconnected') resolve();
        else reject(err);
      });
    });
  }

  _forget(sub) {
    if (this._subs.get(sub.channel) === sub) {
      this._subs.delete(sub.channel);
      const auto = this._welcome?.channels ?? [];
      if (!auto.includes(sub.channel)) this._positions.untrack(sub.channel);
    }
  }
}

/** A reply without its envelope fields. */
function strip(reply) {
  const { type, id, ok, ...rest } = reply;
  return rest;
}
