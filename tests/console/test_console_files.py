"""The console's files are served from the package at / and /console/*, with the right content types, no
stale copies, nothing fetched from another host, and without shadowing any API route."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from aistack.app import create_app
from aistack.settings import Settings
from conftest import assert_envelope


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    # A loopback host name: the gateway answers no other (the DNS-rebinding rule).
    return TestClient(create_app(Settings(cache_dir=Path(tmp_path_factory.mktemp("cache")), api_key="k")),
                      base_url="http://127.0.0.1")


def console_files() -> list[str]:
    return sorted(f.name for f in resources.files("aistack.console").iterdir() if f.name.endswith((".html", ".css", ".js")))


def test_the_page_and_its_modules_are_served_with_their_content_types(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    referenced = set(re.findall(r'(?:src|href)="/console/([^"]+)"', page.text))
    for name in console_files():
        if name.endswith(".js"):
            referenced |= set(re.findall(r'from "\./([^"]+)"', client.get(f"/console/{name}").text))
    referenced.add("pcm-worklet.js")  # loaded by the audio worklet, not imported
    assert referenced == {name for name in console_files() if name != "index.html"}
    types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
    for name in referenced:
        answer = client.get(f"/console/{name}")
        assert answer.status_code == 200 and answer.headers["content-type"] == types[Path(name).suffix], name
        assert answer.headers["x-content-type-options"] == "nosniff"


def test_nothing_is_fetched_from_another_host() -> None:
    for name in console_files():
        text = resources.files("aistack.console").joinpath(name).read_text()
        assert not re.search(r"\b(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), name


@pytest.mark.parametrize("path", ["/console/nope.js", "/console/__init__.py", "/console/.hidden.js", "/console/index"])
def test_anything_else_under_console_is_the_not_found_envelope(client: TestClient, path: str) -> None:
    assert_envelope(client.get(path), 404, "not_found", None, "open / for the console")


def test_no_path_leads_out_of_the_console_folder(client: TestClient) -> None:
    # A slash, even encoded, makes it a path this router does not match: the app's own not-found envelope.
    for path in ("/console/..%2Fapp.py", "/console/../app.py", "/console/sub/main.js"):
        assert_envelope(client.get(path), 404, "not_found", None)


def test_the_console_needs_no_key_but_the_api_still_does(client: TestClient) -> None:
    assert client.get("/").status_code == 200  # the page asks for the key itself
    assert client.get("/v1/models").status_code == 401
    assert client.get("/health").status_code == 200
    # /openapi.json follows the user scope when keys are set.
    paths = client.get("/openapi.json", headers={"Authorization": "Bearer k"}).json()["paths"]
    assert "/" not in paths and not any(path.startswith("/console") for path in paths)
