"""`aistack serve` with the Wyoming setting on runs the door beside HTTP, says where it listens, and stops it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from wyoming.info import Describe, Info
from wyoming_harness import client, read_until, talk

from conftest import start_gateway, stop_gateway

pytestmark = pytest.mark.slow

# The line the door logs once its socket is bound (src/aistack/wyoming_door/server.py).
ANNOUNCED_WYOMING = re.compile(r"Wyoming server \(Home Assistant[^)]*\) on (tcp://\S+)")


def test_serve_with_the_setting_answers_describe(models_cache: Path, tmp_path: Path) -> None:
    # Port 0: the door binds a free port itself and names it in its log line.
    gateway = start_gateway(models_cache, tmp_path, {"AISTACK_WYOMING__URI": "tcp://127.0.0.1:0"})
    try:
        announced = ANNOUNCED_WYOMING.search(gateway.log())
        assert announced is not None, gateway.log()

        async def scenario() -> Info:
            async with client(announced.group(1)) as connection:
                await connection.write_event(Describe().event())
                return Info.from_event((await read_until(connection, "info"))[-1])

        info = talk(scenario)
        with gateway.client() as http:
            assert http.get("/health").status_code == 200  # HTTP serves alongside
    finally:
        stop_gateway(gateway)
    assert {"auto", "whisper-tiny.en", "whisper-base"} <= {model.name for model in info.asr[0].models}
    assert "en_US-joe-medium" in {voice.name for voice in info.tts[0].voices}
    # The door was stopped with the gateway: a clean shutdown, nothing raised on the way.
    assert "Application shutdown complete" in gateway.log() and "Traceback" not in gateway.log(), gateway.log()


def test_serve_without_the_setting_opens_no_wyoming_port(gateway) -> None:
    assert "Wyoming" not in gateway.log()
