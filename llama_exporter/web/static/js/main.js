// Start-up and wiring: the shared store, the live stream, the three views, routing.

import { api, ApiError, LiveSocket } from "./api.js";
import { $, setAttr, setText, show } from "./dom.js";
import { MemoryBars } from "./memory.js";
import { reloadText } from "./format.js";
import { ModelsView, RUNNING_STATES } from "./models.js";
import { MonitorView } from "./monitor.js";
import { RequestsView } from "./requests.js";
import { isStale, Latest, mergeStatuses, oneAtATime } from "./status.js";

const GATEWAY_EVERY_MS = 2000;
const HOST_EVERY_MS = 2000;
const MODELS_EVERY_MS = 30000;

/** Everything the views show; main.js is its only writer. */
const store = {
  models: new Map(), // name -> GET /models entry
  status: new Map(), // name -> {st: status JSON, at: local unix time it was current}
  cap: null,
  memory: null, // GET /status's memory: per device budget, reserved, by model
  host: null,
  gateway: null, // GET /gateway answer, or null (none yet, or the service has no gateway)
};

let gatewayPresent = null; // unknown until the first probe; false after a 404

const isRunning = (name) => {
  const entry = store.status.get(name);
  return entry ? RUNNING_STATES.has(entry.st.state) : false;
};

const models = new ModelsView({
  store,
  applyStatus: (st) => applyStatus(st),
  refreshModels: () => refreshModels(),
  openMonitor: (name) => {
    window.location.hash = `#monitor/${encodeURIComponent(name)}`;
  },
});

const monitor = new MonitorView({
  store,
  isRunning: (name) => store.status.get(name)?.st.state === "ready",
  select: (name) => {
    window.location.hash = `#monitor/${encodeURIComponent(name)}`;
  },
});

const requests = new RequestsView({
  store,
  select: (id) => {
    window.location.hash = id === null ? "#requests" : `#requests/${encodeURIComponent(id)}`;
  },
});

const memoryBars = new MemoryBars();

let renderQueued = false;

/** Render both views and the header on the next frame (status bursts render once). */
function render() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(flush);
}

function flush() {
  renderQueued = false;
  models.render();
  memoryBars.render(store.memory);
  monitor.render();
  requests.render();
  renderHeader();
}

function renderHeader() {
  const running = [...store.status.keys()].filter(isRunning).length;
  setText($("running-count"), String(running));
  setText($("running-cap"), store.cap === null ? "–" : String(store.cap));
  setAttr($("running"), "data-full", store.cap !== null && running >= store.cap ? "true" : null);
  const gw = store.gateway;
  show($("gateway-queue"), Boolean(gw));
  if (gw) {
    setText($("gateway-queue-length"), String(gw.queue_length));
    setText($("gateway-queue-max"), String(gw.max_queue));
  }
}

function applyStatus(st) {
  if (isStale(store.status.get(st.model), st)) return; // an older answer than what we hold
  store.status.set(st.model, { st, at: Date.now() / 1000 });
  if (!store.models.has(st.model)) refreshModels();
  refreshMemorySoon();
  render();
}

let memoryTimer = null;

/** Several callers read /status; its cap, memory and host are taken from the newest. */
const statusReads = new Latest();

/** GET /status; resolves to [answer, whether it is the newest read so far]. */
async function readStatus() {
  const seq = statusReads.send();
  const status = await api.get("/status");
  return [status, statusReads.accept(seq)];
}

/** The parts of a /status answer that are not per-model statuses. */
function applyService(status) {
  store.cap = status.cap;
  store.memory = status.memory || null;
  if (status.host) {
    store.host = status.host;
    monitor.onHost(status.host);
  }
}

/** A state change moves memory: read /status's memory once the burst has settled. */
function refreshMemorySoon() {
  if (memoryTimer) return;
  memoryTimer = setTimeout(async () => {
    memoryTimer = null;
    try {
      const [status, newest] = await readStatus();
      if (newest) applyService(status);
      render();
    } catch {
      // the next change or the list refresh tries again
    }
  }, 300);
}

function notice(text) {
  setText($("notice"), text);
  show($("notice"), Boolean(text));
}

/**
 * Reload the model list and every status (at start, after reconnects, after changes).
 * One runs at a time; a call meanwhile gets a run after it (one sent before a change
 * would not show the change).
 */
const refreshModels = oneAtATime(async () => {
  try {
    const [list, [status, newest]] = await Promise.all([api.get("/models"), readStatus()]);
    store.models = new Map(list.models.map((m) => [m.name, m]));
    const now = Date.now() / 1000;
    store.status = mergeStatuses(store.status, status.models, now);
    if (newest) applyService(status);
    notice("");
    render();
    // Metadata is read in the background at start-up: look again shortly.
    if (list.models.some((m) => m.metadata === null && !m.metadata_error)) {
      setTimeout(refreshModels, 2000);
    }
  } catch (err) {
    notice(`Cannot load the models: ${err.message}`);
  }
});

/** Statuses carry `pinned` only when the service has the gateway: ask for it only then. */
const gatewayHinted = () =>
  [...store.status.values()].some((entry) => typeof entry.st.pinned === "boolean");

/** The gateway summary, polled while the page is visible; a 404 means no gateway. */
async function pollGateway() {
  const worth = gatewayPresent === true || (gatewayPresent === null && gatewayHinted());
  if (worth && document.visibilityState === "visible") {
    try {
      store.gateway = await api.get("/gateway");
      gatewayPresent = true;
    } catch (err) {
      store.gateway = null;
      if (err instanceof ApiError && err.status === 404) gatewayPresent = false;
    }
    render();
  }
  if (gatewayPresent !== false) setTimeout(pollGateway, GATEWAY_EVERY_MS);
}

/** Host CPU and memory (part of GET /status), while the monitoring view is open. */
async function pollHost() {
  if (monitor.visible && document.visibilityState === "visible") {
    try {
      const [status, newest] = await readStatus();
      for (const st of status.models) applyStatus(st);
      if (newest) applyService(status);
    } catch {
      // the connection indicator and the next poll tell the story
    }
  }
  setTimeout(pollHost, HOST_EVERY_MS);
}

const RELOAD_NOTICE_MS = 20000;
let reloadTimer = null;

/** A config reload: say what changed (a while) or why it failed (until the next one). */
function onReload(outcome) {
  const el = $("reload-notice");
  setText(el, reloadText(outcome));
  setAttr(el, "data-ok", String(outcome.ok));
  show(el, true);
  clearTimeout(reloadTimer);
  if (outcome.ok) reloadTimer = setTimeout(() => show(el, false), RELOAD_NOTICE_MS);
  refreshModels(); // models may have come or gone
}

function onEvent(msg) {
  if (msg.type === "llama-status:update" && msg.data?.reload) {
    onReload(msg.data.reload);
  } else if (msg.type === "llama-status:update") {
    applyStatus(msg.data);
  } else if (msg.type === "llama-metrics:update") {
    monitor.onMetrics(msg.model, msg.data);
  } else if (msg.type === "llama-request:update") {
    requests.onRecord(msg.data);
  }
}

function onConnState(state) {
  const conn = $("conn");
  setAttr(conn, "data-conn", state);
  setText($("conn-text"), state);
}

let opened = false;

const socket = new LiveSocket({
  onEvent,
  onState: onConnState,
  onOpen: () => {
    // A reconnect may have missed changes: reload the list and refill the charts.
    if (opened) {
      refreshModels();
      monitor.refill();
      requests.refill();
    }
    opened = true;
  },
});

/** #models (default), #monitor, #monitor/NAME, #requests or #requests/ID. */
function route() {
  const hash = window.location.hash.slice(1);
  const [first, ...rest] = hash.split("/");
  const view = first === "monitor" || first === "requests" ? first : "models";
  for (const name of ["models", "monitor", "requests"]) {
    show($(`view-${name}`), view === name);
    setAttr($(`tab-${name}`), "aria-current", view === name ? "page" : null);
  }
  models.setVisible(view === "models");
  monitor.setVisible(view === "monitor");
  requests.setVisible(view === "requests");
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : null;
  if (view === "monitor") monitor.show(arg ?? monitor.model);
  if (view === "requests") requests.select(arg);
}

async function main() {
  window.addEventListener("hashchange", route);
  // The page polls for as long as it is open: keep the browser's timing record of
  // those requests small instead of letting it grow to its default 250 entries.
  performance.setResourceTimingBufferSize(50);
  performance.addEventListener("resourcetimingbufferfull", () => performance.clearResourceTimings());
  setInterval(() => {
    models.tick();
    requests.tick();
  }, 1000);
  setInterval(refreshModels, MODELS_EVERY_MS);
  await refreshModels(); // asks for the token first, if the service needs one
  route();
  flush();
  // What bench/page_cost.py reads as "first render": every model card is on screen.
  performance.mark("llama-exporter:first-render");
  socket.start();
  pollGateway();
  pollHost();
}

main();
