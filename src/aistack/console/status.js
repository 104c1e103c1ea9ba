// Status: per device slots, queue depth and recent slot waits from /ready, and this page's own requests.
import { element, getJson, labelCells, onRequestLogged, requestLog, showError } from "./api.js";

const REFRESH_MS = 3000;
const errorBox = document.getElementById("status-error");
let timer = null;
let visible = false;

export function start() {
  document.getElementById("status-refresh").addEventListener("click", refresh);
  onRequestLogged(() => { if (visible) renderRequests(); });
}

export function shown() {
  visible = true;
  refresh();
  renderRequests();
  timer = setInterval(refresh, REFRESH_MS);
}

export function hidden() {
  visible = false;
  clearInterval(timer);
}

function milliseconds(seconds) {
  return `${(seconds * 1000).toFixed(seconds < 0.01 ? 1 : 0)} ms`;
}

/** The recent slot waits (seconds in /ready) as p50, p95 and max in milliseconds. */
function waits(value) {
  if (value == null) return "none yet";
  if (typeof value === "number") return milliseconds(value);
  return Object.entries(value).map(([name, seconds]) => `${name} ${typeof seconds === "number" ? milliseconds(seconds) : JSON.stringify(seconds)}`).join(", ");
}

function cell(value) {
  return element("td", { text: value == null ? "—" : typeof value === "object" ? (Object.keys(value).length ? JSON.stringify(value) : "nothing") : String(value) });
}

async function refresh() {
  try {
    const ready = await getJson("/ready", true);
    document.getElementById("status-summary").textContent = `${ready.status}, aistack ${ready.version}` +
      (ready.embedded_llm ? `; embedded LLM server ${ready.embedded_llm.state}` : "");
    document.querySelector("#status-devices tbody").replaceChildren(...Object.entries(ready.devices).map(([name, d]) =>
      element("tr", { "data-device": name }, element("th", { scope: "row", text: name }), cell(d.slots), cell(d.busy), cell(d.queued),
        cell(d.queue_size), cell(d.running), element("td", { text: waits(d.slot_wait_s), class: "waits" }), cell(`${d.granted ?? 0} / ${d.rejected ?? 0} / ${d.timed_out ?? 0}`))));
    document.querySelector("#status-engines tbody").replaceChildren(...Object.entries(ready.engines).map(([name, e]) =>
      element("tr", {}, element("th", { scope: "row", text: name }), cell(e.capability), cell(e.state), cell(e.loaded.join(", ") || "—"),
        cell(e.running), missing(e.unavailable))));
    labelCells(document.getElementById("status-devices"));
    labelCells(document.getElementById("status-engines"));
    showError(errorBox, null);
  } catch (error) {
    showError(errorBox, error);
  }
}

function missing(unavailable) {
  const td = element("td");
  if (!unavailable.length) {
    td.textContent = "—";
    return td;
  }
  const list = element("ul", {}, ...unavailable.map((u) => element("li", {}, element("strong", { text: u.model }),
    `: ${u.reason}. Fix: `, element("code", { text: u.fix }))));
  td.append(element("details", {}, element("summary", { text: `${unavailable.length} not servable` }), list));
  return td;
}

function renderRequests() {
  document.querySelector("#status-requests tbody").replaceChildren(...requestLog.map((r) =>
    element("tr", {}, cell(r.time.toLocaleTimeString()), cell(`${r.method} ${r.path}`), cell(r.status), cell(`${r.ms.toFixed(0)} ms`),
      cell(r.model || "—"), cell(r.id || "—"))));
  labelCells(document.getElementById("status-requests"));
}
