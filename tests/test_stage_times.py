"""Per-stage wall time, calls, cache hits, tokens and tokens/s of a run (results.json and the CLI table)."""
from __future__ import annotations

import json
import os

import pytest
import yaml

from harness.cli import main
from harness.fake import ScriptedBackend
from harness.serve import ServerThread, build_app
from harness.stage_times import FIELDS


def _cfg(path, url):
    cfg = {"name": "t", "models": [{"name": "m1", "backend": "scripted", "model": "writer"}],
           "judge": {"name": "j", "backend": "openai", "model": "judge", "base_url": url,
                     "api_key_env": "HARNESS_TEST_KEY"},
           "tasks": [{"name": "mt_bench", "limit": 3}], "calls": {"concurrency": 2}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_stage_table_fields_on_a_scripted_run(tmp_path, data_dir, capsys):
    os.environ["HARNESS_TEST_KEY"] = "x"
    with ServerThread(build_app(ScriptedBackend(), "judge")) as srv:
        args = ["run", str(_cfg(tmp_path / "c.yaml", srv.base_url)), "--out", str(tmp_path / "run"),
                "--data-dir", str(data_dir)]
        assert main(args) == 0
        first = capsys.readouterr().out
        stages = json.loads((tmp_path / "run/results.json").read_text())["summary"]["stages"]
        assert [(s["stage"], s["task"], s["model"]) for s in stages] == [
            ("build", "mt_bench", None), ("generate", "mt_bench", "m1"), ("judge", "mt_bench", "j"),
            ("aggregate", None, None)]
        for s in stages:
            assert set(s) == set(FIELDS) and s["wall_s"] >= 0
        gen, judge = stages[1], stages[2]
        # 3 questions x 2 turns; the scripted writer runs in-process (local), the judge is an HTTP URL
        assert gen["requests"] == 6 and gen["cached"] == 0 and gen["completion_tokens"] > 0
        assert gen["local"] and gen["tokens_per_s"] == pytest.approx(gen["completion_tokens"] / gen["wall_s"], rel=1e-3)
        assert judge["requests"] == 6 and not judge["local"] and judge["tokens_per_s"] is None
        assert "where the time went:" in first and "compl tok/s" in first
        assert any(line.startswith("generate   mt_bench") for line in first.splitlines())

        assert main(args) == 0  # the rerun: the records are stored, nothing is asked or computed
        stages = json.loads((tmp_path / "run/results.json").read_text())["summary"]["stages"]
        gen = next(s for s in stages if s["stage"] == "generate")
        assert gen["requests"] == gen["sent"] == gen["completion_tokens"] == 0
