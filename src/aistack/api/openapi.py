"""/openapi.json as FastAPI builds it, corrected where its reading of the Python types says more than
the wire can carry."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

NULL = {"type": "null"}


def install_openapi(app: FastAPI) -> None:
    """Build the document once, as FastAPI does, then correct it."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            form_fields_without_null(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def form_fields_without_null(document: dict[str, Any]) -> None:
    """A multipart form has no null: an optional field (`str | None = None`) is one left out, so its
    schema is the value's alone (FastAPI writes `anyOf: [..., {"type": "null"}]`, which a client or a
    fuzzer would then send, as the text "null" or "None")."""
    schemas = document.get("components", {}).get("schemas", {})
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            form = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
            if form is None:
                continue
            ref = form.get("schema", {}).get("$ref", "")
            body = schemas.get(ref.rsplit("/", 1)[-1], form.get("schema", {}))
            for name, field in body.get("properties", {}).items():
                options = field.get("anyOf")
                if isinstance(options, list) and NULL in options:
                    kept = [option for option in options if option != NULL]
                    rest = {key: value for key, value in field.items() if key != "anyOf"}
                    body["properties"][name] = {**(kept[0] if len(kept) == 1 else {"anyOf": kept}), **rest}
                if body["properties"][name].get("default", ...) is None:
                    del body["properties"][name]["default"]
