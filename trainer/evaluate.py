"""Held-out response loss: did training move the model toward the data it was meant to learn?

Mean negative log-likelihood per response token (prompt tokens excluded, same text as training), computed
with a plain forward pass so the number does not depend on TRL's bookkeeping.

    python -m trainer.evaluate --config configs/train/demo_sft_smollm2.yaml --model BASE_DIR --model TRAINED_DIR
"""
from __future__ import annotations

import argparse
import json
import math

from harness.formats import PromptFormat
from trainer.data import SFT, prepare


def response_loss(model_dir: str, rows: list[dict], prompt_format: str = "tokenizer", max_length: int = 2048,
                  batch_size: int = 4) -> dict:
    """Token-weighted mean NLL of the responses in ``rows`` (system, instruction, output) under the model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.checkpoint import verify_checkpoint

    verify_checkpoint(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    fmt = PromptFormat(prompt_format, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    total_nll, total_tokens = 0.0, 0
    encoded = [fmt.sequence_ids(r["system"], r["instruction"], r["output"]) for r in rows]
    encoded = [(ids[:max_length], n) for ids, n in encoded]
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start:start + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            labels = torch.full_like(ids, -100)
            for i, (seq, n_prompt) in enumerate(chunk):
                ids[i, :len(seq)] = torch.tensor(seq)
                mask[i, :len(seq)] = 1
                labels[i, n_prompt:len(seq)] = torch.tensor(seq[n_prompt:])
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                                    ignore_index=-100, reduction="sum")
            total_nll += float(nll)
            total_tokens += int((target != -100).sum())
    mean = total_nll / max(total_tokens, 1)
    return {"model": model_dir, "rows": len(rows), "response_tokens": total_tokens, "loss": mean,
            "perplexity": math.exp(mean)}


def heldout_rows(config_path: str) -> tuple[list[dict], str, int]:
    """The eval split of a training config, rebuilt exactly as training built it (same filter, seed, split)."""
    from transformers import AutoTokenizer

    from trainer.config import load_config

    cfg = load_config(config_path)
    tok = AutoTokenizer.from_pretrained(cfg.model)
    fmt = PromptFormat(cfg.format, tok)
    data = prepare(cfg.data, SFT, length_of=fmt.length, max_length=cfg.max_length)
    if not data.eval:
        raise ValueError(f"{config_path}: the config holds out no rows (set data.eval_fraction or data.eval_path)")
    return data.eval, cfg.format, cfg.max_length


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m trainer.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="repeat to compare models (e.g. base, trained)")
    ap.add_argument("--config", required=True, help="the SFT training config: its held-out split is evaluated")
    args = ap.parse_args(argv)
    rows, fmt, max_length = heldout_rows(args.config)
    for m in args.model:
        print(json.dumps(response_loss(m, rows, fmt, max_length)), flush=True)


if __name__ == "__main__":
    main()
