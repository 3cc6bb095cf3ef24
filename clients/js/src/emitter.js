/**
 * A minimal event emitter (browsers and Node alike, no dependencies).
 * A listener that throws does not stop the others: the error is reported on the next tick,
 * so one faulty handler never breaks the client's bookkeeping.
 */
export class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
  }

  /** Adds `fn` for `event`; returns a function that removes it. */
  on(event, fn) {
    let set = this._listeners.get(event);
    if (!set) {
      set = new Set();
      this._listeners.set(event, set);
    }
    set.add(fn);
    return () => this.off(event, fn);
  }

  /** Adds `fn` for the next `event` only. */
  once(event, fn) {
    const off = this.on(event, (...args) => {
      off();
      fn(...args);
    });
    return off;
  }

  /** Removes `fn` from `event`. */
  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  /** Calls every listener of `event` with `arg`; returns whether there was one. */
  emit(event, arg) {
    const set = this._listeners.get(event);
    if (!set || set.size === 0) return false;
    for (const fn of [...set]) {
      try {
        fn(arg);
      } catch (e) {
        // Rethrown outside the client's own call stack: visible, yet harmless to its state.
        setTimeout(() => {
          throw e;
        }, 0);
      }
    }
    return true;
  }
}
