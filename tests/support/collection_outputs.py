"""Well-formed outputs of the collection builder's stages for scripted generators, differing by variant."""
from __future__ import annotations

import json


def stage_output(req, answer) -> str:
    """The text a generator returns for ``req``: a valid preference set, a system message, or
    ``answer(req, system)`` for the response stage (its system prompt is the row's system message)."""
    from tasks.multifaceted import prompts as P

    system = req.messages[0]["content"]
    if system == P.SYSTEM_PROMPT_PREFERENCE_SET:
        return json.dumps({"preference_set": [
            {"dimension": d, "subdimension": f"sub{req.sample_index}", "preference": f"likes {d} a lot",
             "description": f"variant {req.sample_index} of {d}"} for d in P.DIMENSIONS]})
    if system == P.SYSTEM_PROMPT_SYSTEM_MESSAGE:
        return f"You are persona number {req.sample_index}, careful and kind."
    return answer(req, system)
