"""The wire shapes, one module per endpoint family: OpenAI's request, response and stream-event models
with aistack's extension fields, so that one place says what each endpoint takes and answers (and
/openapi.json documents it)."""
