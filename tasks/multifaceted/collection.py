"""Multifaceted Collection builder: training data from the same synthesis pipeline.

Over an instruction pool, each instruction gets ``n_variants`` preference sets and system
messages (variant v is generated with ``sample_index=v``, so variants are distinct calls
and distinct stored records), and a response generated under each system message.

Rows, in the formats the trainer consumes:
- SFT: ``{system, instruction, output}``, one per (instruction, variant);
- preference: ``{system, instruction, chosen, rejected}``: ``chosen`` is the response
  written for this system message, ``rejected`` the response written for another system
  message of the same instruction (the next valid variant). This is our reading of how
  JANUS built Multifaceted-Collection-DPO/ORPO; the repository does not contain that code.
  A pair whose two responses are identical is not written (listed as a failure, stage ``pair``).

Rubrics are not needed for training data and are not generated here.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from harness.records import Instance
from tasks.multifaceted.synth import BenchBuilder, BuildSettings, Job, StageStore, reference_messages, system_messages
from tasks.multifaceted.synth import parse_plain_text, parse_reference

COLLECTION_STAGES = ("preference_set", "system", "reference")


async def build_collection(store: StageStore, calls, backend, instructions: list[Instance], n_variants: int = 3,
                           settings: BuildSettings | None = None) -> tuple[list[dict], list[dict], list[dict]]:
    """(sft_rows, preference_rows, failures). Resumable like the bench build."""
    if n_variants < 1:
        raise ValueError(f"collection: n_variants must be >= 1, got {n_variants}")
    base = settings or BuildSettings()
    outputs: dict[str, list[tuple[str, str]]] = {i.id: [] for i in instructions}
    failures = []
    for v in range(n_variants):
        builder = BenchBuilder(store, calls, backend, replace(base, variant=v))
        await builder.run(instructions, stages=COLLECTION_STAGES)
        for inst in instructions:
            try:
                prefs = builder.stage_value(builder.preference_jobs([inst])[0])
                system = builder.stage_value(Job(inst.id, "system", system_messages(prefs), parse_plain_text))
                output = builder.stage_value(Job(inst.id, "reference", reference_messages(system, inst.turns[0]),
                                            parse_reference))
                outputs[inst.id].append((system, output))
            except Exception as e:  # noqa: BLE001 - _Incomplete: reported, never written
                failures.append({"id": inst.id, "variant": v, "stage": getattr(e, "stage", "?"),
                                 "reason": getattr(e, "reason", str(e))})
    sft, prefs_rows = [], []
    for inst in instructions:
        made = outputs[inst.id]
        for k, (system, output) in enumerate(made):
            sft.append({"id": f"{inst.id}#{k}", "system": system, "instruction": inst.turns[0], "output": output})
            if len(made) > 1:
                rejected = made[(k + 1) % len(made)][1]
                if rejected.strip() == output.strip():  # no preference to learn; the trainer would drop it
                    failures.append({"id": inst.id, "variant": k, "stage": "pair",
                                     "reason": "chosen and rejected responses are identical"})
                    continue
                prefs_rows.append({"id": f"{inst.id}#{k}", "system": system, "instruction": inst.turns[0],
                                   "chosen": output, "rejected": rejected})
    return sft, prefs_rows, failures


def write_collection(out_dir: str | Path, sft: list[dict], preference: list[dict], failures: list[dict]) -> dict:
    from harness.store import write_jsonl

    out = Path(out_dir)
    paths = {"sft": out / "multifaceted_collection_sft.jsonl",
             "preference": out / "multifaceted_collection_preference.jsonl",
             "failures": out / "collection_failures.jsonl"}
    write_jsonl(paths["sft"], sft)
    write_jsonl(paths["preference"], preference)
    write_jsonl(paths["failures"], failures)
    return paths
