"""`harness bench build collection`: disjoint from the bench, resumable, loadable by the trainer."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from harness.backends.base import Backend, GenResult
from harness.cli import main
from harness.jsonl import read_jsonl
from harness.registry import BACKENDS
from support.collection_outputs import stage_output
from tasks.multifaceted.sources import build_pool, normalise_text, sample_instructions
from trainer.data import PAIR, SFT, DataConfig, prepare

CALLS: Counter = Counter()


class VariantGen(Backend):
    """Well-formed stage outputs that differ by variant (sample_index)."""

    name = "collection-variant-gen"
    default_concurrency = 2

    async def generate(self, requests):
        for r in requests:
            CALLS[r.messages[0]["content"][:20]] += 1
        return [GenResult(text=stage_output(r, lambda r, system: f"answer under [{system}]"), completion_tokens=5)
                for r in requests]


BACKENDS.register(VariantGen.name, VariantGen)


def _configs(tmp_path, data_dir, collection_mt=2, extra=""):
    bench = tmp_path / "bench.yaml"
    bench.write_text(f"name: b\nseed: 0\ndata_dir: {data_dir}\ntargets: {{mt_bench: 78, koala: 3}}\n"
                     f"generator: {{backend: {VariantGen.name}, model: g}}\n")
    coll = tmp_path / "collection.yaml"
    coll.write_text(f"name: c\nseed: 1\ndata_dir: {data_dir}\nbench: {bench}\nn_variants: 3\n"
                    f"targets: {{mt_bench: {collection_mt}, koala: 2}}\n"
                    f"generator: {{backend: {VariantGen.name}, model: g, generation: {{temperature: 0.7}}}}\n"
                    f"calls: {{concurrency: 2, parse_retries: 1}}\n{extra}")
    return bench, coll


def test_collection_is_disjoint_resumable_and_trainable(tmp_path, data_dir, capsys):
    bench, coll = _configs(tmp_path, data_dir)
    out = tmp_path / "out"
    CALLS.clear()
    assert main(["bench", "build", "collection", "--config", str(coll), "--out", str(out)]) == 0
    first = sum(CALLS.values())
    report = json.loads((out / "collection_report.json").read_text())
    assert report["bench_overlap_removed"] == 81 and report["bench_overlap_in_collection"] == 0
    assert report["instructions"] == 4 and report["sft_rows"] == 12 and report["preference_rows"] == 12
    # MT-Bench has 80 questions; the bench took 78, so the collection's two are the other two
    picked = sample_instructions(build_pool(data_dir), {"mt_bench": 78, "koala": 3}, seed=0)
    bench_keys = {normalise_text(i.turns[0]) for i in picked}
    sft = read_jsonl(out / "multifaceted_collection_sft.jsonl")
    assert not {normalise_text(r["instruction"]) for r in sft} & bench_keys
    assert len({r["instruction"] for r in sft if "mt_bench" in r["id"]}) == 2
    # several system messages per instruction; chosen is the response written for the row's system
    by_inst: dict[str, set] = {}
    for r in sft:
        by_inst.setdefault(r["instruction"], set()).add(r["system"])
    assert all(len(s) == 3 for s in by_inst.values())
    for row in read_jsonl(out / "multifaceted_collection_preference.jsonl"):
        assert row["chosen"] == f"answer under [{row['system']}]" and row["rejected"] != row["chosen"]
    # the trainer's loader reads both files: sft, and pairs for dpo / orpo / rm
    sft_data = prepare(DataConfig(path=str(out / "multifaceted_collection_sft.jsonl")), SFT)
    pair_data = prepare(DataConfig(path=str(out / "multifaceted_collection_preference.jsonl")), PAIR)
    assert len(sft_data.train) == 12 and len(pair_data.train) == 12
    assert sum(sft_data.report.dropped.values()) == sum(pair_data.report.dropped.values()) == 0
    # a rerun (fresh process state, same out dir) resumes: nothing is generated again
    CALLS.clear()
    assert main(["bench", "build", "collection", "--config", str(coll), "--out", str(out)]) == 0
    assert sum(CALLS.values()) == 0 and first > 0
    assert read_jsonl(out / "multifaceted_collection_sft.jsonl") == sft


def test_collection_cannot_reach_into_the_bench(tmp_path, data_dir, capsys):
    _, coll = _configs(tmp_path, data_dir, collection_mt=3)  # only 2 MT-Bench questions are left
    assert main(["bench", "build", "collection", "--config", str(coll), "--out", str(tmp_path / "o")]) == 2
    assert "'mt_bench' asks for 3 instructions but only 2" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ({"bench": None}, "field 'bench' is required"),
    ({"n_variants": 1}, "field 'n_variants' must be an integer >= 2"),
])
def test_collection_config_errors_name_the_field(tmp_path, data_dir, capsys, change, message):
    import yaml

    _, coll = _configs(tmp_path, data_dir)
    cfg = yaml.safe_load(coll.read_text())
    cfg.update(change)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    coll.write_text(yaml.safe_dump(cfg))
    CALLS.clear()
    assert main(["bench", "build", "collection", "--config", str(coll), "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err and sum(CALLS.values()) == 0


def test_collection_demo_config_is_valid(data_dir):
    from pathlib import Path

    from tasks.multifaceted.build import build_settings
    from tasks.multifaceted.collection_build import COLLECTION_FIELDS, bench_keys, disjoint_pool
    from tasks.multifaceted.build import load_build_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_build_config(root / "configs" / "collection_demo.yaml", COLLECTION_FIELDS)
    keys = bench_keys(str(root / cfg["bench"]), data_dir, "demo")
    pool, removed = disjoint_pool(build_pool(data_dir), keys)
    assert removed == len(keys) == 20
    picked = sample_instructions(pool, cfg["targets"], seed=cfg["seed"])
    assert len(picked) == 10 and not {normalise_text(i.turns[0]) for i in picked} & keys
    mcfg = type("M", (), {"generation": cfg["generator"]["generation"]})
    assert build_settings(cfg, mcfg, "demo").structured
