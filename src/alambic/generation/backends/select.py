"""Choosing a backend by name: `transformers` runs any model alambic loads, `llamacpp` runs GGUF files."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, GenerationConfig

from alambic.errors import InvalidRequestError
from alambic.generation.backends.base import ModelBackend
from alambic.generation.backends.hf import TransformersBackend
from alambic.models import load_model, smollm2_directory
from alambic.models.gguf import AUTO, resolve_gguf_type, smollm2_gguf
from alambic.models.loading import SMOLLM2, end_of_sequence_ids

BACKENDS = ("transformers", "llamacpp")
DEFAULT_KV_TOKENS = 32768


def load_backend(
    model: str,
    backend: str = "transformers",
    *,
    gguf_type: str = AUTO,
    max_sequences: int = 32,
    kv_tokens: int | None = None,
    threads: int | None = None,
    kv_layout: str = "shared",
) -> ModelBackend:
    """`model` is smollm2, tiny, a model directory, or (llamacpp only) a .gguf file; llama.cpp's sequences
    hold `kv_tokens` KV cells in all (default 32,768), laid out as `kv_layout` (shared or per-sequence), and
    its forward passes use `threads` (default: torch's); smollm2's encoding is `gguf_type`, by default the one
    that fits this CPU."""
    if backend == "transformers":
        if kv_layout != "shared" or kv_tokens is not None:
            raise InvalidRequestError("KV cells and their layout are llama.cpp settings, not transformers'.")
        return TransformersBackend(load_model(model))
    if backend != "llamacpp":
        raise InvalidRequestError(f"Unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}.")
    from alambic.generation.backends.llamacpp import KV_LAYOUTS, LlamaCppBackend

    if kv_layout not in KV_LAYOUTS:
        raise InvalidRequestError(f"Unknown KV layout '{kv_layout}'; choose one of {', '.join(KV_LAYOUTS)}.")

    encoding = None  # a .gguf file's own
    if model == SMOLLM2:
        encoding = resolve_gguf_type(gguf_type)
        gguf, directory = smollm2_gguf(encoding), smollm2_directory()
        tokenizer = AutoTokenizer.from_pretrained(directory)
        generation_config = GenerationConfig.from_pretrained(directory)
    elif model.endswith(".gguf") and Path(model).is_file():
        gguf = Path(model)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id)
    else:
        raise InvalidRequestError(
            f"The llama.cpp backend runs GGUF models: smollm2 or a .gguf file, not '{model}'.", param="model"
        )
    return LlamaCppBackend(
        gguf,
        tokenizer,
        name=model,
        encoding=encoding,
        eos_token_ids=end_of_sequence_ids(generation_config, tokenizer),
        max_sequences=max_sequences,
        kv_tokens=kv_tokens or DEFAULT_KV_TOKENS,
        threads=threads,
        kv_layout=kv_layout,
    )
