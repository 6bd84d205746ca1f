"""GGUF files for the llama.cpp backend: the teacher as shipped (Q4_1) or re-encoded once in the cache.

Re-encoding de-quantises the shipped Q4_1 weights and stores them as BF16, F16 or Q8_0 with llama.cpp's
own quantiser, so every encoding carries the same weights the transformers backend de-quantises.

Which encoding is fastest depends on the CPU: BF16 has native kernels only with AVX512_BF16 or AMX (there it
was the fastest, 389 tok/s at 16 streams against F16's 303); without them llama.cpp converts BF16 to F32 as it
goes, and F16 was 1.14x BF16 in llama-server on a CPU without AVX-512. `auto` picks by the CPU's flags.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

from filelock import FileLock

from alambic.errors import AlambicError, InvalidRequestError
from alambic.models.cpu import BF16_FLAGS, cpu_flags, native_bf16
from alambic.models.loading import smollm2_gguf_path
from alambic.paths import cache_dir

# llama.cpp's LLAMA_FTYPE_MOSTLY_* codes
GGUF_TYPES = {"bf16": 32, "f16": 1, "q8_0": 7}
SHIPPED_TYPE = "q4_1"
AUTO = "auto"  # the encoding that fits the CPU this runs on

logger = logging.getLogger(__name__)


def best_gguf_type(flags: Iterable[str]) -> str:
    """BF16 where the CPU computes in bf16 natively (AVX512_BF16 or AMX), else F16."""
    return "bf16" if native_bf16(flags) else "f16"


def resolve_gguf_type(encoding: str = AUTO, *, flags: Iterable[str] | None = None) -> str:
    """`encoding` itself, or for `auto` the one `flags` (default: this CPU's) call for; logged either way."""
    if encoding != AUTO:
        _check_encoding(encoding)
        logger.info("GGUF encoding %s (asked for)", encoding)
        return encoding
    flags = cpu_flags() if flags is None else frozenset(flags)
    chosen = best_gguf_type(flags)
    native = ", ".join(sorted(BF16_FLAGS & flags)) or "none"
    logger.info("GGUF encoding %s, chosen for this CPU (bf16 instructions: %s)", chosen, native)
    return chosen


def smollm2_gguf(encoding: str) -> Path:
    """The teacher's GGUF in `encoding` (bf16, f16, q8_0, or q4_1 as shipped)."""
    _check_encoding(encoding)
    if encoding == SHIPPED_TYPE:
        return smollm2_gguf_path()
    target = cache_dir() / f"smollm2-135m-instruct-{encoding}.gguf"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not target.exists():
            _requantize(smollm2_gguf_path(), target, GGUF_TYPES[encoding])
    return target


def _check_encoding(encoding: str) -> None:
    if encoding != SHIPPED_TYPE and encoding not in GGUF_TYPES:
        choices = ", ".join([AUTO, *GGUF_TYPES, SHIPPED_TYPE])
        raise InvalidRequestError(f"Unknown GGUF encoding '{encoding}'; choose one of {choices}.", param="gguf_type")


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
