"""The SSE encoder: the exact bytes of a named event and of a data-only event."""

from __future__ import annotations

from aistack import sse
from aistack.errors import AistackError, ErrorKind
from aistack.protocol.errors import ErrorEvent
from aistack.protocol.transcription import TranscriptTextDelta


def test_a_named_event_repeats_its_name_as_type_and_keeps_utf8() -> None:
    assert sse.named_event("transcript.text.delta", {"delta": "Grüße"}) == (
        'event: transcript.text.delta\ndata: {"type": "transcript.text.delta", "delta": "Grüße"}\n\n'.encode()
    )


def test_a_data_only_event_escapes_non_ascii_as_relayed_servers_do() -> None:
    envelope = AistackError(ErrorKind.UNKNOWN, "stopped: café", provider="ollama").envelope()
    encoded = sse.data_event(envelope)
    assert encoded.startswith(b'data: {"error": {"kind": "unknown", "provider": "ollama", "message": "stopped: caf\\u00e9"')
    assert encoded.endswith(b"}}\n\n") and encoded.count(b"\n") == 2


def test_done_is_the_openai_end_of_stream() -> None:
    assert sse.DONE == b"data: [DONE]"


def test_a_protocol_model_is_the_named_event_of_its_type() -> None:
    assert sse.event(TranscriptTextDelta(delta="Grüße")) == sse.named_event("transcript.text.delta", {"delta": "Grüße"})


def test_an_error_inside_a_stream_is_the_envelope_named_error() -> None:
    error = AistackError(ErrorKind.BUSY, "all slots are taken", provider="faster-whisper", param="model")
    assert sse.event(ErrorEvent.of(error)) == sse.named_event("error", error.envelope())
