"""Choosing a backend by name: `transformers` runs any model alambic loads, `llamacpp` runs GGUF files."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import AutoTokenizer, GenerationConfig

from alambic.errors import InvalidRequestError
from alambic.generation.backends.base import ModelBackend
from alambic.generation.backends.hf import TransformersBackend
from alambic.models import load_model, smollm2_directory
from alambic.models.cpu import cpu_flags, native_bf16
from alambic.models.gguf import AUTO, resolve_gguf_type, smollm2_gguf
from alambic.models.loading import SMOLLM2, end_of_sequence_ids

BACKENDS = ("transformers", "llamacpp")
DTYPES = ("float32", "bfloat16")  # the transformers backend's weights
DEFAULT_KV_TOKENS = 32768

logger = logging.getLogger(__name__)


def resolve_dtype(dtype: str = AUTO, *, flags: Iterable[str] | None = None) -> str:
    """`dtype` itself, or for `auto` bfloat16 where `flags` (default: this CPU's) multiply in bf16 natively
    (AVX512_BF16 or AMX: about three times float32's matrix products at 16 rows), else float32."""
    if dtype == AUTO:
        dtype = "bfloat16" if native_bf16(cpu_flags() if flags is None else flags) else "float32"
        logger.info("transformers weights in %s, chosen for this CPU", dtype)
    elif dtype not in DTYPES:
        raise InvalidRequestError(f"Unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)} or {AUTO}.")
    return dtype


def load_backend(
    model: str,
    backend: str = "transformers",
    *,
    gguf_type: str = AUTO,
    dtype: str = AUTO,
    max_sequences: int = 32,
    kv_tokens: int | None = None,
    threads: int | None = None,
    kv_layout: str = "shared",
) -> ModelBackend:
    """`model` is smollm2, tiny, a model directory, or (llamacpp only) a .gguf file; llama.cpp's sequences
    hold `kv_tokens` KV cells in all (default 32,768), laid out as `kv_layout` (shared or per-sequence); either
    backend's forward passes use `threads` (default: torch's); smollm2's encoding is `gguf_type`, by default the
    one that fits this CPU, and so is a transformers model's `dtype`."""
    if backend == "transformers":
        if kv_layout != "shared" or kv_tokens is not None:
            raise InvalidRequestError("KV cells and their layout are llama.cpp settings, not transformers'.")
        loaded = load_model(model)
        loaded.model.to(getattr(torch, resolve_dtype(dtype)))
        return TransformersBackend(loaded, threads=threads)
    if backend != "llamacpp":
        raise InvalidRequestError(f"Unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}.")
    if dtype != AUTO:
        raise InvalidRequestError("The weights' dtype is a transformers setting; llama.cpp's is its GGUF type.")
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
