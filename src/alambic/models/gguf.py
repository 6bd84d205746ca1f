"""GGUF files for the llama.cpp backend: the teacher as shipped (Q4_1) or re-encoded once in the cache.

Re-encoding de-quantises the shipped Q4_1 weights and stores them as BF16, F16 or Q8_0 with llama.cpp's
own quantiser, so every encoding carries the same weights the transformers backend de-quantises.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from filelock import FileLock

from alambic.errors import AlambicError, InvalidRequestError
from alambic.models.loading import smollm2_gguf_path
from alambic.paths import cache_dir

# llama.cpp's LLAMA_FTYPE_MOSTLY_* codes
GGUF_TYPES = {"bf16": 32, "f16": 1, "q8_0": 7}
SHIPPED_TYPE = "q4_1"


def smollm2_gguf(encoding: str = "bf16") -> Path:
    """The teacher's GGUF in `encoding` (bf16, f16, q8_0, or q4_1 as shipped)."""
    if encoding == SHIPPED_TYPE:
        return smollm2_gguf_path()
    if encoding not in GGUF_TYPES:
        choices = ", ".join([*GGUF_TYPES, SHIPPED_TYPE])
        raise InvalidRequestError(f"Unknown GGUF encoding '{encoding}'; choose one of {choices}.", param="gguf_type")
    target = cache_dir() / f"smollm2-135m-instruct-{encoding}.gguf"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not target.exists():
            _requantize(smollm2_gguf_path(), target, GGUF_TYPES[encoding])
    return target


def _requantize(source: Path, target: Path, ftype: int) -> None:
    from alambic.generation.backends.llamacpp import require_llama_cpp

    llama_cpp = require_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".gguf.partial", delete=False) as staging:
        staging_path = Path(staging.name)
    try:
        if llama_cpp.llama_model_quantize(str(source).encode(), str(staging_path).encode(), params) != 0:
            raise AlambicError(f"llama.cpp could not re-encode {source.name}.")
        staging_path.rename(target)  # atomic: readers never see a half-written file
    finally:
        staging_path.unlink(missing_ok=True)
