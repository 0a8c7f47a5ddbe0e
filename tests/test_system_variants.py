"""System-message ablations: `system_variants` adds `<model>@sys=<variant>` models that answer
every benchmark with no system message, the run's generic one, or a given text."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from harness.backends.base import GenResult
from harness.config import ConfigError, load_config, parse_config
from harness.fake import ScriptedBackend
from harness.pipeline import run_all
from harness.registry import BACKENDS

REPO = Path(__file__).resolve().parents[1]


class SystemEcho(ScriptedBackend):
    """Answers with the system message it was sent (or NO-SYSTEM); judges get a rating."""

    name = "system_echo"

    async def generate(self, requests):
        out = await super().generate(requests)
        for r, res in zip(requests, out):
            if r.messages and r.messages[-1]["role"] == "user" and "[[rating]]" not in r.messages[-1]["content"]:
                system = next((m["content"] for m in r.messages if m["role"] == "system"), None)
                res.text = f"SYSTEM={system}" if system else "NO-SYSTEM"
        return out


BACKENDS.register("system_echo", SystemEcho)


def _raw(variants) -> dict:
    return {"name": "sysab", "seed": 0, "generic_system": "You are a generic assistant.",
            "models": [{"name": "m", "backend": "system_echo", "model": "echo", "system_variants": variants}],
            "judge": {"name": "j", "backend": "scripted", "model": "judge"},
            "tasks": [{"name": "multifaceted_bench",
                       "options": {"path": str(REPO / "tasks/multifaceted/readme_example.json")}},
                      {"name": "mt_bench", "limit": 2}]}


def _responses(out: Path, task: str) -> dict[str, set]:
    got: dict[str, set] = {}
    for line in (out / "samples" / f"{task}.jsonl").read_text().splitlines():
        row = json.loads(line)
        resp = row["response"]
        got.setdefault(row["model"], set()).add(resp[0] if isinstance(resp, list) else resp)
    return got


def test_each_variant_is_a_model_with_its_system_message(tmp_path, data_dir):
    raw = _raw(["none", "generic", {"name": "brief", "text": "Be brief."}, "original"])
    raw["data_dir"] = str(data_dir)
    out = tmp_path / "run"
    res = asyncio.run(run_all(parse_config(raw), out))["results"]
    names = {"m", "m@sys=none", "m@sys=generic", "m@sys=brief"}
    assert set(res["multifaceted_bench"]) == names and set(res["mt_bench"]) == names
    mf = _responses(out, "multifaceted_bench")
    own = json.loads((REPO / "tasks/multifaceted/readme_example.json").read_text())
    own = own[0]["system"] if isinstance(own, list) else own.get("system")
    assert mf["m"] == {f"SYSTEM={own}"}
    assert mf["m@sys=none"] == {"NO-SYSTEM"}
    assert mf["m@sys=generic"] == {"SYSTEM=You are a generic assistant."}
    assert mf["m@sys=brief"] == {"SYSTEM=Be brief."}
    # MT-Bench has no system messages: `none` is the base model's answers, `generic` adds one
    mt = _responses(out, "mt_bench")
    assert mt["m"] == mt["m@sys=none"] == {"NO-SYSTEM"}
    assert mt["m@sys=generic"] == {"SYSTEM=You are a generic assistant."}
    # the run's config.yaml parses back to the same models
    again = load_config(out / "config.yaml")
    assert [m.name for m in again.models] == ["m", "m@sys=none", "m@sys=generic", "m@sys=brief"]


def test_base_model_keys_do_not_change_with_variants(tmp_path, data_dir):
    raw = _raw([])
    raw["data_dir"] = str(data_dir)
    first = asyncio.run(run_all(parse_config(raw), tmp_path / "run"))
    raw = _raw(["none"])
    raw["data_dir"] = str(data_dir)
    second = asyncio.run(run_all(parse_config(raw), tmp_path / "run"))
    # the base model's completions and judgments are reused as they are: no new call for it
    g = second["summary"]["generation"]
    assert g["mt_bench/m"]["todo"] == 0 and g["multifaceted_bench/m"]["todo"] == 0
    assert second["results"]["mt_bench"]["m"] == first["results"]["mt_bench"]["m"]


@pytest.mark.parametrize("bad, field", [(["nothing"], "system_variants[0]"), ([{"text": ""}], "system_variants[0]"),
                                        ("none", "system_variants: expected a list")])
def test_bad_variants_name_the_field(bad, field):
    import re

    with pytest.raises(ConfigError, match=re.escape(f"models[0].{field}")):
        parse_config(_raw(bad))
