/**
 * Jittered exponential backoff: attempt n waits a random time between half and all of
 * min(maxMs, initialMs * factor^n), so a crowd of clients that lost the same gateway does not
 * come back in lockstep, and no wait ever exceeds maxMs.
 */
export class Backoff {
  /**
   * @param {{initialMs?: number, maxMs?: number, factor?: number, random?: () => number}} [opts]
   */
  constructor(opts = {}) {
    this.initialMs = opts.initialMs ?? 250;
    this.maxMs = opts.maxMs ?? 10_000;
    this.factor = opts.factor ?? 2;
    this.random = opts.random ?? Math.random;
    if (!(this.initialMs > 0) || !(this.maxMs >= this.initialMs) || !(this.factor >= 1)) {
      throw new RangeError('backoff needs 0 < initialMs <= maxMs and factor >= 1');
    }
    this.attempt = 0;
  }

  /** The wait before the next attempt (and counts the attempt). */
  next() {
    const ceiling = Math.min(this.maxMs, this.initialMs * this.factor ** Math.min(this.attempt, 64));
    this.attempt += 1;
    return Math.round(ceiling / 2 + (this.random() * ceiling) / 2);
  }

  /** Back to the first step (after a connection that worked). */
  reset() {
    this.attempt = 0;
  }
}
