"""``harness bench build collection --config FILE``: Multifaceted-Collection-format training data.

The instructions come from the same five sources as the bench, minus every instruction of the
bench (``bench:`` a bench build config, whose sampled instructions are excluded, or a built bench
file, whose prompts are): both sides are compared by normalised text (``sources.normalise_text``),
the number removed is reported, and the final selection is checked to share none with the bench.
Each instruction gets ``n_variants`` preference sets, system messages and responses
(``collection.build_collection``), stored as stage records like the bench build's, so a rerun
resumes from the stored records and the call cache.

Outputs (``out``): ``multifaceted_collection_sft.jsonl`` (``harness train sft``),
``multifaceted_collection_preference.jsonl`` (``dpo``, ``orpo``, ``rm``), ``collection_failures.jsonl``
and ``collection_report.json``.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from tasks.multifaceted.build import CONFIG_FIELDS, load_build_config, open_generator, select

COLLECTION_FIELDS = CONFIG_FIELDS | {"bench", "n_variants"}


def bench_keys(spec, data_dir: Path, where: str, base: Path | None = None) -> set[str]:
    """Normalised texts of the bench's instructions (``bench:`` one path or a list of paths, relative
    to the working directory or else to ``base``, the collection config's folder)."""
    from tasks.multifaceted.release import load_release_records
    from tasks.multifaceted.sources import SOURCES, build_pool, normalise_text, sample_instructions

    if spec is None:
        raise ValueError(f"{where}: field 'bench' is required: the bench build config (or built bench file) "
                         "whose instructions the collection must not contain")
    keys: set[str] = set()
    for item in spec if isinstance(spec, list) else [spec]:
        path = Path(str(item))
        if not path.exists() and base is not None and not path.is_absolute() and (base / path).exists():
            path = base / path
        if not path.exists():
            raise FileNotFoundError(f"{where}: field 'bench': {path} not found")
        if path.suffix in (".yaml", ".yml"):
            cfg = load_build_config(path)
            data = Path(cfg["data_dir"]) if cfg.get("data_dir") else data_dir
            picked = sample_instructions(build_pool(data, cfg.get("sources", SOURCES)), cfg.get("targets"),
                                         seed=int(cfg.get("seed", 0)))
            keys |= {normalise_text(i.turns[0]) for i in picked}
        else:
            keys |= {normalise_text(r["prompt"]) for r in load_release_records(path, n_rubrics=None)}
    return keys


def disjoint_pool(pool, exclude: set[str]):
    """(the pool without the excluded instructions, how many it had)."""
    from tasks.multifaceted.sources import Pool

    kept = {k: v for k, v in pool.groups.items() if k not in exclude}
    return Pool(groups=kept), len(pool.groups) - len(kept)


def build_collection_from_config(config_path: str, out_dir: str | None = None, limit: int | None = None) -> Path:
    """Returns the SFT file's path."""
    from harness.data import data_dir as default_data_dir
    from harness.store import atomic_write_text
    from tasks.multifaceted.collection import build_collection, write_collection
    from tasks.multifaceted.sources import SOURCES, build_pool, normalise_text

    where = str(config_path)
    cfg = load_build_config(config_path, COLLECTION_FIELDS)
    n_variants = cfg.get("n_variants", 3)
    if not isinstance(n_variants, int) or isinstance(n_variants, bool) or n_variants < 2:
        raise ValueError(f"{where}: field 'n_variants' must be an integer >= 2 (preference rows pair two "
                         f"variants), got {n_variants!r}")
    out = Path(out_dir or cfg.get("out") or f"runs/{cfg.get('name', 'multifaceted_collection')}")
    data = Path(cfg["data_dir"]) if cfg.get("data_dir") else default_data_dir()
    exclude = bench_keys(cfg.get("bench"), data, where, Path(config_path).parent)
    pool, removed = disjoint_pool(build_pool(data, cfg.get("sources", SOURCES)), exclude)
    instructions = select(cfg, pool, limit, where)
    overlap = sum(normalise_text(i.turns[0]) in exclude for i in instructions)
    if overlap:  # cannot happen with the pool filtered above; a silent leak would be worse than a crash
        raise RuntimeError(f"{where}: {overlap} collection instruction(s) occur in the bench")
    backend, settings, store, calls = open_generator(cfg, config_path, out)
    try:
        t0 = time.perf_counter()
        sft, pref, failures = asyncio.run(build_collection(store, calls, backend, instructions, n_variants, settings))
        wall = time.perf_counter() - t0
        paths = write_collection(out, sft, pref, failures)
        report = {"instructions": len(instructions), "n_variants": n_variants,
                  "by_source": {s: sum(i.source == s for i in instructions) for s in SOURCES},
                  "bench_instructions": len(exclude), "bench_overlap_removed": removed,
                  "bench_overlap_in_collection": overlap, "sft_rows": len(sft), "preference_rows": len(pref),
                  "failures": len(failures), "wall_s": round(wall, 1),
                  "generated_tokens": calls.stats.completion_tokens,
                  "files": {k: str(v) for k, v in paths.items()}}
        atomic_write_text(out / "collection_report.json", json.dumps(report, indent=2))
        print(f"collection: {len(instructions)} instructions x {n_variants} variants -> {len(sft)} SFT rows, "
              f"{len(pref)} preference rows, {len(failures)} failures; {removed} bench instruction(s) kept out; "
              f"report: {out / 'collection_report.json'}")
        return paths["sft"]
    finally:
        calls.close()
        store.close()
        backend.close()


class CollectionBuild:
    """What ``harness bench build`` needs of a builder."""

    build_name = "collection"

    @staticmethod
    def build(config: str, out: str | None = None, limit: int | None = None) -> Path:
        return build_collection_from_config(config, out, limit)
