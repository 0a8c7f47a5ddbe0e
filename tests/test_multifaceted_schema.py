"""Schema validation of rubrics, preference sets and bench records; release import."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tasks.multifaceted.release import load_instances, load_release_records
from tasks.multifaceted.schema import (
    SchemaError, validate_bench_record, validate_preference_set, validate_rubric)
from tasks.multifaceted.prompts import DIMENSIONS

EXAMPLE = Path(__file__).resolve().parents[1] / "tasks" / "multifaceted" / "readme_example.json"


@pytest.fixture()
def record() -> dict:
    return json.loads(EXAMPLE.read_text())  # the JANUS README's example instance (``rubric`` spelling)


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_readme_example_validates_and_normalises_key(record):
    rec = validate_bench_record(record, "readme")
    assert "rubric" not in rec and len(rec["rubrics"]) == 4
    for r in rec["rubrics"]:
        validate_rubric(r)
        assert sorted(r["score_descriptions"]) == ["1", "2", "3", "4", "5"]


def test_both_key_spellings_load_from_jsonl(tmp_path, record):
    new = dict(record, id="b")
    new["rubrics"] = new.pop("rubric")
    path = _write_jsonl(tmp_path / "bench.jsonl", [dict(record, id="a"), new])
    instances = load_instances(path)
    assert [i.id for i in instances] == ["a", "b"]
    assert instances[0].rubrics == instances[1].rubrics == record["rubric"]
    assert instances[0].turns == [record["prompt"]] and instances[0].reference == [record["reference_answer"]]
    assert instances[0].system == record["system"] and instances[0].source == record["source"]


@pytest.mark.parametrize("mutate,field", [
    (lambda r: r["rubric"][1]["score_descriptions"].pop("5"), "rubrics[1].score_descriptions"),
    (lambda r: r.__setitem__("system", "  "), "system"),
    (lambda r: r.pop("reference_answer"), "(record)"),
    (lambda r: r["rubric"][2].pop("criteria"), "rubrics[2]"),
    (lambda r: r["rubric"][0]["score_descriptions"].__setitem__("6", "extra"), "rubrics[0].score_descriptions"),
])
def test_bad_records_name_file_line_and_field(tmp_path, record, mutate, field):
    bad = copy.deepcopy(record)
    mutate(bad)
    path = _write_jsonl(tmp_path / "bench.jsonl", [record, bad])
    with pytest.raises(SchemaError) as err:
        load_release_records(path)
    assert f"{path} line 2" in str(err.value) and f"field '{field}'" in str(err.value)


def test_rubric_count_and_truncated_file(tmp_path, record):
    three = copy.deepcopy(record)
    three["rubric"] = three["rubric"][:3]
    with pytest.raises(SchemaError, match="expected 4 rubrics, got 3"):
        load_release_records(_write_jsonl(tmp_path / "three.jsonl", [three]))
    assert len(load_release_records(tmp_path / "three.jsonl", n_rubrics=None)) == 1
    path = tmp_path / "trunc.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps(record)[:200])
    with pytest.raises(SchemaError, match="line 2: not valid JSON"):
        load_release_records(path)


def test_parquet_and_json_dict_files(tmp_path, record):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    rec = dict(record, id="p1")
    rec["rubrics"] = rec.pop("rubric")
    pd.DataFrame([rec]).to_parquet(tmp_path / "bench.parquet")
    [inst] = load_instances(tmp_path / "bench.parquet")
    assert inst.id == "p1" and inst.rubrics == record["rubric"]
    (tmp_path / "bench.json").write_text(json.dumps({"x9": record}))
    assert load_instances(tmp_path / "bench.json")[0].id == "x9"


def test_duplicate_ids_rejected(tmp_path, record):
    path = _write_jsonl(tmp_path / "dup.jsonl", [dict(record, id=1), dict(record, id=1)])
    with pytest.raises(SchemaError, match="duplicate id"):
        load_instances(path)


def test_hub_unreachable_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="kaist-ai/Multifaceted-Bench.*local file"):
        load_release_records("kaist-ai/Multifaceted-Bench")


def test_preference_set_schema():
    prefs = [{"dimension": d, "subdimension": "s", "preference": "p", "description": "d"} for d in DIMENSIONS]
    assert validate_preference_set(prefs, dimensions=DIMENSIONS) == prefs
    with pytest.raises(SchemaError, match="expected"):
        validate_preference_set(prefs[::-1], dimensions=DIMENSIONS)
    with pytest.raises(SchemaError, match=r"field '\[0\]'"):
        validate_preference_set([{"dimension": "style"}])
