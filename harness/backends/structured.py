"""Structured generation: JSON schemas on requests, compiled for grammar-constrained decoding.

The ``hf`` backend constrains decoding with xgrammar (``pip install 'janus-harness[structured]'``):
the schema is compiled once per tokenizer into a grammar, and every token that could not continue
a JSON text matching it is masked: by ``RowGrammars`` in the dynamic-batch decoder, by xgrammar's
transformers logits processor where ``generate`` runs (the same per-row state, the same tokens). Compact JSON
(no free whitespace between tokens) keeps a small model from spending its budget on blanks.

Every schema is first checked as a JSON Schema (Draft 2020-12 meta-schema), so an invalid one
fails with the same message on every backend; one the decoder cannot compile (an unsupported
keyword, a regex with look-behind) fails with ``SchemaCompileError`` naming the schema, before
any generation starts.
"""
from __future__ import annotations

import json
import re
import threading

from harness.records import stable_hash


class SchemaCompileError(ValueError):
    """A JSON schema that is invalid or that the constrained decoder cannot compile."""


def schema_name(schema: dict) -> str:
    """How an error names a schema: its ``title`` (if any) plus a short content hash."""
    title = schema.get("title") if isinstance(schema, dict) else None
    digest = stable_hash(schema, 10)
    return f"'{title}' ({digest})" if title else f"({digest})"


def check_schema(schema, where: str = "json_schema") -> None:
    """Raise ``SchemaCompileError`` unless ``schema`` is a valid JSON Schema object."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    if not isinstance(schema, dict):
        raise SchemaCompileError(f"{where}: a JSON schema must be an object, got {type(schema).__name__}")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        raise SchemaCompileError(f"{where}: schema {schema_name(schema)} is not a valid JSON Schema: "
                                 f"{e.message}") from None


def schema_violation(text: str, schema: dict) -> str | None:
    """Why ``text`` is not JSON matching ``schema`` (None when it is): the client-side check."""
    from jsonschema import Draft202012Validator

    try:  # raw control characters inside strings are accepted (xgrammar's grammar admits them)
        value = json.loads(text, strict=False)
    except (TypeError, ValueError) as e:
        return f"not JSON: {e}"
    err = next(iter(Draft202012Validator(schema).iter_errors(value)), None)
    return None if err is None else f"does not match the schema: {err.message}"


class GrammarCache:
    """Compiled grammars of one tokenizer, one per distinct schema (compiling takes ~0.1-2 s)."""

    def __init__(self, tokenizer, vocab_size: int | None = None):
        try:
            import xgrammar as xgr
        except ImportError as e:
            raise SchemaCompileError("json_schema on the hf backend needs xgrammar: "
                                     "pip install 'janus-harness[structured]'") from e
        self._xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self._compiler = xgr.GrammarCompiler(info, max_threads=1)
        self._grammars: dict[str, object] = {}
        self._lock = threading.Lock()

    def compiled(self, schema: dict, where: str = "json_schema"):
        key = stable_hash(schema, 32)
        with self._lock:
            if key not in self._grammars:
                check_schema(schema, where)
                try:
                    self._grammars[key] = self._compiler.compile_json_schema(
                        json.dumps(schema), any_whitespace=False, strict_mode=True)
                except RuntimeError as e:  # xgrammar reports unsupported features this way
                    reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                    reason = re.sub(r"^\[[^\]]*\]\s*\S+:\d+:\s*", "", reason)  # "[time] file.cc:83: "
                    raise SchemaCompileError(f"{where}: schema {schema_name(schema)} cannot be compiled for "
                                             f"constrained decoding: {reason}") from None
            return self._grammars[key]

    def logits_processor(self, schemas: list[dict]):
        """A fresh processor (it holds per-row matcher state) for one ``generate`` batch."""
        from xgrammar.contrib.hf import LogitsProcessor

        return LogitsProcessor([self.compiled(s) for s in schemas])


class RowGrammars:
    """Grammar state per request for the dynamic-batch decoder (``hf_batching.decode``), kept as
    xgrammar's transformers processor keeps it in ``generate``: each step a running matcher refills
    its row's mask, a terminated one keeps its last mask, and the token picked is accepted."""

    def __init__(self, cache: GrammarCache, reqs):
        xgr = cache._xgr
        self._xgr = xgr
        grammars = [cache.compiled(r.json_schema) for r in reqs]
        self.matchers = [xgr.GrammarMatcher(g) for g in grammars]
        self.bitmask = xgr.allocate_token_bitmask(len(reqs), grammars[0].tokenizer_info.vocab_size)

    def mask(self, logits, rows) -> None:
        """Mask ``logits`` in place (row j holds request ``rows[j]``)."""
        import torch

        for b in rows:
            if not self.matchers[b].is_terminated():
                self.matchers[b].fill_next_token_bitmask(self.bitmask, b)
        self._xgr.apply_token_bitmask_inplace(logits, self.bitmask[torch.tensor(list(rows), dtype=torch.long)])

    def accept(self, b: int, token: int) -> None:
        m = self.matchers[b]
        if not m.is_terminated() and not m.accept_token(token):
            raise RuntimeError(f"hf: token {token} does not continue the JSON schema of request {b}")
