// The request log as the page holds it: records by id, the filters, a request's timeline.
// Pure: no DOM, no clock (the time is passed in). Records are the API's
// (GET /requests, GET /requests/{id}, "llama-request:update" events).

import { DASH } from "./format.js";

/** Rows the view shows at most; older ones stay in the service's log (and its API). */
export const MAX_ROWS = 200;

/** Whether record passes the filter {model, status}; "" means any. */
export function matches(record, { model = "", status = "" } = {}) {
  if (model && record.model !== model) return false;
  if (!status) return true;
  if (status === "in_flight") return record.state === "in_flight";
  if (record.state === "in_flight" || record.status === null) return false;
  const cls = /^([1-5])xx$/.exec(status);
  if (cls) return Math.floor(record.status / 100) === Number(cls[1]);
  return String(record.status) === status;
}

/** The newer of two versions of one request: an ended record is never replaced by a running one. */
function newer(held, incoming) {
  if (!held) return incoming;
  if (held.state === "done" && incoming.state !== "done") return held;
  return incoming;
}

/** Records by id, newest first by arrival; bounded, the oldest ended ones go first. */
export class RequestList {
  constructor(limit = MAX_ROWS) {
    this.limit = limit;
    this.byId = new Map();
  }

  get size() {
    return this.byId.size;
  }

  get(id) {
    return this.byId.get(id) ?? null;
  }

  /** Add or update one record (an event or a fetched detail). */
  upsert(record) {
    this.byId.set(record.id, newer(this.byId.get(record.id), record));
    this._trim();
  }

  /** Merge a page of records (a fetch): kept ones stay unless the page has them newer. */
  merge(records) {
    for (const r of records) this.byId.set(r.id, newer(this.byId.get(r.id), r));
    this._trim();
  }

  clear() {
    this.byId.clear();
  }

  /** The records that pass filter, newest first, at most `limit`. */
  view(filter, limit = this.limit) {
    const out = [...this.byId.values()].filter((r) => matches(r, filter));
    out.sort((a, b) => b.arrived - a.arrived || (a.id < b.id ? 1 : -1));
    return out.slice(0, limit);
  }

  _trim() {
    const extra = this.byId.size - 2 * this.limit; // room for two filters' worth of rows
    if (extra <= 0) return;
    const ended = [...this.byId.values()]
      .filter((r) => r.state === "done")
      .sort((a, b) => a.arrived - b.arrived);
    for (const r of ended.slice(0, extra)) this.byId.delete(r.id);
  }
}

const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

/**
 * A request's timeline in seconds from its arrival: the phases, and the steps
 * queued -> load -> first token -> end with the time each was reached (null: not
 * reached, or not part of this request). `now` (unix s) ends a request still running.
 */
export function timeline(record, now) {
  const running = record.state === "in_flight";
  const queued = Math.max(0, num(record.queue_wait_s) ?? 0);
  const load = Math.max(0, num(record.load_wait_s) ?? 0);
  const admitted = queued + load;
  const end = running ? Math.max(admitted, now - record.arrived) : num(record.duration_s);
  const ttft = num(record.ttft_s);
  const total = Math.max(end ?? admitted, ttft ?? 0, admitted);
  const phases = [];
  const phase = (kind, from, to) => {
    if (to !== null && to > from) phases.push({ kind, from, to });
  };
  phase("queued", 0, queued);
  phase("load", queued, admitted);
  if (ttft !== null) {
    phase("prompt", admitted, ttft);
    phase("generate", Math.max(admitted, ttft), end ?? total);
  } else {
    phase(running ? "running" : "answer", admitted, end ?? total);
  }
  const steps = [
    { step: "arrived", at: 0 },
    { step: "queued", at: queued > 0 ? 0 : null, took: queued },
    { step: "load", at: load > 0 ? queued : null, took: load },
    { step: "first token", at: ttft },
    { step: "end", at: running ? null : end },
  ];
  return { total, running, phases, steps };
}

/** The status column: "in flight", "200", "499 client closed" (the error message is its title). */
export function statusText(record) {
  if (record.state === "in_flight") return "in flight";
  if (record.status === null || record.status === undefined) return DASH;
  return record.status === 499 ? "499 client closed" : String(record.status);
}

/** "2xx".."5xx", or "in_flight": the row's colour. */
export function statusClass(record) {
  if (record.state === "in_flight") return "in_flight";
  if (typeof record.status !== "number") return "unknown";
  return `${Math.floor(record.status / 100)}xx`;
}

/** The API query for a filter: "?limit=100&model=a&status=5xx". */
export function query(filter, limit = 100) {
  const params = new URLSearchParams({ limit: String(limit) });
  if (filter.model) params.set("model", filter.model);
  if (filter.status) params.set("status", filter.status);
  return `?${params}`;
}
