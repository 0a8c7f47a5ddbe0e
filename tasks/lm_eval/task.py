"""Any lm-evaluation-harness task as a harness benchmark (``tasks: [{name: lm_eval.<task>}]``).

lm-eval builds the prompts and requests, filters the answers and scores each document with
its own ``process_results``; the requests go through the harness call layer
(``tasks.lm_eval.model.HarnessLM``). Each document is one harness ``Instance``; a model's
answers to it are one ``Completion`` and its per-document metric values are ``Score``
records (criterion ``<metric>,<filter>``). Aggregation calls lm-eval's own aggregation code
on the stored values, so ``results.json`` holds what ``lm_eval`` prints for the same model,
task and settings, and the per-document values pair across models for the report.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import logging
import random
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from harness.records import Completion, Instance, Score, stable_hash
from tasks.base import Task

log = logging.getLogger("harness.lm_eval")

SCORER = "lm_eval"


@dataclass
class LMEvalOptions:
    """``tasks[].options`` of an lm-eval task; unknown keys are refused."""

    include_path: str | None = None  # a folder of lm-eval YAML tasks
    num_fewshot: int | None = None
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool | None = None  # None: as lm-eval's CLI, on with the chat template
    # None: no system message; a string: that message for every document (lm-eval's
    # system_instruction); a mapping {file, field, seed}: one message per document drawn from a
    # JSONL file of system messages (e.g. a Multifaceted bench or collection export)
    system: Any = None
    gen_kwargs: dict = field(default_factory=dict)  # e.g. {max_gen_toks: 256}
    overrides: dict = field(default_factory=dict)  # lm-eval YAML keys, e.g. dataset_path/dataset_kwargs
    fewshot_seed: int = 1234  # lm-eval's default
    bootstrap_iters: int = 100000  # lm-eval's default (stderr of non-mean aggregations)
    generation: dict = field(default_factory=dict)  # unused: lm-eval sets generation per task

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "LMEvalOptions":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {unknown}; known: {sorted(names)}")
        opts = cls(**d)
        if opts.num_fewshot is not None and (not isinstance(opts.num_fewshot, int) or opts.num_fewshot < 0):
            raise ValueError(f"{where}.num_fewshot: expected a non-negative integer, got {opts.num_fewshot!r}")
        for name in ("gen_kwargs", "overrides"):
            if not isinstance(getattr(opts, name), dict):
                raise ValueError(f"{where}.{name}: expected a mapping")
        if opts.system is not None and not isinstance(opts.system, (str, dict)):
            raise ValueError(f"{where}.system: expected null, a string or a mapping {{file, field, seed}}")
        if isinstance(opts.system, dict):
            extra = sorted(set(opts.system) - {"file", "field", "seed"})
            if extra or "file" not in opts.system:
                raise ValueError(f"{where}.system: a mapping needs 'file' (and optional 'field', 'seed'); "
                                 f"unknown {extra}")
        return opts


class LMEvalTask(Task):
    """One lm-eval task. ``lm_eval_task`` names it in lm-eval's registry."""

    name = "lm_eval"
    lm_eval_task = ""
    default_judge = None
    #: the harness drives lm-eval's requests itself (see ``harness.pipeline.Run.generate``)
    drives_requests = True
    primary_metric: str | None = None

    def __init__(self, options: dict | None = None, data_dir=None):
        super().__init__(options, data_dir)
        self.opts = LMEvalOptions.from_dict(self.options, f"tasks[{self.name}].options")
        self._lm_task = None

    # -- lm-eval's task object
    def default_overrides(self) -> dict:
        """YAML keys a preset sets (e.g. a local copy of the dataset)."""
        return {}

    #: a folder of lm-eval's own tasks that holds this task (a preset): indexed alone
    builtin_folder: str | None = None

    def task_manager(self):
        """lm-eval's task index. Indexing all of lm-eval's ~14,000 task files takes seconds, so a
        task found in its include path (or a preset's own folder) is indexed from there alone."""
        include = self.opts.include_path
        if include and not Path(include).is_dir():
            raise ValueError(f"tasks[{self.name}].options.include_path: {include} is not a directory")
        if include is None and self.builtin_folder:
            import lm_eval

            include = str(Path(lm_eval.__file__).parent / "tasks" / self.builtin_folder)
        if include:
            tm = _task_manager(str(Path(include).resolve()), False)
            if self.lm_eval_task in tm.all_tasks:
                return tm
        return _task_manager(str(Path(include).resolve()) if include else None, True)

    def lm_task(self):
        """The lm-eval Task object of this harness task (built once; see ``build_lm_task``)."""
        if self._lm_task is None:
            self._lm_task = self.build_lm_task()
        return self._lm_task

    def build_lm_task(self):
        """A fresh lm-eval Task: its YAML config with the overrides applied (lm-eval's evaluation
        changes a task's config, so each evaluation gets its own)."""
        tm = self.task_manager()
        if self.lm_eval_task not in tm.all_tasks:
            close = difflib.get_close_matches(self.lm_eval_task, tm.all_tasks, n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ValueError(f"tasks[{self.name}].name: unknown lm-eval task '{self.lm_eval_task}'.{hint}")
        entry = tm.task_index[self.lm_eval_task]
        overrides = {**self.default_overrides(), **self.opts.overrides}
        spec: Any = self.lm_eval_task
        if overrides:
            if entry.yaml_path is None:
                raise ValueError(f"tasks[{self.name}].options.overrides: lm-eval task "
                                 f"'{self.lm_eval_task}' has no YAML config to override")
            from lm_eval.tasks._yaml_loader import load_yaml

            spec = {**load_yaml(entry.yaml_path, resolve_func=True), **overrides}
        try:
            loaded = tm.load([spec])
        except Exception as e:  # noqa: BLE001 - the dataset load is where offline use fails
            raise ValueError(self._dataset_error(entry, e)) from e
        tasks = loaded["tasks"]
        if len(tasks) != 1:
            raise ValueError(f"tasks[{self.name}].name: '{self.lm_eval_task}' is a group of {len(tasks)} "
                             "lm-eval tasks; list its tasks one by one")
        task = next(iter(tasks.values()))
        if self.opts.num_fewshot is not None:
            task.set_config(key="num_fewshot", value=self.opts.num_fewshot)
        task.set_fewshot_seed(seed=self.opts.fewshot_seed)
        return task

    def _dataset_error(self, entry, err: Exception) -> str:
        cfg = {}
        if entry.yaml_path:
            from lm_eval.tasks._yaml_loader import load_yaml

            cfg = load_yaml(entry.yaml_path, resolve_func=False)
        path = self.opts.overrides.get("dataset_path") or cfg.get("dataset_path")
        return (f"tasks[{self.name}]: lm-eval task '{self.lm_eval_task}' could not load its dataset "
                f"'{path}' ({type(err).__name__}: {err}). Offline, point it at a local file with "
                "options.overrides: {dataset_path: json, dataset_kwargs: {data_files: {<split>: /path/file.jsonl}}, "
                "test_split: <split>}")

    def settings(self) -> dict:
        """Everything besides the model that decides the requests (part of the generation hash)."""
        t = self.lm_task()
        return {"task": self.lm_eval_task, "config": _jsonable(t.dump_config()),
                "lm_eval": importlib_metadata.version("lm-eval"), "options": _jsonable(self.options),
                "fewshot_as_multiturn": self._multiturn()}

    def _multiturn(self) -> bool:
        m = self.opts.fewshot_as_multiturn
        return self.opts.apply_chat_template if m is None else bool(m)

    # -- build
    def load(self) -> list[Instance]:
        t = self.lm_task()
        config_hash = stable_hash(self.settings())
        systems = self.system_messages()
        out = []
        for doc_id, doc in enumerate(t.eval_docs):
            text = t.doc_to_text(doc)
            out.append(Instance(task=self.name, id=str(doc_id), turns=[text if isinstance(text, str) else str(text)],
                                system=systems[doc_id] if systems else None, source=self.lm_eval_task,
                                metadata={"doc": _jsonable(doc), "lm_eval_config": config_hash}))
        return out

    def system_messages(self) -> list[str] | None:
        """Per-document system messages, or None: one message for all goes through lm-eval."""
        spec = self.opts.system
        if spec is None:
            return None
        n = len(self.lm_task().eval_docs)
        if isinstance(spec, str):
            return [spec] * n
        return draw_system_messages(Path(spec["file"]), spec.get("field", "system"), int(spec.get("seed", 0)), n,
                                    f"tasks[{self.name}].options.system")

    # -- generate (driven by lm-eval)
    def model_generation(self, generation: dict, where: str) -> dict:
        """A model's ``generation:`` overrides as lm-eval gen_kwargs (the task sets the rest)."""
        known = {"max_tokens": "max_gen_toks", "temperature": "temperature", "top_p": "top_p"}
        unknown = sorted(set(generation) - set(known))
        if unknown:
            raise ValueError(f"{where}: {unknown} cannot be applied to lm-eval task {self.name} "
                             f"(it can take {sorted(known)}; its own settings come from the task)")
        out = {known[k]: v for k, v in generation.items()}
        if out.get("temperature"):
            out["do_sample"] = True
        return out

    def evaluate_model(self, submit, backend, model: str, instances: list[Instance], gen_hash: str,
                       seed: int | None, generation: dict | None = None, system: dict | None = None) -> list:
        """Run lm-eval over ``instances`` for one model; returns Completion and Score records.

        ``system``: a model's system-message variant ({mode: none|generic|text, text}), which
        replaces the task's own ``system`` option for this model."""
        import lm_eval

        from tasks.lm_eval.model import HarnessLM

        lm = HarnessLM(submit, **bridge_settings(backend), seed=seed, name=model)
        t = self.build_lm_task()
        by_doc = {int(i.id): i for i in instances}
        instruction = self.opts.system if isinstance(self.opts.system, str) else None
        if system is not None:
            instruction = system["text"]  # None for the no-system-message variant
        elif isinstance(self.opts.system, dict):
            _route_system_messages(t, {json.dumps(i.metadata["doc"], sort_keys=True): i.system
                                       for i in instances})
        res = lm_eval.simple_evaluate(
            model=lm, tasks=[t], samples={t.task_name: sorted(by_doc)}, log_samples=True,
            task_manager=self.task_manager(),  # else lm-eval indexes all of its task files again
            system_instruction=instruction,
            apply_chat_template=self.opts.apply_chat_template, fewshot_as_multiturn=self._multiturn(),
            gen_kwargs={**self.opts.gen_kwargs, **(generation or {})} or None, bootstrap_iters=0,
            fewshot_random_seed=self.opts.fewshot_seed)
        return self._records(res["samples"][t.task_name], by_doc, model, gen_hash, backend)

    def _records(self, samples: list[dict], by_doc: dict[int, Instance], model: str, gen_hash: str,
                 backend) -> list:
        version = str(self.lm_task().VERSION)
        comps: dict[str, Completion] = {}
        scores: list[Score] = []
        for s in samples:  # one per document and filter
            inst = by_doc[int(s["doc_id"])]
            comp = Completion(task=self.name, instance_id=inst.id, model=model, instance_key=inst.key,
                              texts=[_as_text(r) for r in s["filtered_resps"]], backend=backend.name,
                              gen_config_hash=gen_hash, sample_index=0,
                              metadata={"filter": s["filter"], "resps": _jsonable(s["resps"]),
                                        "arguments": _jsonable(s["arguments"]), "target": _jsonable(s["target"])})
            comps.setdefault(comp.key, comp)
            for metric in s["metrics"]:
                if metric not in s:
                    continue
                value = _jsonable(s[metric])
                scores.append(Score(task=self.name, instance_id=inst.id, model=model, scorer=SCORER,
                                    scorer_version=version, value=_scalar(value), completion_key=comp.key,
                                    criterion=f"{metric},{s['filter']}", details={"value": value}))
        return list(comps.values()) + scores

    # -- aggregate
    def aggregate(self, instances, completions, judgments, scores) -> dict[str, dict]:
        from lm_eval.evaluator_utils import _compute_task_aggregations

        t = self.lm_task()
        order = {i.id: n for n, i in enumerate(sorted(instances, key=lambda i: int(i.id)))}
        out: dict[str, dict] = {}
        models = sorted({s.model for s in scores})
        for m in models:
            rows = sorted((s for s in scores if s.model == m and s.scorer == SCORER and s.instance_id in order),
                          key=lambda s: order[s.instance_id])
            raw: dict[tuple[str, str], list] = {}
            for s in rows:
                metric, _, filt = s.criterion.partition(",")
                raw.setdefault((metric, filt), []).append(s.details["value"])
            agg, n = _compute_task_aggregations(t, raw, bootstrap_iters=self.opts.bootstrap_iters)
            metrics: dict[str, Any] = {"n": n}
            labels = []
            for key, value in agg.items():
                name, _, filt = key.partition(",")
                label = name if filt in ("none", "") else f"{name},{filt}"
                metrics[label] = value if value != "N/A" else None
                if "_stderr" not in name:
                    labels.append(label)
            metrics.update(self.breakdown(rows, {i.id: i for i in instances}))
            metrics["primary_metric"] = self.primary_metric or (labels[0] if labels else None)
            # lm-eval's own metric code on lm-eval's own scoring: no judge is involved
            metrics["official_metrics"] = labels
            out[m] = metrics
        return out

    def breakdown(self, rows: list[Score], instances: dict[str, Instance]) -> dict:
        """Extra per-task detail (IFEval: accuracy per instruction type)."""
        return {}

    def per_sample(self, instances, completions, judgments, scores) -> list[dict]:
        by_comp: dict[str, list[Score]] = {}
        for s in scores:
            by_comp.setdefault(s.completion_key, []).append(s)
        primary = self.primary_metric
        rows = []
        for c in completions:
            vals = {s.criterion: s.details.get("value") for s in by_comp.get(c.key, [])}
            head = next((v for k, v in vals.items() if primary and k.split(",")[0] == primary), None)
            if head is None and vals:
                head = next(iter(vals.values()))
            rows.append({"task": self.name, "instance_id": c.instance_id, "model": c.model,
                         "sample_index": c.sample_index, "response": c.texts, "filter": c.metadata.get("filter"),
                         "metrics": vals, "score": _scalar(head)})
        return rows


@functools.lru_cache(maxsize=8)
def _task_manager(include_path: str | None, include_defaults: bool):
    # once per process and include path
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=include_defaults)


def bridge_settings(backend) -> dict:
    """How the bridge talks to a backend: its tokenizer and limits, or chat messages."""
    tok = getattr(backend, "tokenizer", None) if backend.name == "hf" else None
    cfg = getattr(backend, "config", None) if backend.name == "hf" else None
    if tok is None and backend.options.get("tokenizer"):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(backend.options["tokenizer"])
    return {"tokenizer": tok, "model_config": cfg, "max_length": backend.options.get("max_length"),
            "chat_messages": tok is None,
            "supports_loglikelihood": bool(getattr(backend, "supports_loglikelihood", False)) and tok is not None}


def draw_system_messages(path: Path, field_name: str, seed: int, n: int, where: str) -> list[str]:
    """``n`` system messages drawn (with a seeded shuffle, cycling) from a JSONL file's field."""
    if not path.is_file():
        raise ValueError(f"{where}.file: {path} does not exist")
    pool = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: not JSON ({e})") from e
        value = row.get(field_name) if isinstance(row, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{path}:{lineno}: field '{field_name}' is missing or empty")
        pool.append(value)
    if not pool:
        raise ValueError(f"{where}.file: {path} holds no system messages")
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    return [pool[order[i % len(pool)]] for i in range(n)]


def _route_system_messages(task, by_doc: dict[str, str | None]) -> None:
    # lm-eval takes one system_instruction per run; per-document messages are given to the
    # task's prompt builder for each document (same code path as system_instruction)
    build = task.fewshot_context

    def fewshot_context(doc, num_fewshot, system_instruction=None, **kw):
        own = by_doc.get(json.dumps(_jsonable(doc), sort_keys=True), system_instruction)
        return build(doc, num_fewshot, system_instruction=own, **kw)

    task.fewshot_context = fewshot_context


def _jsonable(x):
    return json.loads(json.dumps(x, default=str))


def _as_text(r) -> str:
    return r if isinstance(r, str) else json.dumps(_jsonable(r))


def _scalar(v):
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, list) and v and all(isinstance(x, (bool, int, float)) for x in v):
        return float(sum(v)) / len(v)
    return None


def lm_eval_task_class(task_name: str) -> type[LMEvalTask]:
    """The harness task class for ``lm_eval.<task_name>`` (the registry's ``lm_eval.`` family)."""
    return type(f"LMEval_{task_name}", (LMEvalTask,), {"name": f"lm_eval.{task_name}", "lm_eval_task": task_name})
