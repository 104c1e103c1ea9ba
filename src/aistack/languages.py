"""Language codes: what a request may name, and what each engine family transcribes."""

from __future__ import annotations

from .errors import malformed

# ISO 639-1 (all 183 two-letter codes).
ISO_639_1: frozenset[str] = frozenset(
    """
    aa ab ae af ak am an ar as av ay az ba be bg bi bm bn bo br bs ca ce ch co cr cs cu cv cy
    da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht
    hu hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky
    la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny
    oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss
    st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo
    za zh zu
    """.split()
)

# Cantonese has no ISO 639-1 code; docs/models.md routes it by its ISO 639-3 code, so requests may name it.
EXTRA_CODES: frozenset[str] = frozenset({"yue"})

# Multilingual Whisper, restricted to codes in ISO 639-1 (Whisper's own "haw" and "yue" have none).
WHISPER_LANGUAGES: tuple[str, ...] = tuple(
    """
    en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no
    th ur hr bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw
    gl mr pa si km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl
    mg as tt ln ha ba jv su
    """.split()
)

# Where Whisper's tokenizer spells a language differently from ISO 639-1.
WHISPER_CODE_FOR_ISO: dict[str, str] = {"jv": "jw"}
ISO_FOR_WHISPER_CODE: dict[str, str] = {v: k for k, v in WHISPER_CODE_FOR_ISO.items()}

PARAKEET_LANGUAGES: tuple[str, ...] = tuple(
    "en bg hr cs da nl et fi fr de el hu it lv lt mt pl pt ro sk sl es sv ru uk".split()
)

SENSEVOICE_LANGUAGES: tuple[str, ...] = ("zh", "yue", "ja", "ko", "en")

# Every language some speech-to-text engine aistack runs can transcribe.
KNOWN_ASR_LANGUAGES: frozenset[str] = frozenset(WHISPER_LANGUAGES) | frozenset(PARAKEET_LANGUAGES) | frozenset(SENSEVOICE_LANGUAGES)

# docs/models.md: hints that prefer the CJK/tonal engine.
CJK_LANGUAGES: frozenset[str] = frozenset({"zh", "yue", "ja", "ko"})


def normalize_language(value: str | None) -> str | None:
    """The request's language hint as a lower-case code, or None for no hint.

    Raises a 400 naming the field when the value is not an ISO 639-1 code.
    """
    if value is None:
        return None
    code = value.strip().lower()
    if code in ("", "auto"):
        return None
    if code in ISO_639_1 or code in EXTRA_CODES:
        return code
    raise malformed(
        f"language '{value}' is not an ISO 639-1 code; send a two-letter code such as 'en', 'de' or 'fr', "
        "or leave it out to detect the language",
        param="language",
    )
