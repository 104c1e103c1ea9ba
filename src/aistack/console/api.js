// Talking to the gateway on this page's own origin: the API key, the error envelope, SSE, the request log.

const KEY_STORAGE = "aistack.apiKey";
const LOG_LIMIT = 50;

export const requestLog = [];
const logListeners = new Set();
let pendingKey = null; // one question at a time, however many requests answered 401 meanwhile

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

export class ApiError extends Error {
  constructor(message, status, envelope) {
    super(message);
    this.status = status;
    this.envelope = envelope;
  }
}

export function onRequestLogged(listener) {
  logListeners.add(listener);
}

function logRequest(entry) {
  requestLog.unshift(entry);
  requestLog.length = Math.min(requestLog.length, LOG_LIMIT);
  for (const listener of logListeners) listener();
}

function askForKey(refused) {
  if (pendingKey) return pendingKey;
  document.getElementById("key-refused").hidden = !refused;
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  const cancel = document.getElementById("key-cancel");
  pendingKey = new Promise((resolve) => {
    const finish = (key) => {
      dialog.removeEventListener("close", onClose);
      cancel.removeEventListener("click", onCancel);
      pendingKey = null;
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      resolve(key);
    };
    const onClose = () => finish(dialog.returnValue === "ok" ? input.value.trim() : "");
    const onCancel = () => { dialog.returnValue = "cancel"; dialog.close(); };
    dialog.addEventListener("close", onClose);
    cancel.addEventListener("click", onCancel);
    input.value = "";
    dialog.returnValue = "";
    dialog.showModal();
    input.focus();
  });
  return pendingKey;
}

/** fetch() on this origin with the tab's key; a 401 asks for the key once and retries with it. */
export async function request(path, init = {}) {
  for (;;) {
    const headers = new Headers(init.headers || {});
    const key = apiKey();
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const started = performance.now();
    const entry = { time: new Date(), method: init.method || "GET", path, status: 0, ms: 0, model: "", id: "" };
    let response;
    try {
      const { quiet: _quiet, ...options } = init;
      response = await fetch(path, { ...options, headers });
    } catch (error) {
      entry.status = error.name === "AbortError" ? "stopped" : "failed";
      entry.ms = performance.now() - started;
      logRequest(entry);
      if (error.name === "AbortError") throw error;
      throw new ApiError(`the gateway could not be reached (${error.message}); is aistack still running?`, 0, null);
    }
    entry.status = response.status;
    entry.ms = performance.now() - started;
    entry.model = response.headers.get("x-aistack-model") || "";
    entry.id = response.headers.get("x-request-id") || "";
    if (!init.quiet || !response.ok) logRequest(entry);
    if (response.status === 401) {
      if (key) sessionStorage.removeItem(KEY_STORAGE); // the one we held is wrong
      const given = await askForKey(Boolean(key));
      if (given) continue; // until a key works or the question is cancelled
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }
}

export async function errorOf(response) {
  const body = await response.text();
  try {
    const envelope = JSON.parse(body).error;
    if (envelope && envelope.message) return new ApiError(envelope.message, response.status, envelope);
  } catch {
    // not the envelope: an upstream's own words, shown as they are
  }
  return new ApiError(body || `HTTP ${response.status}`, response.status, null);
}

/** GET a JSON body; `quiet` keeps a background refresh out of the request log unless it fails. */
export async function getJson(path, quiet = false) {
  return (await request(path, { quiet })).json();
}

export async function postJson(path, body, init = {}) {
  return request(path, { ...init, method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

/** The events of a text/event-stream body, as {event, data} with data parsed when it is JSON. */
export async function* serverEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffered.indexOf("\n\n")) >= 0) {
      const block = buffered.slice(0, end);
      buffered = buffered.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (!data.length) continue;
      const text = data.join("\n");
      let parsed = text;
      try { parsed = JSON.parse(text); } catch { /* [DONE] and other plain data */ }
      yield { event, data: parsed };
    }
  }
}

export function showError(element, error) {
  if (!error) {
    element.hidden = true;
    element.textContent = "";
    return;
  }
  element.textContent = error.message || String(error);
  element.hidden = false;
}

export function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

export function fillSelect(select, options, keep = true) {
  const previous = select.value;
  select.replaceChildren(...options.map(([value, label]) => element("option", { value, text: label })));
  if (keep && options.some(([value]) => value === previous)) select.value = previous;
}

let inventoryCache = null;

/** /v1/models, shared by the pickers; fresh on every call but one in flight at a time. */
export function models() {
  if (!inventoryCache) {
    inventoryCache = getJson("/v1/models", true).then((list) => list.data).finally(() => { inventoryCache = null; });
  }
  return inventoryCache;
}

export function download(filename, blob) {
  const link = element("a", { href: URL.createObjectURL(blob), download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
}

/** Each cell carries its column's name, so that narrow screens can show the rows as labelled cards. */
export function labelCells(table) {
  const names = [...table.querySelectorAll("thead th")].map((th) => th.textContent);
  for (const row of table.querySelectorAll("tbody tr")) {
    [...row.children].forEach((cell, index) => cell.setAttribute("data-label", names[index] ?? ""));
  }
}
