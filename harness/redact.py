"""Scrub secrets from text that is stored or printed (error messages echo what servers say).

A server may echo the API key in an error body ("invalid key: Bearer sk-..."); such text
reaches records and the cache only through ``redact``: the configured key values
themselves, and anything shaped like a bearer token or a well-known key format.
"""
from __future__ import annotations

import re
from typing import Iterable

MASK = "[REDACTED]"
_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"(?i)((?:api[_-]?key|authorization|token|secret)[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{12,}"),  # OpenAI-style keys
    re.compile(r"\bhf_[A-Za-z0-9]{16,}"),  # Hugging Face tokens
    re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"),  # Google API keys (Perspective)
]


def redact(text: str | None, secrets: Iterable[str] = ()) -> str | None:
    if not text:
        return text
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, MASK)
    for p in _PATTERNS:
        text = p.sub(lambda m: (m.group(1) if m.groups() else "") + MASK, text)
    return text
