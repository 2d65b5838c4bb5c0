// The models view: one card per model with its state, Load/Unload, the 429
// explanation, the log panel and the register form.

import { api, ApiError, modelPath } from "./api.js";
import { $, el, setAttr, setText, show } from "./dom.js";
import * as fmt from "./format.js";
import { needsText } from "./memory.js";

export const RUNNING_STATES = new Set(["starting", "ready", "stopping", "backoff"]);
const LOG_LINES = 200;
const LOG_EVERY_MS = 2000;
const CONFIRM_MS = 5000;

/** One fact cell of a card: label and a value element. */
function fact(key, label) {
  const value = el("dd", { text: fmt.DASH });
  return { node: el("div", { "data-fact": key }, el("dt", { text: label }), value), value };
}

export class ModelsView {
  /** ctx: {store, applyStatus(status), refreshModels(), openMonitor(name)}. */
  constructor(ctx) {
    this.ctx = ctx;
    this.cards = new Map();
    this.list = $("model-list");
    this.logModel = null;
    this.logTimer = null;
    this.visible = false;
    $("log-model").addEventListener("change", (ev) => this.showLog(ev.target.value));
    $("log-follow").addEventListener("change", () => this._follow());
    $("register-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      this._register();
    });
  }

  setVisible(visible) {
    this.visible = visible;
    if (visible) this._pollLog();
    else clearTimeout(this.logTimer);
  }

  /** Bring every card, the summary and the log selector in line with the store. */
  render() {
    const { store } = this.ctx;
    const names = [...store.models.keys()].sort();
    for (const [name, card] of this.cards) {
      if (!store.models.has(name)) {
        card.node.remove();
        this.cards.delete(name);
      }
    }
    let previous = null;
    for (const name of names) {
      let card = this.cards.get(name);
      if (!card) {
        card = this._card(name);
        this.cards.set(name, card);
      }
      const expected = previous ? previous.nextSibling : this.list.firstChild;
      if (card.node !== expected) this.list.insertBefore(card.node, expected);
      previous = card.node;
      this._update(name, card);
    }
    show($("models-empty"), names.length === 0);
    const running = names.filter((n) => RUNNING_STATES.has(this._state(n))).length;
    setText($("models-summary"), `${names.length} known, ${running} running`);
    this._logOptions(names);
  }

  /** Once a second: uptimes, countdowns and elapsed start times move on. */
  tick() {
    for (const [name, card] of this.cards) this._update(name, card);
  }

  _state(name) {
    const entry = this.ctx.store.status.get(name);
    if (entry) return entry.st.state;
    const model = this.ctx.store.models.get(name);
    return model ? model.state : "stopped";
  }

  _card(name) {
    const facts = {
      source: fact("source", "Source"),
      arch: fact("arch", "Architecture"),
      quant: fact("quant", "Quantisation"),
      size: fact("size", "Size"),
      ctx: fact("ctx", "Context"),
      slots: fact("slots", "Slots"),
      memory: fact("memory", "Memory"),
      port: fact("port", "Port"),
      uptime: fact("uptime", "Uptime"),
      restarts: fact("restarts", "Restarts"),
      pinned: fact("pinned", "Pinned"),
      ttl: fact("ttl", "Idle TTL"),
      inFlight: fact("inFlight", "In flight"),
      lastUsed: fact("lastUsed", "Last used"),
    };
    const gatewayFacts = [facts.pinned, facts.ttl, facts.inFlight, facts.lastUsed];
    for (const f of gatewayFacts) f.node.hidden = true;
    const badge = el("span", { class: "badge", "data-state": "stopped", text: "stopped" });
    const load = el("button", {
      class: "load primary",
      type: "button",
      "aria-label": `Load ${name}`,
      text: "Load",
      onclick: () => this.load(name),
    });
    const unload = el("button", {
      class: "unload",
      type: "button",
      "aria-label": `Unload ${name}`,
      text: "Unload",
      onclick: () => this.unload(name),
    });
    const logs = el("button", {
      class: "logs",
      type: "button",
      "aria-label": `Show the log of ${name}`,
      text: "Log",
      onclick: () => {
        this.showLog(name);
        $("log-panel").scrollIntoView({ block: "nearest" });
      },
    });
    const monitor = el("button", {
      class: "monitor",
      type: "button",
      "aria-label": `Monitor ${name}`,
      text: "Monitor",
      onclick: () => this.ctx.openMonitor(name),
    });
    const remove = el("button", {
      class: "remove danger",
      type: "button",
      "aria-label": `Remove ${name} from the registry`,
      text: "Remove",
      onclick: () => this.remove(name),
    });
    const progressText = el("span", { class: "num", text: "" });
    const progress = el(
      "div",
      { class: "progress", hidden: true },
      el("progress", { "aria-label": `Loading ${name}` }),
      progressText,
    );
    const reason = el("p", { class: "reason" });
    const capfull = el("div", { class: "capfull", role: "alert", hidden: true });
    const error = el("p", { class: "error", role: "alert" });
    const node = el(
      "article",
      { class: "model", "data-model": name, "aria-label": name },
      el("div", { class: "model-head" }, el("h3", { text: name }), badge),
      reason,
      el("dl", { class: "facts" }, ...Object.values(facts).map((f) => f.node)),
      progress,
      capfull,
      error,
      el("div", { class: "actions" }, load, unload, logs, monitor, remove),
    );
    return {
      node, badge, facts, gatewayFacts, load, unload, remove, monitor,
      progress, progressText, reason, capfull, error,
      busy: null, // "load" | "unload" | "remove" while a call is in flight
      confirmUntil: 0,
    };
  }

  _update(name, card) {
    const { store } = this.ctx;
    const model = store.models.get(name);
    if (!model) return;
    const entry = store.status.get(name);
    const st = entry ? entry.st : { state: model.state };
    const now = Date.now() / 1000;
    const elapsed = entry ? now - entry.at : 0; // time since this status was current
    const state = st.state;
    setText(card.badge, state);
    setAttr(card.badge, "data-state", state);
    const meta = model.metadata || {};
    const f = card.facts;
    setText(f.source.value, model.source);
    setText(f.arch.value, meta.architecture || fmt.DASH);
    setText(f.quant.value, meta.quantization || fmt.DASH);
    const size = meta.file_size ? fmt.bytes(meta.file_size) : fmt.DASH;
    setText(f.size.value, meta.size_label ? `${size} (${meta.size_label})` : size);
    const trained = meta.context_length ? ` of ${fmt.count(meta.context_length)}` : "";
    setText(f.ctx.value, model.ctx_size ? `${fmt.count(model.ctx_size)}${trained}` : "default");
    setText(f.slots.value, model.parallel ? String(model.parallel) : "default");
    const needs = needsText(model.memory);
    setText(f.memory.value, needs);
    setAttr(f.memory.value, "title", needs); // cut short on narrow cards with a last-load figure
    setText(f.port.value, st.port ? String(st.port) : fmt.DASH);
    const uptime = typeof st.uptime_seconds === "number" ? st.uptime_seconds + elapsed : null;
    setText(f.uptime.value, state === "ready" ? fmt.duration(uptime) : fmt.DASH);
    setText(f.restarts.value, typeof st.restarts === "number" ? String(st.restarts) : fmt.DASH);
    this._gatewayFacts(card, st, now);

    let kind = "";
    let text = "";
    if (state === "failed") {
      kind = "failed";
      text = `Failed: ${st.last_error || "no reason given"}`;
    } else if (state === "backoff") {
      kind = "backoff";
      const wait = typeof st.next_retry_at === "number" ? st.next_retry_at - now : null;
      const when = wait !== null && wait > 0 ? `in ${fmt.duration(Math.ceil(wait))}` : "now";
      text = `Restarting ${when} (retry ${st.retries || 1}): ${st.last_error || "crashed"}`;
    } else if (model.metadata_error) {
      kind = "failed";
      text = `Cannot read the model file: ${model.metadata_error}`;
    }
    setText(card.reason, text);
    setAttr(card.reason, "data-kind", kind || null);

    const starting = state === "starting";
    show(card.progress, starting);
    if (starting) {
      const since = typeof st.since === "number" ? now - st.since : elapsed;
      setText(card.progressText, `loading, ${fmt.duration(Math.max(0, since))}`);
    }
    if (RUNNING_STATES.has(state)) show(card.capfull, false);

    const busy = card.busy;
    const canLoad = (state === "stopped" || state === "failed") && !busy;
    const canUnload = (state === "starting" || state === "ready" || state === "backoff") && !busy;
    card.load.disabled = !canLoad;
    card.unload.disabled = !canUnload;
    setAttr(card.load, "aria-busy", busy === "load" || starting ? "true" : null);
    setText(card.load, busy === "load" || starting ? "Loading…" : "Load");
    setText(card.unload, busy === "unload" || state === "stopping" ? "Unloading…" : "Unload");
    show(card.remove, model.source === "api");
    card.remove.disabled = RUNNING_STATES.has(state) || busy === "remove";
    const confirming = card.confirmUntil > Date.now();
    setText(card.remove, confirming ? "Really remove?" : "Remove");
  }

  _gatewayFacts(card, st, now) {
    const has = typeof st.pinned === "boolean";
    for (const f of card.gatewayFacts) show(f.node, has);
    if (!has) return;
    const f = card.facts;
    setText(f.pinned.value, st.pinned ? "yes" : "no");
    setText(f.ttl.value, st.idle_ttl ? fmt.duration(st.idle_ttl) : "never");
    setText(f.inFlight.value, String(st.in_flight ?? 0));
    setText(f.lastUsed.value, fmt.ago(st.last_used, now));
  }

  async _call(name, busy, action) {
    const card = this.cards.get(name);
    if (!card) return null;
    card.busy = busy;
    setText(card.error, "");
    this._update(name, card);
    try {
      return await action();
    } catch (err) {
      if (err instanceof ApiError && err.status === 429) this._capFull(name, card, err);
      else setText(card.error, err.message);
      return null;
    } finally {
      card.busy = null;
      if (this.cards.has(name)) this._update(name, card);
    }
  }

  /** POST start; the badge then follows the status events (starting, then ready). */
  async load(name) {
    const card = this.cards.get(name);
    if (card) show(card.capfull, false);
    const st = await this._call(name, "load", () => api.post(`${modelPath(name)}/start`));
    if (st) this.ctx.applyStatus(st);
  }

  async unload(name) {
    const st = await this._call(name, "unload", () => api.post(`${modelPath(name)}/stop`));
    if (st) this.ctx.applyStatus(st);
  }

  /** The cap is full: say who holds it and offer to stop one of them for this model. */
  _capFull(name, card, err) {
    const running = Array.isArray(err.details.running) ? err.details.running : [];
    const cap = err.details.cap ?? this.ctx.store.cap;
    const holders = running.map((n) => `${n} (${this._state(n)})`).join(", ");
    const offers = running.map((victim) =>
      el("button", {
        type: "button",
        class: "offer",
        "aria-label": `Stop ${victim} and load ${name}`,
        text: `Stop ${victim} and load ${name}`,
        onclick: async () => {
          show(card.capfull, false);
          await this.unload(victim);
          await this.load(name);
        },
      }),
    );
    card.capfull.replaceChildren(
      el("p", {
        text:
          `The cap is full: ${cap} of ${cap} instances run (max_parallel). ` +
          `Held by ${holders || "no model any more: try again"}.`,
      }),
      el("p", { class: "muted", text: err.message }),
      el("div", { class: "offers" }, ...offers),
    );
    show(card.capfull, true);
  }

  async remove(name) {
    const card = this.cards.get(name);
    if (!card) return;
    if (card.confirmUntil < Date.now()) {
      card.confirmUntil = Date.now() + CONFIRM_MS;
      this._update(name, card);
      setTimeout(() => this.cards.has(name) && this._update(name, card), CONFIRM_MS + 50);
      return;
    }
    card.confirmUntil = 0;
    const done = await this._call(name, "remove", () => api.del(modelPath(name)));
    if (done) await this.ctx.refreshModels();
  }

  async _register() {
    const form = $("register-form");
    const error = $("reg-error");
    const fields = { name: $("reg-name"), path: $("reg-path"), ctx_size: $("reg-ctx"),
      parallel: $("reg-parallel"), idle_ttl: $("reg-idle-ttl"), stop_drain: $("reg-stop-drain"),
      pinned: $("reg-pinned") };
    for (const input of Object.values(fields)) setAttr(input, "aria-invalid", null);
    setText(error, "");
    setText($("reg-done"), "");
    const body = { name: fields.name.value.trim(), path: fields.path.value.trim() };
    // Left empty: the config's defaults apply (as when the API or the CLI omit them).
    for (const key of ["ctx_size", "parallel", "idle_ttl", "stop_drain"]) {
      const input = fields[key];
      const raw = input.value.trim();
      if (raw !== "") body[key] = Number(raw);
      else if (input.validity.badInput) body[key] = raw; // not a number: the API names it
    }
    if (fields.pinned.checked) body.pinned = true;
    for (const key of ["name", "path"]) {
      if (!body[key]) {
        setAttr(fields[key], "aria-invalid", "true");
        setText(error, `${key === "name" ? "Name" : "Path"} is required.`);
        fields[key].focus();
        return;
      }
    }
    $("reg-submit").disabled = true;
    try {
      const model = await api.post("/models", body);
      form.reset();
      setText($("reg-done"), `Registered ${model.name}.`);
      await this.ctx.refreshModels();
    } catch (err) {
      const field = err instanceof ApiError ? fields[err.details.field] : null;
      if (field) {
        setAttr(field, "aria-invalid", "true");
        field.focus();
      }
      setText(error, err.message);
    } finally {
      $("reg-submit").disabled = false;
    }
  }

  // -- log panel ---------------------------------------------------------------

  _logOptions(names) {
    const select = $("log-model");
    const current = [...select.options].map((o) => o.value);
    if (current.join("\n") !== names.join("\n")) {
      select.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
    }
    if (this.logModel === null || !names.includes(this.logModel)) {
      const running = names.find((n) => RUNNING_STATES.has(this._state(n)));
      this.logModel = running ?? names[0] ?? null;
      $("log-lines").textContent = "";
      if (this.visible) this._pollLog();
    }
    if (this.logModel !== null) select.value = this.logModel;
  }

  showLog(name) {
    if (name === this.logModel) return;
    this.logModel = name;
    $("log-model").value = name;
    $("log-lines").textContent = "";
    this._pollLog();
  }

  async _pollLog() {
    clearTimeout(this.logTimer);
    const name = this.logModel;
    if (!this.visible || name === null) return;
    try {
      const body = await api.get(`${modelPath(name)}/logs?lines=${LOG_LINES}`);
      if (name === this.logModel) {
        const pre = $("log-lines");
        const text = body.lines.join("\n");
        if (pre.textContent !== text) {
          pre.textContent = text;
          this._follow();
        }
        setText($("log-error"), "");
      }
    } catch (err) {
      if (name === this.logModel) setText($("log-error"), `Log of ${name}: ${err.message}`);
    }
    if (this.visible && name === this.logModel) {
      this.logTimer = setTimeout(() => this._pollLog(), LOG_EVERY_MS);
    }
  }

  _follow() {
    if ($("log-follow").checked) {
      const pre = $("log-lines");
      pre.scrollTop = pre.scrollHeight;
    }
  }
}
