// Speak: text to speech with model and voice pickers. mp3 plays while it streams (Media Source Extensions,
// appending each chunk as it arrives); the other formats play once the last byte is in. Download either way.
import { fillSelect, getJson, models, postJson, showError } from "./api.js";

const form = document.getElementById("speak-form");
const modelSelect = document.getElementById("speak-model");
const voiceSelect = document.getElementById("speak-voice");
const formatSelect = document.getElementById("speak-format");
const speed = document.getElementById("speak-speed");
const speedValue = document.getElementById("speak-speed-value");
const audio = document.getElementById("speak-audio");
const link = document.getElementById("speak-download");
const stateLine = document.getElementById("speak-state");
const errorBox = document.getElementById("speak-error");
const MIME = { mp3: "audio/mpeg", wav: "audio/wav", opus: "audio/ogg", aac: "audio/aac", flac: "audio/flac" };

export function start() {
  modelSelect.addEventListener("change", loadVoices);
  speed.addEventListener("input", () => { speedValue.textContent = Number(speed.value).toFixed(2); });
  form.addEventListener("submit", (event) => { event.preventDefault(); speak(); });
}

export async function shown() {
  try {
    const tts = (await models()).filter((m) => m.capabilities.includes("tts"));
    fillSelect(modelSelect, tts.map((m) => [m.id, m.id]));
    await loadVoices();
  } catch (error) {
    showError(errorBox, error);
  }
}

async function loadVoices() {
  if (!modelSelect.value) {
    fillSelect(voiceSelect, []);
    return;
  }
  try {
    const list = await getJson(`/v1/audio/voices?model=${encodeURIComponent(modelSelect.value)}`, true);
    fillSelect(voiceSelect, list.voices.map((v) => [v.id, v.name === v.id ? v.id : `${v.name} (${v.id})`]));
  } catch (error) {
    showError(errorBox, error);
  }
}

function appended(buffer, chunk) {
  return new Promise((resolve, reject) => {
    buffer.addEventListener("updateend", resolve, { once: true });
    buffer.addEventListener("error", () => reject(new Error("the browser could not decode the audio stream")), { once: true });
    buffer.appendBuffer(chunk);
  });
}

async function speak() {
  const format = formatSelect.value;
  const button = document.getElementById("speak-go");
  button.disabled = true;
  showError(errorBox, null);
  link.hidden = true;
  audio.dataset.state = "requesting";
  stateLine.textContent = "synthesizing…";
  const chunks = [];
  try {
    const response = await postJson("/v1/audio/speech", {
      model: modelSelect.value, voice: voiceSelect.value, input: document.getElementById("speak-input").value,
      response_format: format, speed: Number(speed.value),
    });
    const reader = response.body.getReader();
    const streamed = format === "mp3" && window.MediaSource && MediaSource.isTypeSupported(MIME.mp3);
    if (streamed) {
      const source = new MediaSource();
      audio.src = URL.createObjectURL(source);
      await new Promise((resolve) => source.addEventListener("sourceopen", resolve, { once: true }));
      const buffer = source.addSourceBuffer(MIME.mp3);
      buffer.mode = "sequence";
      audio.dataset.state = "streaming";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        chunks.push(value);
        await appended(buffer, value);
        if (chunks.length === 1) {
          stateLine.textContent = "playing while the rest streams in…";
          audio.play().catch(() => { stateLine.textContent = "streaming; press play to listen"; });
        }
      }
      source.endOfStream();
    } else {
      audio.dataset.state = "streaming";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        chunks.push(value);
      }
      audio.src = URL.createObjectURL(new Blob(chunks, { type: MIME[format] }));
      audio.play().catch(() => {});
    }
    const blob = new Blob(chunks, { type: MIME[format] });
    if (link.href) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(blob);
    link.download = `speech.${format}`;
    link.textContent = `Download speech.${format} (${(blob.size / 1024).toFixed(0)} KB)`;
    link.hidden = false;
    if (!Number.isFinite(audio.duration)) {
      await new Promise((resolve) => audio.addEventListener("durationchange", resolve, { once: true }));
    }
    stateLine.textContent = `done: ${audio.duration.toFixed(2)} s of audio`;
    audio.dataset.state = "done";
  } catch (error) {
    audio.dataset.state = "failed";
    stateLine.textContent = "";
    showError(errorBox, error);
  } finally {
    button.disabled = false;
  }
}
