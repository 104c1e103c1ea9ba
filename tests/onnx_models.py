"""Small random-weight ONNX models in the exact layout sherpa-onnx expects of the real exports.

The real weights (SenseVoice Small int8 ≈ 230 MB, Parakeet TDT 0.6B v3 int8 ≈ 600 MB, Silero VAD)
cannot be had on these machines (docs/contributing.md), so the engines' tests run the real sherpa-onnx runtime
on these instead: the same file names, input/output names, dtypes, ranks and metadata keys as the
sherpa-onnx exports, the same token-file conventions, a few KB each and generated in milliseconds.
The weights are random (fixed seeds, so every run decodes the same), but the graphs are built so
that the runtime's paths all run for real:

- SenseVoice: logits = 4 query frames (language, emotion, event, text-norm) followed by a linear
  projection of the LFR+CMVN features. The language frame follows the `language` input
  (lang_zh=3, ...); with `auto` (0) it comes from a projection of the time-averaged features, so the
  detected language depends on the audio (`<|nospeech|>` for silence). Silent frames give blank,
  loud frames subword tokens, so silence decodes to nothing.
- Parakeet TDT: encoder = an 8x subsampling convolution over the 128 mel bins plus one "speech"
  channel; decoder = an embedding of the last token mixed with its two recurrent states; joiner =
  NeMo's joint (project, add, ReLU, project) onto vocab + blank + 5 durations, its blank logit driven
  by the speech channel. Silence decodes to nothing, sound to tokens with timestamps and durations.
- Silero VAD (v4 or v5 layout): the speech probability is sigmoid(2·ln(mean(x²)/1e-4)) over the
  window, so silence is non-speech and audio louder than -40 dBFS is speech: segmentation is real
  and predictable.

Layouts were taken from the sherpa-onnx sources (k2-fsa/sherpa-onnx): see each maker's docstring.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

# The exports are opset 13 (SenseVoice) to 17 (NeMo); 13 is enough here and the ir_version is one that
# every onnxruntime sherpa-onnx 2.x bundles accepts.
OPSET = 13
IR_VERSION = 8

# ---------------------------------------------------------------------------------------------------
# SenseVoice Small
# ---------------------------------------------------------------------------------------------------

SENSEVOICE_MODEL = "model.int8.onnx"
SENSEVOICE_FEATURE_DIM = 80  # kaldi fbank bins; from_sense_voice(feature_dim=80) is the default
SENSEVOICE_LFR_M = 7  # lfr_window_size
SENSEVOICE_LFR_N = 6  # lfr_window_shift: one output frame every 60 ms
SENSEVOICE_INPUT_DIM = SENSEVOICE_FEATURE_DIM * SENSEVOICE_LFR_M  # 560

# The values model.lid_dict / model.textnorm_dict give in the real export. They index the model's own
# query-embedding table (the `language` / `text_norm` inputs), not tokens.txt.
SENSEVOICE_LID = {"auto": 0, "zh": 3, "en": 4, "yue": 7, "ja": 11, "ko": 12, "nospeech": 13}
SENSEVOICE_TEXTNORM = {"withitn": 14, "woitn": 15}
SENSEVOICE_EMBED_ROWS = 16  # 7 + len(lid_dict) + len(textnorm_dict) in the real model

# Audio-frame logits: spectral-shape projection scale, blank logit = SV_BLANK_BIAS - SV_BLANK_SLOPE * level.
SV_FRAME_SCALE = 3.0
SV_BLANK_SLOPE = 6.0
SV_BLANK_BIAS = 0.0

SENSEVOICE_LANGUAGES = ("zh", "en", "yue", "ja", "ko")
SENSEVOICE_EMOTIONS = ("HAPPY", "SAD", "ANGRY", "NEUTRAL", "FEARFUL", "DISGUSTED", "SURPRISED", "EMO_UNKNOWN")
SENSEVOICE_EVENTS = ("BGM", "Speech", "Applause", "Laughter", "Cry", "Sneeze", "Breath", "Cough", "Event_UNK")
SENSEVOICE_WORDS = (
    "▁the", "▁a", "▁and", "▁of", "▁to", "▁is", "▁it", "▁that", "▁in", "▁we", "▁you", "▁hello",
    "▁world", "▁speech", "▁test", "▁one", "▁two", "▁three", "s", "ed", "ing", "er", "ly", "a", "o",
    "你", "好", "我", "是", "的", "こ", "ん", "に", "ち", "は", "안", "녕", "하", "세", "요", ".", ",",
)  # fmt: skip


def sensevoice_tokens() -> list[str]:
    """tokens.txt of the generated model: `<unk>` (the CTC blank, id 0), `<s>`, `</s>`, ordinary
    sentencepiece pieces, then the special tags at the end of the vocabulary as in the real one."""
    tags = [f"<|{code}|>" for code in SENSEVOICE_LANGUAGES] + ["<|nospeech|>"]
    tags += [f"<|{name}|>" for name in SENSEVOICE_EMOTIONS + SENSEVOICE_EVENTS]
    tags += ["<|withitn|>", "<|woitn|>"]
    return ["<unk>", "<s>", "</s>", *SENSEVOICE_WORDS, *tags]


def make_sensevoice(folder: Path) -> Path:
    """Write `model.int8.onnx` and `tokens.txt` (the file names of
    csukuangfj/sherpa-onnx-sense-voice-zh-en-ja-ko-yue-2024-07-17) into `folder`; return `folder`.

    Layout (scripts/sense-voice/export-onnx.py, csrc/offline-sense-voice-model.cc,
    csrc/offline-recognizer-sense-voice-impl.h):
      inputs   x          float32 [N, T, 560]   LFR(7, 6) of 80-bin fbank, after CMVN
               x_length   int32   [N]
               language   int32   [N]           lang_* metadata value (0 = auto)
               text_norm  int32   [N]           with_itn / without_itn metadata value
      output   logits     float32 [N, T+4, vocab_size]   CTC logits; blank = id 0
      metadata vocab_size, lfr_window_size, lfr_window_shift, normalize_samples, neg_mean,
               inv_stddev (560 comma-separated floats each), lang_auto, lang_zh, lang_en, lang_yue,
               lang_ja, lang_ko, lang_nospeech, with_itn, without_itn, model_type, version,
               model_author, maintainer, comment, url.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokens = sensevoice_tokens()
    index = {token: i for i, token in enumerate(tokens)}
    vocab = len(tokens)
    rng = np.random.default_rng(20240717)
    d = SENSEVOICE_INPUT_DIM
    tag_ids = [i for i, token in enumerate(tokens) if token.startswith("<|")]
    lang_ids = [index[f"<|{code}|>"] for code in SENSEVOICE_LANGUAGES]

    # Query embeddings, one row per lid/textnorm value, straight onto the CTC vocabulary.
    embed = np.zeros((SENSEVOICE_EMBED_ROWS, vocab), np.float32)
    for code, row in SENSEVOICE_LID.items():
        if code != "auto":
            embed[row, index[f"<|{code}|>"]] = 40.0
    embed[1, index["<|NEUTRAL|>"]] = 40.0  # the emotion query (embed index 1 in the real model)
    embed[2, index["<|Speech|>"]] = 40.0  # the event query (embed index 2)
    embed[SENSEVOICE_TEXTNORM["withitn"], index["<|withitn|>"]] = 40.0
    embed[SENSEVOICE_TEXTNORM["woitn"], index["<|woitn|>"]] = 40.0

    # Automatic language: a projection of the time-averaged features (over x_length frames) onto the
    # five language tags, and `<|nospeech|>` when that average is quiet (CMVN'd silence is about -1.5).
    nospeech = index["<|nospeech|>"]
    w_lang = np.zeros((d, vocab), np.float32)
    w_lang[:, lang_ids] = rng.normal(0.0, 1.0, (d, len(lang_ids))) / np.sqrt(d)
    w_lang[:, nospeech] = -4.0 / d
    auto_bias = np.full(vocab, -30.0, np.float32)
    auto_bias[lang_ids] = 0.0
    auto_bias[nospeech] = -2.0

    # Audio frames: a random projection of each frame's spectral shape (the features less their mean),
    # plus a blank logit that falls with the frame's loudness (that mean): silence, whose CMVN'd
    # features are negative, gives blank; sound gives subword tokens. Tags never come from audio.
    w = rng.normal(0.0, 1.0, (d, vocab)).astype(np.float32) * np.float32(SV_FRAME_SCALE / np.sqrt(d))
    w[:, tag_ids] = 0.0
    w[:, 0] = 0.0
    loudness = np.zeros(vocab, np.float32)
    loudness[0] = -SV_BLANK_SLOPE
    b = np.zeros(vocab, np.float32)
    b[0] = SV_BLANK_BIAS
    b[tag_ids] = -30.0
    b[[1, 2]] = -30.0  # <s>, </s>

    nodes = [
        # language query frame: embed[language] + (auto only) projection of mean(x)
        helper.make_node("Gather", ["embed", "language"], ["lang_q"], axis=0),
        helper.make_node("ReduceSum", ["x", "axis_1"], ["x_sum"], keepdims=0),  # padding is 0: masked
        helper.make_node("Cast", ["x_length"], ["x_length_f"], to=TensorProto.FLOAT),
        helper.make_node("Max", ["x_length_f", "one_f"], ["x_count"]),
        helper.make_node("Unsqueeze", ["x_count", "axis_1"], ["x_count_col"]),
        helper.make_node("Div", ["x_sum", "x_count_col"], ["x_mean"]),
        helper.make_node("MatMul", ["x_mean", "w_lang"], ["lang_auto_logits"]),
        helper.make_node("Equal", ["language", "zero_i32"], ["is_auto"]),
        helper.make_node("Cast", ["is_auto"], ["is_auto_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["is_auto_f", "axis_1"], ["is_auto_col"]),
        helper.make_node("Add", ["lang_auto_logits", "auto_bias"], ["lang_auto_biased"]),
        helper.make_node("Mul", ["lang_auto_biased", "is_auto_col"], ["lang_auto_part"]),
        helper.make_node("Add", ["lang_q", "lang_auto_part"], ["lang_row"]),
        helper.make_node("Unsqueeze", ["lang_row", "axis_1"], ["lang_frame"]),
        # emotion and event query frames: embed[[1, 2]] for every utterance of the batch
        helper.make_node("Gather", ["embed", "emo_event_ids"], ["emo_event_q"], axis=0),
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Slice", ["x_shape", "start_0", "end_1"], ["batch"]),
        helper.make_node("Concat", ["batch", "two_vocab"], ["emo_event_shape"], axis=0),
        helper.make_node("Expand", ["emo_event_q", "emo_event_shape"], ["emo_event_frames"]),
        # text-norm query frame
        helper.make_node("Gather", ["embed", "text_norm"], ["itn_row"], axis=0),
        helper.make_node("Unsqueeze", ["itn_row", "axis_1"], ["itn_frame"]),
        # audio frames
        helper.make_node("ReduceMean", ["x"], ["frame_level"], axes=[2], keepdims=1),  # [N, T, 1]
        helper.make_node("Sub", ["x", "frame_level"], ["frame_shape"]),
        helper.make_node("MatMul", ["frame_shape", "w"], ["shape_logits"]),
        helper.make_node("Mul", ["frame_level", "loudness"], ["blank_logits"]),
        helper.make_node("Add", ["shape_logits", "blank_logits"], ["frame_logits"]),
        helper.make_node("Add", ["frame_logits", "b"], ["audio_frames"]),
        helper.make_node("Concat", ["lang_frame", "emo_event_frames", "itn_frame", "audio_frames"], ["logits"], axis=1),
    ]
    initializers = [
        _tensor("embed", embed),
        _tensor("w_lang", w_lang),
        _tensor("auto_bias", auto_bias),
        _tensor("w", w),
        _tensor("loudness", loudness),
        _tensor("b", b),
        _tensor("zero_i32", np.array(0, np.int32)),
        _tensor("one_f", np.array(1.0, np.float32)),
        _tensor("axis_1", np.array([1], np.int64)),
        _tensor("emo_event_ids", np.array([[1, 2]], np.int64)),
        _tensor("start_0", np.array([0], np.int64)),
        _tensor("end_1", np.array([1], np.int64)),
        _tensor("two_vocab", np.array([2, vocab], np.int64)),
    ]
    graph = helper.make_graph(
        nodes,
        "sense_voice_small_generated",
        inputs=[
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", d]),
            helper.make_tensor_value_info("x_length", TensorProto.INT32, ["N"]),
            helper.make_tensor_value_info("language", TensorProto.INT32, ["N"]),
            helper.make_tensor_value_info("text_norm", TensorProto.INT32, ["N"]),
        ],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", "T_plus_4", vocab])],
        initializer=initializers,
    )
    # CMVN close to a real 16-bit fbank's: log-mel energies of speech around 8-14.
    neg_mean = -(10.0 + rng.uniform(-1.0, 1.0, d))
    inv_stddev = 0.25 + rng.uniform(-0.03, 0.03, d)
    metadata = {
        "lfr_window_size": SENSEVOICE_LFR_M,
        "lfr_window_shift": SENSEVOICE_LFR_N,
        "normalize_samples": 0,  # sherpa-onnx scales samples to [-32768, 32767] first
        "neg_mean": ",".join(f"{v:.6f}" for v in neg_mean),
        "inv_stddev": ",".join(f"{v:.6f}" for v in inv_stddev),
        "model_type": "sense_voice_ctc",
        "version": "2",
        "model_author": "iic",
        "maintainer": "k2-fsa",
        "vocab_size": vocab,
        "comment": "iic/SenseVoiceSmall",  # a comment containing "Nano" would switch to FunASR Nano
        **{f"lang_{code}": value for code, value in SENSEVOICE_LID.items()},
        "with_itn": SENSEVOICE_TEXTNORM["withitn"],
        "without_itn": SENSEVOICE_TEXTNORM["woitn"],
        "url": "generated test model in the layout of FunAudioLLM/SenseVoiceSmall",
    }
    _save(graph, folder / SENSEVOICE_MODEL, metadata)
    _write_tokens(folder / "tokens.txt", tokens)
    return folder


# ---------------------------------------------------------------------------------------------------
# Parakeet TDT 0.6B v3 (NeMo transducer)
# ---------------------------------------------------------------------------------------------------

PARAKEET_FILES = ("encoder.int8.onnx", "decoder.int8.onnx", "joiner.int8.onnx", "tokens.txt")
PARAKEET_FEAT_DIM = 128
PARAKEET_SUBSAMPLING = 8  # one encoder frame every 80 ms
PARAKEET_DURATIONS = (0, 1, 2, 3, 4)
PARAKEET_ENCODER_DIM = 32  # 1024 in the real model
PARAKEET_PRED_HIDDEN = 32  # 640
PARAKEET_PRED_LAYERS = 2  # 2
PARAKEET_JOINT_DIM = 32  # 640
# Blank logit = PK_BLANK_BIAS - PK_BLANK_SLOPE * speech (encoder channel 0, in [-1, 1]); token logits
# are a random joint scaled by PK_TOKEN_SCALE.
PK_BLANK_BIAS = 0.0
PK_BLANK_SLOPE = 12.0
PK_TOKEN_SCALE = 1.5
PARAKEET_WORDS = (
    "▁the", "▁a", "▁and", "▁of", "▁to", "▁is", "▁it", "▁in", "▁we", "▁you", "▁hello", "▁world",
    "▁guten", "▁morgen", "▁bonjour", "▁der", "▁die", "▁und", "▁le", "▁la", "▁de", "▁el", "▁y",
    "s", "ed", "ing", "er", "en", "ly", "t", "e", "n", "i", "o", "r", "ä", "ö", "ü", "é", "è", "ñ",
    ".", ",", "?",
)  # fmt: skip


def parakeet_tokens() -> list[str]:
    """tokens.txt of the generated model: NeMo's vocabulary (`<unk>` first), then `<blk>` last."""
    return ["<unk>", *PARAKEET_WORDS, "<blk>"]


def make_parakeet_tdt(folder: Path) -> Path:
    """Write `encoder.int8.onnx`, `decoder.int8.onnx`, `joiner.int8.onnx` and `tokens.txt` (the file
    names of csukuangfj/sherpa-onnx-nemo-parakeet-tdt-0.6b-v3-int8) into `folder`; return `folder`.

    Layout (scripts/nemo/parakeet-tdt-0.6b-v3/export_onnx.py, scripts/nemo/parakeet-tdt-0.6b-v2/
    test_onnx.py, csrc/offline-transducer-nemo-model.cc, csrc/offline-recognizer-transducer-nemo-impl.h,
    csrc/offline-transducer-greedy-search-nemo-decoder.cc); V = vocab_size metadata (blank excluded):
      encoder  audio_signal float32 [B, 128, T], length int64 [B]
               -> outputs float32 [B, D, T'], encoded_lengths int64 [B]     (T' = ceil(T / 8))
               metadata: vocab_size, normalize_type, pred_rnn_layers, pred_hidden, subsampling_factor,
               model_type, version, model_author, url (TDT when it contains "tdt"), comment, feat_dim
      decoder  targets int32 [B, U], target_length int32 [B], states.1 float32 [L, B, H],
               onnx::Slice_3 float32 [L, B, H]
               -> outputs float32 [B, H, U], prednet_lengths int32 [B], states [L, B, H], 162 [L, B, H]
      joiner   encoder_outputs float32 [B, D, T], decoder_outputs float32 [B, H, U]
               -> outputs float32 [B, T, U, V + 1 + 5]  (token logits incl. blank, then durations 0-4)
      tokens   V lines plus `<blk> V` last.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokens = parakeet_tokens()
    vocab = len(tokens) - 1  # NeMo's vocab_size does not count the blank
    blank = vocab
    rng = np.random.default_rng(20250814)
    feat, d, h, layers, j = (PARAKEET_FEAT_DIM, PARAKEET_ENCODER_DIM, PARAKEET_PRED_HIDDEN,
                             PARAKEET_PRED_LAYERS, PARAKEET_JOINT_DIM)  # fmt: skip
    outputs = vocab + 1 + len(PARAKEET_DURATIONS)

    # encoder: channels 1..D-1 = tanh(Conv1d(128 -> D-1, kernel 8, stride 8, right pad 7)), ceil(T / 8)
    # frames. Channel 0 = tanh(3 * speech score) averaged the same way. After NeMo's per-feature
    # normalisation, a frame of silence between sounds is flat across the bins and below the
    # utterance's mean; a clip of pure silence is flat at an arbitrary level (rounding over a zero
    # deviation). So a frame's score is 4 x its spread across the bins + 2 x min(its mean, 0) - 0.4.
    sub = PARAKEET_SUBSAMPLING
    conv = rng.normal(0.0, 1.0, (d - 1, feat, sub)).astype(np.float32) * np.float32(1.5 / np.sqrt(feat * sub))
    pool = np.full((1, 1, sub), 1.0 / sub, np.float32)
    conv_args = {"kernel_shape": [sub], "strides": [sub], "pads": [0, sub - 1]}
    encoder = helper.make_graph(
        [
            helper.make_node("Conv", ["audio_signal", "conv_w"], ["conv_out"], **conv_args),
            helper.make_node("Tanh", ["conv_out"], ["content"]),  # [B, D-1, T']
            helper.make_node("ReduceMean", ["audio_signal"], ["level"], axes=[1], keepdims=1),  # [B, 1, T]
            helper.make_node("Sub", ["audio_signal", "level"], ["centred"]),
            helper.make_node("Mul", ["centred", "centred"], ["centred_sq"]),
            helper.make_node("ReduceMean", ["centred_sq"], ["spread_sq"], axes=[1], keepdims=1),
            helper.make_node("Sqrt", ["spread_sq"], ["spread"]),
            helper.make_node("Mul", ["spread", "four"], ["spread_4"]),
            helper.make_node("Min", ["level", "zero"], ["below"]),
            helper.make_node("Mul", ["below", "two"], ["below_2"]),
            helper.make_node("Add", ["below_2", "spread_4"], ["score_raw"]),
            helper.make_node("Sub", ["score_raw", "score_offset"], ["score"]),
            helper.make_node("Mul", ["score", "three"], ["score_3"]),
            helper.make_node("Tanh", ["score_3"], ["speech"]),
            helper.make_node("Conv", ["speech", "pool_w"], ["speech_frames"], **conv_args),  # [B, 1, T']
            helper.make_node("Concat", ["speech_frames", "content"], ["outputs"], axis=1),
            helper.make_node("Add", ["length", "sub_minus_1"], ["length_padded"]),
            helper.make_node("Div", ["length_padded", "sub"], ["encoded_lengths"]),
        ],
        "parakeet_encoder_generated",
        inputs=[
            helper.make_tensor_value_info("audio_signal", TensorProto.FLOAT, ["audio_signal_dynamic_axes_1", feat,
                                                                               "audio_signal_dynamic_axes_2"]),
            helper.make_tensor_value_info("length", TensorProto.INT64, ["length_dynamic_axes_1"]),
        ],
        outputs=[
            helper.make_tensor_value_info("outputs", TensorProto.FLOAT, ["outputs_dynamic_axes_1", d,
                                                                         "outputs_dynamic_axes_2"]),
            helper.make_tensor_value_info("encoded_lengths", TensorProto.INT64, ["encoded_lengths_dynamic_axes_1"]),
        ],
        initializer=[
            _tensor("conv_w", conv),
            _tensor("pool_w", pool),
            _tensor("zero", np.array(0.0, np.float32)),
            _tensor("two", np.array(2.0, np.float32)),
            _tensor("three", np.array(3.0, np.float32)),
            _tensor("four", np.array(4.0, np.float32)),
            _tensor("score_offset", np.array(0.4, np.float32)),
            _tensor("sub", np.array(sub, np.int64)),
            _tensor("sub_minus_1", np.array(sub - 1, np.int64)),
        ],
    )
    encoder_metadata = {
        "vocab_size": vocab,
        "normalize_type": "per_feature",
        "pred_rnn_layers": layers,
        "pred_hidden": h,
        "subsampling_factor": PARAKEET_SUBSAMPLING,
        "model_type": "EncDecRNNTBPEModel",
        "version": "2",
        "model_author": "NeMo",
        # sherpa-onnx treats the model as TDT when this contains "tdt" (the real one is the model's hub URL).
        "url": "generated test model in the layout of nvidia/parakeet-tdt-0.6b-v3",
        "comment": "Only the transducer branch is exported",
        "feat_dim": feat,
    }
    _save(encoder, folder / "encoder.int8.onnx", encoder_metadata)

    # decoder (prediction network): y = tanh(embed[targets] + 0.5 * mean over layers of the states);
    # the next states follow y. U = 1 in sherpa-onnx's greedy search.
    embedding = rng.normal(0.0, 1.0, (vocab + 1, h)).astype(np.float32)
    embedding[blank] = 0.0  # NeMo's blank_as_pad embedding row
    decoder = helper.make_graph(
        [
            helper.make_node("Gather", ["embedding", "targets"], ["embedded"], axis=0),  # [B, U, H]
            helper.make_node("ReduceMean", ["states.1"], ["h_mean"], axes=[0], keepdims=0),  # [B, H]
            helper.make_node("ReduceMean", ["onnx::Slice_3"], ["c_mean"], axes=[0], keepdims=0),
            helper.make_node("Add", ["h_mean", "c_mean"], ["state_mix"]),
            helper.make_node("Mul", ["state_mix", "half"], ["state_half"]),
            helper.make_node("Unsqueeze", ["state_half", "axis_1"], ["state_col"]),  # [B, 1, H]
            helper.make_node("Add", ["embedded", "state_col"], ["pre"]),
            helper.make_node("Tanh", ["pre"], ["y"]),  # [B, U, H]
            helper.make_node("Transpose", ["y"], ["outputs"], perm=[0, 2, 1]),  # [B, H, U]
            helper.make_node("Identity", ["target_length"], ["prednet_lengths"]),
            helper.make_node("ReduceMean", ["y"], ["y_last"], axes=[1], keepdims=0),  # [B, H]
            helper.make_node("Unsqueeze", ["y_last", "axis_0"], ["y_state"]),  # [1, B, H]
            helper.make_node("Mul", ["states.1", "half"], ["h_decay"]),
            helper.make_node("Add", ["h_decay", "y_state"], ["states"]),
            helper.make_node("Mul", ["onnx::Slice_3", "half"], ["c_decay"]),
            helper.make_node("Sub", ["c_decay", "y_state"], ["162"]),
        ],
        "parakeet_decoder_generated",
        inputs=[
            helper.make_tensor_value_info("targets", TensorProto.INT32, ["targets_dynamic_axes_1",
                                                                         "targets_dynamic_axes_2"]),
            helper.make_tensor_value_info("target_length", TensorProto.INT32, ["target_length_dynamic_axes_1"]),
            helper.make_tensor_value_info("states.1", TensorProto.FLOAT, [layers, "states.1_dim_1", h]),
            helper.make_tensor_value_info("onnx::Slice_3", TensorProto.FLOAT, [layers, "onnx::Slice_3_dim_1", h]),
        ],
        outputs=[
            helper.make_tensor_value_info("outputs", TensorProto.FLOAT, ["outputs_dynamic_axes_1", h,
                                                                         "outputs_dynamic_axes_2"]),
            helper.make_tensor_value_info("prednet_lengths", TensorProto.INT32, ["prednet_lengths_dynamic_axes_1"]),
            helper.make_tensor_value_info("states", TensorProto.FLOAT, [layers, "states_dynamic_axes_1", h]),
            helper.make_tensor_value_info("162", TensorProto.FLOAT, [layers, "162_dynamic_axes_1", h]),
        ],
        initializer=[
            _tensor("embedding", embedding),
            _tensor("half", np.array(0.5, np.float32)),
            _tensor("axis_0", np.array([0], np.int64)),
            _tensor("axis_1", np.array([1], np.int64)),
        ],
    )
    _save(decoder, folder / "decoder.int8.onnx", {})

    # joiner: NeMo's joint, relu(enc @ We + dec @ Wp) @ Wo + bo over [B, T, U, J], plus a skip from the
    # encoder's speech channel to the blank logit: silent frames give blank, sounding ones tokens.
    w_enc = (rng.normal(0.0, 1.0, (d, j)) * (3.0 / np.sqrt(d))).astype(np.float32)
    w_enc[0] = 0.0
    w_pred = (rng.normal(0.0, 1.0, (h, j)) * (1.0 / np.sqrt(h))).astype(np.float32)
    w_out = (rng.normal(0.0, 1.0, (j, outputs)) * (PK_TOKEN_SCALE / np.sqrt(j))).astype(np.float32)
    w_level = np.zeros((d, outputs), np.float32)
    w_level[0, blank] = -PK_BLANK_SLOPE
    b_out = np.zeros(outputs, np.float32)
    b_out[blank] = PK_BLANK_BIAS
    b_out[vocab + 1 + 1] = 1.0  # durations lean to one frame (then 2, 3 ... by the weights)
    joiner = helper.make_graph(
        [
            helper.make_node("Transpose", ["encoder_outputs"], ["enc_t"], perm=[0, 2, 1]),  # [B, T, D]
            helper.make_node("MatMul", ["enc_t", "w_enc"], ["enc_j"]),
            helper.make_node("Unsqueeze", ["enc_j", "axis_2"], ["enc_4d"]),  # [B, T, 1, J]
            helper.make_node("Transpose", ["decoder_outputs"], ["dec_t"], perm=[0, 2, 1]),  # [B, U, H]
            helper.make_node("MatMul", ["dec_t", "w_pred"], ["dec_j"]),
            helper.make_node("Unsqueeze", ["dec_j", "axis_1"], ["dec_4d"]),  # [B, 1, U, J]
            helper.make_node("Add", ["enc_4d", "dec_4d"], ["joint"]),
            helper.make_node("Relu", ["joint"], ["joint_act"]),
            helper.make_node("MatMul", ["joint_act", "w_out"], ["joint_out"]),
            helper.make_node("MatMul", ["enc_t", "w_level"], ["level_logits"]),  # [B, T, V + 6]
            helper.make_node("Unsqueeze", ["level_logits", "axis_2"], ["level_4d"]),
            helper.make_node("Add", ["joint_out", "level_4d"], ["joint_level"]),
            helper.make_node("Add", ["joint_level", "b_out"], ["outputs"]),
        ],
        "parakeet_joiner_generated",
        inputs=[
            helper.make_tensor_value_info("encoder_outputs", TensorProto.FLOAT, ["encoder_outputs_dynamic_axes_1", d,
                                                                                 "encoder_outputs_dynamic_axes_2"]),
            helper.make_tensor_value_info("decoder_outputs", TensorProto.FLOAT, ["decoder_outputs_dynamic_axes_1", h,
                                                                                 "decoder_outputs_dynamic_axes_2"]),
        ],
        outputs=[
            helper.make_tensor_value_info("outputs", TensorProto.FLOAT, ["outputs_dynamic_axes_1",
                                                                         "outputs_dynamic_axes_2",
                                                                         "outputs_dynamic_axes_3", outputs]),
        ],
        initializer=[
            _tensor("w_enc", w_enc),
            _tensor("w_pred", w_pred),
            _tensor("w_out", w_out),
            _tensor("w_level", w_level),
            _tensor("b_out", b_out),
            _tensor("axis_1", np.array([1], np.int64)),
            _tensor("axis_2", np.array([2], np.int64)),
        ],
    )
    _save(joiner, folder / "joiner.int8.onnx", {})
    _write_tokens(folder / "tokens.txt", tokens)
    return folder


# ---------------------------------------------------------------------------------------------------
# Silero VAD
# ---------------------------------------------------------------------------------------------------

SILERO_VAD_FILE = "silero_vad.onnx"
# Speech probability = sigmoid(VAD_SLOPE * ln(mean(x^2) / VAD_ENERGY)): 0.5 at -40 dBFS mean power.
VAD_ENERGY = 1e-4
VAD_SLOPE = 2.0


def make_silero_vad(path: Path, version: int = 4) -> Path:
    """Write a Silero VAD model to `path` (a file, or a folder that gets `silero_vad.onnx`); return
    the file. sherpa-onnx picks the layout by the number of inputs and outputs and checks their
    names (csrc/silero-vad-model.cc); it reads no metadata:
      v4  input float32 [B, S], sr int64 [1], h float32 [2, B, 64], c float32 [2, B, 64]
          -> output float32 [B, 1], hn [2, B, 64], cn [2, B, 64]          (S = window_size, 512)
      v5  input float32 [B, S], state float32 [2, B, 128], sr int64 [1]
          -> output float32 [B, 1], stateN [2, B, 128]                  (S = 512 + 64 context)
    Here the probability is a function of the window's mean power alone (the states pass through).
    """
    if version not in (4, 5):
        raise ValueError(f"Silero VAD version 4 or 5, not {version}")
    path = Path(path)
    if path.suffix != ".onnx":
        path = path / SILERO_VAD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)

    probability = [
        helper.make_node("Mul", ["input", "input"], ["power"]),
        helper.make_node("ReduceMean", ["power"], ["mean_power"], axes=[1], keepdims=1),  # [B, 1]
        helper.make_node("Add", ["mean_power", "floor"], ["mean_power_floored"]),
        helper.make_node("Div", ["mean_power_floored", "reference"], ["ratio"]),
        helper.make_node("Log", ["ratio"], ["log_ratio"]),
        helper.make_node("Mul", ["log_ratio", "slope"], ["score"]),
        helper.make_node("Sigmoid", ["score"], ["output"]),
    ]
    constants = [
        _tensor("floor", np.array(1e-12, np.float32)),
        _tensor("reference", np.array(VAD_ENERGY, np.float32)),
        _tensor("slope", np.array(VAD_SLOPE, np.float32)),
    ]
    samples = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "samples"])
    sr = helper.make_tensor_value_info("sr", TensorProto.INT64, [1])
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1])
    if version == 4:
        nodes = probability + [
            helper.make_node("Identity", ["h"], ["hn"]),
            helper.make_node("Identity", ["c"], ["cn"]),
        ]
        inputs = [samples, sr, _state("h", 64), _state("c", 64)]
        outputs = [output, _state("hn", 64), _state("cn", 64)]
    else:
        nodes = probability + [helper.make_node("Identity", ["state"], ["stateN"])]
        inputs = [samples, _state("state", 128), sr]
        outputs = [output, _state("stateN", 128)]
    graph = helper.make_graph(nodes, f"silero_vad_v{version}_generated", inputs, outputs, initializer=constants)
    _save(graph, path, {})
    return path


# ---------------------------------------------------------------------------------------------------
# Signals that exercise them
# ---------------------------------------------------------------------------------------------------

SAMPLE_RATE = 16_000


def speech_like(seconds: float, seed: int = 0, level: float = 0.1) -> np.ndarray:
    """Float32 noise shaped like speech (voiced harmonics under a syllable-rate envelope plus some
    broadband noise), mean power about -25 dBFS at the default level: speech to the generated VAD."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    pitch = 120.0 + 30.0 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6.3))
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase + rng.uniform(0, 6.3)) / k for k in range(1, 12))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6.3))
    signal = envelope * voiced + 0.3 * rng.standard_normal(n)
    signal *= level / max(1e-9, float(np.sqrt(np.mean(signal**2))))
    return signal.astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


# ---------------------------------------------------------------------------------------------------
# Fixtures (import them into a test module or a conftest to use them)
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def generated_onnx_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One session folder holding every generated model."""
    return tmp_path_factory.mktemp("onnx-models")


@pytest.fixture(scope="session")
def sensevoice_folder(generated_onnx_models: Path) -> Path:
    return make_sensevoice(generated_onnx_models / "sense-voice")


@pytest.fixture(scope="session")
def parakeet_folder(generated_onnx_models: Path) -> Path:
    return make_parakeet_tdt(generated_onnx_models / "parakeet-tdt")


@pytest.fixture(scope="session")
def silero_vad_path(generated_onnx_models: Path) -> Path:
    return make_silero_vad(generated_onnx_models / "vad" / SILERO_VAD_FILE)


# ---------------------------------------------------------------------------------------------------
# inside
# ---------------------------------------------------------------------------------------------------


def _tensor(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _state(name: str, hidden: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, "batch", hidden])


def _save(graph: onnx.GraphProto, path: Path, metadata: dict[str, object]) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="aistack-tests")
    model.ir_version = IR_VERSION
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _write_tokens(path: Path, tokens: Sequence[str] | Iterable[str]) -> None:
    path.write_text("".join(f"{token} {i}\n" for i, token in enumerate(tokens)), encoding="utf-8")
