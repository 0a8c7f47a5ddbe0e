"""An lm-eval ``LM`` that answers through the harness call layer.

lm-eval builds the requests, filters the answers and computes the metrics; this class
only turns its three request types into harness ``GenRequest``s, so every answer gets the
harness cache, retries, rate limits, cost accounting and resume after a kill, on any
harness backend.

Tokenization is lm-eval's own (``TemplateLM`` splits context and continuation, this class
encodes them as lm-eval's ``hf`` model does) and the backend receives token ids: a
loglikelihood on the ``hf`` backend is the same computation as ``lm_eval --model hf``.
"""
from __future__ import annotations

import json
import logging
from typing import Callable

from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (_add_special_kwargs, handle_stop_sequences, has_bos_prefix,
                                  normalize_gen_kwargs, postprocess_generated_text, resolve_max_length)

from harness.backends.base import GenRequest, GenResult

log = logging.getLogger("harness.lm_eval")

#: what lm-eval's hf model uses when neither the config nor the tokenizer says
DEFAULT_MAX_LENGTH = 2048
#: lm-eval's default max_gen_toks
DEFAULT_MAX_GEN_TOKS = 256


class BridgeError(RuntimeError):
    """A request the backend cannot answer (said before any call is made where possible)."""


@register_model("harness")
class HarnessLM(TemplateLM):
    """``submit(requests) -> results`` runs harness requests through the call layer.

    ``tokenizer``: the model's tokenizer (the ``hf`` backend's own, or the one a served model's
    config names); without one, loglikelihood requests are refused and generation sends text.
    ``chat_messages``: the backend takes chat messages (an OpenAI-compatible chat endpoint with
    no local tokenizer); chat-templated contexts are then sent as messages.
    """

    def __init__(self, submit: Callable[[list[GenRequest]], list[GenResult]], tokenizer=None,
                 model_config=None, max_length: int | None = None, chat_messages: bool = False,
                 seed: int | None = None, name: str = "harness", supports_loglikelihood: bool = True):
        super().__init__()
        self._submit = submit
        self.tokenizer = tokenizer
        self.chat_messages = chat_messages
        self.seed = seed
        self.name = name
        self.supports_loglikelihood = supports_loglikelihood
        if max_length is None:
            max_length = (resolve_max_length(model_config, tokenizer, default=DEFAULT_MAX_LENGTH)
                          if model_config is not None or tokenizer is not None else DEFAULT_MAX_LENGTH)
        self._max_length = max_length

    # -- what TemplateLM needs
    @property
    def eot_token_id(self) -> int:
        return self._tok().eos_token_id

    @property
    def prefix_token_id(self) -> int:
        tok = self._tok()
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return DEFAULT_MAX_GEN_TOKS

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", self.name).replace("/", "__")

    def chat_template(self, chat_template=False) -> str:
        return getattr(self.tokenizer, "chat_template", None) or ""

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   left_truncate_len: int | None = None, **kwargs) -> list[int]:
        # lm-eval hf's tok_encode: tokenizer default special tokens, none if BOS is already there
        tok = self._tok()
        special = _add_special_kwargs(add_special_tokens, None)
        if add_special_tokens is None and has_bos_prefix(string, tok.decode(self.prefix_token_id)):
            special["add_special_tokens"] = False
        enc = tok.encode(string, **special)
        return enc[-left_truncate_len:] if left_truncate_len else enc

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self._tok().decode(tokens, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if self.chat_messages:
            return json.dumps(chat_history)  # sent as messages by generate_until
        import jinja2

        kw = dict(tokenize=False, add_generation_prompt=add_generation_prompt,
                  continue_final_message=not add_generation_prompt)
        try:
            return self._tok().apply_chat_template(chat_history, **kw)
        except jinja2.exceptions.TemplateError:  # as lm-eval's hf model: a template without a system role
            log.warning("chat template refused the system role; it is dropped (as lm-eval's hf model does)")
            return self._tok().apply_chat_template([m for m in chat_history if m["role"] != "system"], **kw)

    # -- the three request types
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        if not self.supports_loglikelihood:
            raise BridgeError(f"{self.name}: this backend cannot score continuations (loglikelihood); "
                              "use the hf backend or an OpenAI-compatible server with echo logprobs")
        reqs = []
        for _, context_enc, continuation_enc in requests:
            if not continuation_enc or len(continuation_enc) > self.max_length:
                raise BridgeError(f"continuation of {len(continuation_enc)} tokens does not fit "
                                  f"max_length {self.max_length}")
            # lm-eval hf: keep the last max_length + 1 tokens; the last one is only predicted
            whole = (list(context_enc) + list(continuation_enc))[-(self.max_length + 1):]
            reqs.append(GenRequest(prompt_tokens=whole[:-len(continuation_enc)],
                                   continuation_tokens=list(continuation_enc), max_tokens=0))
        return [(r.loglikelihood, bool(r.is_greedy)) for r in self._answers(reqs)]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for i, (string,) in enumerate(r.args for r in requests):
            for ctx, cont in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (ll, _) in zip(owner, self._loglikelihood_tokens(windows)):
            totals[i] += ll
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False) if self.tokenizer else None
        reqs, untils = [], []
        for r in requests:
            context, gen_kwargs = r.args
            kw = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            until = handle_stop_sequences(kw.pop("until", None), eos=eos)
            max_gen = kw.pop("max_gen_toks")
            sample = bool(kw.get("do_sample"))
            common = dict(max_tokens=max_gen, temperature=float(kw.get("temperature", 0.0)) if sample else 0.0,
                          top_p=float(kw.get("top_p", 1.0)) if sample else 1.0,
                          stop=[u for u in until if u] or None, seed=self.seed)
            if self.chat_messages and _is_messages(context):
                reqs.append(GenRequest(messages=json.loads(context), **common))
            elif self.tokenizer is not None:
                reqs.append(GenRequest(prompt_tokens=self._encode_context(context, max_gen), **common))
            else:
                reqs.append(GenRequest(prompt=context, **common))
            untils.append(until)
        return [postprocess_generated_text(res.text, until, None)
                for res, until in zip(self._answers(reqs), untils)]

    # -- helpers
    def _encode_context(self, context: str, max_gen: int) -> list[int]:
        # lm-eval hf's tok_batch_encode for one string, left-truncated to leave room to generate
        tok = self._tok()
        special = {}
        if has_bos_prefix(context, getattr(tok, "bos_token", None)):
            special = {"add_special_tokens": False}
        enc = tok(context, **special)["input_ids"]
        room = self.max_length - max_gen
        if room <= 0:
            raise BridgeError(f"max_gen_toks {max_gen} must be below the model's max_length {self.max_length}")
        return enc[-room:]

    def _answers(self, reqs: list[GenRequest]) -> list[GenResult]:
        results = self._submit(reqs)
        failed = [r for r in results if r.error is not None]
        if failed:
            # a missing answer would be scored as wrong: stop instead (finished calls are cached)
            raise BridgeError(f"{len(failed)} of {len(results)} requests failed; first error: {failed[0].error}")
        return results

    def _tok(self):
        if self.tokenizer is None:
            raise BridgeError(f"{self.name}: this request needs the model's tokenizer; set `tokenizer:` "
                              "on the model in the run config (a local directory or hub id)")
        return self.tokenizer


def _is_messages(context: str) -> bool:
    if not context.startswith("["):
        return False
    try:
        value = json.loads(context)
    except ValueError:
        return False
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value)
