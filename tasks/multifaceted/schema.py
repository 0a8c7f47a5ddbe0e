"""JSON schemas for Multifaceted Bench: rubrics, preference sets, bench records.

The released bench (kaist-ai/Multifaceted-Bench) has ``source, system, prompt,
reference_answer`` and the rubric list, spelled ``rubric`` in the JANUS README and
``rubrics`` in its Makefile since 2024-06-07; both are accepted and normalised to
``rubrics``. Errors name the file (or record) and the field.
"""
from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator

SCORE_KEYS = ["1", "2", "3", "4", "5"]
_TEXT = {"type": "string", "pattern": r"\S"}  # non-empty, not only whitespace

RUBRIC_SCHEMA = {
    "type": "object",
    "required": ["criteria", "score_descriptions"],
    "properties": {
        "criteria": _TEXT,
        "score_descriptions": {
            "type": "object",
            "required": SCORE_KEYS,
            "properties": {k: _TEXT for k in SCORE_KEYS},
            "additionalProperties": False,
        },
    },
}

PREFERENCE_SCHEMA = {
    "type": "object",
    "required": ["dimension", "subdimension", "description"],
    "properties": {"dimension": _TEXT, "subdimension": _TEXT, "preference": _TEXT, "description": _TEXT},
}

PREFERENCE_SET_SCHEMA = {"type": "array", "minItems": 1, "items": PREFERENCE_SCHEMA}

BENCH_RECORD_SCHEMA = {
    "type": "object",
    "required": ["source", "system", "prompt", "reference_answer", "rubrics"],
    "properties": {
        "id": {"type": ["string", "integer"]},
        "source": {"type": "string"},
        "system": _TEXT,
        "prompt": _TEXT,
        "reference_answer": _TEXT,
        "rubrics": {"type": "array", "minItems": 1, "items": RUBRIC_SCHEMA},
        "preference_set": PREFERENCE_SET_SCHEMA,
    },
}


class SchemaError(ValueError):
    """A record does not match its schema; the message names where and which field."""


def _path(error) -> str:
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(record)"


def schema_errors(obj: Any, schema: dict) -> list[str]:
    """All violations as "field: message" strings, in a stable order."""
    errors = sorted(Draft202012Validator(schema).iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    return [f"field '{_path(e)}': {e.message}" for e in errors]


def _check(obj: Any, schema: dict, where: str) -> None:
    errors = schema_errors(obj, schema)
    if errors:
        raise SchemaError(f"{where}: {errors[0]}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))


def validate_rubric(rubric: Any, where: str = "rubric") -> dict:
    _check(rubric, RUBRIC_SCHEMA, where)
    return rubric


def validate_preference_set(prefs: Any, where: str = "preference_set", dimensions: list[str] | None = None) -> list:
    """A preference set; with ``dimensions``, exactly one preference per dimension, in that order."""
    _check(prefs, PREFERENCE_SET_SCHEMA, where)
    if dimensions is not None:
        got = [p["dimension"].strip().lower().replace(" ", "_") for p in prefs]
        if got != list(dimensions):
            raise SchemaError(f"{where}: field 'dimension': expected {dimensions} in order, got {got}")
    return prefs


def normalise_rubric_key(record: dict, where: str) -> dict:
    """Return a copy with the rubric list under ``rubrics`` (accepting ``rubric``)."""
    if not isinstance(record, dict):
        raise SchemaError(f"{where}: a bench record must be a JSON object, got {type(record).__name__}")
    has_old, has_new = "rubric" in record, "rubrics" in record
    if has_old and has_new and record["rubric"] != record["rubrics"]:
        raise SchemaError(f"{where}: fields 'rubric' and 'rubrics' both present and different")
    out = dict(record)
    if has_old:
        out["rubrics"] = out.pop("rubric")
    return out


def validate_bench_record(record: Any, where: str, n_rubrics: int | None = 4) -> dict:
    """Validate one bench record (released or built); returns it with ``rubrics`` normalised."""
    rec = normalise_rubric_key(record, where)
    _check(rec, BENCH_RECORD_SCHEMA, where)
    if n_rubrics is not None and len(rec["rubrics"]) != n_rubrics:
        raise SchemaError(f"{where}: field 'rubrics': expected {n_rubrics} rubrics, got {len(rec['rubrics'])}")
    return rec


# --------------------------------------------------------------------------- generation schemas
# What the builders send as a request's ``json_schema`` (constrained decoding): the shape the
# parsers read, with one entry per JANUS dimension in order and bounded string lengths, so a small
# generator cannot run out of tokens inside a string. Outputs are still validated afterwards with
# the schemas above (and against this one). No ``pattern`` here: a decoder matches a pattern
# against the whole string, jsonschema searches it, and the two would disagree.
def _gen_text(lo: int, hi: int) -> dict:
    return {"type": "string", "minLength": lo, "maxLength": hi}


def preference_set_generation_schema(dimensions: list[str], max_chars: int = 300) -> dict:
    """One preference per dimension, in order; free text at most ``max_chars`` characters."""
    def item(dim: str) -> dict:
        return {"type": "object",
                "properties": {"dimension": {"const": dim}, "subdimension": _gen_text(3, min(60, max_chars)),
                               "preference": _gen_text(10, max_chars), "description": _gen_text(10, max_chars)},
                "required": ["dimension", "subdimension", "preference", "description"],
                "additionalProperties": False}

    return {"title": "preference_set", "type": "object",
            "properties": {"preference_set": {"type": "array", "prefixItems": [item(d) for d in dimensions],
                                              "items": False, "minItems": len(dimensions),
                                              "maxItems": len(dimensions)}},
            "required": ["preference_set"], "additionalProperties": False}


def rubric_generation_schema(max_chars: int = 300) -> dict:
    """A rubric: criteria and the five score descriptions, each at most ``max_chars`` characters."""
    return {"title": "rubric", "type": "object",
            "properties": {"criteria": _gen_text(10, max_chars),
                           "score_descriptions": {"type": "object",
                                                  "properties": {k: _gen_text(10, max_chars) for k in SCORE_KEYS},
                                                  "required": SCORE_KEYS, "additionalProperties": False}},
            "required": ["criteria", "score_descriptions"], "additionalProperties": False}


RUBRIC_GENERATION_SCHEMA = rubric_generation_schema()
