// Which status of a model the page holds: events and /status answers arrive in any order.

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
