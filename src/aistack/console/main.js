// Tabs: each section's module starts when its tab is first shown and hears when it is shown or hidden.
import * as modelsTab from "./models.js";
import * as transcribeTab from "./transcribe.js";
import * as liveTab from "./live.js";
import * as speakTab from "./speak.js";
import * as chatTab from "./chat.js";
import * as statusTab from "./status.js";

const sections = { models: modelsTab, transcribe: transcribeTab, live: liveTab, speak: speakTab, chat: chatTab, status: statusTab };
const started = new Set();
const tabs = [...document.querySelectorAll('[role="tab"]')];
let current = null;

function show(name, focus = false) {
  if (current === name) return;
  for (const tab of tabs) {
    const selected = tab.id === `tab-${name}`;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
    document.getElementById(tab.getAttribute("aria-controls")).hidden = !selected;
    if (selected && focus) tab.focus();
  }
  if (current) sections[current].hidden?.();
  current = name;
  if (!started.has(name)) {
    started.add(name);
    sections[name].start();
  }
  sections[name].shown?.();
  history.replaceState(null, "", `#${name}`);
}

for (const [index, tab] of tabs.entries()) {
  const name = tab.id.slice("tab-".length);
  tab.addEventListener("click", () => show(name));
  // The tab list's arrow keys, as the WAI-ARIA tabs pattern has them.
  tab.addEventListener("keydown", (event) => {
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (event.key === "Home" || event.key === "End" || step) {
      event.preventDefault();
      const next = event.key === "Home" ? 0 : event.key === "End" ? tabs.length - 1 : (index + step + tabs.length) % tabs.length;
      show(tabs[next].id.slice("tab-".length), true);
    }
  });
}

const wanted = location.hash.slice(1);
show(wanted in sections ? wanted : "models");
