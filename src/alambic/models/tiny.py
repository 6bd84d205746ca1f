"""Tiny random Llama models with the teacher's tokenizer: fast, offline and deterministic, for tests."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from alambic.models.loading import TINY, LoadedModel, smollm2_directory


def tiny_config(vocab_size: int, *, layers: int = 2, hidden: int = 64, context: int = 2048) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def tiny_model(*, seed: int = 0, layers: int = 2, hidden: int = 64, context: int = 2048) -> LoadedModel:
    """A randomly initialised Llama; the same seed gives the same weights."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2_directory())
    config = tiny_config(len(tokenizer), layers=layers, hidden=hidden, context=context)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return LoadedModel(name=TINY, model=model.eval(), tokenizer=tokenizer)
