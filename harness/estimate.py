"""``harness run --dry-run``: the calls and cost a run would make, without calling anything."""
from __future__ import annotations

from harness.calls import CallSettings
from harness.config import RunConfig
from harness.data import data_dir as default_data_dir
from harness.pipeline import load_instances, make_judge
from harness.records import Completion
from harness.registry import TASKS


def estimate(cfg: RunConfig) -> dict:
    """Calls and cost a run would make, without calling anything (``--dry-run``).

    Prompt tokens are estimated as characters / 4; completions as their max_tokens
    (an upper bound). Judge calls assume every generation succeeds.
    """
    from harness.calls import _price

    settings = CallSettings.from_dict(cfg.calls)
    data = default_data_dir(cfg.data_dir)
    rows, total = [], 0.0
    for tcfg in cfg.tasks:
        task = TASKS.get(tcfg.name)(options=tcfg.options, data_dir=data)
        instances = load_instances(tcfg, data)
        spec = task.generation_spec()
        for m in cfg.models:
            n = sum(len(i.turns) if spec.chat else 1 for i in instances) * spec.n_samples
            chars = sum(sum(len(t) for t in i.turns) + len(i.system or "") for i in instances) * spec.n_samples
            p = _price(settings.prices, f"{m.backend}:{m.model}", m.model) or {}
            cost = (chars / 4 * p.get("prompt", 0) + n * spec.max_tokens * p.get("completion", 0)) / 1e6
            rows.append({"step": "generate", "task": tcfg.name, "model": m.name, "calls": n, "cost": cost})
            total += cost
        jcfg = cfg.judge_for(tcfg)
        judge = make_judge(tcfg, data) if jcfg is not None else None
        if judge is not None:
            n, chars = 0, 0
            for inst in instances:
                fake = Completion(task.name, inst.id, "x", ["x" * spec.max_tokens * 4] * len(inst.turns))
                for call in judge.calls(inst, fake):
                    n += 1
                    chars += sum(len(mm["content"]) for mm in call.messages)
            n, chars = n * len(cfg.models), chars * len(cfg.models)
            p = _price(settings.prices, f"{jcfg.backend}:{jcfg.model}", jcfg.model) or {}
            cost = (chars / 4 * p.get("prompt", 0) + n * 512 * p.get("completion", 0)) / 1e6
            rows.append({"step": "judge", "task": tcfg.name, "model": jcfg.name, "calls": n, "cost": cost})
            total += cost
    return {"rows": rows, "total_calls": sum(r["calls"] for r in rows), "total_cost": total}
