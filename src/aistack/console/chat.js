// Chat with any listed LLM, streamed; embeddings of two texts and their cosine similarity.
import { element, fillSelect, models, postJson, serverEvents, showError } from "./api.js";

const chatForm = document.getElementById("chat-form");
const chatModel = document.getElementById("chat-model");
const chatInput = document.getElementById("chat-input");
const chatLog = document.getElementById("chat-log");
const chatError = document.getElementById("chat-error");
const sendButton = document.getElementById("chat-send");
const stopButton = document.getElementById("chat-stop");
const embedForm = document.getElementById("embed-form");
const embedModel = document.getElementById("embed-model");
const embedError = document.getElementById("embed-error");
const embedResult = document.getElementById("embed-result");

let history = [];
let running = null; // the AbortController of the answer streaming now

export function start() {
  chatForm.addEventListener("submit", (event) => { event.preventDefault(); send(); });
  chatInput.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); send(); }
  });
  stopButton.addEventListener("click", () => running?.abort());
  document.getElementById("chat-clear").addEventListener("click", () => { history = []; chatLog.replaceChildren(); });
  embedForm.addEventListener("submit", (event) => { event.preventDefault(); compare(); });
}

export async function shown() {
  try {
    const listed = await models();
    const llms = listed.filter((m) => m.capabilities.includes("llm"));
    fillSelect(chatModel, llms.map((m) => [m.id, m.id]));
    if (!llms.length) showError(chatError, new Error("no LLM is listed: start Ollama, configure an upstream or set llm.embedded.gguf"));
    // Embedding models first; the others stay pickable so that the gateway can say which models can embed.
    const embedders = listed.filter((m) => m.capabilities.includes("embeddings"));
    fillSelect(embedModel, [...embedders, ...llms.filter((m) => !embedders.includes(m))].map((m) => [m.id, m.id]));
  } catch (error) {
    showError(chatError, error);
  }
}

function bubble(role, text) {
  const body = element("span", { class: "text", text });
  const node = element("div", { class: `message ${role}` }, element("span", { class: "who", text: role === "user" ? "You" : chatModel.value }), body);
  chatLog.append(node);
  return body;
}

async function send() {
  const content = chatInput.value.trim();
  if (!content || running) return;
  showError(chatError, null);
  history.push({ role: "user", content });
  bubble("user", content);
  chatInput.value = "";
  const answer = bubble("assistant", "");
  answer.parentElement.dataset.state = "streaming";
  running = new AbortController();
  sendButton.disabled = true;
  stopButton.disabled = false;
  try {
    const response = await postJson("/v1/chat/completions", { model: chatModel.value, messages: history, stream: true }, { signal: running.signal });
    for await (const { data } of serverEvents(response)) {
      if (data === "[DONE]") break;
      if (data.error) throw new Error(data.error.message);
      answer.textContent += data.choices?.[0]?.delta?.content ?? "";
    }
    history.push({ role: "assistant", content: answer.textContent });
  } catch (error) {
    if (error.name === "AbortError") history.push({ role: "assistant", content: answer.textContent });
    else { history.pop(); showError(chatError, error); }
  } finally {
    answer.parentElement.dataset.state = "done";
    running = null;
    sendButton.disabled = false;
    stopButton.disabled = true;
  }
}

export function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  return dot / Math.sqrt(na * nb);
}

async function compare() {
  showError(embedError, null);
  embedResult.textContent = "embedding…";
  try {
    const response = await postJson("/v1/embeddings", {
      model: embedModel.value, input: [document.getElementById("embed-a").value, document.getElementById("embed-b").value],
    });
    const { data } = await response.json();
    const [a, b] = [...data].sort((x, y) => x.index - y.index).map((d) => d.embedding);
    embedResult.textContent = `cosine similarity ${cosine(a, b).toFixed(4)} (${a.length} dimensions)`;
  } catch (error) {
    embedResult.textContent = "";
    showError(embedError, error);
  }
}
