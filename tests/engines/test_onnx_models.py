"""The generated ONNX models (tests/onnx_models.py) against the real sherpa-onnx runtime: their layout
is the one the runtime expects of the real exports, and SenseVoice, Parakeet TDT and Silero VAD all
load, decode and segment for real on them (docs/contributing.md). Text content is not asserted (random weights);
structure, tags, timings and segmentation are."""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import onnx
import pytest
import sherpa_onnx

from onnx_models import (  # noqa: F401  (fixtures)
    PARAKEET_FILES,
    SAMPLE_RATE,
    SENSEVOICE_LANGUAGES,
    SENSEVOICE_LID,
    SENSEVOICE_MODEL,
    SENSEVOICE_TEXTNORM,
    generated_onnx_models,
    make_parakeet_tdt,
    make_sensevoice,
    make_silero_vad,
    parakeet_folder,
    parakeet_tokens,
    sensevoice_folder,
    sensevoice_tokens,
    silence,
    silero_vad_path,
    speech_like,
)

LANGUAGE_TAGS = {f"<|{code}|>" for code in SENSEVOICE_LANGUAGES} | {"<|nospeech|>"}
PARAKEET_FRAME_S = 0.08
SENSEVOICE_FRAME_S = 0.06
VAD_WINDOW = 512


# -- helpers --------------------------------------------------------------------------------------


def utterance() -> np.ndarray:
    """3 s at 16 kHz: 0.5 s silence, 2 s speech-like sound, 0.5 s silence."""
    return np.concatenate([silence(0.5), speech_like(2.0, seed=1), silence(0.5)])


def sense_voice(folder: Path, **kwargs):
    args = {"use_itn": True, "language": "auto", "num_threads": 1, "provider": "cpu"} | kwargs
    return sherpa_onnx.OfflineRecognizer.from_sense_voice(
        model=str(folder / SENSEVOICE_MODEL), tokens=str(folder / "tokens.txt"), **args
    )


def parakeet(folder: Path, **kwargs):
    args = {"model_type": "nemo_transducer", "num_threads": 1, "provider": "cpu"} | kwargs
    return sherpa_onnx.OfflineRecognizer.from_transducer(
        encoder=str(folder / "encoder.int8.onnx"), decoder=str(folder / "decoder.int8.onnx"),
        joiner=str(folder / "joiner.int8.onnx"), tokens=str(folder / "tokens.txt"), **args,
    )  # fmt: skip


def decode(recognizer, audio: np.ndarray):
    stream = recognizer.create_stream()
    stream.accept_waveform(SAMPLE_RATE, audio)
    recognizer.decode_stream(stream)
    return stream.result


def vad_segments(model: Path, audio: np.ndarray, chunk: int = VAD_WINDOW) -> list[tuple[float, float]]:
    """(start s, duration s) of each segment, feeding the VAD `chunk` samples at a time."""
    config = sherpa_onnx.VadModelConfig(
        silero_vad=sherpa_onnx.SileroVadModelConfig(model=str(model), threshold=0.5, min_silence_duration=0.5,
                                                    min_speech_duration=0.25, window_size=VAD_WINDOW),
        sample_rate=SAMPLE_RATE, num_threads=1,
    )  # fmt: skip
    vad = sherpa_onnx.VoiceActivityDetector(config, buffer_size_in_seconds=30)
    segments = []

    def drain() -> None:
        while not vad.empty():
            segments.append((vad.front.start / SAMPLE_RATE, len(vad.front.samples) / SAMPLE_RATE))
            vad.pop()

    for offset in range(0, len(audio), chunk):
        vad.accept_waveform(audio[offset : offset + chunk])
        drain()
    vad.flush()
    drain()
    return segments


def metadata(path: Path) -> dict[str, str]:
    return {entry.key: entry.value for entry in onnx.load(str(path)).metadata_props}


def io(path: Path) -> tuple[list[tuple[str, int, list]], list[tuple[str, int, list]]]:
    """(name, element type, dims) of the inputs and outputs; a dim is an int or its symbolic name."""
    graph = onnx.load(str(path)).graph

    def describe(values) -> list[tuple[str, int, list]]:
        return [
            (v.name, v.type.tensor_type.elem_type,
             [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim])
            for v in values
        ]  # fmt: skip

    return describe(graph.input), describe(graph.output)


def non_decreasing(values) -> bool:
    return all(b >= a for a, b in zip(values, values[1:], strict=False))


# -- generation and layout --------------------------------------------------------------------------


def test_generation_writes_the_real_file_names_and_small_files(tmp_path: Path) -> None:
    make_sensevoice(tmp_path / "sv")
    make_parakeet_tdt(tmp_path / "pk")
    vad4 = make_silero_vad(tmp_path / "vad4")
    vad5 = make_silero_vad(tmp_path / "vad5" / "silero_vad.onnx", version=5)
    assert sorted(p.name for p in (tmp_path / "sv").iterdir()) == ["model.int8.onnx", "tokens.txt"]
    assert sorted(p.name for p in (tmp_path / "pk").iterdir()) == sorted(PARAKEET_FILES)
    assert vad4 == tmp_path / "vad4" / "silero_vad.onnx" and vad4.is_file() and vad5.is_file()
    total = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert total < 1_000_000


def test_sensevoice_layout_matches_the_sherpa_onnx_export(sensevoice_folder: Path) -> None:  # noqa: F811 - a fixture from onnx_models
    f, i = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32
    tokens = sensevoice_tokens()
    inputs, outputs = io(sensevoice_folder / SENSEVOICE_MODEL)
    assert inputs == [
        ("x", f, ["N", "T", 560]), ("x_length", i, ["N"]), ("language", i, ["N"]), ("text_norm", i, ["N"]),
    ]  # fmt: skip
    assert [(name, kind) for name, kind, _ in outputs] == [("logits", f)]
    assert outputs[0][2][0] == "N" and outputs[0][2][2] == len(tokens)
    meta = metadata(sensevoice_folder / SENSEVOICE_MODEL)
    assert int(meta["vocab_size"]) == len(tokens)
    assert (meta["lfr_window_size"], meta["lfr_window_shift"], meta["normalize_samples"]) == ("7", "6", "0")
    assert len(meta["neg_mean"].split(",")) == 560 and len(meta["inv_stddev"].split(",")) == 560
    assert {code: int(meta[f"lang_{code}"]) for code in SENSEVOICE_LID} == SENSEVOICE_LID
    assert int(meta["with_itn"]) == SENSEVOICE_TEXTNORM["withitn"]
    assert int(meta["without_itn"]) == SENSEVOICE_TEXTNORM["woitn"]
    assert meta["model_type"] == "sense_voice_ctc" and "Nano" not in meta["comment"]
    lines = (sensevoice_folder / "tokens.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "<unk> 0" and [line.rsplit(" ", 1)[0] for line in lines] == tokens
    for tag in ("<|zh|>", "<|en|>", "<|yue|>", "<|ja|>", "<|ko|>", "<|nospeech|>", "<|NEUTRAL|>", "<|Speech|>",
                "<|withitn|>", "<|woitn|>"):  # fmt: skip
        assert tag in tokens


def test_parakeet_layout_matches_the_sherpa_onnx_export(parakeet_folder: Path) -> None:  # noqa: F811 - a fixture from onnx_models
    f, i32, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32, onnx.TensorProto.INT64
    tokens = parakeet_tokens()
    vocab = len(tokens) - 1
    enc_in, enc_out = io(parakeet_folder / "encoder.int8.onnx")
    assert [(n, t) for n, t, _ in enc_in] == [("audio_signal", f), ("length", i64)]
    assert enc_in[0][2][1] == 128
    assert [(n, t) for n, t, _ in enc_out] == [("outputs", f), ("encoded_lengths", i64)]
    dec_in, dec_out = io(parakeet_folder / "decoder.int8.onnx")
    assert [(n, t) for n, t, _ in dec_in] == [
        ("targets", i32), ("target_length", i32), ("states.1", f), ("onnx::Slice_3", f),
    ]  # fmt: skip
    assert [(n, t) for n, t, _ in dec_out] == [("outputs", f), ("prednet_lengths", i32), ("states", f), ("162", f)]
    join_in, join_out = io(parakeet_folder / "joiner.int8.onnx")
    assert [(n, t) for n, t, _ in join_in] == [("encoder_outputs", f), ("decoder_outputs", f)]
    assert [(n, t) for n, t, _ in join_out] == [("outputs", f)] and join_out[0][2][-1] == vocab + 1 + 5
    meta = metadata(parakeet_folder / "encoder.int8.onnx")
    assert int(meta["vocab_size"]) == vocab
    assert (meta["normalize_type"], meta["subsampling_factor"], meta["feat_dim"]) == ("per_feature", "8", "128")
    assert int(meta["pred_rnn_layers"]) == dec_in[2][2][0] and int(meta["pred_hidden"]) == dec_in[2][2][2]
    assert "tdt" in meta["url"]
    lines = (parakeet_folder / "tokens.txt").read_text(encoding="utf-8").splitlines()
    assert lines[-1] == f"<blk> {vocab}" and len(lines) == vocab + 1


@pytest.mark.parametrize("version", [4, 5])
def test_silero_vad_layout(tmp_path: Path, version: int) -> None:
    f, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    inputs, outputs = io(make_silero_vad(tmp_path, version=version))
    if version == 4:
        assert [(n, t) for n, t, _ in inputs] == [("input", f), ("sr", i64), ("h", f), ("c", f)]
        assert [n for n, _, _ in outputs] == ["output", "hn", "cn"]
    else:
        assert [(n, t) for n, t, _ in inputs] == [("input", f), ("state", f), ("sr", i64)]
        assert [n for n, _, _ in outputs] == ["output", "stateN"]


# -- SenseVoice ------------------------------------------------------------------------------------


def test_sensevoice_decodes_with_language_tag_tokens_and_timestamps(sensevoice_folder: Path) -> None:  # noqa: F811 - a fixture from onnx_models
    result = decode(sense_voice(sensevoice_folder), utterance())
    assert result.lang in LANGUAGE_TAGS - {"<|nospeech|>"}
    assert (result.emotion, result.event) == ("<|NEUTRAL|>", "<|Speech|>")
    assert result.tokens and not any(t.startswith("<|") for t in result.tokens)
    assert result.text == "".join(result.tokens)
    assert len(result.timestamps) == len(result.tokens)
    assert non_decreasing(result.timestamps)
    # The sound spans 0.5-2.5 s; frames are 60 ms apart.
    assert 0.5 - 2 * SENSEVOICE_FRAME_S <= result.timestamps[0]
    assert result.timestamps[-1] <= 2.5 + 2 * SENSEVOICE_FRAME_S
    assert list(result.durations) == []


def test_sensevoice_is_deterministic_and_input_dependent(sensevoice_folder: Path) -> None:  # noqa: F811 - a fixture from onnx_models
    recognizer = sense_voice(sensevoice_folder)
    first, again = decode(recognizer, utterance()), decode(recognizer, utterance())
    assert (first.tokens, first.timestamps, first.lang) == (again.tokens, again.timestamps, again.lang)
    other = decode(recognizer, speech_like(2.0, seed=7, level=0.3))
    assert (other.tokens, other.timestamps) != (first.tokens, first.timestamps)


@pytest.mark.parametrize("language", SENSEVOICE_LANGUAGES)
def test_sensevoice_language_hint_sets_the_tag(sensevoice_folder: Path, language: str) -> None:  # noqa: F811 - a fixture from onnx_models
    result = decode(sense_voice(sensevoice_folder, language=language, use_itn=False), utterance())
    assert result.lang == f"<|{language}|>"
    assert result.tokens


def test_sensevoice_silence_decodes_to_nothing(sensevoice_folder: Path) -> None:  # noqa: F811 - a fixture from onnx_models
    result = decode(sense_voice(sensevoice_folder), silence(2.0))
    assert result.text == "" and list(result.tokens) == []
    assert result.lang == "<|nospeech|>"


def test_sensevoice_batch_matches_one_by_one(sensevoice_folder: Path) -> None:  # noqa: F811 - a fixture from onnx_models
    recognizer = sense_voice(sensevoice_folder)
    clips = [utterance(), speech_like(1.0, seed=2), silence(1.0)]
    streams = [recognizer.create_stream() for _ in clips]
    for stream, clip in zip(streams, clips, strict=True):
        stream.accept_waveform(SAMPLE_RATE, clip)
    recognizer.decode_streams(streams)
    for stream, clip in zip(streams, clips, strict=True):
        alone = decode(recognizer, clip)
        batched = stream.result
        assert (batched.lang, batched.tokens, batched.timestamps) == (alone.lang, alone.tokens, alone.timestamps)


# -- Parakeet TDT ----------------------------------------------------------------------------------


def test_parakeet_decodes_tokens_with_timestamps_and_durations(parakeet_folder: Path) -> None:  # noqa: F811 - a fixture from onnx_models
    result = decode(parakeet(parakeet_folder), utterance())
    assert result.tokens
    assert result.text == "".join(result.tokens).strip()
    assert len(result.timestamps) == len(result.tokens) == len(result.durations)
    assert non_decreasing(result.timestamps)
    assert 0.5 - 2 * PARAKEET_FRAME_S <= result.timestamps[0]
    assert result.timestamps[-1] <= 2.5 + 2 * PARAKEET_FRAME_S
    # TDT durations: 0-4 encoder frames of 80 ms each, in seconds.
    frames = [round(d / PARAKEET_FRAME_S, 3) for d in result.durations]
    assert all(f in (0, 1, 2, 3, 4) for f in frames) and any(f > 0 for f in frames)
    assert result.lang == ""


def test_parakeet_silence_decodes_to_nothing(parakeet_folder: Path) -> None:  # noqa: F811 - a fixture from onnx_models
    result = decode(parakeet(parakeet_folder), silence(2.0))
    assert result.text == "" and list(result.tokens) == []


def test_parakeet_feature_dim_comes_from_the_metadata(parakeet_folder: Path) -> None:  # noqa: F811 - a fixture from onnx_models
    # from_transducer defaults to feature_dim=80; the export's feat_dim=128 metadata wins.
    default, explicit = parakeet(parakeet_folder), parakeet(parakeet_folder, feature_dim=128)
    assert decode(default, utterance()).tokens == decode(explicit, utterance()).tokens


def test_parakeet_batch_matches_one_by_one(parakeet_folder: Path) -> None:  # noqa: F811 - a fixture from onnx_models
    recognizer = parakeet(parakeet_folder)
    clips = [utterance(), speech_like(1.0, seed=2), silence(1.0)]
    streams = [recognizer.create_stream() for _ in clips]
    for stream, clip in zip(streams, clips, strict=True):
        stream.accept_waveform(SAMPLE_RATE, clip)
    recognizer.decode_streams(streams)
    for stream, clip in zip(streams, clips, strict=True):
        alone = decode(recognizer, clip)
        assert (stream.result.tokens, stream.result.timestamps, stream.result.durations) == (
            alone.tokens, alone.timestamps, alone.durations)  # fmt: skip


# -- Silero VAD ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 5])
def test_vad_splits_two_sounds_apart(tmp_path: Path, version: int) -> None:
    model = make_silero_vad(tmp_path, version=version)
    audio = np.concatenate([speech_like(1.0, seed=1), silence(1.0), speech_like(1.0, seed=2)])
    segments = vad_segments(model, audio)
    assert len(segments) == 2
    (start_a, length_a), (start_b, length_b) = segments
    assert abs(start_a - 0.0) <= 0.2 and abs(start_b - 2.0) <= 0.2
    # each segment runs to the end of its sound, plus at most min_silence_duration of trailing silence
    assert 0.9 <= length_a <= 1.6 and 0.9 <= length_b <= 1.6


def test_vad_fixture_and_silence(silero_vad_path: Path) -> None:  # noqa: F811 - a fixture from onnx_models
    assert silero_vad_path.name == "silero_vad.onnx"
    assert vad_segments(silero_vad_path, silence(3.0)) == []
    # -50 dBFS is below the generated model's -40 dBFS threshold
    assert vad_segments(silero_vad_path, speech_like(2.0, level=0.003)) == []
    assert len(vad_segments(silero_vad_path, speech_like(2.0))) == 1


# -- real speech -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def espeak_clip(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make system-deps)")
    path = tmp_path_factory.mktemp("espeak") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "Guten Morgen. Heute ist das Wetter schön."], check=True)
    with wave.open(str(path)) as wav:
        rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), np.int16).astype(np.float32) / 32768
    positions = np.arange(int(len(samples) * SAMPLE_RATE / rate)) * rate / SAMPLE_RATE
    speech = np.interp(positions, np.arange(len(samples)), samples).astype(np.float32)
    return np.concatenate([silence(0.5), speech, silence(1.0), speech, silence(0.5)])


def test_vad_then_both_recognizers_on_espeak_speech(
    espeak_clip: np.ndarray, silero_vad_path: Path, sensevoice_folder: Path, parakeet_folder: Path  # noqa: F811 - a fixture from onnx_models
) -> None:
    segments = vad_segments(silero_vad_path, espeak_clip)
    assert len(segments) >= 2
    assert abs(segments[0][0] - 0.5) <= 0.2
    recognizers = (sense_voice(sensevoice_folder), parakeet(parakeet_folder))
    for start, length in segments:
        clip = espeak_clip[int(start * SAMPLE_RATE) : int((start + length) * SAMPLE_RATE)]
        for recognizer in recognizers:
            result = decode(recognizer, clip)
            assert result.tokens and non_decreasing(result.timestamps)
            assert result.timestamps[-1] <= length + 0.1
