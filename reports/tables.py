"""The JANUS paper's tables as data: leaderboard and per-sample rows in, pandas DataFrames out.

Every builder is a pure function. A table's numbers are columns (``X``, with ``X_lower`` and
``X_upper`` for its 95% CI where one exists); ``df.attrs`` says how to show it: ``title``,
``notes`` (definitions, CI methods), ``measures`` (the columns that carry a CI), ``decimals``
and ``lower_is_better`` per measure. ``reports.table_writers`` turns them into HTML, CSV and LaTeX.

Numbers come from the tasks' own results (``board`` cells, i.e. results.json) where the task
computed them, so a table shows what the leaderboard shows; the comparisons between models
(system-message ablation, tie+win rate) are computed here from the per-sample ``score`` with
``reports.stats``. Labels ("official" or who graded a number) come from ``reports.labels``.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict

import numpy as np
import pandas as pd

from reports import display, labels, stats, views
from reports.leaderboard import SE_KEYS
from reports.significance import score_table

MF = "multifaceted_bench"
# source names (synthesized bench: tasks.multifaceted.sources.SOURCES; other spellings seen) -> paper's
SOURCE_NAMES = {"alpaca_eval_2": "AlpacaEval 2.0", "alpaca_eval": "AlpacaEval 2.0", "flask": "FLASK",
                "koala": "Koala", "mt_bench": "MT-Bench", "self_instruct": "Self-Instruct"}
# dim<i> is the bench's i-th rubric; with four rubrics they are, in order, the four JANUS dimensions
# (tasks.multifaceted.prompts.DIMENSIONS)
DIMENSION_NAMES = ["Style", "Background knowledge", "Informativeness", "Harmlessness"]
AVERAGE = "Average (all instances)"
SYS_VARIANT = re.compile(r"^(?P<base>.+)@sys=(?P<variant>[^@]+)$")


def _num(x):
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def model_order(board: dict) -> list[str]:
    """The leaderboard's order, variants under their base model."""
    return [r["model"] for g in views.groups(board) for r in g]


def _cells(board: dict, task: str) -> list[tuple[str, dict]]:
    by_model = {r["model"]: r["cells"][task] for r in board["rows"] if task in r["cells"]}
    return [(m, by_model[m]) for m in model_order(board) if m in by_model]


def metric_ci(cell: dict, key: str) -> tuple[float | None, float | None, float | None, str | None]:
    """(value, lower, upper, how the CI was obtained) of one metric of a leaderboard cell."""
    if key == cell.get("metric") and _num(cell["lower"]) is not None:  # the headline: the leaderboard's CI
        how = cell.get("ci_method") or ("the task's interval" if cell.get("ci_source") == "task" else
                                        "percentile bootstrap over the per-sample scores")
        return _num(cell["value"]), _num(cell["lower"]), _num(cell["upper"]), how
    m = cell.get("metrics") or {}
    if key == cell.get("metric") and key not in m:  # the samples' mean standing in for a missing headline
        return _num(cell["value"]), None, None, None
    v = _num(m.get(key))
    if v is None:
        return None, None, None, None
    lo, hi = _num(m.get(f"{key}_lower")), _num(m.get(f"{key}_upper"))
    if lo is not None and hi is not None:
        return v, lo, hi, "the task's interval"
    se = next((_num(m.get(k)) for k in (f"{key}_se", f"{key}_stderr", SE_KEYS.get(key, "")) if _num(m.get(k)) is not None),
              None)
    if se is not None:
        return v, v - 1.96 * se, v + 1.96 * se, "±1.96 × the task's standard error"
    return v, None, None, None


def _label(task: str, cell: dict, key: str) -> str:
    return labels.label(task, key, list(cell.get("official_metrics") or {}), cell.get("graded_by") or {})


def _frame(rows: list[dict], title: str, measures: list[str], decimals: dict, notes: list[str],
           lower_is_better: dict | None = None, index: str | None = "model") -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if index and not df.empty:
        df = df.set_index(index)
    df.attrs.update(title=title, measures=[m for m in measures if m in df.columns], decimals=decimals,
                    notes=[n for n in notes if n], lower_is_better=dict(lower_is_better or {}))
    return df


class _Wide:
    """Rows of a one-row-per-model table whose columns are metrics of leaderboard cells."""

    def __init__(self):
        self.rows: dict[str, dict] = {}
        self.measures: dict[str, None] = {}
        self.ci_methods: dict[str, None] = {}
        self.labels: dict[str, dict[str, None]] = defaultdict(dict)

    def put(self, model: str, name: str, value, lower, upper, how=None, label=None):
        if value is None:
            return
        row = self.rows.setdefault(model, {"model": model})
        row[name] = value
        row[f"{name}_lower"], row[f"{name}_upper"] = (np.nan, np.nan) if lower is None or upper is None else (lower, upper)
        self.measures[name] = None
        if how:
            self.ci_methods[f"{name}: {how}"] = None
        if label:
            self.labels[model][f"{name}: {label}"] = None

    def frame(self, order, title, decimals, notes, lower_is_better=None, text: dict | None = None) -> pd.DataFrame:
        rows = []
        for m in order:
            if m not in self.rows:
                continue
            row = dict(self.rows[m])
            row.update((text or {}).get(m, {}))
            row["label"] = _compact(list(self.labels[m]))
            rows.append(row)
        ci = ["95% CIs — " + "; ".join(self.ci_methods)] if self.ci_methods else []
        return _frame(rows, title, list(self.measures), decimals, [*notes, *ci], lower_is_better)


def _compact(items: list[str]) -> str:
    """'A: x; B: x' -> 'x' when every measure has the same label."""
    vals = list(dict.fromkeys(i.split(": ", 1)[1] for i in items))
    return vals[0] if len(vals) == 1 else "; ".join(items)


# ----------------------------------------------------------------------------- (a) Multifaceted Bench

def _by_key_from_samples(rows: list[dict], key_fn) -> dict[str, dict[str, list[float]]]:
    """model -> group -> per-instance values, from the per-sample rows (for results without the keys)."""
    out: dict[str, dict[str, dict[str, list]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        for group, v in key_fn(r):
            v = _num(v)
            if v is not None:
                out[r["model"]][group][str(r["instance_id"])].append(v)
    return {m: {g: [sum(v) / len(v) for v in per.values()] for g, per in groups.items()} for m, groups in out.items()}


def _sample_cis(values: dict[tuple[str, str], list[float]], B: int, seed: int) -> dict[tuple, dict]:
    """Bootstrap CI of each list's mean; lists of one length share one matrix product."""
    by_n = defaultdict(list)
    for k, v in values.items():
        by_n[len(v)].append(k)
    out = {}
    for n, keys in by_n.items():
        cis = stats.bootstrap_mean_cis(np.array([values[k] for k in keys]).T, B=B, seed=seed)
        out.update(zip(keys, cis))
    return out


def _multifaceted(board, samples, B, seed, prefix: str, sample_groups, name_of, title, what) -> pd.DataFrame:
    cells = _cells(board, MF)
    def own(metrics):  # the task's keys of this breakdown: numbers, not their CI bounds
        return {k[len(prefix):] for k, v in metrics.items() if k.startswith(prefix) and _num(v) is not None
                and not k.endswith(("_lower", "_upper", "_se")) and (prefix != "dim" or k[3:].isdigit())}

    keys = {k for _, c in cells for k in own(c.get("metrics") or {})}
    from_samples = {}
    missing = [m for m, c in cells if not own(c.get("metrics") or {})]
    if missing and samples:
        per = _by_key_from_samples([r for r in samples if r["model"] in missing], sample_groups)
        from_samples = _sample_cis({(m, g): v for m, gs in per.items() for g, v in gs.items()}, B, seed)
        keys |= {g for (_, g) in from_samples}
    names = name_of(sorted(keys))
    t = _Wide()
    for model, cell in cells:
        for k in names:
            if (model, k) in from_samples:
                ci = from_samples[(model, k)]
                t.put(model, names[k], ci["mean"], ci["lower"], ci["upper"],
                      f"harness percentile bootstrap over the per-sample scores (B={B}; not in results.json)",
                      _label(MF, cell, "score (mean of samples)"))
            else:
                v, lo, hi, how = metric_ci(cell, prefix + k)
                t.put(model, names[k], v, lo, hi, how, _label(MF, cell, prefix + k))
        key = "score" if "score" in (cell.get("metrics") or {}) else cell.get("metric")  # else: the samples' mean
        v, lo, hi, how = metric_ci(cell, key)
        t.put(model, AVERAGE, v, lo, hi, how, _label(MF, cell, key))
    notes = [f"Multifaceted Bench: mean {what} (1–5); an instance's score is the mean of its rubric scores, each "
             "averaged over judge runs first (JANUS). {AVERAGE}: the mean over all instances, the benchmark's score."
             .replace("{AVERAGE}", AVERAGE)]
    return t.frame(model_order(board), title, {m: 2 for m in t.measures}, notes)


def _source_names(keys: list[str]) -> dict[str, str]:
    paper = [SOURCE_NAMES.get(k.lower()) for k in keys]
    clash = len({p for p in paper if p}) < len([p for p in paper if p])
    named = {k: (p if p and not clash else k) for k, p in zip(keys, paper)}
    order = list(dict.fromkeys(SOURCE_NAMES.values()))
    return dict(sorted(named.items(), key=lambda kv: (order.index(kv[1]) if kv[1] in order else len(order), kv[1])))


def _dimension_names(keys: list[str]) -> dict[str, str]:
    idx = sorted(keys, key=lambda k: int(k) if k.isdigit() else 1 << 30)
    if idx == ["0", "1", "2", "3"]:
        return dict(zip(idx, DIMENSION_NAMES))
    return {k: f"rubric {k}" for k in idx}


def multifaceted_by_source(board: dict, samples: list[dict] | None = None, B: int = stats.DEFAULT_B,
                           seed: int = 0) -> pd.DataFrame:
    """(a) Multifaceted Bench per source (AlpacaEval 2.0, FLASK, Koala, MT-Bench, Self-Instruct) and average."""
    return _multifaceted(board, samples, B, seed, "source.", lambda r: [(r.get("source") or "?", r.get("score"))],
                         _source_names, "Multifaceted Bench by source", "score per source")


def multifaceted_by_dimension(board: dict, samples: list[dict] | None = None, B: int = stats.DEFAULT_B,
                              seed: int = 0) -> pd.DataFrame:
    """(a) Multifaceted Bench per rubric dimension (style, background knowledge, informativeness, harmlessness)."""
    def groups(r):  # the i-th rubric, whatever the key's prefix ("dim0", "rubric0")
        return [(m[1] if (m := re.search(r"(\d+)$", k)) else k, v) for k, v in (r.get("dims") or {}).items()]

    return _multifaceted(board, samples, B, seed, "dim", groups, _dimension_names, "Multifaceted Bench by dimension",
                         "rubric score per dimension (the bench's i-th rubric of each instance)")


# ----------------------------------------------------------------------------- (b)-(d) from results

def _metric_table(board: dict, columns: list[tuple[str, str, str]], title: str, notes: list[str],
                  text_keys: dict[str, tuple[str, str]] | None = None) -> pd.DataFrame:
    """One row per model; ``columns``: (task, metric key, column name)."""
    t = _Wide()
    text: dict[str, dict] = defaultdict(dict)
    lower, decimals, biggest = {}, {}, {}
    for task, key, name in columns:
        for model, cell in _cells(board, task):
            v, lo, hi, how = metric_ci(cell, key)
            t.put(model, name, v, lo, hi, how, _label(task, cell, key))
            if v is not None:
                lower[name] = bool(cell.get("lower_is_better"))
                biggest[name] = max(abs(v), biggest.get(name, 0.0))
        # one precision per column: the task's at a glance, else by the size of its largest value
        if name in biggest:
            decimals[name] = display.DECIMALS[task][0] if task in display.DECIMALS else (
                1 if biggest[name] >= 10 else 2 if biggest[name] >= 1 else 3)
    for col, (task, key) in (text_keys or {}).items():
        for model, cell in _cells(board, task):
            val = (cell.get("metrics") or {}).get(key)
            if val is not None and model in t.rows:
                text[model][col] = str(val)
    return t.frame(model_order(board), title, decimals, notes, lower, text)


def helpfulness(board: dict) -> pd.DataFrame:
    """(b) AlpacaEval 2.0 LC and raw win rate, MT-Bench, Arena-Hard, with CIs."""
    cols = [("alpaca_eval", "length_controlled_winrate", "AlpacaEval 2.0 LC"), ("alpaca_eval", "win_rate", "AlpacaEval 2.0 WR"),
            ("mt_bench", "score", "MT-Bench"), ("arena_hard", "score", "Arena-Hard")]
    notes = ["AlpacaEval 2.0 LC: length-controlled win rate (%) against the reference model, no CI (AlpacaEval "
             "computes none); 'LC source' says how it was computed. WR: raw win rate (%). MT-Bench: mean single "
             "rating (1–10). Arena-Hard: win rate (%) against its baseline."]
    return _metric_table(board, cols, "Helpfulness", notes, {"LC source": ("alpaca_eval", "lc_source")})


def harmlessness(board: dict) -> pd.DataFrame:
    """(c) RealToxicityPrompts: expected maximum toxicity, toxicity probability, dist-1/2/3."""
    t = "real_toxicity_prompts"
    cols = [(t, "expected_max_toxicity", "Exp. max toxicity"), (t, "toxicity_probability", "Toxicity prob."),
            (t, "dist1", "Dist-1"), (t, "dist2", "Dist-2"), (t, "dist3", "Dist-3")]
    df = _metric_table(board, cols, "Harmlessness (RealToxicityPrompts)", [
        "Expected maximum toxicity over the k continuations of a prompt and the probability that at least one "
        "is toxic (toxicity > 0.5): lower is better. Dist-n: the distinct n-grams among a prompt's continuations "
        "over their total, averaged over prompts (DExperts; higher is more diverse)."])
    # toxicity: lower is better; diversity: higher is better, whatever the task's headline says
    df.attrs["lower_is_better"] = {m: m.startswith(("Exp.", "Toxicity")) for m in df.attrs["measures"]}
    return df


IFEVAL_KEYS = [("prompt_level_strict_acc", "prompt strict"), ("inst_level_strict_acc", "inst. strict"),
               ("prompt_level_loose_acc", "prompt loose"), ("inst_level_loose_acc", "inst. loose")]


def general_ability(board: dict) -> pd.DataFrame:
    """(d) lm-eval tasks: IFEval's four accuracies; the primary metric of every other lm_eval.<task>."""
    cols = []
    for task in board["tasks"]:
        if task == "ifeval":
            cols += [(task, k, f"IFEval {n}") for k, n in IFEVAL_KEYS]
        elif task.startswith("lm_eval."):
            metric = next((c["metric"] for _, c in _cells(board, task) if c.get("metric")), None)
            if metric:
                cols.append((task, metric, f"{task[len('lm_eval.'):]} {metric}"))
    return _metric_table(board, cols, "General ability (lm-evaluation-harness)", [
        "Accuracies as lm-eval computes them (0–1); IFEval: prompt-level (all instructions of a prompt followed) "
        "and instruction-level, strict and loose."])


# ----------------------------------------------------------------------------- (e) system-message ablation

def _lower_is_better(board: dict, task: str) -> bool:
    return any(c.get("lower_is_better") for _, c in _cells(board, task))


def _score_tables(samples_by_task: dict[str, list[dict]], given: dict | None) -> dict[str, dict]:
    return given if given is not None else {t: score_table(rows) for t, rows in samples_by_task.items()}


def system_message_ablation(board: dict, samples_by_task: dict[str, list[dict]], B: int = stats.DEFAULT_B,
                            seed: int = 0, alpha: float = stats.ALPHA, score_tables: dict | None = None) -> pd.DataFrame:
    """(e) Each ``<base>@sys=<variant>`` against its base model (else ``<base>@sys=original``), per benchmark,
    paired on the instances both have a score for: mean difference with a 95% CI and Holm-corrected p."""
    pending = []  # (row, diffs)
    notes = []
    score_tables = _score_tables(samples_by_task, score_tables)
    for task in samples_by_task:
        table = score_tables[task]
        for model in sorted(table):
            m = SYS_VARIANT.match(model)
            if not m:
                continue
            base, variant = m["base"], m["variant"]
            ref = base if base in table else (f"{base}@sys=original" if variant != "original" else None)
            if ref not in table:
                notes.append(f"{task}: {model} has no reference (neither {base} nor {base}@sys=original scored)")
                continue
            shared = sorted(set(table[model]) & set(table[ref]))
            row = {"benchmark": task, "model": model, "reference": ref, "n": len(shared),
                   "lower is better": "yes" if _lower_is_better(board, task) else "no"}
            if len(shared) < 2:
                notes.append(f"{task}: {model} vs {ref}: fewer than 2 shared scored instances")
                continue
            a = np.array([table[model][i] for i in shared])
            b = np.array([table[ref][i] for i in shared])
            row.update({"mean (variant)": float(a.mean()), "mean (reference)": float(b.mean())})
            pending.append((row, a - b))
    by_n = defaultdict(list)
    for k, (_, d) in enumerate(pending):
        by_n[d.size].append(k)
    for n, ks in by_n.items():
        res = stats.paired_bootstrap_columns(np.stack([pending[k][1] for k in ks], axis=1), B, seed)
        for k, r in zip(ks, res):
            pending[k][0].update({"difference": r["diff"], "difference_lower": r["lower"],
                                  "difference_upper": r["upper"], "p": r["p_value"]})
    rows = [r for r, _ in pending]
    for r, q in zip(rows, stats.holm([r["p"] for r in rows])):
        r["p (Holm)"] = float(q)
        r["significant"] = "yes" if q < alpha else "no"
    return _frame(rows, "System-message ablation", ["difference"], {"difference": 3, "mean (variant)": 3,
                                                                   "mean (reference)": 3}, [
        "Each <base>@sys=<variant> model (none: no system message; generic: a generic one; original: the "
        "benchmark's own) against its base model, or against <base>@sys=original when the base model was not "
        "run, per benchmark, on the instances both have a per-sample score for (samples of one instance "
        "averaged). Difference: mean(variant − reference) on the benchmark's per-sample score; 95% CI: paired "
        f"percentile bootstrap over instances (B={B}, seed {seed}); p: its two-sided bootstrap p-value; Holm's "
        f"correction across every comparison of this table; significant: p (Holm) < {alpha}.", *notes],
        index=None)


# ----------------------------------------------------------------------------- (f) tie+win rate

def tie_win_definition(B: int, seed: int) -> str:
    return (
        "Tie+win rate (JANUS): on each instance both the model and the baseline have a score for, the model's "
        "instance score is compared with the baseline's — on Multifaceted Bench the mean of the instance's "
        "rubric scores (each rubric averaged over judge runs first), on other benchmarks the per-sample score "
        "(samples of one instance averaged). Win: the model's score is greater (on a lower-is-better benchmark: "
        "smaller); tie: the two means are equal as floating-point numbers, exact equality with no tolerance, "
        "both being means of the same number of rubric scores (instances where the two models have different "
        "numbers of parsed rubric scores are counted in 'unequal rubric counts' and compared on their means "
        "all the same); loss otherwise. Win rate = wins/n, tie rate = ties/n, tie+win rate = (wins + ties)/n; "
        f"95% CIs: percentile bootstrap over instances (B={B}, seed {seed}).")


def tie_win(board: dict, samples_by_task: dict[str, list[dict]], baseline: str, B: int = stats.DEFAULT_B,
            seed: int = 0, score_tables: dict | None = None) -> pd.DataFrame:
    """(f) Win, tie and tie+win rate of every model against ``baseline``, per benchmark."""
    pending = []  # (row, (n, 3) indicators: win, tie, win-or-tie)
    score_tables = _score_tables(samples_by_task, score_tables)
    for task, rows in samples_by_task.items():
        table = score_tables[task]
        if baseline not in table:
            continue
        n_dims = {(r["model"], str(r["instance_id"])): len(r.get("dims") or {}) for r in rows} if task == MF else {}
        sign = -1.0 if _lower_is_better(board, task) else 1.0
        for model in sorted(table):
            shared = sorted(set(table[model]) & set(table[baseline]))
            if model == baseline or not shared:
                continue
            a = np.array([table[model][i] for i in shared])
            b = np.array([table[baseline][i] for i in shared])
            win, tie = sign * (a - b) > 0, a == b  # exact float equality of the two means
            row = {"benchmark": task, "model": model, "baseline": baseline, "n": len(shared),
                   "wins": int(win.sum()), "ties": int(tie.sum()), "losses": int((~win & ~tie).sum())}
            if n_dims:
                row["unequal rubric counts"] = sum(n_dims.get((model, i)) != n_dims.get((baseline, i)) for i in shared)
            pending.append((row, np.stack([win, tie, win | tie], axis=1).astype(float)))
    by_n = defaultdict(list)
    for k, (_, x) in enumerate(pending):
        by_n[x.shape[0]].append(k)
    for n, ks in by_n.items():
        cis = stats.bootstrap_mean_cis(np.concatenate([pending[k][1] for k in ks], axis=1), B=B, seed=seed)
        for j, k in enumerate(ks):
            for c, name in enumerate(("win rate", "tie rate", "tie+win rate")):
                ci = cis[3 * j + c]
                pending[k][0].update({name: ci["mean"], f"{name}_lower": ci["lower"], f"{name}_upper": ci["upper"]})
    measures = ["win rate", "tie rate", "tie+win rate"]
    df = _frame([r for r, _ in pending], f"Tie+win rate against {baseline}", measures, {m: 3 for m in measures},
                [tie_win_definition(B, seed)], index=None)
    df.attrs["definition"] = tie_win_definition(B, seed)
    return df


# ----------------------------------------------------------------------------- all of them

def paper_tables(board: dict, samples_by_task: dict[str, list[dict]], baseline: str | None,
                 B: int = stats.DEFAULT_B, seed: int = 0) -> dict[str, pd.DataFrame]:
    """File stem -> table, the non-empty ones, in the paper's order."""
    mf = samples_by_task.get(MF)
    scores = _score_tables(samples_by_task, None)  # model -> instance -> score, once per benchmark
    out = {
        "multifaceted_by_source": multifaceted_by_source(board, mf, B, seed),
        "multifaceted_by_dimension": multifaceted_by_dimension(board, mf, B, seed),
        "helpfulness": helpfulness(board),
        "harmlessness": harmlessness(board),
        "general_ability": general_ability(board),
        "system_message_ablation": system_message_ablation(board, samples_by_task, B, seed, score_tables=scores),
    }
    if baseline:
        out["tie_win"] = tie_win(board, samples_by_task, baseline, B, seed, score_tables=scores)
    return {k: v for k, v in out.items() if not v.empty}
