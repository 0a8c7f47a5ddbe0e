"""How a (system, instruction, response) row becomes model text, for training and for scoring.

Two formats:

``janus-mistral``
    The JANUS format. Prompt ``[INST] {system}\\n{instruction} [/INST]``, response after one space,
    then the tokenizer's EOS; the tokenizer adds BOS itself where it does so (Mistral/Llama do).
    This is what JANUS's axolotl recipe trains on (``system_format "[INST] {system}\\n"``,
    ``format "{instruction} [/INST]"``, the response tokenized separately so SentencePiece gives it
    a leading "▁") and what its inference code sends (``f"{system}\\n{prompt}".strip()`` inside
    ``[INST] ... [/INST]``; vLLM strips the trailing space).
    Reward-model text follows JANUS-RM scoring (``utils/models/reward_model.py`` users, e.g.
    ``run_inference.py``): ``"[INST] ... [/INST] " + response + " " + eos``, truncated, the last
    token forced to EOS.

``tokenizer``
    The tokenizer's own chat template with system / user / assistant messages. If the template
    has no system role, the system message is joined to the user message with a newline
    (what JANUS's ``apply_template_chat`` does).

Loss is only on the response: the trainers get (prompt, completion) pairs and TRL masks the prompt.
"""
from __future__ import annotations

JANUS = "janus-mistral"
CHAT = "tokenizer"
FORMATS = (JANUS, CHAT)

# A chat template that renders the JANUS format, written into checkpoints trained with it so that
# ``apply_chat_template`` (and any backend using it) sends the same prompt the model was trained on.
JANUS_CHAT_TEMPLATE = (
    "{% set ns = namespace(system='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.system = m['content'] %}{% endif %}{% endfor %}"
    "{% set ns.first = true %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}"
    "{% if ns.first and ns.system %}{% set body = (ns.system + '\\n' + m['content']) | trim %}"
    "{% else %}{% set body = m['content'] | trim %}{% endif %}"
    "{% set ns.first = false %}"
    "{{ '[INST] ' + body + ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)


# ChatML, what JANUS's ORPO recipe set on the Mistral base model (axolotl ``chat_template: chatml``).
CHATML_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
NAMED_CHAT_TEMPLATES = {"chatml": CHATML_TEMPLATE, "janus-mistral": JANUS_CHAT_TEMPLATE}


def janus_chat_template_for(tokenizer) -> str:
    """The JANUS template, starting with BOS when the tokenizer adds BOS to plain text (Mistral/Llama do).

    Backends tokenise a rendered chat with ``add_special_tokens=False``, so the template must carry the BOS
    the model saw in training (where the plain-text prompt was tokenised with special tokens).
    """
    ids = tokenizer("x")["input_ids"]
    adds_bos = tokenizer.bos_token_id is not None and len(ids) > 0 and ids[0] == tokenizer.bos_token_id
    return ("{{ bos_token }}" + JANUS_CHAT_TEMPLATE) if adds_bos else JANUS_CHAT_TEMPLATE


def check_format(name: str) -> str:
    if name not in FORMATS:
        raise ValueError(f"unknown prompt format '{name}'; known: {', '.join(FORMATS)}")
    return name


def janus_prompt(system: str | None, instruction: str) -> str:
    """``[INST] {system}\\n{instruction} [/INST]`` exactly as JANUS inference builds it."""
    body = f"{system or ''}\n{instruction}".strip()
    return f"[INST] {body} [/INST]"


_SYSTEM_SUPPORT: dict[tuple[int, str], bool] = {}


def supports_system(tokenizer) -> bool:
    """Whether the chat template renders a system message (probed, since templates may name roles generically)."""
    key = (id(tokenizer), tokenizer.chat_template or "")
    if key not in _SYSTEM_SUPPORT:
        _SYSTEM_SUPPORT[key] = _probe_system(tokenizer)
    return _SYSTEM_SUPPORT[key]


def _probe_system(tokenizer) -> bool:
    probe = "\u2063system-probe\u2063"
    try:
        text = tokenizer.apply_chat_template([{"role": "system", "content": probe}, {"role": "user", "content": "u"}],
                                             tokenize=False, add_generation_prompt=True)
    except Exception:  # templates that reject the role raise
        return False
    return probe in text


def chat_messages(tokenizer, system: str | None, instruction: str) -> list[dict]:
    """System + user messages; the system message folds into the user turn if the template has no system role
    (what JANUS's ``apply_template_chat`` does for such models)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if not template:
        raise ValueError("the tokenizer has no chat template; use format: janus-mistral")
    if system and not supports_system(tokenizer):
        return [{"role": "user", "content": f"{system}\n{instruction}"}]
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": instruction}]


def _ids(enc) -> list[int]:
    """apply_chat_template(tokenize=True) returns a BatchEncoding in transformers 5, a list before."""
    if isinstance(enc, dict) or hasattr(enc, "keys"):
        return list(enc["input_ids"])
    return list(enc)


class PromptFormat:
    """Renders rows for one tokenizer in one format."""

    def __init__(self, name: str, tokenizer):
        self.name = check_format(name)
        self.tokenizer = tokenizer
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has no eos_token; set one before training")

    # ----- TRL datasets ---------------------------------------------------------------------
    def prompt(self, system: str | None, instruction: str):
        """The prompt as TRL takes it: a string (janus) or a message list (tokenizer template)."""
        if self.name == JANUS:
            return janus_prompt(system, instruction)
        return chat_messages(self.tokenizer, system, instruction)

    def completion(self, response: str):
        """The completion as TRL takes it. The JANUS completion carries its EOS explicitly."""
        if self.name == JANUS:
            return " " + response + self.tokenizer.eos_token
        return [{"role": "assistant", "content": response}]

    # ----- token counts and exact ids ---------------------------------------------------------
    def sequence_ids(self, system: str | None, instruction: str, response: str) -> tuple[list[int], int]:
        """Token ids of prompt + response as trained, and the prompt length (start of the loss)."""
        tok = self.tokenizer
        if self.name == JANUS:
            prompt = janus_prompt(system, instruction)
            prompt_ids = tok(prompt)["input_ids"]
            full_ids = tok(prompt + self.completion(response))["input_ids"]
        else:
            msgs = chat_messages(tok, system, instruction)
            prompt_ids = _ids(tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True))
            full_ids = _ids(tok.apply_chat_template(msgs + [{"role": "assistant", "content": response}],
                                                    tokenize=True))
        n = 0
        for a, b in zip(prompt_ids, full_ids):
            if a != b:
                break
            n += 1
        return list(full_ids), n

    def length(self, system: str | None, instruction: str, response: str) -> int:
        return len(self.sequence_ids(system, instruction, response)[0])

    def reward_ids(self, system: str | None, instruction: str, response: str,
                   max_length: int | None = None) -> list[int]:
        """Token ids a reward model reads; the reward is taken at the last one (EOS)."""
        tok = self.tokenizer
        if self.name == JANUS:
            text = janus_prompt(system, instruction) + " " + response + " " + tok.eos_token
            ids = list(tok(text)["input_ids"])
        else:
            msgs = chat_messages(tok, system, instruction) + [{"role": "assistant", "content": response}]
            ids = _ids(tok.apply_chat_template(msgs, tokenize=True))
        if max_length is not None and len(ids) > max_length:
            # JANUS truncates, then forces the last token back to EOS so the reward is read at an end token
            ids = ids[:max_length]
            ids[-1] = tok.eos_token_id
        return ids
