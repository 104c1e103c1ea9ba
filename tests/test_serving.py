"""`aistack serve` refuses to expose a keyless gateway to the network, unless told to."""

from __future__ import annotations

from pathlib import Path

import pytest

from aistack.cli import main
from aistack.serving import is_loopback_address, network_refusal
from aistack.settings import Settings


def test_serving_beyond_loopback_without_a_key_is_refused_naming_the_setting(capsys, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AISTACK_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("AISTACK_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    said = capsys.readouterr().err
    assert "AISTACK_SECURITY__ADMIN_KEYS" in said and "ALLOW_UNAUTHENTICATED_NETWORK" in said


def test_the_rule_and_its_ways_out(tmp_path: Path) -> None:
    assert network_refusal(Settings(cache_dir=tmp_path, host="0.0.0.0"), has_keys=False) is not None
    assert network_refusal(Settings(cache_dir=tmp_path, host="192.168.1.4"), has_keys=False) is not None
    assert network_refusal(Settings(cache_dir=tmp_path, host="0.0.0.0"), has_keys=True) is None
    allowed = Settings(cache_dir=tmp_path, host="::", security={"allow_unauthenticated_network": True})
    assert network_refusal(allowed, has_keys=False) is None
    for loopback in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert is_loopback_address(loopback)
        assert network_refusal(Settings(cache_dir=tmp_path, host=loopback), has_keys=False) is None
