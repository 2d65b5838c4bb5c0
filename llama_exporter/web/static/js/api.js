// The service's HTTP API and its WebSocket, as the page uses them.
//
// The API token (when the service has one) is asked for once, on the first 401,
// and kept in sessionStorage for this tab. It travels as an Authorization header
// on fetches and as the WebSocket's first message, never in a URL.

import { backoffDelay } from "./series.js";

export const PREFIX = "/api/v1/llama";
const TOKEN_KEY = "llama-exporter.api-token";
const AUTH_FAILED = 4401; // WebSocket close code for a missing or wrong token
const OFFLINE_AFTER = 4; // failed reconnects before the indicator says offline

/** An error answer of the API: status, its message, and its details (field, running, cap). */
export class ApiError extends Error {
  constructor(status, message, details = {}) {
    super(message);
    this.status = status;
    this.details = details;
  }
}

function storedToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null; // storage disabled: the token is asked for again after a reload
  }
}

let memoryToken = null;

function currentToken() {
  return storedToken() ?? memoryToken;
}

function keepToken(value) {
  memoryToken = value;
  try {
    if (value === null) sessionStorage.removeItem(TOKEN_KEY);
    else sessionStorage.setItem(TOKEN_KEY, value);
  } catch {
    // memoryToken holds it
  }
}

let pendingPrompt = null;

/** Ask for the token in the page's dialog; every caller waiting meanwhile shares one prompt. */
function askToken(reason) {
  if (pendingPrompt) return pendingPrompt;
  pendingPrompt = new Promise((resolve) => {
    const dialog = document.getElementById("token-dialog");
    const form = document.getElementById("token-form");
    const input = document.getElementById("token-input");
    const error = document.getElementById("token-error");
    error.textContent = reason;
    input.value = "";
    const onCancel = (ev) => ev.preventDefault(); // nothing works without it: keep asking
    const onSubmit = (ev) => {
      ev.preventDefault();
      const value = input.value.trim();
      if (!value) {
        error.textContent = "Enter the token.";
        return;
      }
      keepToken(value);
      form.removeEventListener("submit", onSubmit);
      dialog.removeEventListener("cancel", onCancel);
      dialog.close();
      pendingPrompt = null;
      resolve(value);
    };
    form.addEventListener("submit", onSubmit);
    dialog.addEventListener("cancel", onCancel);
    dialog.showModal();
    input.focus();
  });
  return pendingPrompt;
}

/** One API call: JSON in (always, for a POST: the service refuses other bodies), JSON out. */
export async function request(method, path, body) {
  for (let attempt = 0; ; attempt += 1) {
    const headers = { Accept: "application/json" };
    const token = currentToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    const init = { method, headers, cache: "no-store", credentials: "same-origin" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(PREFIX + path, init);
    } catch (err) {
      throw new ApiError(0, `cannot reach the service (${err.message})`);
    }
    const data = await resp.json().catch(() => null);
    if (resp.status === 401 && attempt < 3) {
      keepToken(null);
      await askToken(token ? "That token was refused: enter the right one." : "");
      continue;
    }
    if (!resp.ok) {
      const err = data && typeof data.error === "object" && data.error ? data.error : {};
      throw new ApiError(resp.status, err.message || `${resp.status} ${resp.statusText}`, err);
    }
    return data;
  }
}

export const api = {
  get: (path) => request("GET", path),
  post: (path, body = {}) => request("POST", path, body),
  del: (path) => request("DELETE", path),
};

/** Path segment for a model name. */
export const modelPath = (name) => `/models/${encodeURIComponent(name)}`;

/**
 * The live event stream: reconnects with back-off and reports its state
 * ("connecting", "live", "reconnecting", "offline") to onState.
 */
export class LiveSocket {
  constructor({ onEvent, onState, onOpen }) {
    this.onEvent = onEvent;
    this.onState = onState;
    this.onOpen = onOpen;
    this.ws = null;
    this.failures = 0;
    this.timer = null;
    this.state = "connecting";
    window.addEventListener("online", () => this.reconnectNow());
    window.addEventListener("offline", () => this._setState("offline"));
  }

  start() {
    this._connect();
  }

  /** Drop any wait and try at once (the browser says the network is back). */
  reconnectNow() {
    if (this.ws !== null) return;
    clearTimeout(this.timer);
    this._connect();
  }

  _setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.onState(state);
  }

  _connect() {
    this.timer = null;
    const url = new URL(PREFIX + "/ws", window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(url.href);
    this.ws = ws;
    ws.addEventListener("open", () => {
      const token = currentToken();
      if (token) ws.send(JSON.stringify({ type: "auth", token }));
      this.failures = 0;
      this._setState("live");
      this.onOpen();
    });
    ws.addEventListener("message", (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (msg && typeof msg.type === "string" && msg.type !== "error") this.onEvent(msg);
    });
    ws.addEventListener("close", (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (ev.code === AUTH_FAILED) {
        keepToken(null);
        this._setState("reconnecting");
        askToken("The live stream needs the API token.").then(() => this._connect());
        return;
      }
      this._retry();
    });
  }

  _retry() {
    const delay = backoffDelay(this.failures);
    this.failures += 1;
    const offline = this.failures > OFFLINE_AFTER || navigator.onLine === false;
    this._setState(offline ? "offline" : "reconnecting");
    this.timer = setTimeout(() => this._connect(), delay * 1000);
  }
}
