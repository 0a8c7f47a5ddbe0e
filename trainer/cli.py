"""``harness train {sft,dpo,orpo,rm} --config FILE``: the lead's harness/cli.py calls ``register(subparsers)``.

Also runnable alone: ``python -m trainer.cli sft --config configs/train/demo_sft_tiny.yaml``.
"""
from __future__ import annotations

import argparse
import sys

from trainer.config import METHODS

HELP = {
    "sft": "supervised fine-tuning on (system, instruction, output) rows",
    "dpo": "DPO on (system, instruction, chosen, rejected) pairs",
    "orpo": "ORPO on preference pairs (trl.experimental)",
    "rm": "personalised reward model on preference pairs",
}


def add_method_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="FILE", help="training config (YAML), see configs/train/")
    p.add_argument("--model", help="override: base model dir or Hub id")
    p.add_argument("--data", help="override: data.path (file, dir, Hub id or demo:mt_bench)")
    p.add_argument("--output-dir", help="override: where the checkpoint is written")
    p.add_argument("--max-steps", type=int, help="override: training.max_steps")
    p.add_argument("--threads", type=int, help="override: torch threads (default from the config, else 1)")
    p.add_argument("--skip-if-complete", action="store_true",
                   help="do nothing if output_dir already holds a complete checkpoint trained with this same "
                        "config and data (checked against its harness_card.json); otherwise train")


def add_train_args(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` command (with one subcommand per method) to an argparse subparsers object."""
    train = subparsers.add_parser("train", help="train SFT / DPO / ORPO / reward models (TRL)",
                                  description="Train a model on Multifaceted-Collection-format data.")
    methods = train.add_subparsers(dest="train_method", metavar="{" + ",".join(METHODS) + "}")
    methods.required = True
    for m in METHODS:
        add_method_args(methods.add_parser(m, help=HELP[m]))
    # harness/cli.py dispatches on ``fn``; ``func`` is the argparse convention other callers may use
    train.set_defaults(fn=run_train, func=run_train)
    return train


register = add_train_args


def run_train(args: argparse.Namespace) -> int:
    """Run the training command; one clear error line and exit status 2 on bad input."""
    from trainer.api import train
    from trainer.config import load_config

    overrides = {"model": args.model, "data.path": args.data, "output_dir": args.output_dir,
                 "training.max_steps": args.max_steps, "threads": args.threads}
    try:
        cfg = load_config(args.config, args.train_method, overrides)
        if getattr(args, "skip_if_complete", False):
            from trainer.output import up_to_date

            if up_to_date(cfg):
                print(f"[train] {cfg.output_dir}: complete and trained with this config and data; skipping",
                      flush=True)
                print(cfg.output_dir)
                return 0
        out = train(args.train_method, cfg)
    except (ValueError, ImportError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.cli")
    methods = parser.add_subparsers(dest="train_method", required=True)
    for m in METHODS:
        add_method_args(methods.add_parser(m, help=HELP[m]))
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
