"""Tiny random Llama models with the teacher's tokenizer: fast, offline and deterministic, for tests."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from alambic.models.loading import TINY, LoadedModel, smollm2_directory


def tiny_config(
    vocab_size: int,
    *,
    layers: int = 2,
    hidden: int = 64,
    context: int = 2048,
    initializer_range: float = 0.02,
    tie_embeddings: bool = True,
) -> LlamaConfig:
    """`initializer_range` 0.3 with untied embeddings gives a sharper model whose answers depend on the prompt
    (at 0.02 with tied embeddings a random model mostly repeats its last token)."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        tie_word_embeddings=tie_embeddings,
        initializer_range=initializer_range,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def tiny_model(*, seed: int = 0, **sizes) -> LoadedModel:
    """A randomly initialised Llama (`sizes` as `tiny_config` takes them); the same seed gives the same weights."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2_directory())
    config = tiny_config(len(tokenizer), **sizes)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return LoadedModel(name=TINY, model=model.eval(), tokenizer=tokenizer)
