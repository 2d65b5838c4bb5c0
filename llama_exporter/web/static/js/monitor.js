// The monitoring view: one running model's cards and three 60-second charts.
// Charts are filled from the history endpoint when a model is chosen (and after
// every reconnect), then updated in place from llama-metrics:update events; the
// sample window drops what is older than 60 s, so the page stays the same size.

import { api, modelPath } from "./api.js";
import { $, el, setAttr, setText, show } from "./dom.js";
import * as fmt from "./format.js";
import { SampleWindow } from "./series.js";

export const WINDOW_SECONDS = 60;
const BLUE = "#1f6feb";
const GREY = "#8c959f";
const ORANGE = "#d4661b";

const TIME = { label: "at", value: (u, v) => (v === null ? fmt.DASH : fmt.clock(v)) };

/** The x scale always shows the 60 s that end at the newest sample. */
function xRange(u, min, max) {
  const end = max ?? Date.now() / 1000;
  return [end - WINDOW_SECONDS, end];
}

function chartOptions(kind, width, height) {
  const base = {
    width,
    height,
    cursor: { drag: { x: false, y: false } },
    legend: { live: true },
    scales: { x: { time: true, range: xRange } },
  };
  const axisY = (format) => ({ size: 56, values: (u, vals) => vals.map(format) });
  const axisX = { space: 70, values: (u, vals) => vals.map(fmt.clock) };
  const bars = globalThis.uPlot.paths.bars({ size: [0.7, 24] });
  if (kind === "tps") {
    return {
      ...base,
      scales: { ...base.scales, y: { range: (u, min, max) => [0, Math.max(1, (max ?? 0) * 1.15)] } },
      axes: [axisX, axisY(fmt.tick)],
      series: [
        TIME,
        { label: "tok/s", stroke: BLUE, width: 2, fill: "rgba(31,111,235,0.10)",
          value: (u, v) => fmt.rate(v) },
        { label: "smoothed (5 s)", stroke: GREY, width: 1, dash: [4, 4],
          value: (u, v) => fmt.rate(v) },
      ],
    };
  }
  if (kind === "ctx") {
    return {
      ...base,
      scales: { ...base.scales, y: { range: (u, min, max) => [0, Math.max(1, (max ?? 0) * 1.05)] } },
      axes: [axisX, axisY(fmt.tick)],
      series: [
        TIME,
        { label: "used", stroke: ORANGE, width: 2, fill: "rgba(212,102,27,0.10)",
          value: (u, v) => fmt.count(v) },
        { label: "size", stroke: GREY, width: 1, dash: [6, 4], value: (u, v) => fmt.count(v) },
      ],
    };
  }
  // Stacked bars: the total is drawn first in grey, busy on top of it.
  return {
    ...base,
    scales: { ...base.scales, y: { range: (u, min, max) => [0, Math.max(1, max ?? 0)] } },
    axes: [axisX, { ...axisY((v) => (Number.isInteger(v) ? String(v) : "")), incrs: [1, 2, 5, 10] }],
    series: [
      TIME,
      { label: "idle", stroke: GREY, fill: "rgba(140,149,159,0.45)", paths: bars, points: { show: false },
        value: (u, v, si, i) => (i === null || v === null ? fmt.DASH : String(v - (u.data[2][i] ?? 0))) },
      { label: "busy", stroke: BLUE, fill: "rgba(31,111,235,0.85)", paths: bars, points: { show: false },
        value: (u, v) => (v === null ? fmt.DASH : String(v)) },
    ],
  };
}

const FIELDS = {
  tps: [(s) => s.tokens_per_second, (s) => s.tokens_per_second_smoothed],
  ctx: [(s) => s.context_used_tokens, (s) => s.context_size_tokens],
  slots: [(s) => s.slots_total, (s) => s.slots_busy],
};

export class MonitorView {
  /** ctx: {store, isRunning(name), select(name)}. */
  constructor(ctx) {
    this.ctx = ctx;
    this.model = null;
    this.window = new SampleWindow(WINDOW_SECONDS);
    this.charts = null; // {tps, ctx, slots}: {plot, figure}
    this.visible = false;
    this.fills = 0;
    this.fillSeq = 0;
    this.shownState = null; // state of the chosen model at the last render
    $("monitor-model").addEventListener("change", (ev) => this.ctx.select(ev.target.value));
    this.resizer = new ResizeObserver(() => this._resize());
  }

  setVisible(visible) {
    this.visible = visible;
    if (!visible) return;
    this._ensureCharts();
    this._resize();
    this._draw();
  }

  /** Watch `name` (null: the first running model): clear, then fill from the history. */
  show(name) {
    if (name === null) name = this._firstRunning();
    if (name === this.model) return;
    this.model = name;
    this.window.clear();
    this._cards(null);
    this.render();
    this._draw();
    this.refill();
  }

  /** Fetch the model's last samples and merge them in (on show and after reconnects). */
  async refill() {
    const name = this.model;
    if (name === null) return;
    const seq = ++this.fillSeq;
    let body;
    try {
      body = await api.get(`${modelPath(name)}/metrics`);
    } catch (err) {
      if (seq === this.fillSeq) setText($("monitor-hint"), `No history for ${name}: ${err.message}`);
      return;
    }
    if (seq !== this.fillSeq || name !== this.model) return; // a newer choice won
    this.window.fill(body.history || []);
    if (body.latest) this._cards(body.latest);
    this.fills += 1;
    setAttr($("view-monitor"), "data-fills", this.fills);
    this._draw();
  }

  /** A llama-metrics:update event for any model. */
  onMetrics(model, snap) {
    if (model !== this.model) return;
    if (this.window.push(snap)) {
      this._cards(snap);
      this._draw();
    }
  }

  onHost(host) {
    if (!host) return;
    setText($("host-cpu"), fmt.percent(host.cpu_utilization_ratio));
    setText($("host-mem"), `${fmt.bytes(host.memory_used_bytes)} / ${fmt.bytes(host.memory_total_bytes)}`);
  }

  /** The model selector, the state badge and the hint (after any status change). */
  render() {
    const { store } = this.ctx;
    if (this.model === null && this.visible) {
      const first = this._firstRunning();
      if (first !== null) {
        this.ctx.select(first);
        return;
      }
    }
    const names = [...store.models.keys()].sort();
    const options = names.filter((n) => this.ctx.isRunning(n) || n === this.model);
    const select = $("monitor-model");
    const current = [...select.options].map((o) => o.value);
    if (current.join("\n") !== options.join("\n")) {
      select.replaceChildren(...options.map((n) => el("option", { value: n, text: n })));
    }
    select.disabled = options.length === 0;
    if (this.model !== null) select.value = this.model;
    const entry = this.model === null ? null : store.status.get(this.model);
    const state = entry ? entry.st.state : this.model === null ? "stopped" : "stopped";
    const badge = $("monitor-state");
    setText(badge, this.model === null ? fmt.DASH : state);
    setAttr(badge, "data-state", state);
    if (state !== "ready" && this.shownState === "ready") this._cards(null);
    this.shownState = state;
    let hint = "";
    if (this.model === null) hint = "No model is running: load one in Models.";
    else if (state !== "ready") hint = `${this.model} is ${state}: its live values appear when it is ready.`;
    setText($("monitor-hint"), hint);
    this._gateway();
  }

  _firstRunning() {
    const names = [...this.ctx.store.models.keys()].sort();
    return names.find((n) => this.ctx.isRunning(n)) ?? null;
  }

  _cards(s) {
    const has = s !== null && s !== undefined;
    setText($("card-tokens"), has ? fmt.count(s.tokens_generated_total) : fmt.DASH);
    setText($("card-tps"), has ? fmt.rate(s.tokens_per_second) : fmt.DASH);
    setText($("card-ctx"), has ? fmt.outOf(s.context_used_tokens, s.context_size_tokens) : fmt.DASH);
    setText($("card-ctx-pct"), has ? fmt.percent(s.context_used_ratio) : fmt.DASH);
    setAttr($("card-ctx-pct-box"), "data-alert", has && s.context_used_ratio > 0.8 ? "true" : null);
    setText($("card-slots"), has ? `${s.slots_busy} / ${s.slots_total}` : fmt.DASH);
    setText($("card-tpt"), has ? fmt.ms(s.time_per_token_ms) : fmt.DASH);
    const cpu = has && typeof s.cpu_percent === "number" ? `${fmt.percent(s.cpu_percent / 100)} of a core` : fmt.DASH;
    setText($("proc-cpu"), cpu);
    setText($("proc-rss"), has ? fmt.bytes(s.rss_bytes) : fmt.DASH);
    setText($("proc-waiting"), has ? String(s.requests_waiting) : fmt.DASH);
  }

  /** Gateway figures of the chosen model, when the service has a gateway. */
  _gateway() {
    const gw = this.ctx.store.gateway;
    const row = gw && this.model !== null ? gw.models?.[this.model] : null;
    show($("gateway-stats"), Boolean(gw));
    if (!gw) return;
    setText($("gw-in-flight"), row ? String(row.in_flight) : "0");
    setText($("gw-queued"), row ? String(row.queued) : "0");
    setText($("gw-rpm"), row ? String(row.requests_last_minute) : "0");
    setText($("gw-p50"), row ? fmt.seconds(row.ttft_p50_seconds) : fmt.DASH);
    setText($("gw-p95"), row ? fmt.seconds(row.ttft_p95_seconds) : fmt.DASH);
  }

  _ensureCharts() {
    if (this.charts !== null || !globalThis.uPlot) return;
    this.charts = {};
    for (const kind of ["tps", "ctx", "slots"]) {
      const figure = $(`chart-${kind}`);
      const box = figure.querySelector(".plot");
      const { width, height } = this._size(box);
      const plot = new globalThis.uPlot(chartOptions(kind, width, height), this._data(kind), box);
      this.charts[kind] = { plot, figure, box };
      this.resizer.observe(box);
    }
  }

  _size(box) {
    const legend = 44; // uPlot puts its legend under the canvas, inside the fixed-height box
    return { width: Math.max(200, box.clientWidth), height: Math.max(120, box.clientHeight - legend) };
  }

  _resize() {
    if (!this.charts || !this.visible) return;
    for (const { plot, box } of Object.values(this.charts)) {
      const { width, height } = this._size(box);
      if (plot.width !== width || plot.height !== height) plot.setSize({ width, height });
    }
  }

  _data(kind) {
    return this.window.columns(FIELDS[kind]);
  }

  /** Redraw the charts from the window (only while they are on screen). */
  _draw() {
    const newest = this.window.newest;
    setAttr($("view-monitor"), "data-newest", newest ? newest.timestamp : null);
    if (!this.charts) return;
    for (const [kind, { plot, figure }] of Object.entries(this.charts)) {
      const data = this._data(kind);
      if (this.visible) {
        plot.setData(data);
        // Away from the cursor, the legend shows the newest values instead of dashes.
        if (plot.cursor.idx == null && data[0].length) plot.setLegend({ idx: data[0].length - 1 });
      }
      setAttr(figure, "data-points", data[0].length);
      const last = data[1].length ? data[1][data[1].length - 1] : "";
      setAttr(figure, "data-last", last);
    }
  }
}
