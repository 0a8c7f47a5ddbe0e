"""SFT, DPO, ORPO and personalised reward models on Multifaceted-Collection-format data (TRL 1.16).

``train(method, config)`` is the Python entry point; ``harness train`` the CLI (see trainer/README.md).
Importing this package is light: torch, transformers and TRL load when a run starts.
"""
from trainer.api import train

__all__ = ["train"]
