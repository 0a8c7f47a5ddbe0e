"""A corpus of bad inputs: each must end with exit code 2 and exactly one stderr line that names the file
and the field, and must write nothing in --out (or leave an existing --out as it was).

The cases run through ``harness.cli.main`` in this process (what ``python -m harness.cli`` calls; a
traceback would surface here as an exception, which fails the case).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import traceback
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from support.stores import write_old_format_store

pytestmark = pytest.mark.chaos

BASE = {
    "name": "t",
    "models": [{"name": "m1", "backend": "scripted", "model": "w"}],
    "judge": {"name": "j", "backend": "scripted", "model": "judge"},
    "tasks": [{"name": "mt_bench", "limit": 2}],
}


def _cfg(tmp: Path, mutate=None, text: str | bytes | None = None) -> Path:
    p = tmp / "c.yaml"
    if text is not None:
        (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
        return p
    cfg = json.loads(json.dumps(BASE))
    if mutate:
        mutate(cfg)
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def _run(tmp, cfg, *extra):
    return ["run", str(cfg), "--out", str(tmp / "out"), *extra]


def config_case(mutate=None, text=None, needles=(), extra=()):
    """A `harness run` of a bad config: the error names the config file and each needle."""
    def setup(tmp, data):
        cfg = _cfg(tmp, mutate, text)
        return _run(tmp, cfg, *extra), [str(cfg), *needles], tmp / "out"
    return setup


def model_field(field, value):
    return lambda c: c["models"][0].__setitem__(field, value)


def calls(**kw):
    return lambda c: c.__setitem__("calls", kw)


def generation(**kw):
    return lambda c: c["models"][0].__setitem__("generation", kw)


def config_dir(tmp, data):
    d = tmp / "cfgdir"
    d.mkdir()
    return _run(tmp, d), [str(d), "directory"], tmp / "out"


def limit_flag(tmp, data):
    cfg = _cfg(tmp)
    return _run(tmp, cfg, "--limit", "-1"), ["--limit", "-1"], tmp / "out"


def _mt_bench_copy(tmp: Path, data: Path) -> Path:
    """A --data-dir with its own copy of the MT-Bench files the task reads."""
    src, dst = data / "mt_bench", tmp / "data" / "mt_bench"
    dst.mkdir(parents=True)
    shutil.copy(src / "question.jsonl", dst / "question.jsonl")
    shutil.copy(src / "judge_prompts.jsonl", dst / "judge_prompts.jsonl")
    shutil.copytree(src / "reference_answer", dst / "reference_answer")
    return dst


def data_case(damage, needles):
    def setup(tmp, data):
        mt = _mt_bench_copy(tmp, data)
        q = mt / "question.jsonl"
        extra = damage(q)
        cfg = _cfg(tmp)
        return _run(tmp, cfg, "--data-dir", str(tmp / "data")), [str(q), *needles, *(extra or [])], tmp / "out"
    return setup


def truncate_last_line(q: Path):
    lines = q.read_text(encoding="utf-8").rstrip("\n").split("\n")
    cut = lines[-1][: len(lines[-1]) // 2]
    q.write_text("\n".join(lines[:-1] + [cut]), encoding="utf-8")
    return [f"line {len(lines)}"]


def not_utf8(q: Path):
    q.write_bytes(q.read_bytes().replace(b"\n", b" caf\xe9\n", 1))


def a_directory(q: Path):
    q.unlink()
    q.mkdir()
    (q / "part-0.jsonl").write_text("{}\n")


def old_format_run(tmp, data):
    out = tmp / "out"
    write_old_format_store(out)
    return _run(tmp, _cfg(tmp)), [str(out), "older harness"], out


# files a refused run may leave in an existing --out: its lock, and sqlite's -wal/-shm of a connection
# this process has not closed yet (a process exit removes them)
MAY_APPEAR = {".lock", "run.sqlite-wal", "run.sqlite-shm"}


def leaderboard_score(tmp, data):
    f = tmp / "gpt-4_single.jsonl"
    f.write_text(json.dumps({"model": "a", "question_id": 81, "turn": 1, "score": 8}) + "\n"
                 + json.dumps({"model": "a", "question_id": 82, "turn": 1, "score": "ten"}) + "\n")
    return ["leaderboard", "mt_bench", "--judgments", str(f)], [str(f), "score", "ten"], None


def export_case(tasks: list[str], bad_field: str, bad: str, where: str):
    """A run (built through the pipeline, with names no config would pass) whose model or judge name would
    leave --out (``../``) once it becomes a file name. With a second task beside it, "nothing written"
    means nothing at all: the export plans every file before it writes one."""
    def setup(tmp, data):
        import asyncio

        from harness.config import parse_config
        from harness.pipeline import run_all

        raw = json.loads(json.dumps(BASE))
        raw["tasks"] = [{"name": t, "limit": 2} for t in tasks]
        raw["calls"] = {"parse_retries": 0}
        cfg = parse_config(raw, "<chaos>")
        if bad_field == "model":
            cfg.models[0].name = bad
        else:
            cfg.judge.name = bad
        cfg.data_dir = str(data)
        run = tmp / "run"
        asyncio.run(run_all(cfg, run, steps=("build", "generate", "judge")))
        # the file: the run directory whose records hold the name
        return ["export", str(run), "--out", str(tmp / "out")], [str(run), where, bad], tmp / "out"
    return setup


CASES = {
    "config is a directory": config_dir,
    "config not UTF-8": config_case(text="name: caf\xe9\n".encode("latin-1"), needles=["UTF-8"]),
    "YAML syntax error": config_case(text="name: t\nmodels: [\n  {name: m1\n", needles=["YAML"]),
    "top level a list": config_case(text="- name: t\n- models: []\n", needles=["top level"]),
    "unknown top-level field": config_case(lambda c: c.__setitem__("bogus", 1), needles=["top level", "bogus"]),
    "unknown task": config_case(lambda c: c["tasks"][0].__setitem__("name", "mt_bnch"),
                                needles=["tasks[0].name", "mt_bnch", "Did you mean: mt_bench"]),
    "unknown backend": config_case(model_field("backend", "hff"), needles=["models[0].backend", "hff"]),
    "model path does not exist": config_case(lambda c: c["models"][0].update(backend="hf", model="/nonexistent/m"),
                                             needles=["models[0].model", "/nonexistent/m"]),
    "duplicate model names": config_case(lambda c: c["models"].append(dict(c["models"][0])),
                                         needles=["models", "duplicate", "m1"]),
    "model name ../../x": config_case(model_field("name", "../../x"), needles=["models[0].name", "../../x"]),
    "model name /abs": config_case(model_field("name", "/abs"), needles=["models[0].name", "/abs"]),
    "model name a/b": config_case(model_field("name", "a/b"), needles=["models[0].name", "a/b"]),
    "run name ../x": config_case(lambda c: c.__setitem__("name", "../x"), needles=["name", "../x"]),
    "judge name ../j": config_case(lambda c: c["judge"].__setitem__("name", "../j"), needles=["judge.name"]),
    "calls.rps 0": config_case(calls(rps=0), needles=["calls.rps"]),
    "calls.rps -1": config_case(calls(rps=-1), needles=["calls.rps"]),
    "calls.concurrency many": config_case(calls(concurrency="many"), needles=["calls.concurrency", "many"]),
    "calls.max_cost ten": config_case(calls(max_cost="ten"), needles=["calls.max_cost", "ten"]),
    "calls.max_retries -3": config_case(calls(max_retries=-3), needles=["calls.max_retries", "-3"]),
    "calls.timeout_s soon": config_case(calls(timeout_s="soon"), needles=["calls.timeout_s"]),
    "calls unknown setting": config_case(calls(retries=3), needles=["calls", "retries"]),
    "calls not a mapping": config_case(lambda c: c.__setitem__("calls", 5), needles=["calls"]),
    "generation.max_tokens lots": config_case(generation(max_tokens="lots"),
                                              needles=["generation.max_tokens", "lots"]),
    "generation.top_p 2": config_case(generation(top_p=2), needles=["generation.top_p"]),
    "generation.temperature -1": config_case(generation(temperature=-1), needles=["generation.temperature"]),
    "unknown generation key": config_case(generation(bogus=1), needles=["generation.bogus"]),
    "tasks[0].limit 0": config_case(lambda c: c["tasks"][0].__setitem__("limit", 0), needles=["tasks[0].limit"]),
    "tasks[0].options not a mapping": config_case(lambda c: c["tasks"][0].__setitem__("options", 3),
                                                  needles=["tasks[0].options"]),
    "judge.method sideways": config_case(lambda c: c["judge"].__setitem__("method", "sideways"),
                                         needles=["judge.method", "sideways"]),
    "seed not an integer": config_case(lambda c: c.__setitem__("seed", "abc"), needles=["seed", "abc"]),
    "--limit -1": limit_flag,
    "question JSONL with a truncated last line": data_case(truncate_last_line, ["not valid JSON"]),
    "question file not UTF-8": data_case(not_utf8, ["UTF-8"]),
    "question file is a directory": data_case(a_directory, ["directory"]),
    "old-format run directory": old_format_run,
    "leaderboard score 'ten'": leaderboard_score,
    "export judge name ../evil": export_case(["mt_bench"], "judge", "../evil", "judge name"),
    "export model name ../../x": export_case(["mt_bench", "arena_hard"], "model", "../../x", "model name"),
}


def _snapshot(d: Path | None):
    if d is None or not d.exists():
        return None
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(d.rglob("*"))}


def test_corpus_size(chaos):
    print(f"bad-input corpus: {len(CASES)} cases")
    chaos.note(event="corpus", cases=len(CASES))
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_error_and_writes_nothing(case, tmp_path, data_dir, capsys, chaos):
    argv, needles, out = CASES[case](tmp_path, data_dir)
    before = _snapshot(out)
    capsys.readouterr()
    chaos.bad_inputs += 1
    try:
        code = main(argv)
    except BaseException as e:  # noqa: BLE001 - an uncaught exception is a traceback for the user
        code = f"uncaught {type(e).__name__}"
        tb = traceback.format_exc()
    else:
        tb = ""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    chaos.note(event="bad input", case=case, exit_code=code, stderr=lines[:3])
    assert not tb, f"{case}: a traceback instead of one error line:\n{tb[-3000:]}"
    assert code == 2, f"{case}: exit code {code}; stderr: {err}"
    assert len(lines) == 1, f"{case}: expected one stderr line, got {len(lines)}:\n{err}"
    missing = [n for n in needles if n not in lines[0]]
    assert not missing, f"{case}: the error does not name {missing}: {lines[0]}"
    after = _snapshot(out)
    if before is not None and after is not None:
        after = {k: v for k, v in after.items() if k in before or k not in MAY_APPEAR}
    assert after == before, f"{case}: {out} was written: {_diff(before, after)}"


def _diff(before, after) -> dict:
    before, after = before or {}, after or {}
    return {"new": sorted(set(after) - set(before)), "changed": sorted(k for k in before if k in after
                                                                        and before[k] != after[k]),
            "removed": sorted(set(before) - set(after))}
