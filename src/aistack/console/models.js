// Models: the live inventory joined with /admin/models, with load and unload buttons; refreshes itself.
import { element, getJson, labelCells, models, request, showError } from "./api.js";

const REFRESH_MS = 3000;
const body = document.querySelector("#models-table tbody");
const errorBox = document.getElementById("models-error");
const updated = document.getElementById("models-updated");
let timer = null;
let busy = new Set(); // ids with a load or unload in flight

export function start() {
  document.getElementById("models-refresh").addEventListener("click", refresh);
}

export function shown() {
  refresh();
  timer = setInterval(refresh, REFRESH_MS);
}

export function hidden() {
  clearInterval(timer);
}

function size(bytes) {
  if (bytes == null) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit++; }
  return `${value.toFixed(value < 10 && unit ? 1 : 0)} ${units[unit]}`;
}

function text(value) {
  return value == null || value === "" ? "—" : String(value);
}

async function act(id, verb) {
  busy.add(id);
  render(lastRows);
  try {
    await request(`/admin/models/${id.split("/").map(encodeURIComponent).join("/")}/${verb}`, { method: "POST" });
    showError(errorBox, null);
  } catch (error) {
    showError(errorBox, error);
  } finally {
    busy.delete(id);
    await refresh();
  }
}

let lastRows = [];
let refreshing = null;

export function refresh() {
  refreshing ??= (async () => {
    try {
      const [listed, admin] = await Promise.all([models(), getJson("/admin/models", true)]);
      const rows = new Map(admin.data.map((row) => [row.id, { row }]));
      for (const card of listed) rows.set(card.id, { ...rows.get(card.id), card });
      lastRows = [...rows.entries()];
      render(lastRows);
      updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
      showError(errorBox, null);
    } catch (error) {
      showError(errorBox, error);
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

function render(rows) {
  const focused = document.activeElement?.dataset?.model;
  body.replaceChildren(...rows.map(([id, { card, row }]) => {
    const state = card?.is_routing_alias ? "routes per request" : text(row?.state);
    const action = element("td");
    if (row && !card?.is_routing_alias && ["loaded", "unloaded"].includes(row.state)) {
      const verb = row.state === "loaded" ? "unload" : "load";
      const button = element("button", { type: "button", "data-model": id, "data-verb": verb, text: busy.has(id) ? `${verb}ing…` : verb === "load" ? "Load" : "Unload" });
      button.setAttribute("aria-label", `${verb === "load" ? "Load" : "Unload"} ${id}`);
      button.disabled = busy.has(id);
      button.addEventListener("click", () => act(id, verb));
      action.append(button);
    }
    const tr = element("tr", { "data-model": id },
      element("th", { scope: "row", text: id }),
      element("td", { text: text(card?.owned_by ?? row?.owned_by) }),
      element("td", { text: (card?.capabilities ?? row?.capabilities ?? []).join(", ") }),
      element("td", { text: card?.languages ? (card.languages.length > 6 ? `${card.languages.slice(0, 6).join(", ")} +${card.languages.length - 6}` : card.languages.join(", ")) : "—", title: (card?.languages ?? []).join(", ") }),
      element("td", { text: card ? (card.supports_streaming ? "yes" : "no") : "—" }),
      element("td", { class: `state state-${row?.state ?? "alias"}`, text: state }),
      element("td", { text: text(row?.device) }),
      element("td", { text: size(row?.size_bytes) }),
      element("td", { text: text(row?.in_use) }),
      element("td", { text: row?.expires_in_s == null ? "—" : `${Math.round(row.expires_in_s)} s` }),
      action,
    );
    return tr;
  }));
  labelCells(body.closest("table"));
  if (focused) body.querySelector(`button[data-model="${CSS.escape(focused)}"]`)?.focus();
}
