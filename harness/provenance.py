"""Who graded a result, recorded in results.json so a report can tell the official judge's outputs
from another judge's (``reports.labels``): the judge kind, the judge model and how it was reached,
the scoring method, the scorer.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from harness.config import JudgeConfig
from harness.records import Judgment, Score

OPENAI_HOST = "api.openai.com"


def judge_api(jcfg: JudgeConfig) -> str:
    """How the judge model was reached: 'openai' (the OpenAI API itself), 'harness-serve' (a local
    model the run served), 'server:<host>' (another OpenAI-compatible server) or the backend's name
    (local weights). A model served under an official model's name is still not that model."""
    host = urlsplit(jcfg.base_url).hostname if jcfg.base_url else None
    if jcfg.serve:
        return "harness-serve"
    if jcfg.backend == "openai":
        return "openai" if host in (None, OPENAI_HOST) else f"server:{host}"
    return jcfg.backend


def graded_by(jcfg: JudgeConfig | None, judgments: list[Judgment], scores: list[Score]) -> dict:
    """{judge, judge_model, judge_method, judge_api} from one model's judgments and {scorer} from its
    scores; the judge model and API come from the config only when its judge made these records."""
    out: dict = {}
    if judgments:
        names = sorted({j.judge_model for j in judgments})
        out["judge"] = ", ".join(sorted({j.judge for j in judgments}))
        out["judge_method"] = "logprob" if any(j.method == "logprob" for j in judgments) else "text"
        if jcfg is not None and names == [jcfg.name]:
            out["judge_model"], out["judge_api"] = jcfg.model, judge_api(jcfg)
        else:  # judged under another config: its name is all the records say
            out["judge_model"] = ", ".join(names)
    scorers = sorted({s.scorer for s in scores})
    if scorers:
        out["scorer"] = ", ".join(scorers)
    return out
