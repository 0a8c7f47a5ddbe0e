"""`harness export`: the run's judgments in official formats rebuild the same numbers."""
from __future__ import annotations

import csv
import io
import json
import os

import yaml

from harness.cli import main
from harness.fake import ScriptedBackend
from harness.serve import ServerThread, build_app


def test_mt_bench_export_round_trips_through_the_fastchat_leaderboard(tmp_path, data_dir, capsys):
    app = build_app(ScriptedBackend(), "judge")
    with ServerThread(app) as srv:
        os.environ["HARNESS_TEST_KEY"] = "x"
        cfg = {"name": "e", "models": [{"name": "m1", "backend": "scripted", "model": "a"},
                                       {"name": "m2", "backend": "scripted", "model": "b"}],
               "judge": {"name": "j", "backend": "openai", "model": "judge", "base_url": srv.base_url,
                         "api_key_env": "HARNESS_TEST_KEY"},
               "tasks": [{"name": "mt_bench", "limit": 6}]}
        p = tmp_path / "c.yaml"
        p.write_text(yaml.safe_dump(cfg))
        assert main(["run", str(p), "--out", str(tmp_path / "run"), "--data-dir", str(data_dir)]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "exp")]) == 0
    exported = tmp_path / "exp/mt_bench/model_judgment/j_single.jsonl"
    lines = [json.loads(x) for x in exported.read_text().splitlines()]
    assert len(lines) == 2 * 6 * 2 and {"question_id", "model", "score", "turn", "judgment"} <= set(lines[0])
    capsys.readouterr()
    assert main(["leaderboard", "mt_bench", "--judgments", str(exported), "--format", "csv"]) == 0
    table = {r["model"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    results = json.loads((tmp_path / "run/results.json").read_text())["results"]["mt_bench"]
    for m in ("m1", "m2"):
        assert float(table[m]["average"]) == results[m]["score"]
        assert float(table[m]["turn1"]) == results[m]["turn1"]
