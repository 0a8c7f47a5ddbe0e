"""Split one run over many processes or machines, then merge the pieces into one run.

A shard takes every ``count``-th instance of each task (round robin over the loaded
order, so shards are balanced and the split depends only on the config) and runs
build -> generate -> judge in its own run directory, with its own records and call
cache. Nothing is aggregated per shard: numbers over a part of a benchmark mean
nothing. ``merge`` unions the shard stores into one run directory (records are keyed
by content, so a union is the whole run; the same key with different content is an
error) and aggregates there.

Three ways to drive it, all producing the same records as one process:
- by hand or a job array: ``harness shard run CONFIG --shard I --num-shards N --out DIR``,
  where a Slurm array may leave out ``--shard``/``--num-shards`` (they are read from
  ``SLURM_ARRAY_TASK_ID`` and ``SLURM_ARRAY_TASK_COUNT`` or ``..._MIN``/``..._MAX``);
  then ``harness shard merge OUT DIR``;
- Ray: ``run_with_ray(cfg, out, num_shards)`` runs each shard as a Ray task, then merges.

A shard that was killed is rerun with the same command: its store and cache skip the
work already done. ``merge`` refuses to run while a shard is missing or unfinished.

A Slurm job array, for example::

    #SBATCH --array=0-7
    harness shard run configs/big.yaml --out runs/big      # one task per shard
    # after the array (e.g. a job with --dependency=afterok:<array id>):
    harness shard merge runs/big/merged runs/big
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
from pathlib import Path
from typing import Mapping, Sequence

from harness.config import RunConfig
from harness.records import RECORD_TYPES, stable_hash
from harness.store import RunStore, atomic_write_text

MARKER = "shard.json"
STEPS = ("build", "generate", "score", "judge")
# fields that record how a call went, not what it produced: they may differ between
# two runs of the same shard and do not make a conflict
VOLATILE_FIELDS = {"latency_s"}


class ShardError(ValueError):
    pass


# -- which shard am I
def shard_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """(index, count) from a Slurm job array, or None outside one."""
    env = os.environ if env is None else env
    if "SLURM_ARRAY_TASK_ID" not in env:
        return None
    try:
        task_id = int(env["SLURM_ARRAY_TASK_ID"])
        if "SLURM_ARRAY_TASK_MIN" in env and "SLURM_ARRAY_TASK_MAX" in env:
            lo, hi = int(env["SLURM_ARRAY_TASK_MIN"]), int(env["SLURM_ARRAY_TASK_MAX"])
            return task_id - lo, hi - lo + 1
        if "SLURM_ARRAY_TASK_COUNT" in env:
            # arrays usually start at 0; one starting at 1 must also set MIN
            lo = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
            return task_id - lo, int(env["SLURM_ARRAY_TASK_COUNT"])
    except ValueError as e:
        raise ShardError(f"Slurm environment: not an integer: {e}") from None
    raise ShardError("Slurm environment: SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor "
                     "SLURM_ARRAY_TASK_MIN/MAX is")


def resolve_shard(index: int | None, count: int | None, env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """Explicit arguments win; otherwise the job array's environment."""
    if index is None and count is None:
        spec = shard_from_env(env)
        if spec is None:
            raise ShardError("shard: give --shard and --num-shards, or run inside a Slurm job array")
        index, count = spec
    elif index is None or count is None:
        raise ShardError("shard: --shard and --num-shards go together")
    if count < 1 or not 0 <= index < count:
        raise ShardError(f"shard: index {index} is not in 0..{count - 1}")
    return index, count


def select(items: Sequence, index: int, count: int) -> list:
    """Round robin: item i belongs to shard i % count."""
    return list(items[index::count])


def shard_dir(out: str | Path, index: int, count: int) -> Path:
    return Path(out) / f"shard-{index:05d}-of-{count:05d}"


def config_fingerprint(cfg: RunConfig) -> str:
    # the output location is not part of what a run computes
    d = cfg.to_dict()
    d.pop("out", None)
    return stable_hash(d)


# -- one shard
async def run_shard(cfg: RunConfig, out: str | Path, index: int, count: int,
                    steps: Sequence[str] = STEPS) -> Path:
    """Run one shard into ``shard_dir(out, index, count)`` and mark it complete."""
    from harness.lock import RunLock
    from harness.pipeline import Run, execute, load_all

    bad = set(steps) - set(STEPS)
    if bad:
        raise ShardError(f"shard: unknown step(s) {sorted(bad)}; a shard runs {list(STEPS)}, merge aggregates")
    loaded = load_all(cfg)  # load (and validate) all tasks before anything is written
    parts = {name: select(insts, index, count) for name, insts in loaded.items()}
    d = shard_dir(out, index, count)
    marker = _read_marker(d)
    fp = config_fingerprint(cfg)
    if marker is not None and marker.get("config") != fp:
        raise ShardError(f"{d / MARKER}: config: this shard directory belongs to a different config")
    _write_marker(d, {"index": index, "count": count, "config": fp, "complete": False,
                      "instances": {k: len(v) for k, v in parts.items()}})
    with RunLock(d):
        run = Run(cfg, d)
        try:
            summary = (await execute(run, steps, parts))["summary"]
        finally:
            run.close()
    _write_marker(d, {"index": index, "count": count, "config": fp, "complete": set(steps) == set(STEPS),
                      "instances": {k: len(v) for k, v in parts.items()}, "summary": summary})
    return d


def _read_marker(d: Path) -> dict | None:
    p = d / MARKER
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ShardError(f"{p}: not valid JSON: {e}") from None


def _write_marker(d: Path, data: dict) -> None:
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / MARKER, json.dumps(data, indent=2))


# -- merge
def find_shards(paths: Sequence[str | Path]) -> list[Path]:
    """Shard directories given directly or as the parent that holds them."""
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / MARKER).exists():
            found.append(p)
        elif p.is_dir() and sorted(p.glob(f"shard-*/{MARKER}")):
            found += [m.parent for m in sorted(p.glob(f"shard-*/{MARKER}"))]
        else:
            raise ShardError(f"{p}: not a shard directory (no {MARKER}) and holds none")
    return found


def _comparable(data: dict) -> dict:
    return {k: v for k, v in data.items() if k not in VOLATILE_FIELDS}


def merge_stores(out: str | Path, shard_dirs: Sequence[Path]) -> dict:
    """Union of the shards' records (and call caches) into ``out``; returns counts."""
    out = Path(out)
    store = RunStore(out)
    counts = {k: 0 for k in RECORD_TYPES}
    try:
        seen: dict[str, tuple[str, dict]] = {}  # key -> (where, comparable data)
        for d in shard_dirs:
            db = sqlite3.connect(f"file:{d / 'run.sqlite'}?mode=ro", uri=True)
            try:
                rows = db.execute("SELECT key, kind, data FROM records ORDER BY rowid").fetchall()
            finally:
                db.close()
            recs = []
            for key, kind, data in rows:
                obj = json.loads(data)
                prev = seen.get(key)
                if prev is not None:
                    if prev[1] != _comparable(obj):
                        raise ShardError(f"{d / 'run.sqlite'}: record {key}: conflicts with the record of the "
                                         f"same key in {prev[0]}")
                    continue
                seen[key] = (str(d), _comparable(obj))
                recs.append(RECORD_TYPES[kind].from_dict(obj))
                counts[kind] += 1
            store.put_many(recs)
            _merge_side_tables(store, d)
    finally:
        store.close()
    _merge_caches(out / "cache.sqlite", [d / "cache.sqlite" for d in shard_dirs])
    return counts


def _merge_side_tables(store: RunStore, shard: Path) -> None:
    src = RunStore(shard)
    try:
        store.merge_heads_and_blobs(src)
    finally:
        src.close()


def _merge_caches(target: Path, sources: Sequence[Path]) -> None:
    # a merged cache lets a later normal run over the merged directory answer from it
    from harness.calls import CallCache

    cache = CallCache(target)
    cache.close()
    db = sqlite3.connect(target)
    try:
        for i, src in enumerate(s for s in sources if s.exists()):
            db.execute(f"ATTACH DATABASE ? AS s{i}", (str(src),))
            db.execute(f"INSERT OR IGNORE INTO cache SELECT key, model, data, created FROM s{i}.cache")
            db.commit()
            db.execute(f"DETACH DATABASE s{i}")
    finally:
        db.close()


def merge(out: str | Path, paths: Sequence[str | Path], cfg: RunConfig | None = None) -> dict:
    """Check the shards form one whole run, merge them into ``out`` and aggregate."""
    from harness.config import load_config
    from harness.pipeline import Run

    dirs = find_shards(paths)
    markers = {d: _read_marker(d) for d in dirs}
    counts = {m["count"] for m in markers.values()}
    configs = {m["config"] for m in markers.values()}
    if len(counts) != 1 or len(configs) != 1:
        raise ShardError(f"shard merge: the shards come from different splits or configs: {sorted(map(str, dirs))}")
    count = counts.pop()
    by_index: dict[int, Path] = {}
    for d, m in markers.items():
        if m["index"] in by_index and by_index[m["index"]] != d:
            raise ShardError(f"shard merge: shard {m['index']} given twice: {by_index[m['index']]} and {d}")
        by_index[m["index"]] = d
    missing = sorted(set(range(count)) - set(by_index))
    if missing:
        raise ShardError(f"shard merge: shard(s) {missing} of {count} not found")
    unfinished = sorted(i for i, d in by_index.items() if not markers[d].get("complete"))
    if unfinished:
        raise ShardError(f"shard merge: shard(s) {unfinished} did not finish ({MARKER} complete=false); "
                         f"rerun them with the same command, they resume")
    ordered = [by_index[i] for i in range(count)]
    if cfg is None:
        cfg = load_config(ordered[0] / "config.yaml")
    if config_fingerprint(cfg) != configs.pop():
        raise ShardError("shard merge: the config given differs from the one the shards ran")
    from harness.lock import RunLock

    with RunLock(out):
        counts_by_kind = merge_stores(out, ordered)
        run = Run(cfg, out)
        try:
            result = run.aggregate(cfg.tasks)
        finally:
            run.close()
    result["merged"] = {"shards": count, "records": counts_by_kind}
    return result


# -- Ray
def _ray_shard(cfg_dict: dict, source: str, out: str, index: int, count: int) -> str:
    from harness.config import parse_config

    cfg = parse_config(cfg_dict, source)
    return str(asyncio.run(run_shard(cfg, out, index, count)))


def run_with_ray(cfg: RunConfig, out: str | Path, num_shards: int, address: str | None = None,
                 num_cpus_per_shard: float = 1) -> dict:
    """Run every shard as a Ray task on the cluster (or a local one), then merge.

    Workers must be able to import ``harness`` and read the data directory; on a real
    cluster use a shared filesystem for ``out`` (or gather the shard dirs before merge).
    """
    import ray

    if not ray.is_initialized():
        ray.init(address=address)
    task = ray.remote(num_cpus=num_cpus_per_shard, max_retries=2)(_ray_shard)
    cfg_dict = cfg.to_dict()
    refs = [task.remote(cfg_dict, cfg.source, str(out), i, num_shards) for i in range(num_shards)]
    ray.get(refs)
    return merge(out, [shard_dir(out, i, num_shards) for i in range(num_shards)], cfg)


# -- command line
def register(subparsers) -> None:
    """Add ``harness shard {run,merge,ray}`` to the CLI's subparsers."""
    p = subparsers.add_parser("shard", help="split a run over processes/machines and merge the shards")
    sub = p.add_subparsers(dest="shard_command", required=True)
    r = sub.add_parser("run", help="run one shard (index/count from args or a Slurm job array)")
    r.add_argument("config")
    r.add_argument("--shard", type=int, default=None, help="shard index (default: SLURM_ARRAY_TASK_ID)")
    r.add_argument("--num-shards", type=int, default=None, help="shard count (default: from the Slurm array)")
    r.add_argument("--out", required=True, help="parent directory; the shard writes OUT/shard-I-of-N")
    r.add_argument("--data-dir", default=None)
    r.add_argument("--limit", type=int, default=None)
    r.set_defaults(fn=_cmd_run)
    m = sub.add_parser("merge", help="merge finished shards into one run directory and aggregate")
    m.add_argument("out")
    m.add_argument("shards", nargs="+", help="shard directories, or the parent that holds them")
    m.set_defaults(fn=_cmd_merge)
    y = sub.add_parser("ray", help="run all shards as Ray tasks, then merge into OUT")
    y.add_argument("config")
    y.add_argument("--num-shards", type=int, required=True)
    y.add_argument("--out", required=True)
    y.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    y.add_argument("--data-dir", default=None)
    y.add_argument("--limit", type=int, default=None)
    y.set_defaults(fn=_cmd_ray)


def _load(args) -> RunConfig:
    from harness.config import apply_overrides, load_config

    return apply_overrides(load_config(args.config), args.limit, args.data_dir)


def _cmd_run(args) -> int:
    index, count = resolve_shard(args.shard, args.num_shards)
    d = asyncio.run(run_shard(_load(args), args.out, index, count))
    print(f"shard {index} of {count} finished: {d}")
    return 0


def _cmd_merge(args) -> int:
    result = merge(args.out, args.shards)
    print(f"merged {result['merged']['shards']} shards into {args.out}: {result['merged']['records']}")
    return 0


def _cmd_ray(args) -> int:
    result = run_with_ray(_load(args), args.out, args.num_shards, address=args.address)
    print(f"merged {result['merged']['shards']} shards into {args.out}: {result['merged']['records']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import sys

    p = argparse.ArgumentParser(prog="harness")
    register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except ValueError as e:  # ShardError and config errors: one clear line
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
