// The samples behind the charts: one model, the last `seconds` of server time.
// Pure: no DOM, no clock. Points older than the window are dropped on every
// change, so memory and chart points stay flat however long the page is open.

export class SampleWindow {
  /** Samples ({timestamp, ...}) within `seconds` of the newest one. */
  constructor(seconds) {
    this.seconds = seconds;
    this.samples = [];
  }

  get length() {
    return this.samples.length;
  }

  get newest() {
    return this.samples.length ? this.samples[this.samples.length - 1] : null;
  }

  /** Add one live sample; false (and nothing changes) if it is not newer than the last. */
  push(sample) {
    const last = this.newest;
    if (last !== null && !(sample.timestamp > last.timestamp)) return false;
    this.samples.push(sample);
    this._trim();
    return true;
  }

  /** Merge a history (oldest first) with what is held; a timestamp seen twice keeps one. */
  fill(history) {
    const byTime = new Map();
    for (const s of history) byTime.set(s.timestamp, s);
    for (const s of this.samples) byTime.set(s.timestamp, s);
    this.samples = [...byTime.values()].sort((a, b) => a.timestamp - b.timestamp);
    this._trim();
  }

  clear() {
    this.samples = [];
  }

  /** Columns for uPlot: [timestamps, ...one array per field function]. */
  columns(fields) {
    const xs = this.samples.map((s) => s.timestamp);
    return [xs, ...fields.map((f) => this.samples.map(f))];
  }

  _trim() {
    const last = this.newest;
    if (last === null) return;
    const oldest = last.timestamp - this.seconds;
    let drop = 0;
    while (drop < this.samples.length && this.samples[drop].timestamp < oldest) drop += 1;
    if (drop) this.samples.splice(0, drop);
  }
}

/** Delay before reconnect attempt `n` (0-based): 0.5 s doubling to `max`, with jitter. */
export function backoffDelay(n, random = Math.random, base = 0.5, max = 10) {
  const delay = Math.min(max, base * 2 ** n);
  return delay * (0.8 + 0.4 * random());
}
