// Live: the microphone to the Realtime WebSocket (/v1/realtime?intent=transcription, OpenAI's transcription
// protocol): PCM16 at 24 kHz in base64 `input_audio_buffer.append` events; text arrives as
// `conversation.item.input_audio_transcription.delta` / `.completed`, one paragraph per turn (item).
import { apiKey, element, fillSelect, models, showError } from "./api.js";

const RATE = 24000;
const SEND_EVERY_SAMPLES = RATE / 10; // 100 ms of audio per event
const FINISH_TIMEOUT_MS = 15000;
const form = document.getElementById("live-form");
const modelSelect = document.getElementById("live-model");
const languageSelect = document.getElementById("live-language");
const startButton = document.getElementById("live-start");
const stopButton = document.getElementById("live-stop");
const stateLine = document.getElementById("live-state");
const errorBox = document.getElementById("live-error");
const turns = document.getElementById("live-turns");

let socket = null;
let capture = null; // {context, stream, node}
const turnByItem = new Map();

export function start() {
  form.addEventListener("submit", (event) => { event.preventDefault(); listen(); });
  stopButton.addEventListener("click", stop);
}

export async function shown() {
  try {
    const asr = (await models()).filter((m) => m.capabilities.includes("asr"));
    fillSelect(modelSelect, asr.map((m) => [m.id, m.is_routing_alias ? "auto (picks a model)" : m.id]));
    const languages = [...new Set(asr.flatMap((m) => m.languages ?? []))].sort();
    fillSelect(languageSelect, [["", "detect"], ...languages.map((code) => [code, code])]);
  } catch (error) {
    showError(errorBox, error);
  }
}

function setState(text, state) {
  stateLine.textContent = text;
  turns.dataset.state = state;
}

function turnFor(itemId) {
  let turn = turnByItem.get(itemId);
  if (!turn) {
    const text = element("span", { class: "text" });
    const node = element("p", { class: "turn partial", "data-item": itemId },
      element("span", { class: "who", text: `turn ${turnByItem.size + 1}` }), text);
    turns.append(node);
    turn = { node, text };
    turnByItem.set(itemId, turn);
  }
  return turn;
}

function onEvent(message) {
  const event = JSON.parse(message.data);
  switch (event.type) {
    case "input_audio_buffer.speech_started":
      turnFor(event.item_id);
      setState("hearing speech…", "speaking");
      break;
    case "input_audio_buffer.speech_stopped":
      setState("transcribing the turn…", "listening");
      break;
    case "conversation.item.input_audio_transcription.delta":
      turnFor(event.item_id).text.textContent += event.delta;
      break;
    case "conversation.item.input_audio_transcription.completed": {
      const turn = turnFor(event.item_id);
      turn.text.textContent = event.transcript;
      turn.node.classList.remove("partial");
      turn.node.dataset.final = "true";
      setState(capture ? "listening" : "stopped", capture ? "listening" : "stopped");
      if (!capture) socket?.close(1000);
      break;
    }
    case "conversation.item.input_audio_transcription.failed":
    case "error":
      showError(errorBox, new Error(event.error?.message ?? "the live transcription failed"));
      break;
    default:
      break; // session.created, *.updated, input_audio_buffer.committed: nothing to show
  }
}

function base64Pcm16(samples) {
  const pcm = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) pcm[i] = Math.max(-1, Math.min(1, samples[i])) * 0x7fff;
  const bytes = new Uint8Array(pcm.buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

async function openMicrophone() {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false } });
  // The context resamples the microphone to the 24 kHz the protocol's pcm16 means.
  const context = new AudioContext({ sampleRate: RATE });
  await context.audioWorklet.addModule("/console/pcm-worklet.js");
  const node = new AudioWorkletNode(context, "pcm-tap");
  let pending = [];
  let pendingLength = 0;
  node.port.onmessage = ({ data }) => {
    pending.push(data);
    pendingLength += data.length;
    if (pendingLength < SEND_EVERY_SAMPLES || socket?.readyState !== WebSocket.OPEN) return;
    const joined = new Float32Array(pendingLength);
    let offset = 0;
    for (const part of pending) { joined.set(part, offset); offset += part.length; }
    pending = [];
    pendingLength = 0;
    socket.send(JSON.stringify({ type: "input_audio_buffer.append", audio: base64Pcm16(joined) }));
  };
  context.createMediaStreamSource(stream).connect(node);
  return { context, stream, node };
}

function releaseMicrophone() {
  if (!capture) return;
  capture.stream.getTracks().forEach((track) => track.stop());
  capture.node.port.onmessage = null;
  capture.context.close();
  capture = null;
}

async function listen() {
  if (socket) return;
  showError(errorBox, null);
  turns.replaceChildren();
  turnByItem.clear();
  const url = new URL("/v1/realtime?intent=transcription", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const key = apiKey();
  // Browsers cannot set headers on a WebSocket: the key travels as a subprotocol, as OpenAI's SDK sends it.
  const opened = key ? new WebSocket(url, ["realtime", `openai-insecure-api-key.${key}`]) : new WebSocket(url);
  socket = opened;
  let wasOpen = false;
  startButton.disabled = true;
  stopButton.disabled = false;
  setState("connecting…", "connecting");
  opened.addEventListener("message", onEvent);
  opened.addEventListener("open", async () => {
    wasOpen = true;
    const transcription = { model: modelSelect.value || "auto" };
    if (languageSelect.value) transcription.language = languageSelect.value;
    opened.send(JSON.stringify({
      type: "transcription_session.update",
      session: { input_audio_format: "pcm16", input_audio_transcription: transcription, turn_detection: { type: "server_vad" } },
    }));
    try {
      capture = await openMicrophone();
      setState("listening", "listening");
    } catch (error) {
      showError(errorBox, new Error(`the microphone could not be opened (${error.message}); allow microphone access for this page`));
      opened.close(1000);
    }
  });
  opened.addEventListener("close", (event) => {
    releaseMicrophone();
    if (socket === opened) socket = null;
    startButton.disabled = false;
    stopButton.disabled = true;
    if (!wasOpen) {
      showError(errorBox, new Error("this gateway does not serve the Realtime WebSocket /v1/realtime (live transcription), " +
        "or refused the connection; use the Transcribe tab, or run an aistack version that serves /v1/realtime"));
      setState("not available", "unavailable");
    } else {
      if (event.code !== 1000 && event.code !== 1005) {
        showError(errorBox, new Error(`the live connection closed (${event.code}${event.reason ? `: ${event.reason}` : ""})`));
      }
      setState("stopped", "stopped");
    }
  });
}

function stop() {
  releaseMicrophone();
  if (socket?.readyState === WebSocket.OPEN) {
    // What was said since the last pause is transcribed as one more turn; the socket closes when it arrives.
    socket.send(JSON.stringify({ type: "input_audio_buffer.commit" }));
    setState("finishing the last turn…", "finishing");
    const finishing = socket;
    // Nothing left to transcribe gets no last turn: then close anyway.
    setTimeout(() => { if (finishing.readyState === WebSocket.OPEN) finishing.close(1000); }, FINISH_TIMEOUT_MS);
  } else {
    socket?.close(1000);
  }
  stopButton.disabled = true;
}
