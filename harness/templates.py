"""Named chat templates that are not (or not reliably) in a tokenizer.

``janus-mistral``: the format JANUS was trained and evaluated with,
``[INST] {system}\\n{instruction} [/INST]`` (the system message is joined to the
first user turn with a newline; Mistral-Instruct has no system role).
"""
from __future__ import annotations


def render_janus_mistral(messages: list[dict], add_generation_prompt: bool = True,
                         bos: str = "<s>", eos: str = "</s>") -> str:
    system = ""
    turns = []
    for m in messages:
        if m["role"] == "system":
            system = m["content"]
        else:
            turns.append(m)
    out = bos
    first_user = True
    for m in turns:
        if m["role"] == "user":
            content = m["content"]
            if first_user and system:
                content = f"{system}\n{content}"
            first_user = False
            out += f"[INST] {content} [/INST]"
        elif m["role"] == "assistant":
            # JANUS writes the answer one space after [/INST] and closes it with EOS
            out += f" {m['content']}{eos}"
    return out


NAMED_TEMPLATES = {"janus-mistral": render_janus_mistral}


def render_chat(tokenizer, messages: list[dict], template: str = "tokenizer",
                add_generation_prompt: bool = True, continue_final_message: bool = False) -> str:
    """Render messages to the model's prompt string."""
    if template in NAMED_TEMPLATES:
        # the tokenizer's own BOS/EOS strings (Mistral's are <s> and </s>)
        bos = getattr(tokenizer, "bos_token", None) or "" if tokenizer is not None else "<s>"
        eos = getattr(tokenizer, "eos_token", None) or "" if tokenizer is not None else "</s>"
        text = NAMED_TEMPLATES[template](messages, add_generation_prompt=add_generation_prompt and not continue_final_message,
                                         bos=bos, eos=eos)
        if continue_final_message and messages and messages[-1]["role"] == "assistant" and eos and text.endswith(eos):
            text = text[: -len(eos)]
        return text
    if template != "tokenizer":
        raise ValueError(f"unknown chat template '{template}'; known: tokenizer, {', '.join(NAMED_TEMPLATES)}")
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the tokenizer has no chat template; set chat_template: janus-mistral or use plain prompts")
    if continue_final_message:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False,
                                             continue_final_message=True)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
