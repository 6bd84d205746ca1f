"""Near-duplicate prompts across the log: MinHash signatures over word 3-grams, bucketed by LSH (datasketch).

Broder's MinHash estimates the Jaccard similarity of two prompts' 3-gram sets; LSH bands the signatures so that
prompts of similarity >= THRESHOLD share a bucket with high probability, and each bucket keeps the members whose
estimated similarity to another member reaches it. The buckets (never all pairs) become the table
`prompt_buckets(bucket, prompt_hash)`, which SQL joins to the accounts. Signatures and bands are computed for
all distinct prompts at once with numpy, from datasketch's permutations and band parameters, and kept by prompt
hash between scorings of a growing log (`Signatures`): replay and follow sign each prompt once.
"""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import numpy as np
import pyarrow as pa
from datasketch import MinHash, MinHashLSH

THRESHOLD = 0.5  # Jaccard of word 3-gram sets: a reworded tail or a swapped name still matches
PERMUTATIONS = 64
CONFIRM_MAX = 256  # members of one bucket compared pairwise (larger buckets: their first ones)
COMPARED_MAX = 1 << 24  # signature values compared at once when confirming buckets (bytes of a boolean block)

SEED = 1
# Each distinct prompt's word 3-grams, hashed to 32 bits in SQL (prompts of under three words: the whole text),
# one row per (prompt, shingle), grouped by prompt.
SHINGLES = """
SELECT prompt_hash,
       unnest(CASE WHEN len(words) < 3 THEN [hash(words) % 4294967296]
                   ELSE list_transform(range(1, len(words) - 1),
                                       lambda i: hash(words[i], words[i + 1], words[i + 2]) % 4294967296)
              END)::UINTEGER AS shingle
FROM (SELECT prompt_hash, string_split_regex(lower(trim(prompt)), '\\s+') AS words FROM prompt_texts
      WHERE prompt_hash NOT IN (SELECT prompt_hash FROM signed_prompts))
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
    """LSH: for each band of rows of the signatures, the prompts (row indices, ascending) that agree on all of its
    rows.

    The bands and rows are those datasketch's `MinHashLSH` picks for `THRESHOLD` (balancing false positives
    and negatives); the bucketing itself is a sort of each band's rows, for all prompts at once."""
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=PERMUTATIONS)
    for band in range(lsh.b):
        block = signatures[:, band * lsh.r : (band + 1) * lsh.r]
        order = np.lexsort(block.T[::-1])  # rows in lexicographic order; equal rows by ascending index
        ordered = block[order]
        starts = np.flatnonzero(np.r_[True, (ordered[1:] != ordered[:-1]).any(axis=1)])
        sizes = np.diff(np.r_[starts, len(order)])
        yield from (order[start : start + size] for start, size in zip(starts, sizes, strict=True) if size > 1)


def _confirmed(signatures: np.ndarray, candidates: list[np.ndarray]) -> list[np.ndarray]:
    """The buckets of `candidates` (LSH buckets of row indices) that keep two or more members once only the members
    whose estimated Jaccard to another member of their bucket reaches `THRESHOLD` stay: banding lets through pairs
    well below it (prompts built from one template and a small vocabulary). Buckets of over `CONFIRM_MAX` members
    are judged by their first ones; buckets of one size are compared together, a bounded block at a time."""
    by_size: dict[int, list[np.ndarray]] = {}
    for bucket in candidates:
        by_size.setdefault(min(len(bucket), CONFIRM_MAX), []).append(bucket[:CONFIRM_MAX])
    confirmed = []
    for size, buckets in sorted(by_size.items()):
        step = max(1, COMPARED_MAX // (size * size * PERMUTATIONS))
        for first in range(0, len(buckets), step):
            members = np.stack(buckets[first : first + step])  # (buckets, size)
            block = signatures[members]  # (buckets, size, PERMUTATIONS)
            similarity = (block[:, :, None, :] == block[:, None, :, :]).mean(axis=3)  # (buckets, size, size)
            similarity[:, np.arange(size), np.arange(size)] = 0.0
            kept = similarity.max(axis=2) >= THRESHOLD
            confirmed += [row[keep] for row, keep in zip(members, kept, strict=True) if keep.sum() > 1]
    return confirmed


class Signatures:
    """The MinHash signatures of the distinct prompts of `prompt_texts`, by prompt hash (sorted), kept from one
    scoring to the next: a scoring signs only the prompts the last one did not hold, and keeps only those it holds
    (so it grows with the distinct prompts scored, never with the rows)."""

    def __init__(self) -> None:
        self.hashes = np.empty(0, dtype=np.uint64)
        self.signatures = np.empty((0, PERMUTATIONS), dtype=np.uint32)
        self.signed = 0  # prompts signed so far, by all scorings

    def update(self, connection: duckdb.DuckDBPyConnection) -> tuple[np.ndarray, np.ndarray]:
        """The hashes and signatures of the prompts of `prompt_texts` now, signing those not seen before."""
        connection.register("signed_prompts", pa.table({"prompt_hash": pa.array(self.hashes, pa.uint64())}))
        try:
            shingled = connection.execute(SHINGLES).fetchnumpy()
        finally:
            connection.unregister("signed_prompts")
        new, new_signatures = _signatures(shingled["prompt_hash"], shingled["shingle"])
        self.signed += len(new)
        known = connection.execute("SELECT DISTINCT prompt_hash FROM prompt_texts ORDER BY 1").fetchnumpy()
        held = np.asarray(known["prompt_hash"], dtype=np.uint64)
        hashes = np.concatenate([self.hashes, new])
        order = np.argsort(hashes, kind="stable")
        hashes, signatures = hashes[order], np.concatenate([self.signatures, new_signatures])[order]
        self.hashes, self.signatures = held, signatures[np.searchsorted(hashes, held)]
        return self.hashes, self.signatures


def load_buckets(
    connection: duckdb.DuckDBPyConnection, signatures: Signatures | None = None, common: np.ndarray | None = None
) -> int:
    """Builds `prompt_buckets(bucket, prompt_hash)`: the LSH buckets holding two or more distinct prompts of the
    tables `tables.load_tables` built, signed through `signatures` (a fresh `Signatures` unless given: all of
    them); and `common_prompts(prompt_hash)`: those that share a bucket with one of the `common` signatures (a
    benign log's common phrasing, `linking.common_phrasing`). Returns the number of distinct prompts."""
    hashes, matrix = (signatures or Signatures()).update(connection)
    known = len(hashes)
    if common is not None and len(common):
        matrix = np.concatenate([matrix, common])  # rows past `known` are the common texts
    buckets, members, near_common = [], [], set()
    for bucket, indices in enumerate(_confirmed(matrix, list(_candidates(matrix)))):
        live, texts = indices[indices < known], indices[indices >= known]
        if len(texts):  # the live prompts as near a common text as the bucket's members are to each other
            similarity = (matrix[live][:, None, :] == matrix[texts][None, :, :]).mean(axis=2)
            near_common.update(hashes[live[similarity.max(axis=1, initial=0.0) >= THRESHOLD]].tolist())
        if len(live) > 1:
            buckets += [bucket] * len(live)
            members += hashes[live].tolist()
    table = pa.table({"bucket": pa.array(buckets, pa.int64()), "prompt_hash": pa.array(members, pa.uint64())})
    common_table = pa.table({"prompt_hash": pa.array(sorted(near_common), pa.uint64())})
    for name, data in (("lsh_buckets", table), ("near_common", common_table)):
        connection.register(name, data)
    connection.execute("CREATE OR REPLACE TEMP TABLE prompt_buckets AS SELECT * FROM lsh_buckets")
    connection.execute("CREATE OR REPLACE TEMP TABLE common_prompts AS SELECT * FROM near_common")
    for name in ("lsh_buckets", "near_common"):
        connection.unregister(name)
    return known
