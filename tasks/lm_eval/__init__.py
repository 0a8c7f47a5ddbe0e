"""lm-evaluation-harness tasks inside the harness: the bridge model, the task adapter, IFEval."""
