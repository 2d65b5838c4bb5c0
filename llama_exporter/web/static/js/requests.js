// The requests view: recent and in-flight gateway requests, live from
// "llama-request:update" events, filtered by model and status, and one request's
// detail as a timeline (queued -> load -> first token -> end).
//
// On show, on a filter change and after every reconnect the list is fetched from
// GET /requests with the filter (the service's log holds what the page missed);
// events then update it in place, rows keyed by request id.

import { api } from "./api.js";
import { $, el, setAttr, setText, show } from "./dom.js";
import * as fmt from "./format.js";
import { MAX_ROWS, query, RequestList, statusClass, statusText, timeline } from "./requestlog.js";

const COLUMNS = ["arrived", "model", "endpoint", "status", "wait", "ttft", "duration", "tokens", "tps"];
const PHASE_LABELS = {
  queued: "queued",
  load: "load",
  prompt: "to first token",
  generate: "generating",
  running: "running",
  answer: "answering",
};

/** Seconds as "0 ms", "85 ms", "1.2 s" ("–" when unknown). */
const secs = (v) => fmt.seconds(v);

/** The "wait" column: queue and load wait together, "–" when neither is known. */
function waitText(r) {
  if (r.queue_wait_s === null && r.load_wait_s === null) return fmt.DASH;
  return secs((r.queue_wait_s ?? 0) + (r.load_wait_s ?? 0));
}

function tokensText(r) {
  if (r.prompt_tokens === null && r.completion_tokens === null) return fmt.DASH;
  return `${fmt.count(r.prompt_tokens)} → ${fmt.count(r.completion_tokens)}`;
}

/** A time of day with milliseconds: 14:02:11.315. */
function timeOfDay(unix) {
  const ms = String(Math.floor((unix % 1) * 1000)).padStart(3, "0");
  return `${fmt.clock(unix)}.${ms}`;
}

export class RequestsView {
  /** ctx: {store, select(id or null)}. */
  constructor(ctx) {
    this.ctx = ctx;
    this.list = new RequestList(MAX_ROWS);
    this.rows = new Map(); // id -> {node, cells}
    this.filter = { model: "", status: "" };
    this.selected = null;
    this.visible = false;
    this.fetchSeq = 0;
    this.fetches = 0;
    this.available = null; // false when the service has no request log (404)
    $("req-model").addEventListener("change", (ev) => this.setFilter({ model: ev.target.value }));
    $("req-status").addEventListener("change", (ev) => this.setFilter({ status: ev.target.value }));
    $("req-close").addEventListener("click", () => this.ctx.select(null));
  }

  setVisible(visible) {
    const was = this.visible;
    this.visible = visible;
    if (visible && !was) this.refill();
    if (visible) this.render();
  }

  setFilter(change) {
    this.filter = { ...this.filter, ...change };
    this.render();
    this.refill();
  }

  /** Show one request's detail (null: none); fetched when the page does not hold it. */
  async select(id) {
    this.selected = id;
    this.render();
    if (id === null || this.list.get(id)) return;
    try {
      this.list.upsert(await api.get(`/requests/${encodeURIComponent(id)}`));
    } catch (err) {
      if (this.selected === id) setText($("req-error"), `Request ${id}: ${err.message}`);
      return;
    }
    this.render();
  }

  /** Fetch the newest records for the filter and merge them (on show, filter, reconnect). */
  async refill() {
    if (!this.visible) return;
    const seq = ++this.fetchSeq;
    let body;
    try {
      body = await api.get(`/requests${query(this.filter, MAX_ROWS)}`);
    } catch (err) {
      if (seq !== this.fetchSeq) return;
      this.available = err.status === 404 ? false : this.available;
      setText($("req-error"), `Cannot load the requests: ${err.message}`);
      return;
    }
    if (seq !== this.fetchSeq) return;
    this.available = true;
    setText($("req-error"), "");
    this.list.merge(body.requests || []);
    this.fetches += 1;
    setAttr($("view-requests"), "data-fetches", this.fetches);
    this.render();
  }

  /** A llama-request:update event (a request arrived or ended). */
  onRecord(record) {
    this.list.upsert(record);
    if (this.visible) this.render();
  }

  /** Once a second: the elapsed time of requests in flight moves on. */
  tick() {
    if (!this.visible) return;
    const now = Date.now() / 1000;
    for (const [id, row] of this.rows) {
      const r = this.list.get(id);
      if (r && r.state === "in_flight") setText(row.cells.duration, secs(now - r.arrived));
    }
    const r = this.selected === null ? null : this.list.get(this.selected);
    if (r && r.state === "in_flight") this._detail(r, now);
  }

  render() {
    if (!this.visible) return;
    this._modelOptions();
    const shown = this.list.view(this.filter);
    const now = Date.now() / 1000;
    const ids = new Set(shown.map((r) => r.id));
    for (const [id, row] of this.rows) {
      if (!ids.has(id)) {
        row.node.remove();
        this.rows.delete(id);
      }
    }
    const body = $("req-rows");
    let previous = null;
    for (const r of shown) {
      let row = this.rows.get(r.id);
      if (!row) {
        row = this._row(r.id);
        this.rows.set(r.id, row);
      }
      const expected = previous ? previous.nextSibling : body.firstChild;
      if (row.node !== expected) body.insertBefore(row.node, expected);
      previous = row.node;
      this._fill(row, r, now);
    }
    show($("req-empty"), shown.length === 0);
    setText(
      $("req-summary"),
      `${shown.length} shown, ${shown.filter((r) => r.state === "in_flight").length} in flight`,
    );
    const selected = this.selected === null ? null : this.list.get(this.selected);
    show($("req-detail"), selected !== null);
    if (selected) this._detail(selected, now);
  }

  _modelOptions() {
    const names = [...this.ctx.store.models.keys()].sort();
    if (this.filter.model && !names.includes(this.filter.model)) names.push(this.filter.model);
    const select = $("req-model");
    const values = ["", ...names];
    if ([...select.options].map((o) => o.value).join("\n") !== values.join("\n")) {
      select.replaceChildren(
        el("option", { value: "", text: "All models" }),
        ...names.map((n) => el("option", { value: n, text: n })),
      );
    }
    select.value = this.filter.model;
    $("req-status").value = this.filter.status;
  }

  _row(id) {
    const cells = {};
    const node = el("tr", { "data-id": id });
    for (const key of COLUMNS) {
      const td = el("td", { "data-col": key });
      if (key === "arrived") {
        // A button: the row opens with the keyboard too, and has an accessible name.
        cells.open = el("button", {
          class: "req-open",
          type: "button",
          onclick: () => this.ctx.select(id),
        });
        td.append(cells.open);
      }
      cells[key] = key === "arrived" ? cells.open : td;
      node.append(td);
    }
    return { node, cells };
  }

  _fill(row, r, now) {
    const c = row.cells;
    setAttr(row.node, "data-state", r.state);
    setAttr(row.node, "data-status", statusClass(r));
    setAttr(row.node, "aria-selected", r.id === this.selected ? "true" : null);
    setText(c.arrived, timeOfDay(r.arrived));
    setAttr(c.arrived, "aria-label", `Request ${r.id} at ${timeOfDay(r.arrived)}: details`);
    setText(c.model, r.model || fmt.DASH);
    setText(c.endpoint, `${r.endpoint}${r.stream ? " (stream)" : ""}`);
    setText(c.status, statusText(r));
    setAttr(c.status, "title", r.error_message || null);
    setText(c.wait, waitText(r));
    setText(c.ttft, secs(r.ttft_s));
    setText(c.duration, r.state === "in_flight" ? secs(now - r.arrived) : secs(r.duration_s));
    setText(c.tokens, tokensText(r));
    setText(c.tps, fmt.rate(r.tokens_per_second));
  }

  _detail(r, now) {
    setText($("req-detail-id"), r.id);
    const detail = $("req-detail");
    setAttr(detail, "data-id", r.id);
    setAttr(detail, "data-state", r.state);
    const t = timeline(r, now);
    const scale = t.total > 0 ? 100 / t.total : 0;
    const bar = $("req-timeline");
    bar.replaceChildren(
      ...t.phases.map((p) => {
        const seg = el("div", {
          class: "tl-phase",
          "data-phase": p.kind,
          title: `${PHASE_LABELS[p.kind]}: ${secs(p.to - p.from)}`,
        });
        // CSSOM, not a style attribute: the page's CSP allows no inline style.
        seg.style.left = `${p.from * scale}%`;
        seg.style.width = `${Math.max(0.5, (p.to - p.from) * scale)}%`;
        return seg;
      }),
    );
    setAttr(bar, "data-total", t.total.toFixed(3));
    $("req-steps").replaceChildren(
      ...t.steps.map((s) => {
        const reached = s.at !== null;
        let text;
        if (s.step === "queued" || s.step === "load") {
          text = reached ? `waited ${secs(s.took)}` : "no wait";
        } else if (s.step === "end" && t.running) {
          text = `running for ${secs(t.total)}`;
        } else {
          text = reached ? `at ${secs(s.at)}` : fmt.DASH;
        }
        return el(
          "li",
          { "data-step": s.step, "data-reached": reached ? "true" : "false" },
          el("span", { class: "tl-step", text: s.step }),
          el("span", { class: "num", text }),
        );
      }),
    );
    const facts = [
      ["Model", r.model],
      ["Endpoint", `${r.endpoint}${r.stream ? ", streamed" : ""}`],
      ["Client", r.client],
      ["Arrived", new Date(r.arrived * 1000).toLocaleString()],
      ["Status", statusText(r)],
      ["Finish reason", r.finish_reason],
      ["Error", r.error_message],
      ["Triggered a load", r.triggered_load ? "yes" : "no"],
      ["Evicted", r.evicted && r.evicted.length ? r.evicted.join(", ") : "none"],
      ["Prompt tokens", r.prompt_tokens === null ? null : fmt.count(r.prompt_tokens)],
      ["Completion tokens", r.completion_tokens === null ? null : fmt.count(r.completion_tokens)],
      ["Tokens/s", r.tokens_per_second === null ? null : fmt.rate(r.tokens_per_second)],
    ];
    $("req-fields").replaceChildren(
      ...facts.map(([label, value]) =>
        el("div", {}, el("dt", { text: label }), el("dd", { text: value ?? fmt.DASH })),
      ),
    );
  }
}
