"""Small demo training data in the Multifaceted Collection format, built from staged benchmark data.

The Multifaceted Collection itself is only on the Hugging Face Hub. For offline demos and tests,
``demo:mt_bench`` builds rows from the MT-Bench questions and model answers in ``HARNESS_DATA_DIR``:
instruction = the first-turn question, output / chosen = GPT-4's answer, rejected = a weaker model's
answer, system = a preference-style system message chosen by the question's category. The system
messages are ours (written for the demo), not JANUS's; the data is for plumbing and smoke runs, not
for reproducing JANUS numbers.
"""
from __future__ import annotations

import json
from pathlib import Path

REJECTED_MODELS = ("llama-13b", "alpaca-13b", "dolly-v2-12b")

SYSTEM_BY_CATEGORY = {
    "writing": "You are a writing assistant for a user who loves vivid, well-structured prose. They prefer "
               "engaging openings, clear sections and a warm tone, and they want the requested constraints followed exactly.",
    "roleplay": "You are a role-play partner for a user who enjoys immersive, in-character answers. They prefer "
                "playful language that stays respectful and never breaks character without a reason.",
    "reasoning": "You are a careful reasoner for a user who values step-by-step logic. They prefer short, explicit "
                 "steps, a clearly stated final answer, and no unsupported leaps.",
    "math": "You are a math tutor for a student who wants worked solutions. They prefer each step written out with "
            "the formula used, and the final result stated plainly at the end.",
    "coding": "You are a senior software engineer helping a developer who values correct, readable code. They prefer "
              "a short explanation followed by complete code with comments, and a note on complexity.",
    "extraction": "You are a precise data assistant for an analyst. They prefer answers that extract exactly what "
                  "was asked, in the requested format, without extra commentary.",
    "stem": "You are a science communicator for a curious adult without specialist training. They prefer accurate "
            "explanations with one concrete example and no unnecessary jargon.",
    "humanities": "You are a thoughtful humanities scholar for a reader who values balanced perspectives. They "
                  "prefer well-organised arguments that acknowledge several viewpoints and cite historical context.",
}


def shared_data_dir() -> Path:
    from harness.data import data_dir

    return data_dir()


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise ValueError(f"{path}: not found (set HARNESS_DATA_DIR to the benchmark data folder)")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _first_turn_answers(path: Path) -> dict[int, str]:
    return {a["question_id"]: a["choices"][0]["turns"][0] for a in _jsonl(path)}


def mt_bench_rows(data_dir: Path | None = None) -> list[dict]:
    """One row per (question, weaker model): system, instruction, output, chosen, rejected."""
    root = (data_dir or shared_data_dir()) / "mt_bench"
    questions = _jsonl(root / "question.jsonl")
    best = _first_turn_answers(root / "model_answer" / "gpt-4.jsonl")
    weaker = {m: _first_turn_answers(root / "model_answer" / f"{m}.jsonl") for m in REJECTED_MODELS}
    rows = []
    for q in questions:
        qid = q["question_id"]
        if qid not in best:
            continue
        for m in REJECTED_MODELS:
            if qid not in weaker[m]:
                continue
            rows.append({
                "id": f"mt_bench/{qid}/{m}",
                "system": SYSTEM_BY_CATEGORY.get(q["category"], SYSTEM_BY_CATEGORY["writing"]),
                "instruction": q["turns"][0],
                "output": best[qid],
                "chosen": best[qid],
                "rejected": weaker[m][qid],
                "category": q["category"],
            })
    return rows


def demo_rows(name: str, split: str = "train") -> list[dict]:
    """``mt_bench``: preference pairs (3 per question); ``mt_bench_sft``: one SFT row per question."""
    if name == "mt_bench":
        return mt_bench_rows()
    if name == "mt_bench_sft":
        seen, rows = set(), []
        for r in mt_bench_rows():
            if r["instruction"] not in seen:
                seen.add(r["instruction"])
                rows.append({k: r[k] for k in ("id", "system", "instruction", "output", "category")})
        return rows
    raise ValueError(f"unknown demo data 'demo:{name}'; known: demo:mt_bench, demo:mt_bench_sft")
