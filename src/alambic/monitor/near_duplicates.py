"""Near-duplicate prompts across the log: MinHash signatures over word 3-grams, bucketed by LSH (datasketch).

Broder's MinHash estimates the Jaccard similarity of two prompts' 3-gram sets; LSH bands the signatures so that
prompts of similarity >= THRESHOLD share a bucket with high probability, and each bucket keeps the members whose
estimated similarity to another member reaches it. The buckets (never all pairs) become the table
`prompt_buckets(bucket, prompt_hash)`, which SQL joins to the accounts. Signatures and bands are computed for
all distinct prompts at once with numpy, from datasketch's permutations and band parameters.
"""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import numpy as np
import pyarrow as pa
from datasketch import MinHash, MinHashLSH

from alambic.monitor.prompts import load_prompts

THRESHOLD = 0.5  # Jaccard of word 3-gram sets: a reworded tail or a swapped name still matches
PERMUTATIONS = 64
CONFIRM_MAX = 256  # members of one bucket compared pairwise (larger buckets: their first ones)

SEED = 1
# Each distinct prompt's word 3-grams, hashed to 32 bits in SQL (prompts of under three words: the whole text),
# one row per (prompt, shingle), grouped by prompt.
SHINGLES = """
SELECT prompt_hash,
       unnest(CASE WHEN len(words) < 3 THEN [hash(words) % 4294967296]
                   ELSE list_transform(range(1, len(words) - 1),
                                       lambda i: hash(words[i], words[i + 1], words[i + 2]) % 4294967296)
              END)::UINTEGER AS shingle
FROM (SELECT prompt_hash, string_split_regex(lower(trim(prompt)), '\\s+') AS words FROM prompt_texts)
ORDER BY prompt_hash
"""


def _signatures(prompts: np.ndarray, shingles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures, (distinct prompts, PERMUTATIONS) uint32, for shingles grouped by prompt.

    datasketch's affine permutations (h -> a h + b mod 2^32) applied to all shingles at once, then the
    minimum per prompt; DuckDB's hash already mixes the input as datasketch's premix would."""
    hashes, starts = np.unique(prompts, return_index=True)
    if not len(hashes):
        return hashes, np.empty((0, PERMUTATIONS), dtype=np.uint32)
    a, b = MinHash(num_perm=PERMUTATIONS, seed=SEED).permutations  # (PERMUTATIONS,) uint32 each
    signatures = np.empty((len(hashes), PERMUTATIONS), dtype=np.uint32)
    for j in range(PERMUTATIONS):
        signatures[:, j] = np.minimum.reduceat(shingles * a[j] + b[j], starts)
    return hashes, signatures


def _candidates(signatures: np.ndarray) -> Iterator[np.ndarray]:
    """LSH: for each band of rows of the signatures, the prompts (row indices) that agree on all of its rows.

    The bands and rows are those datasketch's `MinHashLSH` picks for `THRESHOLD` (balancing false positives
    and negatives); the bucketing itself is a sort, for all prompts at once."""
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=PERMUTATIONS)
    for band in range(lsh.b):
        block = signatures[:, band * lsh.r : (band + 1) * lsh.r]
        _, inverse, counts = np.unique(block, axis=0, return_inverse=True, return_counts=True)
        inverse = inverse.ravel()
        shared = np.flatnonzero(counts[inverse] > 1)
        shared = shared[np.argsort(inverse[shared], kind="stable")]
        yield from np.split(shared, np.flatnonzero(np.diff(inverse[shared])) + 1) if len(shared) else ()


def _confirmed(signatures: np.ndarray, candidates: np.ndarray) -> list[int]:
    """The candidates of one LSH bucket whose estimated Jaccard to another one reaches `THRESHOLD`.

    Banding lets through pairs well below it (prompts built from one template and a small vocabulary)."""
    indices = candidates[:CONFIRM_MAX].tolist()
    block = signatures[indices]  # (k, PERMUTATIONS)
    similarity = (block[:, None, :] == block[None, :, :]).mean(axis=2)  # (k, k)
    np.fill_diagonal(similarity, 0.0)
    kept = [i for i, row in zip(indices, similarity, strict=True) if row.max() >= THRESHOLD]
    return kept if len(kept) > 1 else []


def load_buckets(connection: duckdb.DuckDBPyConnection, prompts_loaded: bool = False) -> int:
    """Builds `prompt_buckets(bucket, prompt_hash)`: the LSH buckets holding two or more distinct prompts, from
    `requests` as it is now (replay redefines it on one connection), through the tables of `prompts.load_prompts`
    (built here unless `prompts_loaded`). Returns the number of distinct prompts signed."""
    if not prompts_loaded:
        load_prompts(connection)
    shingled = connection.execute(SHINGLES).fetchnumpy()
    hashes, signatures = _signatures(shingled["prompt_hash"], shingled["shingle"])
    buckets, members = [], []
    for bucket, indices in enumerate(_confirmed(signatures, c) for c in _candidates(signatures)):
        buckets += [bucket] * len(indices)
        members += hashes[indices].tolist()
    table = pa.table({"bucket": pa.array(buckets, pa.int64()), "prompt_hash": pa.array(members, pa.uint64())})
    connection.register("lsh_buckets", table)
    connection.execute("CREATE OR REPLACE TEMP TABLE prompt_buckets AS SELECT * FROM lsh_buckets")
    connection.unregister("lsh_buckets")
    return len(hashes)
