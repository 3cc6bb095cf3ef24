import { GatewayError } from './errors.js';

/**
 * Requests and their replies: ids, timeouts, the bounded queue of app requests waiting for a
 * connection, the queue of the client's own requests (subscribe, refresh, ping; sent first), and
 * pacing, so the client stays below the gateway's per-connection frame rate (a token bucket of
 * `framesBurst` refilled at `maxFramesPerSec`).
 *
 * Bounds: app requests waiting or in flight are at most `maxQueuedRequests` (more are rejected
 * with `queue_full`); the client's own are at most one per subscription plus a refresh and a ping.
 */
export class Requests {
  /**
   * @param {{requestTimeoutMs: number, maxQueuedRequests: number, maxFramesPerSec: number,
   *   framesBurst: number}} opts
   */
  constructor(opts) {
    this.opts = opts;
    this._nextId = 0;
    /** Every request from the call until its reply, timeout or failure: id -> entry. */
    this._pending = new Map();
    /** App requests not sent yet. */
    this._queue = [];
    /** Client-made requests not sent yet. */
    this._controlQueue = [];
    this._send = null;
    this._onSendError = null;
    this._tokens = opts.framesBurst;
    this._tokensAt = Date.now();
    this._flushTimer = null;
  }

  /** A connection is up: `send(frame)` writes to it; `onError` is told when a send throws. */
  attach(send, onError) {
    this._send = send;
    this._onSendError = onError;
    this.flush();
  }

  /**
   * The connection ended: requests on the wire fail with `disconnected` (they will not be
   * answered on another connection; the request may have taken effect), and so do the client's
   * own unsent ones (they belong to that connection). App requests not sent yet stay queued.
   */
  detach() {
    this._send = null;
    clearTimeout(this._flushTimer);
    this._flushTimer = null;
    const failed = [...this._controlQueue.splice(0)];
    for (const e of this._pending.values()) if (e.sent) failed.push(e);
    this._fail(failed, 'disconnected', 'the connection ended before the reply');
  }

  /** For good: every waiting request fails with `closed`. */
  close() {
    this.detach();
    this._fail(this._queue.splice(0), 'closed', 'the client was closed');
  }

  /** An app request; resolves with the reply (or pong), rejects with a GatewayError. */
  request(frame) {
    return new Promise((resolve, reject) => {
      let waiting = 0;
      for (const e of this._pending.values()) if (e.app) waiting += 1;
      if (waiting >= this.opts.maxQueuedRequests) {
        reject(new GatewayError('queue_full', `${waiting} requests already waiting`));
        return;
      }
      const e = this._entry(frame, (reply, err) => (err ? reject(err) : resolve(reply)), true);
      this._queue.push(e);
      this.flush();
    });
  }

  /** A client-made request for the current connection; `done(reply, err)` later. Returns its id. */
  control(frame, done, timeoutMs) {
    const e = this._entry(frame, done, false, timeoutMs);
    this._controlQueue.push(e);
    this.flush();
    return e.id;
  }

  /** A `reply` or `pong` frame: settles its request (unknown ids are ignored: timed out before). */
  reply(f) {
    const e = this._pending.get(String(f.id));
    if (!e) return;
    this._pending.delete(e.id);
    clearTimeout(e.timer);
    if (f.type === 'reply' && f.ok === false) {
      const err = f.error ?? {};
      e.done(null, new GatewayError(err.code ?? 'internal', err.message ?? 'refused'));
    } else {
      e.done(f, null);
    }
  }

  _entry(frame, done, app, timeoutMs = this.opts.requestTimeoutMs) {
    const id = String(++this._nextId);
    const e = { id, frame: { ...frame, id }, done, app, sent: false, timer: null };
    e.timer = setTimeout(() => {
      this._pending.delete(id);
      for (const q of [this._queue, this._controlQueue]) {
        const i = q.indexOf(e);
        if (i >= 0) q.splice(i, 1);
      }
      done(null, new GatewayError('timeout', `no reply to ${frame.type} in ${timeoutMs} ms`));
    }, timeoutMs);
    this._pending.set(id, e);
    return e;
  }

  /** Sends what is queued while the bucket has tokens; otherwise again when it will have one. */
  flush() {
    if (!this._send || this._flushTimer) return;
    const now = Date.now();
    const { maxFramesPerSec, framesBurst } = this.opts;
    this._tokens = Math.min(framesBurst, this._tokens + ((now - this._tokensAt) / 1000) * maxFramesPerSec);
    this._tokensAt = now;
    while (this._controlQueue.length + this._queue.length > 0) {
      if (this._tokens < 1) {
        const wait = Math.ceil(((1 - this._tokens) / maxFramesPerSec) * 1000);
        this._flushTimer = setTimeout(() => {
          this._flushTimer = null;
          this.flush();
        }, wait);
        return;
      }
      const e = this._controlQueue.length ? this._controlQueue.shift() : this._queue.shift();
      this._tokens -= 1;
      e.sent = true;
      try {
        this._send(e.frame);
      } catch {
        // Reported outside the caller's stack: it may still be setting up the request.
        const onError = this._onSendError;
        queueMicrotask(() => onError?.());
        return;
      }
    }
  }

  _fail(entries, code, message) {
    for (const e of entries) {
      clearTimeout(e.timer);
      this._pending.delete(e.id);
      e.done(null, new GatewayError(code, message));
    }
  }
}
