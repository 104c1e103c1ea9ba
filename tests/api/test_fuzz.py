"""Property-based fuzzing of every operation /openapi.json lists (schemathesis), against a gateway on
the real engines: no 5xx, every answer matches the status, content type, headers and schema its
operation documents (each event of an event stream too), invalid input is refused with a 4xx, and
every refusal is the envelope with its kind's one status.

Bounded and repeatable: hypothesis derandomized, no example database, a fixed number of cases per
operation (schemathesis adds its coverage cases, the documented edges of each field, to those).

Valid cases that name a model mostly name one the gateway lists (read from its /v1/models), and one
upload in three carries real speech: otherwise nearly every case would stop at 404 or at the audio
decoder and the engines would never see fuzzed fields. Each fuzzed model id keeps its chance to be
sent as drawn; invalid cases are sent as drawn.

Not among the checks: schemathesis' `unsupported_method` (it wants 405; the gateway answers a wrong
method 400 `malformed`, as each kind has one status) and `positive_data_acceptance` (rules across
fields, such as timestamp_granularities[] needing verbose_json, are refused 400 and no schema says them)."""

from __future__ import annotations

import tempfile
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from aistack.app import create_app
from aistack.errors import STATUS_BY_KIND, ErrorKind
from aistack.settings import Settings

pytestmark = pytest.mark.slow

# The document the cases are drawn from, built at collection (schemathesis parametrizes then; its
# lazy, fixture-loaded schema does not run on this pytest). The fixture checks that the gateway
# under test serves this very document.
with tempfile.TemporaryDirectory() as _cache, warnings.catch_warnings():
    warnings.simplefilter("error")  # e.g. FastAPI's "Duplicate Operation ID"
    SPEC: dict[str, Any] = create_app(Settings(cache_dir=Path(_cache))).openapi()

schema = schemathesis.openapi.from_dict(SPEC)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]

# Operations that run an engine take real time per case (a synthesis, a generation, a model load):
# fewer cases for those, so that the file stays within a few minutes on two cores; fewer still for
# the decoding ones: Whisper reads every upload as (at least) one 30 s window, 1 to 5 s a case with speech.
DECODE_PATHS = ("/v1/audio/transcriptions", "/v1/audio/translations")
ENGINE_PATHS = ("/v1/audio/speech", "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                "/admin/models/{model_id}/load")
ROUTING_CASES = 300
ENGINE_CASES = 150
DECODE_CASES = 20
# A generation runs until max_tokens, or the context (2048 tokens) is full: a fuzzed max_tokens is
# capped here, since the length of a generation is not what is being tested.
MAX_TOKENS = 8


def _settings(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


# Filled by the `session` fixture from the gateway under test: the ids it lists for each capability
# and the voices of its default TTS model; and a short clip of real speech (Piper's, made at test time).
LISTED: dict[str, list[str]] = {}
UPLOAD: dict[str, bytes] = {}
# Per operation fuzzed, the statuses it answered.
ANSWERED: dict[str, set[int]] = {}


def _listed_or_drawn(drawn: Any, capability: str) -> Any:
    """A listed model id, or now and then the drawn value as it is; which one depends only on the
    drawn value, so that the run stays repeatable."""
    ids = LISTED.get(capability, [])
    if not ids or not isinstance(drawn, str):
        return drawn
    pick = sum(map(ord, drawn)) % (len(ids) + 1)
    return drawn if pick == len(ids) else ids[pick]


def _carries_speech(form: dict[str, Any]) -> bool:
    """One upload in three gets the clip, chosen by the other fields (the file drawn is mostly empty):
    each one costs a Whisper pass, and the others still test every field before the decoder."""
    fields = repr(sorted((name, repr(value)) for name, value in form.items() if name != "file"))
    return zlib.crc32(fields.encode()) % 3 == 0


BODY_CAPABILITY = {"/v1/audio/speech": "tts", "/v1/audio/transcriptions": "asr", "/v1/audio/translations": "asr",
                   "/v1/chat/completions": "llm", "/v1/completions": "llm", "/v1/embeddings": "embeddings"}


def aim(case: schemathesis.Case) -> None:
    """The case, drawn valid, made to name listed models and carry real speech (see the top)."""
    if case.meta is not None and case.meta.generation.mode.is_negative:
        return  # invalid as drawn: left alone, so that it stays what negative_data_rejection expects
    if case.path_parameters and "model_id" in case.path_parameters:
        case.path_parameters["model_id"] = _listed_or_drawn(case.path_parameters["model_id"], "any")
    if case.path == "/v1/audio/voices" and isinstance(case.query, dict) and "model" in case.query:
        case.query["model"] = _listed_or_drawn(case.query["model"], "tts")
    if case.path == "/v1/audio/speech" and isinstance(case.body, dict) and "voice" in case.body:
        case.body["voice"] = _listed_or_drawn(case.body["voice"], "voice")
    capability = BODY_CAPABILITY.get(case.path)
    if capability is not None and isinstance(case.body, dict):
        body = case.body
        if "model" in body:
            body["model"] = _listed_or_drawn(body["model"], capability)
        if capability == "asr" and isinstance(body.get("file"), (bytes, str)) and _carries_speech(body):
            body["file"] = UPLOAD["speech"]
        if capability == "llm":
            tokens = body.get("max_tokens")
            body["max_tokens"] = min(tokens, MAX_TOKENS) if isinstance(tokens, int) and not isinstance(tokens, bool) \
                else MAX_TOKENS


@pytest.fixture(scope="module")
def session(gateway, speech) -> Iterator[requests.Session]:
    served = requests.get(f"{gateway.url}/openapi.json", timeout=30)
    assert served.status_code == 200 and served.json() == SPEC, "the gateway serves another document than the one fuzzed"
    cards = requests.get(f"{gateway.url}/v1/models", timeout=30).json()["data"]
    LISTED["any"] = [card["id"] for card in cards]
    for capability in BODY_CAPABILITY.values():
        LISTED[capability] = [card["id"] for card in cards if capability in card["capabilities"]]
    assert all(LISTED.values()), LISTED  # every kind of engine is there to be fuzzed
    LISTED["voice"] = [voice["id"] for voice in requests.get(f"{gateway.url}/v1/audio/voices", timeout=30).json()["voices"]]
    UPLOAD["speech"] = speech.piper("fuzz-hello", "Hello there.").read_bytes()
    with requests.Session() as opened:
        yield opened
    LISTED.clear()
    UPLOAD.clear()
    assert requests.get(f"{gateway.url}/health", timeout=30).status_code == 200  # still serving
    # Each documented operation fuzzed was served at least once, not only refused: the cases reached
    # its engine. (The methods an operation does not document are only refused.)
    documented = {f"{method.upper()} {path}" for path, item in SPEC["paths"].items() for method in item}
    never_served = sorted(op for op, statuses in ANSWERED.items() if op in documented and not any(s < 300 for s in statuses))
    assert not never_served, never_served


def check_case(case: schemathesis.Case, gateway, session: requests.Session) -> None:
    aim(case)
    response = case.call(base_url=gateway.url, session=session, timeout=120)
    ANSWERED.setdefault(f"{case.method.upper()} {case.path}", set()).add(response.status_code)
    case.validate_response(response, checks=CHECKS)
    if response.status_code >= 400 and case.method.upper() != "HEAD":
        error = response.json()["error"]
        assert set(error) == {"kind", "provider", "message", "type", "code", "param"}, response.text
        assert STATUS_BY_KIND[ErrorKind(error["kind"])] == response.status_code, response.text
        assert error["code"] == error["kind"] and error["message"] and error["provider"], response.text


@schema.exclude(path=[*ENGINE_PATHS, *DECODE_PATHS]).parametrize()
@_settings(ROUTING_CASES)
def test_operation(case: schemathesis.Case, gateway, session: requests.Session) -> None:
    check_case(case, gateway, session)


@schema.include(path=list(ENGINE_PATHS)).parametrize()
@_settings(ENGINE_CASES)
def test_engine_operation(case: schemathesis.Case, gateway, session: requests.Session) -> None:
    check_case(case, gateway, session)


@schema.include(path=list(DECODE_PATHS)).parametrize()
@_settings(DECODE_CASES)
def test_decoding_operation(case: schemathesis.Case, gateway, session: requests.Session) -> None:
    check_case(case, gateway, session)
