/**
 * Positions per channel: the last `pos` delivered (what a resume sends as `since`) and a window
 * of the most recent ones, so a message seen before is never delivered again. `pos` values are
 * compared only for equality, as the protocol asks. Each channel keeps at most `window`
 * positions; the oldest is forgotten first.
 */
export class RecentPositions {
  /** @param {number} window */
  constructor(window) {
    if (!(window >= 1)) throw new RangeError('dedupWindow must be at least 1');
    this.window = window;
    /** @type {Map<string, {last: string|undefined, set: Set<string>, ring: string[], head: number}>} */
    this.channels = new Map();
  }

  /** Starts tracking `channel` (keeps what is known), optionally from a given `since`. */
  track(channel, since) {
    let c = this.channels.get(channel);
    if (!c) {
      c = { last: undefined, set: new Set(), ring: [], head: 0 };
      this.channels.set(channel, c);
    }
    if (since && !c.last) c.last = since;
  }

  /** Stops tracking `channel`. */
  untrack(channel) {
    this.channels.delete(channel);
  }

  /** The last position delivered on `channel`. */
  last(channel) {
    return this.channels.get(channel)?.last;
  }

  /** Records `pos` on `channel`: `new`, `duplicate`, or `untracked`. */
  see(channel, pos) {
    const c = this.channels.get(channel);
    if (!c) return 'untracked';
    if (typeof pos !== 'string') return 'new';
    if (c.set.has(pos)) return 'duplicate';
    if (c.ring.length < this.window) {
      c.ring.push(pos);
    } else {
      c.set.delete(c.ring[c.head]);
      c.ring[c.head] = pos;
      c.head = (c.head + 1) % this.window;
    }
    c.set.add(pos);
    c.last = pos;
    return 'new';
  }
}
