"""Names in file names cannot leave the output folder (`harness export`, `harness rerank --label`), and
output files get the mode any new file gets (0o666 less the umask), not mkstemp's 0o600."""
from __future__ import annotations

import asyncio
import json
import os
import re
import stat
from pathlib import Path

import pytest

from harness.paths import check_name, make_temp_dir, make_temp_file, safe_join
from harness.records import Completion, Instance, Judgment
from harness.store import RunStore, atomic_write_text, write_jsonl


# ----------------------------------------------------------------------------- check_name / safe_join
@pytest.mark.parametrize("name", ["m1", "gpt-4-0125-preview", "smollm2-135m-sft", "cands@bo16[janus-rm]",
                                  "a_b.c+d=e", "Qwen2.5-7B", "_private", "x" * 200])
def test_check_name_accepts_ordinary_names(name):
    assert check_name(name, "models[0].name") == name


@pytest.mark.parametrize("name, why", [
    ("", "empty"), (".", "not a valid name"), ("..", "not a valid name"), ("../x", "path separator"),
    ("../../etc/passwd", "path separator"), ("a/b", "path separator"), ("/tmp/x", "path separator"),
    ("a\\b", "path separator"), ("a\0b", "NUL"), ("-rf", "must not start with '-'"),
    (".hidden", "must not start with '.'"), ("a b", "whitespace"), ("a\nb", "whitespace"), ("a:b", "':'"),
    ("caf\u00e9", "'\u00e9'"), ("x" * 201, "201 characters"),
])
def test_check_name_refuses_unsafe_names(name, why):
    with pytest.raises(ValueError) as e:
        check_name(name, "judge.name")
    msg = str(e.value)
    assert msg.startswith("judge.name: ") and why in msg
    if name and len(name) <= 40:
        assert repr(name) in msg  # the bad name is quoted


def test_check_name_refuses_non_strings():
    for bad in (None, 3, b"m1"):
        with pytest.raises(ValueError, match="tasks\\[1\\].name: a name must be a string"):
            check_name(bad, "tasks[1].name")


def test_safe_join_stays_inside_root(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    assert safe_join(root, "a", "b.json") == (root / "a" / "b.json").resolve()
    assert safe_join(root, "a/../b.json") == (root / "b.json").resolve()
    assert safe_join(root) == root.resolve()
    for parts in (("..", "x"), ("a", "..", "..", "x"), (str(tmp_path / "abs"),), ("/etc/passwd",), ("a", ".."),
                  ("",)):
        with pytest.raises(ValueError, match="leads outside the output folder"):
            safe_join(root, *parts)
    with pytest.raises(ValueError, match="invalid path"):
        safe_join(root, "a\0b")
    # a symlink inside the root that points out of it is followed and refused
    (tmp_path / "elsewhere").mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="leads outside"):
        safe_join(root, "link", "f.json")
    # a symlinked root is fine: the check is against the folder it points to
    (tmp_path / "root-link").symlink_to(root)
    assert safe_join(tmp_path / "root-link", "f.json") == (root / "f.json").resolve()


# ----------------------------------------------------------------------------- harness export
def _run_with_names(run_dir: Path, model: str = "m1", judge: str = "j") -> Path:
    """A run store holding one judged instance of alpaca_eval, arena_hard and mt_bench."""
    store = RunStore(run_dir)
    recs = []
    for task, crits in (("alpaca_eval", ["preference"]), ("arena_hard", ["game1", "game2"]),
                        ("mt_bench", ["turn1"])):
        inst = Instance(task=task, id="81", turns=["Say hi."], reference=["hello"])
        comp = Completion(task=task, instance_id="81", model=model, texts=["hi"], instance_key=inst.key,
                          gen_config_hash="g")
        recs += [inst, comp]
        judge_kind = "mt_bench_single" if task == "mt_bench" else f"{task}_judge"
        for crit in crits:
            value = {"preference": 2.0, "game1": "A>B", "game2": "B>A", "turn1": 7.0}[crit]
            recs.append(Judgment(task=task, instance_id="81", model=model, judge=judge_kind,
                                 judge_model=judge, judge_config_hash="h", criterion=crit, raw="[[7]]",
                                 completion_key=comp.key, value=value,
                                 prompt=[{"role": "user", "content": "judge this"}]))
        # what the build, generate and judge steps mark current
        store.set_current_instances(task, [inst.key])
        store.set_current_generation(task, model, "g")
        store.set_current_judge(task, judge_kind, "h")
    store.put_many(recs)
    store.close()
    return run_dir


def _files(root: Path, skip: Path | None = None) -> list[str]:
    """Files below root (except below skip: a run store may come and go with -wal/-shm files)."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and not (skip is not None and skip in p.parents))


def test_export_writes_names_that_are_safe(tmp_path):
    from harness.export import export_run

    run = _run_with_names(tmp_path / "run", model="m1@bo4[rm]", judge="gpt-4")
    written = export_run(run, tmp_path / "exp")
    assert _files(tmp_path / "exp") == ["alpaca_eval/m1@bo4[rm]/annotations.json",
                                        "arena_hard/model_judgment/gpt-4/m1@bo4[rm].jsonl",
                                        "mt_bench/model_judgment/gpt-4_single.jsonl"]
    assert sorted(map(str, written)) == sorted(str((tmp_path / "exp" / f).resolve()) for f in _files(tmp_path / "exp"))


@pytest.mark.parametrize("field", ["model", "judge"])
@pytest.mark.parametrize("bad", ["../../../escaped", "a/b", "ABS", ".."])
def test_export_refuses_names_that_leave_the_output_folder(tmp_path, field, bad, capsys):
    from harness.cli import main
    from harness.export import export_run

    if bad == "ABS":
        bad = str(tmp_path / "abs" / "escaped")
    run = _run_with_names(tmp_path / "work" / "run", **{field: bad})
    out = tmp_path / "work" / "a" / "exp"
    before = _files(tmp_path, skip=run)
    expected = f"{field} name: name '{bad}'" if bad != ".." else "'..' is not a valid name"
    with pytest.raises(ValueError, match=re.escape(expected)):
        export_run(run, out)
    assert _files(tmp_path, skip=run) == before  # nothing written, inside --out or out of it
    assert main(["export", str(run), "--out", str(out)]) == 2
    assert expected in capsys.readouterr().err
    assert _files(tmp_path, skip=run) == before


# ----------------------------------------------------------------------------- harness rerank --label
class _LengthScorer:
    """A scorer of the ``harness.scorers`` protocol: the answer's length."""

    name, version, primary = "length", "1", "length"

    async def score(self, completions, instances=None, on_scores=None):
        from harness.scorers import score_record

        out = [score_record(self, c, float(len(c.text)), None, (instances or {}).get(c.instance_id))
               for c in completions]
        if on_scores:
            on_scores(out)
        return out


def _candidates(path: Path) -> Path:
    rows = [{"instance_id": f"q{i}", "prompt": f"question {i}", "candidates": [f"a{i}", f"bb{i}", f"c{i}", f"ddd{i}"]}
            for i in range(4)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("label", ["../../../../escaped", "a/b", "/tmp/escaped-label", "..", "-x", ""])
def test_rerank_refuses_a_label_that_is_not_a_safe_name(tmp_path, label, capsys):
    from harness.cli import main
    from harness.rerank import RerankError, rerank

    cand = _candidates(tmp_path / "work" / "cands.jsonl")
    run = tmp_path / "work" / "deep" / "run"
    before = _files(tmp_path)
    with pytest.raises(RerankError, match="--label"):
        asyncio.run(rerank(cand, _LengthScorer(), [1, 2, 4], out=run, label=label))
    assert _files(tmp_path) == before and not run.exists()
    assert main(["rerank", "--candidates", str(cand), "--reward-model", "toxicity", "--out", str(run),
                 f"--label={label}", "--n", "1,2"]) == 2
    assert "--label" in capsys.readouterr().err
    assert _files(tmp_path) == before and not run.exists()


def test_rerank_with_a_safe_label_writes_inside_the_run(tmp_path):
    from harness.rerank import rerank

    cand = _candidates(tmp_path / "cands.jsonl")
    res = asyncio.run(rerank(cand, _LengthScorer(), [1, 2, 4], out=tmp_path / "run", label="len@v2"))
    assert res.virtual_models == {f"cands@bo{n}[len@v2]": 4 for n in (1, 2, 4)}
    assert sorted(Path(f).name for f in res.analysis_files) == ["cands__len@v2.csv", "cands__len@v2.json"]
    for f in res.analysis_files:
        assert Path(f).resolve().parent == (tmp_path / "run" / "bestofn").resolve()
    # the default label is the scorer's name, made safe
    odd = _LengthScorer()
    odd.name = "../odd scorer"
    res = asyncio.run(rerank(cand, odd, [1, 2], out=tmp_path / "run2"))
    assert set(res.virtual_models) == {"cands@bo1[_odd_scorer]", "cands@bo2[_odd_scorer]"}
    assert all(Path(f).resolve().parent == (tmp_path / "run2" / "bestofn").resolve() for f in res.analysis_files)


# ----------------------------------------------------------------------------- file modes
@pytest.fixture()
def umask():
    """Set the process umask for one test; restore it afterwards."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077], ids=oct)
def test_atomic_writes_get_the_umask_mode_not_0600(tmp_path, umask, mask):
    umask(mask)
    atomic_write_text(tmp_path / "results.json", "{}")
    write_jsonl(tmp_path / "sub" / "rows.jsonl", [{"a": 1}])
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what every other file the user creates gets
    for p in (tmp_path / "results.json", tmp_path / "sub" / "rows.jsonl"):
        assert _mode(p) == 0o666 & ~mask == _mode(plain), (oct(_mode(p)), oct(mask))
    # replacing keeps it so, and no temp file is left
    atomic_write_text(tmp_path / "results.json", "{\"x\": 1}")
    assert _mode(tmp_path / "results.json") == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt", "results.json", "sub"]
    fd, tmp = make_temp_file(tmp_path, prefix=".t.")
    os.close(fd)
    assert _mode(tmp) == 0o666 & ~mask and Path(tmp).name.startswith(".t.")
    assert _mode(make_temp_dir(tmp_path, prefix=".d.")) == 0o777 & ~mask


def test_make_temp_file_is_exclusive_and_does_not_follow_links(tmp_path, monkeypatch):
    import harness.paths as paths

    names = iter(["taken", "link", "free"])
    monkeypatch.setattr(paths, "_temp_name", lambda d, prefix, suffix: Path(d) / next(names))
    (tmp_path / "taken").write_text("keep")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    fd, tmp = make_temp_file(tmp_path)
    os.close(fd)
    assert Path(tmp).name == "free"
    assert (tmp_path / "taken").read_text() == "keep" and not (tmp_path / "target").exists()


def test_export_and_leaderboard_files_are_group_readable(tmp_path, umask):
    from harness.export import export_run
    from reports.bestofn import write_analysis

    umask(0o022)
    run = _run_with_names(tmp_path / "run")
    for p in export_run(run, tmp_path / "exp"):
        assert _mode(p) == 0o644, p
    result = {"curve": [{"n": 1, "reward_mean": 0.5}], "meta": {}}
    for p in write_analysis(result, tmp_path / "bestofn", "m__rm"):
        assert _mode(p) == 0o644, p
