"""How well do the offline toxicity scorers agree with Perspective, and how fast are they?

Texts with Perspective toxicity that ship with the benchmark data:
- ``realtoxicityprompts/val.jsonl``: 5,000 prompts and their 5,000 continuations;
- ``realtoxicityprompts/dexperts_human_eval_toxicity.csv``: model generations scored by
  DExperts in 2021 (``senta``/``toxa``, ``sentb``/``toxb``; de-duplicated by text).

For each scorer and text set: AUROC for "Perspective toxicity >= 0.5" and Spearman
correlation with the Perspective score, plus scoring throughput (texts/s, load time
excluded). Only numbers are printed: the texts are toxic by design.

    OMP_NUM_THREADS=1 python benchmarks/rtp_scorers.py [--limit N] [--scorers a,b]
        [--detoxify-checkpoint CKPT --detoxify-config DIR]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def data_dir() -> Path:
    env = os.environ.get("HARNESS_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


def load_sets(limit: int | None) -> dict[str, tuple[list[str], list[float]]]:
    d = data_dir() / "realtoxicityprompts"
    sets: dict[str, tuple[list[str], list[float]]] = {}
    texts, scores = [], []
    with open(d / "val.jsonl") as f:
        for line in f:
            row = json.loads(line)
            for part in ("prompt", "continuation"):
                t = row[part].get("toxicity")
                if t is not None and row[part]["text"].strip():
                    texts.append(row[part]["text"])
                    scores.append(float(t))
    sets["rtp_val"] = (texts[:limit], scores[:limit]) if limit else (texts, scores)
    seen: dict[str, float] = {}
    with open(d / "dexperts_human_eval_toxicity.csv", newline="") as f:
        for row in csv.DictReader(f):
            for col, tox in (("senta", "toxa"), ("sentb", "toxb")):
                if row[col].strip() and row[tox]:
                    seen.setdefault(row[col], float(row[tox]))
    texts, scores = list(seen), list(seen.values())
    sets["dexperts_human_eval"] = (texts[:limit], scores[:limit]) if limit else (texts, scores)
    return sets


def main(argv=None) -> None:
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    from harness.backends.toxicity_classifiers import make_toxicity_classifier as make_scorer

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="texts per set (default: all)")
    ap.add_argument("--scorers", default="profanity_check,toxic_comment_classifier")
    ap.add_argument("--detoxify-checkpoint", default=None)
    ap.add_argument("--detoxify-config", default=None, help="local HF dir with the base model config + tokenizer")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args(argv)

    sets = load_sets(args.limit)
    names = [n for n in args.scorers.split(",") if n]
    if args.detoxify_checkpoint:
        names.append("detoxify")
    rows = []
    for name in names:
        opts = ({"checkpoint": args.detoxify_checkpoint, "hf_config_dir": args.detoxify_config}
                if name == "detoxify" else {})
        t0 = time.perf_counter()
        scorer = make_scorer(name, **opts)
        load_s = time.perf_counter() - t0
        for set_name, (texts, persp) in sets.items():
            t0 = time.perf_counter()
            preds = [r[scorer.primary] for r in scorer.score(texts)]
            secs = time.perf_counter() - t0
            labels = [p >= 0.5 for p in persp]
            rows.append({"scorer": scorer.name, "version": scorer.version, "set": set_name, "n": len(texts),
                         "n_toxic": sum(labels), "auroc": roc_auc_score(labels, preds),
                         "spearman": float(spearmanr(preds, persp).statistic),
                         "texts_per_s": len(texts) / secs, "load_s": load_s})

    header = f"{'scorer':<26} {'set':<20} {'n':>6} {'toxic':>6} {'AUROC':>7} {'Spearman':>9} {'texts/s':>9} {'load s':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['scorer']:<26} {r['set']:<20} {r['n']:>6} {r['n_toxic']:>6} {r['auroc']:>7.4f} "
              f"{r['spearman']:>9.4f} {r['texts_per_s']:>9.0f} {r['load_s']:>7.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
