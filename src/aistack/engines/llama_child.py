"""The embedded llama.cpp server's child process: llama-cpp-python's server app, served on a socket
that the parent bound and handed down.

`python -m aistack.engines.llama_child --fd N [llama_cpp.server arguments]`, e.g.
`--fd 5 --model m.gguf --n_ctx 2048 --model_alias smollm2`. The parent binds 127.0.0.1:0 and
passes the listening socket as fd N, so the port is known before the child starts and no other
process can take it in between (a port looked up free and bound later can be). The arguments
after `--fd` are llama_cpp.server's own, parsed as `python -m llama_cpp.server` parses them;
its `--host` and `--port` are accepted but unused, since the socket is already bound. The API key
it requires comes in the environment variable LLAMA_CHILD_API_KEY.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

# The environment variable that hands the child its API key (see llama_server.child_environment).
KEY_ENV = "LLAMA_CHILD_API_KEY"


def parse_fd(argv: list[str]) -> tuple[int, list[str]]:
    """The inherited socket's fd, and the arguments left for llama_cpp.server."""
    own = argparse.ArgumentParser(prog="aistack.engines.llama_child", add_help=False, allow_abbrev=False)
    own.add_argument("--fd", type=int, required=True, help="a listening TCP socket inherited from the parent")
    known, rest = own.parse_known_args(argv)
    return known.fd, rest


def main(argv: list[str] | None = None) -> None:
    fd, rest = parse_fd(sys.argv[1:] if argv is None else argv)
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.cli import add_args_from_model
    from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings

    parser = argparse.ArgumentParser(prog="aistack.engines.llama_child", description="llama.cpp server on an inherited socket")
    add_args_from_model(parser, Settings)
    args = parser.parse_args(rest)  # an unknown flag exits 2, as llama_cpp.server does
    # As llama_cpp.server's own parse_model_from_args does (whose annotation says it returns a class).
    given = {name: value for name, value in vars(args).items() if value is not None}
    # The key the parent made for this child, from the environment rather than argv (which any user can read).
    child_key = os.environ.pop(KEY_ENV, None)
    if child_key:
        given["api_key"] = child_key
    server_settings = ServerSettings(**{k: v for k, v in given.items() if k in ServerSettings.model_fields})
    model_settings = [ModelSettings(**{k: v for k, v in given.items() if k in ModelSettings.model_fields})]
    app = create_app(server_settings=server_settings, model_settings=model_settings)
    # socket(fileno=) reads the family from the fd itself (uvicorn's own `fd=` assumes AF_UNIX).
    listening = socket.socket(fileno=fd)
    server = uvicorn.Server(uvicorn.Config(app))
    server.run(sockets=[listening])
    if not server.started:
        sys.exit(3)  # as uvicorn.run does when the server could not start


if __name__ == "__main__":
    main()
