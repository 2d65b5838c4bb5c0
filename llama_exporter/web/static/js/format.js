// Numbers for people: 1.2k tokens, 241 MB, 12.3 tok/s. Pure functions, no DOM.

export const DASH = "–";

const finite = (v) => typeof v === "number" && Number.isFinite(v);

/** One decimal below 10 (or 100 with `wide`), none above: 3.4, 12, 241. */
function short(v, wide = false) {
  const a = Math.abs(v);
  if (a >= (wide ? 100 : 10)) return String(Math.round(v));
  const s = v.toFixed(1);
  return s.endsWith(".0") ? s.slice(0, -2) : s;
}

/** A count: 987, 1.2k, 34.5k, 123k, 1.2M. */
export function count(v) {
  if (!finite(v)) return DASH;
  const a = Math.abs(v);
  if (a < 1000) return String(Math.round(v));
  if (a < 1e6) return short(v / 1e3, true) + "k";
  if (a < 1e9) return short(v / 1e6, true) + "M";
  return short(v / 1e9, true) + "G";
}

/** Bytes in SI units: 512 B, 3.4 kB, 241 MB, 5.1 GB. */
export function bytes(v) {
  if (!finite(v)) return DASH;
  const units = ["B", "kB", "MB", "GB", "TB"];
  let x = v;
  let i = 0;
  while (Math.abs(x) >= 1000 && i < units.length - 1) {
    x /= 1000;
    i += 1;
  }
  return (i === 0 ? String(Math.round(x)) : short(x)) + " " + units[i];
}

/** Tokens per second: 0 tok/s, 4.5 tok/s, 12.3 tok/s, 145 tok/s. */
export function rate(v) {
  if (!finite(v)) return DASH;
  return short(v, true) + " tok/s";
}

/** Milliseconds: 4.2 ms, 83 ms, 1.2 s. */
export function ms(v) {
  if (!finite(v)) return DASH;
  if (Math.abs(v) >= 1000) return short(v / 1000) + " s";
  return short(v) + " ms";
}

/** Seconds as milliseconds or seconds (TTFT): 85 ms, 1.2 s. */
export function seconds(v) {
  return finite(v) ? ms(v * 1000) : DASH;
}

/** A 0..1 ratio as a percentage: 0%, 4.2%, 37%. */
export function percent(ratio) {
  if (!finite(ratio)) return DASH;
  return short(ratio * 100) + "%";
}

/** "X / Y" of two counts, each formatted. */
export function outOf(x, y) {
  return `${count(x)} / ${count(y)}`;
}

/** A duration: 45 s, 3 min 12 s, 2 h 05 min, 3 d 4 h. */
export function duration(s) {
  if (!finite(s)) return DASH;
  const t = Math.max(0, Math.floor(s));
  if (t < 60) return `${t} s`;
  if (t < 3600) return `${Math.floor(t / 60)} min ${String(t % 60).padStart(2, "0")} s`;
  if (t < 86400) {
    return `${Math.floor(t / 3600)} h ${String(Math.floor((t % 3600) / 60)).padStart(2, "0")} min`;
  }
  return `${Math.floor(t / 86400)} d ${Math.floor((t % 86400) / 3600)} h`;
}

/** A time in the past relative to now (unix seconds): "12 s ago", "never". */
export function ago(then, now) {
  if (!finite(then)) return "never";
  return `${duration(now - then)} ago`;
}

/** An axis tick: 0.5, 12, 1.2k (three significant digits at most, no float noise). */
export function tick(v) {
  if (!finite(v)) return "";
  if (Math.abs(v) >= 1000) return count(v);
  return String(Number(v.toPrecision(3)));
}

/** A clock time for the time axis: 14:03:20. */
export function clock(unixSeconds) {
  const d = new Date(unixSeconds * 1000);
  return [d.getHours(), d.getMinutes(), d.getSeconds()]
    .map((n) => String(n).padStart(2, "0"))
    .join(":");
}

/** A config reload's outcome (the llama-status:update event's `reload`) as one short line. */
export function reloadText(r) {
  if (!r.ok) return `Config reload failed, the running config stays: ${r.error?.message ?? "unknown error"}`;
  const parts = [
    ["added", r.added],
    ["removed", r.removed],
    ["restarting", r.restarted],
    ["changed", r.changed_live],
  ]
    .filter(([, names]) => names && names.length)
    .map(([what, names]) => `${what} ${names.join(", ")}`);
  const settings = r.settings_live?.length ? [`settings ${r.settings_live.join(", ")}`] : [];
  const all = [...parts, ...settings];
  return `Config reloaded: ${all.length ? all.join("; ") : "no change"}`;
}
