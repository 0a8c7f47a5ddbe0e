"""``harness bench build multifaceted --config FILE``: config, sample, run the stages, write and measure.

A rerun of the same config resumes: stage outputs are stored records (``synth.StageStore``) and
every model call is in the call cache, so only what is missing is generated. ``--limit N`` draws a
stratified sample: N instructions split over the sources in the proportions of the config's
``targets`` (the bench's documented mix, ``sources.DEFAULT_TARGETS``, when it has none), seeded.

``build_report.json`` says how the build went: per stage, how many outputs are stored ok, failed or
not generated; the valid share of instances; valid instances per minute of this invocation; and the
share of the generated tokens (all attempts, re-asks included) that ended in a valid instance.
Per minute counts only the valid instances this invocation generated a stage for.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from harness.records import Instance
from tasks.multifaceted.synth import BenchBuilder, BuildSettings, StageStore

CONFIG_FIELDS = {"name", "seed", "data_dir", "out", "targets", "sources", "generator", "calls", "build"}


def load_build_config(config_path: str | Path, fields: set[str] = CONFIG_FIELDS) -> dict:
    import yaml

    path = Path(config_path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: build config not found")
    cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    unknown = sorted(set(cfg) - fields)
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {unknown}; known: {sorted(fields)}")
    if not isinstance(cfg.get("generator"), dict):
        raise ValueError(f"{path}: field 'generator' (backend, model, ...) is required")
    return cfg


def make_generator(gen: dict, where: str):
    from harness.config import ModelConfig
    from harness.pipeline import make_backend

    try:
        mcfg = ModelConfig(**{"name": gen.get("name", gen.get("model", "generator")), **gen})
    except TypeError as e:
        raise ValueError(f"{where}: field 'generator': {e}") from e
    return mcfg, make_backend(mcfg)


def build_settings(cfg: dict, mcfg, where: str) -> BuildSettings:
    try:
        return BuildSettings(**{**mcfg.generation, **(cfg.get("build") or {})})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: field 'generator.generation' or 'build': {e}") from e


def select(cfg: dict, pool, limit: int | None, where: str) -> list[Instance]:
    """The config's instructions; with ``limit`` a stratified sample of that many."""
    from tasks.multifaceted.sources import DEFAULT_TARGETS, sample_instructions, stratified_targets

    targets = cfg.get("targets")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"{where}: --limit must be >= 1, got {limit}")
        targets = stratified_targets(targets or DEFAULT_TARGETS, limit)
    return sample_instructions(pool, targets, seed=int(cfg.get("seed", 0)))


# --------------------------------------------------------------------------- measuring
def stage_table(builder: BenchBuilder, instances: list[Instance]) -> dict:
    """Per instance, its stored stage records (any status), for counting and token accounting."""
    from tasks.multifaceted.synth import Job, parse_plain_text, parse_reference, parse_rubric
    from tasks.multifaceted.synth import reference_messages, rubric_messages, system_messages

    table = {}
    for inst in instances:
        recs = []
        [pjob] = builder.preference_jobs([inst])
        prec = builder.store.get(builder._key(pjob))
        recs.append(("preference_set", prec))
        if prec is not None and prec.status == "ok":
            prefs = prec.value
            sjob = Job(inst.id, "system", system_messages(prefs), parse_plain_text)
            srec = builder.store.get(builder._key(sjob))
            recs.append(("system", srec))
            for d, p in enumerate(prefs):
                rjob = Job(inst.id, f"rubric{d}", rubric_messages(p), parse_rubric)
                recs.append(("rubrics", builder.store.get(builder._key(rjob))))
            if srec is not None and srec.status == "ok":
                fjob = Job(inst.id, "reference", reference_messages(srec.value, inst.turns[0]), parse_reference)
                recs.append(("reference", builder.store.get(builder._key(fjob))))
        table[inst.id] = recs
    return table


def measure(builder: BenchBuilder, instances: list[Instance], records: list[dict], wall_s: float) -> dict:
    table = stage_table(builder, instances)
    valid_ids = {r["id"] for r in records}
    stages = {s: {"ok": 0, "failed": 0, "not_generated": 0} for s in ("preference_set", "system", "rubrics",
                                                                      "reference")}
    tokens_all = tokens_valid = 0
    for iid, recs in table.items():
        for stage, rec in recs:
            status = "not_generated" if rec is None else ("ok" if rec.status == "ok" else "failed")
            stages[stage][status] += 1
            n = rec.completion_tokens if rec is not None else 0
            tokens_all += n
            tokens_valid += n if iid in valid_ids else 0
    n = len(instances)
    return {"instances": n, "valid": len(records), "failed": n - len(records),
            "valid_share": round(len(records) / n, 4) if n else None,
            "by_source": _by_source(instances, valid_ids),
            "stage_counts": stages, "generated_tokens": tokens_all,
            "valid_token_share": round(tokens_valid / tokens_all, 4) if tokens_all else None,
            "wall_s": round(wall_s, 1),
            # over the instances this invocation generated something for: a resume does not inflate it
            "valid_instances_per_minute": round(len(valid_ids & builder.worked_on) / (wall_s / 60), 2)
            if wall_s > 0 else None}


def _by_source(instances: list[Instance], valid_ids: set[str]) -> dict:
    out: dict[str, dict] = {}
    for inst in instances:
        row = out.setdefault(inst.source, {"instances": 0, "valid": 0})
        row["instances"] += 1
        row["valid"] += inst.id in valid_ids
    return out


# --------------------------------------------------------------------------- output files
def write_outputs(out_dir: Path, records: list[dict], failures: list[dict], summary: dict,
                  metrics: dict | None = None) -> Path:
    from harness.store import atomic_write_text, write_jsonl

    bench = out_dir / "multifaceted_bench.jsonl"
    write_jsonl(bench, records)
    write_jsonl(out_dir / "failures.jsonl", failures)
    if records:
        write_parquet(out_dir / "multifaceted_bench.parquet", records)
    report = {"instances": len(records) + len(failures), "valid": len(records), "failed": len(failures),
              **(metrics or {}), "stages": summary, "failures": failures}
    atomic_write_text(out_dir / "build_report.json", json.dumps(report, indent=2))
    return bench


def write_parquet(path: Path, records: list[dict]) -> None:
    """A file ``datasets.load_dataset("parquet", data_files=...)`` reads; written via a temp file."""
    import pandas as pd

    from harness.paths import staged

    with staged(path) as tmp:
        pd.DataFrame(records).to_parquet(tmp, index=False)


# --------------------------------------------------------------------------- the command
def open_generator(cfg: dict, config_path, out: Path):
    """(backend, settings, store, calls) of a build config, every field checked before any model call."""
    from harness.calls import CallLayer, CallSettings

    mcfg, backend = make_generator(cfg["generator"], str(config_path))
    settings = build_settings(cfg, mcfg, str(config_path))
    call_settings = CallSettings.from_dict(cfg.get("calls"), f"{config_path}: calls")
    out.mkdir(parents=True, exist_ok=True)
    return backend, settings, StageStore(out), CallLayer(out / "cache.sqlite", call_settings)


def build_from_config(config_path: str, out_dir: str | None = None, limit: int | None = None) -> Path:
    """``harness bench build multifaceted --config FILE``: returns the bench JSONL path."""
    from harness.data import data_dir as default_data_dir
    from tasks.multifaceted.sources import SOURCES, build_pool

    cfg = load_build_config(config_path)
    out = Path(out_dir or cfg.get("out") or f"runs/{cfg.get('name', 'multifaceted_build')}")
    data = Path(cfg["data_dir"]) if cfg.get("data_dir") else default_data_dir()
    pool = build_pool(data, cfg.get("sources", SOURCES))
    instances = select(cfg, pool, limit, str(config_path))
    backend, settings, store, calls = open_generator(cfg, config_path, out)
    try:
        t0 = time.perf_counter()
        builder = BenchBuilder(store, calls, backend, settings)
        summary = asyncio.run(builder.run(instances))
        records, failures = builder.assemble(instances)
        metrics = measure(builder, instances, records, time.perf_counter() - t0)
        path = write_outputs(out, records, failures, summary, metrics)
        print(f"multifaceted build: {metrics['valid']}/{metrics['instances']} valid "
              f"(share {metrics['valid_share']}), {metrics['valid_instances_per_minute']} valid instances/min, "
              f"{metrics['valid_token_share']} of {metrics['generated_tokens']} generated tokens in valid "
              f"instances; report: {out / 'build_report.json'}")
        return path
    finally:
        calls.close()
        store.close()
        backend.close()
