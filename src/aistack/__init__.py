"""aistack: one local gateway speaking the OpenAI API over the speech and language engines on this machine."""

__version__ = "0.1.0"
