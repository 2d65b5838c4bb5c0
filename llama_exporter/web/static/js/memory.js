// Memory on the models view: one bar per device (its budget, what is reserved, each
// model's share) and each model's figure before it is loaded ("needs 1.2 GB").

import { $, el, setAttr, setText, show } from "./dom.js";
import * as fmt from "./format.js";

/** "needs 1.2 GB" (the estimate), with the last load's report when there is one. */
export function needsText(memory) {
  if (!memory || typeof memory.estimate_bytes !== "number") return fmt.DASH;
  const needs = `needs ${fmt.bytes(memory.estimate_bytes)}`;
  if (typeof memory.reported_bytes !== "number") return needs;
  return `${needs} (last load ${fmt.bytes(memory.reported_bytes)})`;
}

/** The segments of one device's bar: [{model, bytes, share}], largest first; pure. */
export function segments(device) {
  const scale = Math.max(device.budget_bytes || 0, device.reserved_bytes || 0, 1);
  return Object.entries(device.models || {})
    .map(([model, bytes]) => ({ model, bytes, share: bytes / scale }))
    .sort((a, b) => b.bytes - a.bytes || (a.model < b.model ? -1 : 1));
}

/** What a device's bar says in words: "cpu: 700 MB of 1.0 GB reserved". */
export function summary(name, device) {
  const budget = device.budget_bytes;
  const of = typeof budget === "number" ? ` of ${fmt.bytes(budget)}` : " (no budget)";
  return `${name}: ${fmt.bytes(device.reserved_bytes)}${of} reserved`;
}

export class MemoryBars {
  constructor() {
    this.root = $("memory-bars");
    this.bars = new Map(); // device -> {node, label, track}
  }

  /** Draw the devices of GET /status's memory (null: hide the panel). */
  render(memory) {
    const devices = memory && memory.devices ? memory.devices : {};
    const names = Object.keys(devices).sort();
    show(this.root, names.length > 0);
    for (const [name, bar] of this.bars) {
      if (!(name in devices)) {
        bar.node.remove();
        this.bars.delete(name);
      }
    }
    for (const name of names) {
      let bar = this.bars.get(name);
      if (!bar) {
        const label = el("span", { class: "membar-label" });
        const track = el("div", { class: "membar-track", role: "img" });
        const node = el("div", { class: "membar", "data-device": name }, label, track);
        bar = { node, label, track };
        this.bars.set(name, bar);
        this.root.append(bar.node);
      }
      const device = devices[name];
      const text = summary(name, device);
      setText(bar.label, text);
      setAttr(bar.track, "aria-label", text);
      const parts = segments(device);
      bar.track.replaceChildren(
        ...parts.map((p) => {
          const seg = el("span", {
            class: "membar-seg",
            "data-model": p.model,
            title: `${p.model}: ${fmt.bytes(p.bytes)}`,
            text: p.share > 0.12 ? p.model : "",
          });
          seg.style.width = `${(p.share * 100).toFixed(2)}%`; // CSSOM: allowed by the CSP
          return seg;
        }),
      );
      const full = device.budget_bytes && device.reserved_bytes >= 0.95 * device.budget_bytes;
      setAttr(bar.node, "data-full", full ? "true" : null);
    }
  }
}
