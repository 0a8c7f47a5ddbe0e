"""Multifaceted Bench synthesis: preference set -> system message -> rubrics -> reference answer.

Each stage is a separate, resumable step. Its outputs are ``StageRecord``s in the run
store (SQLite, WAL), keyed by instruction, stage, generator model and the stage's
prompt/sampling config; a rerun skips every key already stored as ``ok``. All model
calls go through the call layer (cache, limits, retries). A generation that does not
parse or validate is re-asked (``calls.parse_retries``) and, if it still fails, stored
with ``status="failed"`` and the reason: it never reaches the bench file, and the
instruction is listed in ``failures.jsonl`` and ``build_report.json``.

Outputs (``out_dir``): ``multifaceted_bench.jsonl`` (released schema: ``id, source,
system, prompt, reference_answer, rubrics``, plus ``preference_set``, ``provenance``,
``generator``), ``multifaceted_bench.parquet`` (loadable with
``datasets.load_dataset("parquet", data_files=...)``), ``failures.jsonl``,
``build_report.json`` and ``run.sqlite`` / ``cache.sqlite`` (written by ``build.py``).

The JSON stages (preference set, rubrics) send their schema with the request
(``BuildSettings.structured``, on by default; ``schema.preference_set_generation_schema``): the hf and
vllm backends decode under it, openai sends it as ``response_format``. The parsers validate every
answer against the bench schemas all the same.

The rubric stage uses the JANUS rubric-generation prompt with three example rubrics; the
examples are the first three rubrics of the JANUS README's example instance (the paper's
own examples are not published in the repository). The preference and system-message
prompts are ours (see ``prompts.py``).
"""
from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from harness.backends.base import GenRequest
from harness.records import RECORD_TYPES, Instance, Record, stable_hash
from judges.base import Parsed
from tasks.multifaceted import prompts as P
from tasks.multifaceted.schema import (SchemaError, preference_set_generation_schema, rubric_generation_schema,
                                       validate_bench_record, validate_preference_set, validate_rubric)

BUILD_TASK = "multifaceted_build"
EXAMPLE_FILE = Path(__file__).with_name("readme_example.json")
STAGES = ("preference_set", "system", "rubrics", "reference")


@dataclass
class StageRecord(Record):
    """One stage output for one instruction (or one rubric of it)."""

    task: str
    instance_id: str
    stage: str  # preference_set | system | rubric<i> | reference
    model: str  # generator model id
    config_hash: str
    value: Any = None
    raw: str | None = None
    status: str = "ok"  # ok | failed
    error: str | None = None
    attempts: int = 1
    prompt: list[dict] | None = None
    completion_tokens: int = 0  # over all attempts (re-asks included)
    kind = "synth_stage"

    @property
    def key(self) -> str:
        return f"{self.task}/{self.instance_id}/{self.stage}/{self.model}/{self.config_hash}"


# Lets RunStore read these records back (the store looks record classes up by kind).
RECORD_TYPES.setdefault(StageRecord.kind, StageRecord)


# --------------------------------------------------------------------------- parsing
def extract_json(text: str):
    """The first JSON object or array in ``text`` (code fences and chatter around it ignored)."""
    if not isinstance(text, str):
        raise ValueError("no text")
    # strict=False: a raw control character (a newline) inside a string is content, not broken
    # structure; xgrammar's JSON grammar lets them through, and the record is re-serialised anyway
    decoder = json.JSONDecoder(strict=False)
    for m in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text, m.start())
            return value
        except json.JSONDecodeError:
            continue
    raise ValueError("no JSON object found")


def parse_preference_set(text: str) -> list[dict]:
    data = extract_json(text)
    if isinstance(data, dict) and "preference_set" not in data:
        raise SchemaError("preference_set: field 'preference_set' missing from the JSON object")
    prefs = data["preference_set"] if isinstance(data, dict) else data
    validate_preference_set(prefs, "preference_set", dimensions=P.DIMENSIONS)
    for p in prefs:
        if not str(p.get("preference", "")).strip():
            raise SchemaError("preference_set: field 'preference' missing or empty")
    # a fixed shape, so every row of the output file has the same columns
    return [{k: str(p[k]).strip() for k in ("dimension", "subdimension", "preference", "description")} for p in prefs]


def parse_rubric(text: str) -> dict:
    data = extract_json(text)
    if isinstance(data, dict) and "criteria" not in data and len(data) == 1:
        (data,) = data.values()  # {"rubric": {...}} wrapper
    validate_rubric(data, "rubric")
    return {"criteria": data["criteria"].strip(),
            "score_descriptions": {k: data["score_descriptions"][k].strip() for k in ("1", "2", "3", "4", "5")}}


def parse_plain_text(text: str, min_chars: int = 20) -> str:
    out = (text or "").strip()
    if len(out) >= 2 and out[0] == out[-1] == '"':
        out = out[1:-1].strip()
    if len(out) < min_chars:
        raise ValueError(f"text too short ({len(out)} chars, need {min_chars})")
    return out


def parse_reference(text: str) -> str:
    return parse_plain_text(text, min_chars=1)


# --------------------------------------------------------------------------- prompts
def example_rubrics() -> list[str]:
    rubrics = json.loads(EXAMPLE_FILE.read_text(encoding="utf-8"))["rubric"][:3]
    return [json.dumps(r, indent=4) for r in rubrics]


def preference_messages(instruction: str) -> list[dict]:
    return [{"role": "system", "content": P.SYSTEM_PROMPT_PREFERENCE_SET},
            {"role": "user", "content": P.USER_PROMPT_TEMPLATE_PREFERENCE_SET.format(instruction=instruction)}]


def system_messages(prefs: list[dict]) -> list[dict]:
    text = "\n".join(f"- {p['dimension']} / {p['subdimension']}: {p['preference']}. {p['description']}" for p in prefs)
    return [{"role": "system", "content": P.SYSTEM_PROMPT_SYSTEM_MESSAGE},
            {"role": "user", "content": P.USER_PROMPT_TEMPLATE_SYSTEM_MESSAGE.format(preferences=text)}]


def rubric_messages(pref: dict) -> list[dict]:
    ex = example_rubrics()
    user = P.USER_PROMPT_TEMPLATE_RUBRIC_GENERATION_SINGLE_PREFERENCE.format(
        example_1=ex[0], example_2=ex[1], example_3=ex[2], preference=json.dumps(pref, indent=4))
    return [{"role": "system", "content": P.SYSTEM_PROMPT_RUBRIC_GENERATION_SINGLE_PREFERENCE},
            {"role": "user", "content": user}]


def reference_messages(system: str, instruction: str) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": instruction}]


# --------------------------------------------------------------------------- storage
class StageStore:
    """The one place synthesis touches storage (the lead's RunStore)."""

    def __init__(self, run_dir: str | Path):
        from harness.store import RunStore

        self.store = RunStore(run_dir)

    def ok(self, key: str) -> StageRecord | None:
        rec = self.store.get(StageRecord.kind, key)
        return rec if rec is not None and rec.status == "ok" else None

    def put(self, rec: StageRecord) -> None:
        self.store.put(rec)

    def get(self, key: str) -> StageRecord | None:
        return self.store.get(StageRecord.kind, key)

    def close(self) -> None:
        self.store.close()


# --------------------------------------------------------------------------- the builder
@dataclass
class Job:
    instance_id: str
    stage: str
    messages: list[dict]
    parse: Callable[[str], Any]
    json_schema: dict | None = None  # sent with the request when ``BuildSettings.structured``


# With ``prefill`` the answer of a JSON stage is started for the model (the request continues
# this assistant text), which helps small local generators produce the right shape.
JSON_PREFIXES = {"preference_set": '{"preference_set": [{"dimension": "style", "subdimension": "',
                 "rubric": '{\n    "criteria": "'}


@dataclass
class BuildSettings:
    max_tokens: int = 1024  # JANUS SAMPLING_PARAMS_OPENAI(_RUBRIC_GENERATION)
    temperature: float = 1.0
    top_p: float = 0.9
    repetition_penalty: float | None = None
    stage_max_tokens: dict = field(default_factory=dict)  # per-stage override, e.g. {"system": 256}
    variant: int = 0  # several system messages per instruction (collection builder): sample_index
    prefill: bool = False  # start JSON answers for the model (see JSON_PREFIXES); only without structured
    # JSON stages carry their schema (constrained decoding on hf/vllm, response_format on openai);
    # the outputs are validated either way
    structured: bool = True
    max_field_chars: int = 300  # longest free-text field of a generated preference or rubric

    def __post_init__(self):
        if self.prefill and self.structured:
            raise ValueError("build.prefill needs build.structured: false (a constrained decoder writes the "
                             "whole JSON answer itself)")
        if not isinstance(self.max_field_chars, int) or self.max_field_chars < 20:
            raise ValueError(f"build.max_field_chars must be an integer >= 20, got {self.max_field_chars!r}")

    def for_stage(self, stage: str) -> dict:
        base = stage.rstrip("0123456789")
        return {"max_tokens": int(self.stage_max_tokens.get(base, self.max_tokens)), "temperature": self.temperature,
                "top_p": self.top_p, "repetition_penalty": self.repetition_penalty}


class BenchBuilder:
    """Runs the four stages over instructions with one generator backend."""

    def __init__(self, store: StageStore, calls, backend, settings: BuildSettings | None = None):
        self.store, self.calls, self.backend = store, calls, backend
        self.settings = settings or BuildSettings()
        self.worked_on: set[str] = set()  # instances with a stage generated by this builder (not resumed)

    def _hash(self, stage: str, messages: list[dict]) -> str:
        content = {"messages": messages, "sampling": self.settings.for_stage(stage),
                   "variant": self.settings.variant, "prefix": self._prefix(stage),
                   "prompts": P.HARNESS_PROMPTS_VERSION}
        schema = self.schema(stage)
        if schema is not None:  # unset: the hashes of unstructured builds stay as they were
            content["json_schema"] = schema
        return stable_hash(content)

    def schema(self, stage: str) -> dict | None:
        """The JSON schema a stage's request carries (None for plain-text stages)."""
        if not self.settings.structured:
            return None
        base = stage.rstrip("0123456789")
        if base == "preference_set":
            return preference_set_generation_schema(P.DIMENSIONS, self.settings.max_field_chars)
        if base == "rubric":
            return rubric_generation_schema(self.settings.max_field_chars)
        return None

    def check_schemas(self) -> None:
        """Every stage schema compiled by the backend before any generation: a schema it cannot
        honour is one clear error naming the schema, not a build of failed calls."""
        for stage in ("preference_set", "rubric"):
            schema = self.schema(stage)
            if schema is not None:
                self.backend.check_json_schema(schema)

    def _prefix(self, stage: str) -> str:
        return JSON_PREFIXES.get(stage.rstrip("0123456789"), "") if self.settings.prefill else ""

    def _request(self, job: Job) -> GenRequest:
        prefix = self._prefix(job.stage)
        messages = job.messages + ([{"role": "assistant", "content": prefix}] if prefix else [])
        return GenRequest(messages=messages, continue_final_message=bool(prefix), sample_index=self.settings.variant,
                          json_schema=self.schema(job.stage), **self.settings.for_stage(job.stage))

    def _key(self, job: Job) -> str:
        return StageRecord(BUILD_TASK, job.instance_id, job.stage, self.backend.model_id,
                           self._hash(job.stage, job.messages)).key

    def value(self, job: Job):
        rec = self.store.ok(self._key(job))
        return rec.value if rec else None

    async def run_jobs(self, jobs: list[Job]) -> dict:
        """Generate every job not already stored ok; store each outcome as it arrives."""
        todo = [j for j in jobs if self.store.ok(self._key(j)) is None]
        counts = {"todo": len(todo), "ok": 0, "failed": 0}
        self.worked_on.update(j.instance_id for j in todo)
        if not todo:
            return counts
        reqs = [self._request(j) for j in todo]
        tokens = [0] * len(todo)  # generated tokens of every attempt
        budget = [r.max_tokens for r in reqs]  # of the latest attempt

        def parse(res, i) -> Parsed:
            tokens[i] += res.completion_tokens
            try:
                return Parsed(todo[i].parse(self._prefix(todo[i].stage) + res.text), True)
            except (ValueError, TypeError, KeyError, AttributeError) as e:  # SchemaError is a ValueError
                cut = f" (the answer was cut at max_tokens={budget[i]})" if res.finish_reason == "length" else ""
                return Parsed(None, False, f"{e}{cut}")

        def reask(i, req, res, parsed):
            # a JSON answer cut off by the token budget would be cut again: re-ask with twice the budget
            nxt = self.calls.reask_same(req)
            if res.finish_reason == "length" and req.json_schema is not None:
                nxt = replace(nxt, max_tokens=req.max_tokens * 2)
            budget[i] = nxt.max_tokens
            return nxt

        def on_final(i, res, parsed, attempts) -> None:
            job = todo[i]
            ok = res.error is None and parsed is not None and parsed.ok
            reason = res.error if res.error is not None else (None if ok else parsed.reason)
            rec = StageRecord(BUILD_TASK, job.instance_id, job.stage, self.backend.model_id,
                              self._hash(job.stage, job.messages), value=parsed.value if ok else None,
                              raw=res.text if res.error is None else None, status="ok" if ok else "failed",
                              error=reason, attempts=attempts, prompt=reqs[i].messages,
                              completion_tokens=tokens[i] or res.completion_tokens)
            counts["ok" if ok else "failed"] += 1
            self.store.put(rec)

        await self.calls.run_parsed(self.backend, reqs, parse, on_final=on_final, reask=reask)
        return counts

    # one step per stage; each reads the previous stage's stored records
    def preference_jobs(self, instances: list[Instance]) -> list[Job]:
        return [Job(i.id, "preference_set", preference_messages(i.turns[0]), parse_preference_set) for i in instances]

    def system_jobs(self, instances: list[Instance]) -> list[Job]:
        jobs = []
        for i, prefs in self._with(instances, self.preference_jobs):
            jobs.append(Job(i.id, "system", system_messages(prefs), parse_plain_text))
        return jobs

    def rubric_jobs(self, instances: list[Instance]) -> list[Job]:
        jobs = []
        for i, prefs in self._with(instances, self.preference_jobs):
            jobs += [Job(i.id, f"rubric{d}", rubric_messages(p), parse_rubric) for d, p in enumerate(prefs)]
        return jobs

    def reference_jobs(self, instances: list[Instance]) -> list[Job]:
        return [Job(i.id, "reference", reference_messages(system, i.turns[0]), parse_reference)
                for i, system in self._with(instances, self.system_jobs)]

    def _with(self, instances, make_jobs):
        """(instance, value) for instances whose job of the previous stage is stored ok."""
        by_id = {i.id: i for i in instances}
        for job in make_jobs(instances):
            value = self.value(job)
            if value is not None:
                yield by_id[job.instance_id], value

    async def run(self, instances: list[Instance], stages=STAGES) -> dict:
        steps = {"preference_set": self.preference_jobs, "system": self.system_jobs,
                 "rubrics": self.rubric_jobs, "reference": self.reference_jobs}
        self.check_schemas()
        summary = {}
        for stage in stages:
            summary[stage] = await self.run_jobs(steps[stage](instances))
        return summary

    # -- assembling
    def assemble(self, instances: list[Instance]) -> tuple[list[dict], list[dict]]:
        """(valid bench records, failures with stage and reason)."""
        records, failures = [], []
        for inst in instances:
            try:
                records.append(self._record(inst))
            except _Incomplete as e:
                failures.append({"id": inst.id, "source": inst.source, "stage": e.stage, "reason": e.reason})
        return records, failures

    def stage_value(self, job: Job):
        """The stored ok value of a job, or ``_Incomplete`` with the stage and reason."""
        rec = self.store.get(self._key(job))
        if rec is None:
            raise _Incomplete(job.stage, "not generated yet")
        if rec.status != "ok":
            raise _Incomplete(job.stage, f"{rec.error} (after {rec.attempts} attempt(s))")
        return rec.value

    def _record(self, inst: Instance) -> dict:
        [pjob] = self.preference_jobs([inst])
        prefs = self.stage_value(pjob)
        system = self.stage_value(Job(inst.id, "system", system_messages(prefs), parse_plain_text))
        rubrics = [self.stage_value(Job(inst.id, f"rubric{d}", rubric_messages(p), parse_rubric))
                   for d, p in enumerate(prefs)]
        reference = self.stage_value(Job(inst.id, "reference", reference_messages(system, inst.turns[0]), parse_reference))
        rec = {"id": inst.id, "source": inst.source, "system": system, "prompt": inst.turns[0],
               "reference_answer": reference, "rubrics": rubrics, "preference_set": prefs,
               "provenance": inst.metadata.get("provenance", []), "generator": self.backend.model_id}
        try:
            return validate_bench_record(rec, f"built instance {inst.id}", n_rubrics=len(P.DIMENSIONS))
        except SchemaError as e:
            raise _Incomplete("assemble", str(e)) from e


class _Incomplete(Exception):
    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason = stage, reason


# The config entry point and the output files live in ``build.py`` (which imports this module);
# these names stay importable from here.
_MOVED = ("build_from_config", "load_build_config", "make_generator", "write_outputs", "write_parquet",
          "CONFIG_FIELDS")


def __getattr__(name):
    if name in _MOVED:
        from tasks.multifaceted import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
