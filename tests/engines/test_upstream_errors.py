"""Reading upstreams' error bodies: validation answers field by field (whatever the status), the
upstream's own words otherwise, never a traceback or a server path.

The llama-cpp-python bodies were captured from its server (0.3, FastAPI 0.165) on SmolLM2; the vLLM
and Ollama ones follow their servers' handlers.
"""

from __future__ import annotations

import json

import pytest

from aistack.engines.upstream_errors import (
    MAX_ERROR_BODY,
    MAX_MESSAGE_CHARS,
    UpstreamRefusal,
    parse_refusal,
    scrub,
    upstream_message,
)


def llama_cpp_error(message: str, kind: str, param: str | None, code: str | None) -> bytes:
    """llama-cpp-python's RouteErrorHandler: `{"error": ErrorResponse}` (500 for anything it does not recognise)."""
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


# -- llama-cpp-python, as captured ---------------------------------------------------------------

PROMPT_NULL = llama_cpp_error(
    '2 validation errors:\n'
    "  {'type': 'string_type', 'loc': ('body', 'prompt', 'str'), 'msg': 'Input should be a valid string', 'input': None}\n"
    "  {'type': 'list_type', 'loc': ('body', 'prompt', 'list[str]'), 'msg': 'Input should be a valid list', 'input': None}\n"
    '\n'
    '  File "/work/main/.venv/lib/python3.11/site-packages/llama_cpp/server/app.py", line 264, in create_completion\n'
    '    POST /v1/completions',
    'internal_server_error', None, None)

DEVELOPER_ROLE = llama_cpp_error(
    '7 validation errors:\n'
    '  {\'type\': \'literal_error\', \'loc\': (\'body\', \'messages\', 0, \'ChatCompletionRequestSystemMessage\', \'role\'), \'msg\': "Input should be \'system\'", \'input\': \'developer\', \'ctx\': {\'expected\': "\'system\'"}}\n'
    '  {\'type\': \'literal_error\', \'loc\': (\'body\', \'messages\', 0, \'ChatCompletionRequestUserMessage\', \'role\'), \'msg\': "Input should be \'user\'", \'input\': \'developer\', \'ctx\': {\'expected\': "\'user\'"}}\n'
    '  {\'type\': \'literal_error\', \'loc\': (\'body\', \'messages\', 0, \'ChatCompletionRequestAssistantMessage\', \'role\'), \'msg\': "Input should be \'assistant\'", \'input\': \'developer\', \'ctx\': {\'expected\': "\'assistant\'"}}\n'
    '  {\'type\': \'literal_error\', \'loc\': (\'body\', \'messages\', 0, \'ChatCompletionRequestToolMessage\', \'role\'), \'msg\': "Input should be \'tool\'", \'input\': \'developer\', \'ctx\': {\'expected\': "\'tool\'"}}\n'
    "  {'type': 'missing', 'loc': ('body', 'messages', 0, 'ChatCompletionRequestToolMessage', 'tool_call_id'), 'msg': 'Field required', 'input': {'role': 'developer', 'content': 'Be brief.'}}\n"
    '  {\'type\': \'literal_error\', \'loc\': (\'body\', \'messages\', 0, \'ChatCompletionRequestFunctionMessage\', \'role\'), \'msg\': "Input should be \'function\'", \'input\': \'developer\', \'ctx\': {\'expected\': "\'function\'"}}\n'
    "  {'type': 'missing', 'loc': ('body', 'messages', 0, 'ChatCompletionRequestFunctionMessage', 'name'), 'msg': 'Field required', 'input': {'role': 'developer', 'content': 'Be brief.'}}\n"
    '\n'
    '  File "/work/main/.venv/lib/python3.11/site-packages/llama_cpp/server/app.py", line 376, in create_chat_completion\n'
    '    POST /v1/chat/completions',
    'internal_server_error', None, None)

TEMPERATURE_A_WORD = llama_cpp_error(
    '1 validation error:\n'
    "  {'type': 'float_parsing', 'loc': ('body', 'temperature'), 'msg': 'Input should be a valid number, unable to parse string as a number', 'input': 'hot'}\n"
    '\n'
    '  File "/work/main/.venv/lib/python3.11/site-packages/llama_cpp/server/app.py", line 376, in create_chat_completion\n'
    '    POST /v1/chat/completions',
    'internal_server_error', None, None)

MAX_TOKENS_NEGATIVE = llama_cpp_error(
    '1 validation error:\n'
    "  {'type': 'greater_than_equal', 'loc': ('body', 'max_tokens'), 'msg': 'Input should be greater than or equal to 0', 'input': -5, 'ctx': {'ge': 0}}\n"
    '\n'
    '  File "/work/main/.venv/lib/python3.11/site-packages/llama_cpp/server/app.py", line 264, in create_completion\n'
    '    POST /v1/completions',
    'internal_server_error', None, None)

NOT_AN_EMBEDDING_MODEL = llama_cpp_error(
    'Llama model must be created with embedding=True to call this method',
    'internal_server_error', None, None)

OVER_THE_CONTEXT = llama_cpp_error(
    "This model's maximum context length is 2048 tokens, however you requested 3005 tokens (3001 in your prompt; 4 for the completion). Please reduce your prompt; or completion length.",
    'invalid_request_error', 'messages', 'context_length_exceeded')


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (PROMPT_NULL, UpstreamRefusal("prompt: Input should be a valid string or Input should be a valid list (got null)",
                                      "prompt", invalid_request=True)),
        (TEMPERATURE_A_WORD, UpstreamRefusal(
            'temperature: Input should be a valid number, unable to parse string as a number (got "hot")',
            "temperature", invalid_request=True)),
        (MAX_TOKENS_NEGATIVE, UpstreamRefusal("max_tokens: Input should be greater than or equal to 0 (got -5)",
                                              "max_tokens", invalid_request=True)),
        # One problem per member of the message union; the members' own required fields are left out.
        (DEVELOPER_ROLE, UpstreamRefusal(
            "messages[0].role: Input should be 'system' or Input should be 'user' or Input should be 'assistant' or "
            "Input should be 'tool' or Input should be 'function' (got \"developer\")", "messages", invalid_request=True)),
    ],
    ids=["prompt-null", "temperature-a-word", "max-tokens-negative", "developer-role"],
)
def test_llama_cpps_validation_500s_are_read_field_by_field(body: bytes, expected: UpstreamRefusal) -> None:
    assert parse_refusal(body, 500) == expected


def test_a_validation_500_cut_at_the_read_limit_is_still_read_field_by_field() -> None:
    """Dozens of bad messages: llama-cpp-python lists every union member's problem with each, past the
    64 KiB of an error body the relay reads, so the JSON it is read from is cut in the middle."""
    problems = "".join(
        f"  {{'type': 'literal_error', 'loc': ('body', 'messages', {index}, 'ChatCompletionRequest{member}Message', "
        f"'role'), 'msg': \"Input should be '{member.lower()}'\", 'input': 'coral\u00e9', 'ctx': {{'expected': "
        f"\"'{member.lower()}'\"}}}}\n"
        for index in range(200) for member in ("System", "User", "Assistant", "Tool", "Function"))
    body = llama_cpp_error(f"1000 validation errors:\n{problems}", "internal_server_error", None, None)
    assert len(body) > MAX_ERROR_BODY
    refusal = parse_refusal(body[:MAX_ERROR_BODY], 500)
    assert refusal.invalid_request and refusal.param == "messages"
    assert refusal.message.startswith("messages[0].role: Input should be 'system' or Input should be 'user'"), refusal
    assert '(got "coral\\u00e9")' in refusal.message  # as JSON writes it


def test_llama_cpps_own_faults_are_not_validation_answers() -> None:
    assert parse_refusal(NOT_AN_EMBEDDING_MODEL, 500) == UpstreamRefusal(
        "Llama model must be created with embedding=True to call this method", None, invalid_request=False)
    refusal = parse_refusal(OVER_THE_CONTEXT, 400)
    assert refusal.message.startswith("This model's maximum context length is 2048 tokens")
    assert refusal.param == "messages" and not refusal.invalid_request


@pytest.mark.parametrize("body", [PROMPT_NULL, TEMPERATURE_A_WORD, MAX_TOKENS_NEGATIVE, DEVELOPER_ROLE])
def test_no_server_path_survives(body: bytes) -> None:
    assert "site-packages" in body.decode() and "app.py" in body.decode()
    for message in (parse_refusal(body, 500).message, upstream_message(body, 500)[0]):
        assert "site-packages" not in message and "app.py" not in message and "File " not in message, message
        assert "/work/" not in message and "line 264" not in message and "line 376" not in message


# -- vLLM ----------------------------------------------------------------------------------------

# vLLM's RequestValidationError handler: 400, FastAPI's text and then `str(exc.errors())`.
VLLM_VALIDATION = json.dumps({"error": {
    "message": "1 validation error:\n  {'type': 'less_than_equal', 'loc': ('body', 'temperature'), 'msg': "
               "'Input should be less than or equal to 2', 'input': 9, 'ctx': {'le': 2.0}}\n\n"
               "  File \"/usr/local/lib/python3.12/dist-packages/vllm/entrypoints/openai/api_server.py\", line 612, "
               "in create_chat_completion\n    POST /v1/chat/completions "
               "[{'type': 'less_than_equal', 'loc': ('body', 'temperature'), 'msg': "
               "'Input should be less than or equal to 2', 'input': 9, 'ctx': {'le': 2.0}}]",
    "type": "Bad Request", "param": None, "code": 400}}).encode()
# Its VLLMValidationError: the field in `param`, and in the message's tail.
VLLM_PARAMETER = json.dumps({"error": {"message": "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)",
                                       "type": "BadRequestError", "param": "max_tokens", "code": 400}}).encode()
# pydantic's own ValidationError text (a model validated inside a handler).
PYDANTIC_TEXT = json.dumps({"object": "error", "type": "BadRequestError", "code": 400, "message": (
    "1 validation error for ChatCompletionRequest\nmessages.0.content\n  Input should be a valid string "
    "[type=string_type, input_value=5, input_type=int]\n    For further information visit "
    "https://errors.pydantic.dev/2.11/v/string_type")}).encode()


def test_vllms_validation_400_is_read_field_by_field_without_its_paths() -> None:
    assert parse_refusal(VLLM_VALIDATION, 400) == UpstreamRefusal(
        "temperature: Input should be less than or equal to 2 (got 9)", "temperature", invalid_request=True)


def test_vllms_parameter_errors_keep_their_param() -> None:
    assert parse_refusal(VLLM_PARAMETER, 400) == UpstreamRefusal(
        "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)", "max_tokens")


def test_pydantics_own_error_text_is_read_field_by_field() -> None:
    assert parse_refusal(PYDANTIC_TEXT, 400) == UpstreamRefusal(
        "messages[0].content: Input should be a valid string (got 5)", "messages", invalid_request=True)


# -- FastAPI and Ollama --------------------------------------------------------------------------


def test_fastapis_422_detail_list_names_each_field() -> None:
    body = json.dumps({"detail": [
        {"type": "missing", "loc": ["body", "input"], "msg": "Field required", "input": {"model": "m"}},
        {"type": "string_type", "loc": ["body", "model"], "msg": "Input should be a valid string", "input": 3},
    ]}).encode()
    assert parse_refusal(body, 422) == UpstreamRefusal(
        "input: is required; add it; model: Input should be a valid string (got 3)", None, invalid_request=True)


def test_ollamas_go_decoding_errors_name_the_field() -> None:
    body = json.dumps({"error": {"message": "json: cannot unmarshal number into Go struct field "
                                            "ChatCompletionRequest.messages.role of type string",
                                 "type": "invalid_request_error", "param": None, "code": None}}).encode()
    refusal = parse_refusal(body, 400)
    assert refusal.param == "messages" and "cannot unmarshal number" in refusal.message


def test_ollamas_refusals_and_faults_keep_their_words() -> None:
    refusal = parse_refusal(json.dumps({"error": {"message": '"nomic-embed-text:latest" does not support chat',
                                                  "type": "invalid_request_error", "param": None,
                                                  "code": None}}).encode(), 400)
    assert refusal == UpstreamRefusal('"nomic-embed-text:latest" does not support chat', None)
    fault = parse_refusal(json.dumps({"error": "llama runner process has terminated: signal: killed"}).encode(), 500)
    assert fault == UpstreamRefusal("llama runner process has terminated: signal: killed", None)
    blobs = parse_refusal(json.dumps({"error": "open /root/.ollama/models/blobs/sha256-abc: no such file"}).encode(), 500)
    assert blobs.message == "open sha256-abc: no such file"


# -- scrubbing -----------------------------------------------------------------------------------


def test_a_python_traceback_leaves_only_its_words() -> None:
    text = ("Traceback (most recent call last):\n"
            '  File "/usr/lib/python3/dist-packages/llama_cpp/llama.py", line 1021, in embed\n'
            "    raise RuntimeError(\"Llama model must be created with embedding=True\")\n"
            "RuntimeError: Llama model must be created with embedding=True")
    assert scrub(text) == "RuntimeError: Llama model must be created with embedding=True"
    assert upstream_message(text.encode(), 500) == ("RuntimeError: Llama model must be created with embedding=True", None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Model path does not exist: /models/SmolLM2.gguf", "Model path does not exist: SmolLM2.gguf"),
        (r"cannot open C:\Users\me\models\x.gguf", "cannot open x.gguf"),
        # Routes and URLs are the client's to know; a relative path is no server's.
        ("no route POST /v1/chat/completions", "no route POST /v1/chat/completions"),
        ("see /api/show for it", "see /api/show for it"),
        ("see https://errors.pydantic.dev/2.11/v/string_type", "see https://errors.pydantic.dev/2.11/v/string_type"),
        ("models/x.gguf is missing", "models/x.gguf is missing"),
        ("<html><body>Bad Gateway</body></html>", "<html><body>Bad Gateway</body></html>"),
    ],
)
def test_server_paths_are_cut_to_their_last_part(text: str, expected: str) -> None:
    assert scrub(text) == expected


def test_an_unreadable_validation_line_still_names_the_field() -> None:
    # `input` holding something Python cannot read back (an object's repr).
    message = ("1 validation error:\n  {'type': 'value_error', 'loc': ('body', 'stop'), 'msg': 'Value error, bad stop', "
               "'input': <object at 0x7f>, 'ctx': {'error': ValueError('bad stop')}}")
    assert parse_refusal(llama_cpp_error(message, "internal_server_error", None, None), 500) == UpstreamRefusal(
        "stop: Value error, bad stop", "stop", invalid_request=True)


def test_long_messages_are_cut_and_bad_bytes_replaced() -> None:
    refusal = parse_refusal(json.dumps({"error": {"message": "x" * (MAX_MESSAGE_CHARS * 2)}}).encode(), 500)
    assert len(refusal.message) == MAX_MESSAGE_CHARS + 1 and refusal.message.endswith("…")
    assert parse_refusal(b"bad \xff bytes", 500).message.startswith("bad ")
    assert parse_refusal(b"", 502) == UpstreamRefusal("HTTP 502 with an empty body", None)
    assert parse_refusal(b"[" * 100_000, 500).message.startswith("[[[")  # too deep to parse: quoted as text
