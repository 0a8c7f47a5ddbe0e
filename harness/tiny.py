"""A tiny random causal LM with a real tokenizer and chat template, built in seconds.

Tests that only need plumbing (batching, padding, logprobs, training loops) use it
instead of a real model. The tokenizer is a byte-level BPE trained on a fixed text,
so it handles any input string.
"""
from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

_CORPUS = (
    "You are a helpful assistant. The user prefers concise, formal answers with examples. "
    "Please act as an impartial judge and evaluate the quality of the response. Rating: [[5]] "
    "Feedback: the response is clear. [RESULT] 4 Score 1 2 3 4 5 6 7 8 9 10. "
    "The capital of France is Paris. 2 + 2 = 4. def add(a, b): return a + b\n"
    "Write a short poem about the sea. Explain photosynthesis to a child. "
    "A quick brown fox jumps over the lazy dog; {\"criteria\": \"style\", \"score\": 3}\n"
)


def build_tiny_model(out_dir: str | Path, seed: int = 0, vocab_size: int = 512,
                     hidden_size: int = 64, layers: int = 2) -> Path:
    """Write a tiny LlamaForCausalLM + fast tokenizer to ``out_dir`` and return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_CORPUS] * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|end|>",
                                   pad_token="<|pad|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=2048, tie_word_embeddings=True,
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                      pad_token_id=fast.pad_token_id)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(out)
    return out
