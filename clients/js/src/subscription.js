import { Emitter } from './emitter.js';
import { GatewayError } from './errors.js';

/** Error codes after which subscribing again cannot succeed without the app changing something. */
const PERMANENT = new Set(['forbidden', 'bad_request', 'not_found']);

/**
 * One channel the app wants to hear from. The client keeps it subscribed across reconnects,
 * resuming with `since` from the last `pos` it delivered.
 *
 * Events: `message` (a message frame), `subscribed` ({recovered, resumed}), `gap` ({since}: the
 * gateway could not replay what was missed, resynchronise by other means), `join` / `leave`
 * ({channel, users}), `unsubscribed` ({reason}: the gateway ended it, e.g. after a token
 * refresh), `error` (a GatewayError: the subscription failed for good).
 */
export class Subscription extends Emitter {
  /**
   * @param {import('./client.js').Client} client
   * @param {string} channel
   * @param {{filter?: object, since?: string, joinLeave?: boolean}} opts
   */
  constructor(client, channel, opts) {
    super();
    this.client = client;
    this.channel = channel;
    this.filter = opts.filter;
    this.joinLeave = !!opts.joinLeave;
    /** `subscribing`, `subscribed`, `unsubscribed` or `failed`. */
    this.state = 'subscribing';
    /** Id of the subscribe request whose reply counts; replies to older ones are ignored. */
    this._currentId = null;
    this._retryTimer = null;
    this._retries = 0;
    this._everSubscribed = false;
    /** Settles on the first successful reply, or on failure. */
    this.ready = new Promise((resolve, reject) => {
      this._resolveReady = resolve;
      this._rejectReady = reject;
    });
    // Nobody has to await `ready`: an unhandled failure is reported through `error` instead.
    this.ready.catch(() => {});
  }

  /** The last `pos` delivered on this channel (what a resume sends as `since`). */
  get lastPos() {
    return this.client.lastPos(this.channel);
  }

  /** `presence` of this channel (see Client#presence). */
  presence() {
    return this.client.presence(this.channel);
  }

  /** `presence_stats` of this channel (see Client#presenceStats). */
  presenceStats() {
    return this.client.presenceStats(this.channel);
  }

  /** Ends the subscription; resolves once the gateway confirmed it (or at once when offline). */
  unsubscribe() {
    return this.client._unsubscribe(this);
  }

  /** The subscribe frame for the current connection (with `since` when a pos is known). */
  _frame() {
    const f = { type: 'subscribe', channel: this.channel };
    if (this.filter !== undefined) f.filter = this.filter;
    const since = this.lastPos;
    if (since) f.since = since;
    if (this.joinLeave) f.join_leave = true;
    return f;
  }

  /** Sends the subscribe for the current connection. */
  _send() {
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    if (this.state === 'unsubscribed' || this.state === 'failed') return;
    this.state = 'subscribing';
    const frame = this._frame();
    const req = this.client._control(frame, (reply, err) => this._onReply(req, frame, reply, err));
    this._currentId = req;
  }

  /** The connection ended: the next one subscribes again. */
  _onDisconnect() {
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._currentId = null;
    if (this.state === 'subscribed') this.state = 'subscribing';
  }

  _onReply(id, frame, reply, err) {
    if (id !== this._currentId || this.state === 'unsubscribed' || this.state === 'failed') return;
    this._currentId = null;
    if (err) {
      if (err.code === 'canceled' || err.code === 'disconnected') return;
      if (PERMANENT.has(err.code)) {
        this._fail(err);
        return;
      }
      // `internal` (a recovery whose reads failed: a 1013 usually follows), `limit_exceeded`,
      // `timeout`: try again after a pause, on this connection or the next.
      const delay = this.client._retryDelay(this._retries++);
      this._retryTimer = setTimeout(() => {
        this._retryTimer = null;
        if (this.client.state === 'connected') this._send();
      }, delay);
      return;
    }
    this._retries = 0;
    this.state = 'subscribed';
    const resumed = frame.since !== undefined;
    const recovered = reply.recovered;
    if (resumed && recovered === false) {
      this.client._gap(this.channel, frame.since, this);
    }
    this.emit('subscribed', { recovered, resumed });
    if (!this._everSubscribed) {
      this._everSubscribed = true;
      this._resolveReady(this);
    }
  }

  _fail(err) {
    this.state = 'failed';
    this.client._forget(this);
    this._rejectReady(err);
    this.emit('error', err);
  }

  /** The gateway ended it (`unsubscribed` frame). */
  _ended(reason) {
    this.state = 'unsubscribed';
    clearTimeout(this._retryTimer);
    this.client._forget(this);
    this._rejectReady(new GatewayError('unsubscribed', reason));
    this.emit('unsubscribed', { reason });
  }
}
