// Transcribe: a file or a microphone recording, an ASR model picked by language, deltas as they stream in.
import { download, fillSelect, models, request, serverEvents, showError } from "./api.js";

const form = document.getElementById("transcribe-form");
const fileInput = document.getElementById("transcribe-file");
const recordButton = document.getElementById("transcribe-record");
const recordedNote = document.getElementById("transcribe-recorded");
const languageSelect = document.getElementById("transcribe-language");
const modelSelect = document.getElementById("transcribe-model");
const formatSelect = document.getElementById("transcribe-format");
const output = document.getElementById("transcribe-output");
const stateLine = document.getElementById("transcribe-state");
const errorBox = document.getElementById("transcribe-error");
const srtButton = document.getElementById("transcribe-srt");
const vttButton = document.getElementById("transcribe-vtt");

let asrModels = [];
let recorded = null; // a Blob from the microphone, used instead of the file while set
let recorder = null;
let segments = [];
let baseName = "transcript";

export function start() {
  languageSelect.addEventListener("change", pickModels);
  fileInput.addEventListener("change", () => { recorded = null; recordedNote.textContent = ""; });
  recordButton.addEventListener("click", toggleRecording);
  form.addEventListener("submit", (event) => { event.preventDefault(); transcribe(); });
  srtButton.addEventListener("click", () => download(`${baseName}.srt`, new Blob([subtitles("srt")], { type: "application/x-subrip" })));
  vttButton.addEventListener("click", () => download(`${baseName}.vtt`, new Blob([subtitles("vtt")], { type: "text/vtt" })));
}

let servedSubtitles = null; // {kind, text} when the gateway answered srt or vtt itself

export async function shown() {
  try {
    asrModels = (await models()).filter((m) => m.capabilities.includes("asr"));
    const languages = [...new Set(asrModels.flatMap((m) => m.languages ?? []))].sort();
    fillSelect(languageSelect, [["", "detect"], ...languages.map((code) => [code, code])]);
    pickModels();
  } catch (error) {
    showError(errorBox, error);
  }
}

export function pickModels() {
  const language = languageSelect.value;
  const fitting = asrModels.filter((m) => m.is_routing_alias || !language || !m.languages || m.languages.includes(language));
  fillSelect(modelSelect, fitting.map((m) => [m.id, m.is_routing_alias ? "auto (picks a model per request)" : m.id]));
}

export async function toggleRecording() {
  if (recorder) {
    recorder.stop();
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const chunks = [];
    recorder = new MediaRecorder(stream);
    const startedAt = performance.now();
    recorder.addEventListener("dataavailable", (event) => {
      chunks.push(event.data);
      if (recorder?.state === "recording") {
        const seconds = (performance.now() - startedAt) / 1000;
        recordedNote.dataset.seconds = seconds.toFixed(1);
        recordedNote.textContent = `recording… ${seconds.toFixed(1)} s`;
      }
    });
    recorder.addEventListener("stop", () => {
      stream.getTracks().forEach((track) => track.stop());
      recorded = new Blob(chunks, { type: recorder.mimeType });
      recorder = null;
      recordButton.textContent = "Record from microphone";
      recordedNote.textContent = `recorded ${recordedNote.dataset.seconds ?? 0} s; Transcribe uses it`;
      recordedNote.dataset.state = "recorded";
    });
    recorder.start(250); // a chunk every 250 ms, so the elapsed time shows while recording
    delete recordedNote.dataset.state;
    recordButton.textContent = "Stop recording";
    recordedNote.textContent = "recording…";
    showError(errorBox, null);
  } catch (error) {
    showError(errorBox, new Error(`the microphone could not be opened (${error.message}); allow microphone access for this page`));
  }
}

async function transcribe() {
  const file = recorded ?? fileInput.files[0];
  if (!file) {
    showError(errorBox, new Error("choose an audio file or record from the microphone first"));
    return;
  }
  baseName = (file.name ?? "recording").replace(/\.[^.]+$/, "") || "transcript";
  const streaming = formatSelect.value === "stream";
  const body = new FormData();
  servedSubtitles = null;
  body.append("file", file, file.name ?? "recording.webm");
  body.append("model", modelSelect.value || "auto");
  if (languageSelect.value) body.append("language", languageSelect.value);
  body.append("response_format", streaming ? "json" : formatSelect.value);
  if (streaming) body.append("stream", "true");
  output.textContent = "";
  delete output.dataset.deltas;
  segments = [];
  srtButton.disabled = vttButton.disabled = true;
  showError(errorBox, null);
  stateLine.textContent = "transcribing…";
  const button = document.getElementById("transcribe-go");
  button.disabled = true;
  try {
    const response = await request("/v1/audio/transcriptions", { method: "POST", body });
    const served = response.headers.get("x-aistack-model");
    if (streaming) {
      for await (const { event, data } of serverEvents(response)) {
        if (event === "transcript.text.delta") {
          output.textContent += data.delta;
          output.dataset.deltas = String(Number(output.dataset.deltas ?? 0) + 1);
        }
        else if (event === "transcript.text.segment") segments.push(data);
        else if (event === "transcript.text.done") output.textContent = data.text;
        else if (event === "warning") stateLine.textContent = data.message;
        else if (event === "error") throw new Error(data.error.message);
      }
    } else if (formatSelect.value.endsWith("json")) {
      const answer = await response.json();
      output.textContent = formatSelect.value === "json" ? answer.text : JSON.stringify(answer, null, 2);
      segments = answer.segments ?? [];
    } else {
      output.textContent = await response.text();
      if (["srt", "vtt"].includes(formatSelect.value)) {
        servedSubtitles = { kind: formatSelect.value, text: output.textContent };
        (servedSubtitles.kind === "srt" ? srtButton : vttButton).disabled = false;
      }
    }
    if (segments.length) srtButton.disabled = vttButton.disabled = false;
    stateLine.textContent = `done${served ? ` by ${served}` : ""}`;
  } catch (error) {
    showError(errorBox, error);
    stateLine.textContent = "";
  } finally {
    button.disabled = false;
  }
}

function stamp(seconds, separator) {
  const ms = Math.round(seconds * 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(Math.floor(ms / 3600000))}:${pad(Math.floor(ms / 60000) % 60)}:${pad(Math.floor(ms / 1000) % 60)}${separator}${pad(ms % 1000, 3)}`;
}

/** SRT or WebVTT from the segments the stream (or verbose_json) gave, with their times. */
export function subtitles(kind) {
  if (servedSubtitles?.kind === kind) return servedSubtitles.text;
  const cues = segments.map((s, i) => {
    const times = `${stamp(s.start, kind === "srt" ? "," : ".")} --> ${stamp(s.end, kind === "srt" ? "," : ".")}`;
    return `${kind === "srt" ? `${i + 1}\n` : ""}${times}\n${s.text.trim()}\n`;
  });
  return (kind === "vtt" ? "WEBVTT\n\n" : "") + cues.join("\n");
}
