// Keeping what is newest when events and answers arrive in any order: per-model
// statuses, /status reads that overtake each other, list reloads asked for meanwhile.

/**
 * True when `incoming` is older than the status held for its model. A state change
 * always sets a later `since`; a field update keeps it, so an equal `since` is news.
 */
export function isStale(held, incoming) {
  return Boolean(held) && held.st.since > incoming.since;
}

/**
 * The statuses of a /status answer (`snapshot`, taken when the service answered) merged
 * into those held (name -> {st, at}). A model's status is kept when it is newer than the
 * snapshot's: an event that arrived while the answer was on its way must not be undone
 * (a model that stopped would show as running until the next refresh). Models the
 * snapshot lacks are gone from the service and are dropped. Returns a new Map.
 */
export function mergeStatuses(held, snapshot, now) {
  const merged = new Map();
  for (const st of snapshot) {
    const prev = held.get(st.model);
    merged.set(st.model, isStale(prev, st) ? prev : { st, at: now });
  }
  return merged;
}

/**
 * Answers to requests that can overtake each other (several callers read /status):
 * number each request as it is sent; an answer is applied only when its request was
 * sent after the one whose answer was applied last.
 */
export class Latest {
  constructor() {
    this.sent = 0;
    this.applied = 0;
  }

  /** The number of a request being sent now. */
  send() {
    this.sent += 1;
    return this.sent;
  }

  /** True (and remembered) when the answer to request `seq` is newer than what is shown. */
  accept(seq) {
    if (seq <= this.applied) return false;
    this.applied = seq;
    return true;
  }
}

/**
 * fn (async) wrapped so that one call runs at a time. A call made while one runs gets
 * one more run after it, shared by every call made meanwhile: the run in flight may
 * have been sent before the change the caller wants to see.
 */
export function oneAtATime(fn) {
  let running = null;
  let again = null;
  const run = () => {
    if (running) {
      again ??= running
        .catch(() => undefined)
        .then(() => {
          again = null;
          return run();
        });
      return again;
    }
    running = (async () => {
      try {
        return await fn();
      } finally {
        running = null;
      }
    })();
    return running;
  };
  return run;
}
