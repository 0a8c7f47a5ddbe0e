"""Model cards: every checkpoint says what it is, what it was trained on and how.

Writes ``README.md`` (for people and the Hub) and ``harness_card.json`` (for the harness: the prompt
format, the reward-model kind, counts and losses). The card is written last, into the staging directory
(``trainer/output.py``), and lists every other file with its size and sha256 under ``complete: true``;
the format of those fields and the check that reads them live in ``harness/checkpoint.py``.
"""
from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

from harness.checkpoint import (CARD_FORMAT, CARD_FORMAT_KEY, CARD_JSON, COMPLETE_KEY, FILES_KEY,  # noqa: F401
                                list_files, read_card)

RECIPES = {
    "sft": "supervised fine-tuning (TRL SFTTrainer), loss on the response tokens only",
    "dpo": "direct preference optimisation (TRL DPOTrainer), reference model = the starting model",
    "orpo": "odds-ratio preference optimisation (trl.experimental.orpo, behind trainer/orpo.py)",
    "rm": "Bradley-Terry reward model (TRL RewardTrainer), one scalar head read at the last non-pad token",
}


def harness_version() -> str:
    try:
        from importlib.metadata import version

        return version("janus-harness")
    except Exception:
        return "unknown"


def _versions() -> dict:
    out = {"python": platform.python_version(), "janus-harness": harness_version()}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            module = __import__(name)
            out[name] = getattr(module, "__version__", "unknown")
        except ImportError:
            out[name] = None
    return out


def card_dict(cfg, report, stats: dict, method: str, fingerprint: str | None = None) -> dict:
    return {
        "kind": "reward_model" if method == "rm" else "causal_lm",
        "method": method,
        "recipe": RECIPES[method],
        "base_model": cfg.model,
        "prompt_format": cfg.format,
        "max_length": cfg.max_length,
        "lora": None if cfg.lora is None else {"r": cfg.lora.r, "alpha": cfg.lora.alpha, "dropout": cfg.lora.dropout,
                                               "target_modules": cfg.lora.target_modules,
                                               "merged": cfg.merge_lora},
        "training": cfg.training,
        "seed": cfg.seed,
        "config_file": cfg.source,
        "data": report.to_dict(),
        "stats": stats,
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config_fingerprint": fingerprint,
    }


def _readme(card: dict) -> str:
    d, s = card["data"], card["stats"]
    dropped = ", ".join(f"{k}: {v}" for k, v in d["dropped"].items() if v) or "none"
    usage = ("Use as a model: `--model <this dir>` (hf backend); prompt format "
             f"`{card['prompt_format']}`." if card["kind"] == "causal_lm" else
             "Use as a reward model: `harness.backends.reward_model.load_reward_model(<this dir>)` "
             "scores (system message, prompt, response) -> float; best-of-n reranking takes it as is.")
    lines = [
        f"# {card['method'].upper()} checkpoint trained with janus-harness",
        "",
        usage,
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{card['base_model']}` |",
        f"| recipe | {card['recipe']} |",
        f"| prompt format | `{card['prompt_format']}` |",
        f"| LoRA | {card['lora'] or 'no (full fine-tuning)'} |",
        f"| data | `{d['source']}` split `{d['split']}` (sha256 {d['sha256'] or 'n/a'}) |",
        f"| rows | read {d['rows_read']}, valid {d['rows_valid']}, train {d['train_rows']}, eval {d['eval_rows']}, seed {d['seed']} |",
        f"| dropped rows | {dropped} |",
        f"| steps | {s.get('global_steps')} in {s.get('train_seconds')} s |",
        f"| loss | first {s.get('first_loss')}, final {s.get('final_loss')} |",
        f"| eval | {s.get('eval') or 'none'} |",
        f"| harness version | {card['versions']['janus-harness']} (trl {card['versions']['trl']}, "
        f"transformers {card['versions']['transformers']}) |",
        "",
        "Training arguments:",
        "",
        "```json",
        json.dumps(card["training"], indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_card(out_dir: str | Path, cfg, report, stats: dict, method: str, fingerprint: str | None = None) -> dict:
    """README.md, then the card, last: it lists every file now in ``out_dir`` and marks the save complete."""
    out = Path(out_dir)
    card = card_dict(cfg, report, stats, method, fingerprint)
    (out / "README.md").write_text(_readme(card), encoding="utf-8")
    card[CARD_FORMAT_KEY] = CARD_FORMAT
    card[FILES_KEY] = list_files(out, sha256=True)
    card[COMPLETE_KEY] = True
    tmp = out / f".{CARD_JSON}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(card, indent=2, default=str))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / CARD_JSON)
    return card
