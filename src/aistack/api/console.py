"""GET / and GET /console/{file}: the web console's files, from the package, for a browser on the same origin."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from ..errors import not_found

router = APIRouter(include_in_schema=False)

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
}
# The files change with every upgrade and are small: the browser revalidates instead of running stale modules.
NO_STALE_COPIES = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def _console_file(name: str) -> Response:
    suffix = name[name.rfind("."):] if "." in name else ""
    folder = resources.files("aistack.console")
    # Only plain file names of the package's own kinds: no folders, so no way out of the package.
    if "/" in name or "\\" in name or name.startswith(".") or suffix not in CONTENT_TYPES or not folder.joinpath(name).is_file():
        raise not_found(f"the console has no file '{name}'; open / for the console")
    return Response(folder.joinpath(name).read_bytes(), media_type=CONTENT_TYPES[suffix], headers=NO_STALE_COPIES)


@router.get("/")
async def console_page() -> Response:
    return _console_file("index.html")


@router.get("/console/{name}")
async def console_asset(name: str) -> Response:
    return _console_file(name)
