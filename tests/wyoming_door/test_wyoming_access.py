"""Who may talk to the Wyoming door. The protocol carries no key, so the door admits clients by address
(`wyoming.allowed_clients`), and `aistack serve` will not offer it beyond loopback to anyone at all
unless told to, as it will not offer a keyless HTTP API."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from wyoming.info import Describe, Info
from wyoming_harness import WyomingServer, client, talk

from aistack.cli import main
from aistack.serving import network_refusal
from aistack.settings import Settings


def refusal(tmp_path: Path, has_keys: bool = False, **wyoming: object) -> str | None:
    return network_refusal(Settings(cache_dir=tmp_path, wyoming=wyoming), has_keys=has_keys)


def test_wyoming_beyond_loopback_for_anyone_is_refused_naming_the_settings(tmp_path: Path) -> None:
    said = refusal(tmp_path, uri="tcp://0.0.0.0:10300")
    assert said is not None
    assert "AISTACK_WYOMING__ALLOWED_CLIENTS" in said and "ALLOW_UNAUTHENTICATED_NETWORK" in said
    # HTTP keys do not guard Wyoming: its clients never send one.
    assert refusal(tmp_path, has_keys=True, uri="tcp://192.168.1.4:10300") is not None


def test_the_ways_out(tmp_path: Path) -> None:
    assert refusal(tmp_path, uri="tcp://0.0.0.0:10300", allowed_clients=["192.168.1.10"]) is None
    assert refusal(tmp_path, uri="tcp://127.0.0.1:10300") is None
    assert refusal(tmp_path, uri="tcp://[::1]:10300") is None
    assert refusal(tmp_path, uri="unix:///run/aistack/wyoming.sock") is None  # guarded by the file's permissions
    assert refusal(tmp_path) is None  # no Wyoming server
    anyway = Settings(cache_dir=tmp_path, wyoming={"uri": "tcp://0.0.0.0:10300"},
                      security={"allow_unauthenticated_network": True})
    assert network_refusal(anyway, has_keys=False) is None


def test_serve_refuses_at_start(capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AISTACK_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("AISTACK_WYOMING__URI", "tcp://0.0.0.0:0")
    assert main(["serve", "--port", "0"]) == 2  # HTTP on loopback: only the Wyoming bind is refused
    assert "AISTACK_WYOMING__ALLOWED_CLIENTS" in capsys.readouterr().err


def test_an_allowed_client_that_is_not_an_address_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="neither an IP address nor a network"):
        Settings(cache_dir=tmp_path, wyoming={"uri": "tcp://0.0.0.0:10300", "allowed_clients": ["homeassistant"]})


def describe(server: WyomingServer) -> Info | None:
    """Info for a describe, or None when the door closed the connection instead of answering."""

    async def scenario() -> Info | None:
        try:
            async with client(server.uri) as connection:
                await connection.write_event(Describe().event())
                event = await connection.read_event()
        except ConnectionError:  # reset: the door closed the socket with the describe unread
            return None
        return None if event is None else Info.from_event(event)

    return talk(scenario)


@pytest.mark.slow
@pytest.mark.parametrize(("allowed", "admitted"), [(["192.0.2.0/24"], False), (["127.0.0.0/8"], True), ([], True)])
def test_the_door_answers_only_allowed_clients(models_cache: Path, allowed: list[str], admitted: bool) -> None:
    server = WyomingServer(Settings(cache_dir=models_cache,
                                    wyoming={"uri": "tcp://127.0.0.1:0", "allowed_clients": allowed}))
    try:
        info = describe(server)
        if admitted:
            assert info is not None and info.asr
        else:
            assert info is None and server.sessions() == 0  # closed before any session began
    finally:
        server.close()
