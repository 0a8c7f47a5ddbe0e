"""Multifaceted Collection rows: several system messages per instruction, SFT and preference rows."""
from __future__ import annotations

import asyncio
import json

from harness.backends.base import Backend, GenResult
from harness.calls import CallLayer, CallSettings
from tasks.multifaceted import prompts as P
from tasks.multifaceted.collection import build_collection, write_collection
from tasks.multifaceted.sources import build_pool, sample_instructions
from tasks.multifaceted.synth import StageStore


class VariantGenerator(Backend):
    """Well-formed outputs that differ by variant (sample_index); one instruction never parses."""

    name = "variant-gen"
    default_concurrency = 2

    def __init__(self, model="vg", bad_text="", **kw):
        super().__init__(model, **kw)
        self.bad_text = bad_text

    async def generate(self, requests):
        out = []
        for r in requests:
            system, user = r.messages[0]["content"], r.messages[-1]["content"]
            if system == P.SYSTEM_PROMPT_PREFERENCE_SET:
                if self.bad_text and self.bad_text in user:
                    text = "not json"
                else:
                    text = json.dumps([{"dimension": d, "subdimension": f"s{r.sample_index}", "preference": "p",
                                        "description": "d"} for d in P.DIMENSIONS])
            elif system == P.SYSTEM_PROMPT_SYSTEM_MESSAGE:
                text = f"You are persona number {r.sample_index}, careful and kind."
            else:
                text = f"answer under [{system}]"
            out.append(GenResult(text=text))
        return out


def test_collection_rows(tmp_path, data_dir):
    pool = build_pool(data_dir, ["koala", "mt_bench"])
    instructions = sample_instructions(pool, {"koala": 2, "mt_bench": 1}, seed=0)
    store = StageStore(tmp_path / "run")
    calls = CallLayer(tmp_path / "cache.sqlite", CallSettings(concurrency=2, parse_retries=1, max_retries=0))
    gen = VariantGenerator(bad_text=instructions[2].turns[0])
    sft, pref, failures = asyncio.run(build_collection(store, calls, gen, instructions, n_variants=3))
    good = instructions[:2]
    assert len(sft) == 2 * 3 and {f["id"] for f in failures} == {instructions[2].id} and len(failures) == 3
    for inst in good:
        rows = [r for r in sft if r["instruction"] == inst.turns[0]]
        assert len({r["system"] for r in rows}) == 3  # several system messages per instruction
        assert all(r["output"] == f"answer under [{r['system']}]" for r in rows)
    assert len(pref) == 6
    for row in pref:
        assert row["chosen"] == f"answer under [{row['system']}]" and row["rejected"] != row["chosen"]
        assert set(row) == {"id", "system", "instruction", "chosen", "rejected"}
    paths = write_collection(tmp_path / "out", sft, pref, failures)
    assert len(paths["sft"].read_text().splitlines()) == 6
    calls.close()
    store.close()
