"""Near-duplicate prompts across the log: MinHash signatures over word 3-grams, bucketed by LSH (datasketch).

Broder's MinHash estimates the Jaccard similarity of two prompts' 3-gram sets; LSH bands the signatures so that
prompts of similarity >= THRESHOLD share a bucket with high probability, and each bucket keeps the members whose
estimated similarity to another member reaches it. The buckets (never all pairs) become the table
`prompt_buckets(bucket, prompt_hash)`, which SQL joins to the accounts. Signatures and band keys are computed for
all distinct prompts at once with numpy, from datasketch's permutations and band parameters, and kept by prompt
hash between scorings of a growing log (`Signatures`): replay and follow sign each prompt once.
"""

from __future__ import annotations

import functools

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


@functools.cache
def bands() -> tuple[int, int]:
    """The LSH bands and rows per band that datasketch's `MinHashLSH` picks for `THRESHOLD` (balancing false
    positives and negatives)."""
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=PERMUTATIONS)
    return lsh.b, lsh.r


def _band_keys(signatures: np.ndarray) -> np.ndarray:
    """(prompts, bands) uint64: each band's rows of the signatures (`bands`) folded into one key (FNV-1a over
    32-bit words; two bands that collide only add a candidate, which confirming checks)."""
    count, rows = bands()
    keys = np.full((len(signatures), count), 0xCBF29CE484222325, dtype=np.uint64)
    banded = signatures[:, : count * rows].reshape(len(signatures), count, rows).astype(np.uint64)
    for row in range(rows):
        keys = (keys ^ banded[:, :, row]) * np.uint64(0x100000001B3)  # wraps modulo 2^64
    return keys


def _candidates(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LSH: the prompts (row indices) that agree on all rows of one band, from their band keys (`_band_keys`), for
    every band, as flat arrays: `members` with each bucket's row indices ascending and contiguous, and `starts`,
    where each bucket of two or more begins. The bucketing is a sort of each band's keys, for all prompts at once."""
    members, starts, found = [], [], 0
    for band in range(keys.shape[1]):
        order = np.argsort(keys[:, band], kind="stable")  # equal keys by ascending index
        ordered = keys[order, band]
        bucket = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1  # each sorted row's bucket in the band
        shared = np.bincount(bucket)[bucket] > 1
        if not shared.any():
            continue
        members.append(order[shared])
        starts.append(found + np.flatnonzero(np.r_[True, bucket[shared][1:] != bucket[shared][:-1]]))
        found += int(shared.sum())
    if not found:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.concatenate(members), np.concatenate(starts)


def _confirmed(signatures: np.ndarray, members: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Of the candidate buckets (`_candidates`), the members whose estimated Jaccard to another member of their
    bucket reaches `THRESHOLD`, in buckets that keep two or more of them: banding lets through pairs well below it
    (prompts built from one template and a small vocabulary). Returns (bucket number, row index) pairs, a bucket's
    number its place among the candidates. Buckets of over `CONFIRM_MAX` members are judged by their first ones;
    buckets of one size are compared together, a bounded block at a time."""
    sizes = np.minimum(np.diff(np.r_[starts, len(members)]), CONFIRM_MAX)
    buckets, kept_members = [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=np.int64)]
    for size in np.unique(sizes).tolist():
        of_size = np.flatnonzero(sizes == size)
        step = max(1, COMPARED_MAX // (size * size * PERMUTATIONS))
        for first in range(0, len(of_size), step):
            chosen = of_size[first : first + step]
            rows = members[starts[chosen][:, None] + np.arange(size)]  # (buckets, size)
            block = signatures[rows]  # (buckets, size, PERMUTATIONS)
            similarity = (block[:, :, None, :] == block[:, None, :, :]).mean(axis=3)  # (buckets, size, size)
            similarity[:, np.arange(size), np.arange(size)] = 0.0
            kept = similarity.max(axis=2) >= THRESHOLD
            kept &= (kept.sum(axis=1) > 1)[:, None]
            buckets.append(np.broadcast_to(chosen[:, None], rows.shape)[kept])
            kept_members.append(rows[kept])
    return np.concatenate(buckets), np.concatenate(kept_members)


class Signatures:
    """The MinHash signatures and LSH band keys of the distinct prompts of `prompt_texts`, by prompt hash (sorted),
    kept from one scoring to the next: a scoring signs only the prompts the last one did not hold, and keeps only
    those it holds (so it grows with the distinct prompts scored, never with the rows)."""

    def __init__(self) -> None:
        self.hashes = np.empty(0, dtype=np.uint64)
        self.signatures = np.empty((0, PERMUTATIONS), dtype=np.uint32)
        self.keys = np.empty((0, bands()[0]), dtype=np.uint64)
        self.signed = 0  # prompts signed so far, by all scorings

    def update(self, connection: duckdb.DuckDBPyConnection) -> None:
        """Holds the prompts of `prompt_texts` now, signing those not seen before."""
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
        kept = order[np.searchsorted(hashes[order], held)]  # of the old and new prompts, those held, by hash
        self.signatures = np.concatenate([self.signatures, new_signatures])[kept]
        self.keys = np.concatenate([self.keys, _band_keys(new_signatures)])[kept]
        self.hashes = held


def load_buckets(
    connection: duckdb.DuckDBPyConnection, signatures: Signatures | None = None, common: np.ndarray | None = None
) -> int:
    """Builds `prompt_buckets(bucket, prompt_hash)`: the LSH buckets holding two or more distinct prompts of the
    tables `tables.load_tables` built, signed through `signatures` (a fresh `Signatures` unless given: all of
    them); and `common_prompts(prompt_hash)`: those that share a bucket with one of the `common` signatures (a
    benign log's common phrasing, `linking.common_phrasing`). Returns the number of distinct prompts."""
    signatures = signatures or Signatures()
    signatures.update(connection)
    hashes, matrix, keys = signatures.hashes, signatures.signatures, signatures.keys
    known = len(hashes)
    if common is not None and len(common):  # rows past `known` are the common texts
        matrix, keys = np.concatenate([matrix, common]), np.concatenate([keys, _band_keys(common)])
    bucket_of, member = _confirmed(matrix, *_candidates(keys))
    near_common = set()
    with_common = np.isin(bucket_of, bucket_of[member >= known])  # few: the buckets holding a common text
    order = np.argsort(bucket_of[with_common], kind="stable")
    grouped, in_bucket = member[with_common][order], bucket_of[with_common][order]
    for indices in np.split(grouped, np.flatnonzero(in_bucket[1:] != in_bucket[:-1]) + 1):
        live, texts = indices[indices < known], indices[indices >= known]
        # the live prompts as near a common text as the bucket's members are to each other
        similarity = (matrix[live][:, None, :] == matrix[texts][None, :, :]).mean(axis=2)
        near_common.update(hashes[live[similarity.max(axis=1, initial=0.0) >= THRESHOLD]].tolist())
    bucket_of, member = bucket_of[member < known], member[member < known]
    numbers, live_counts = np.unique(bucket_of, return_counts=True)
    shared = np.isin(bucket_of, numbers[live_counts > 1])
    buckets, members = bucket_of[shared], hashes[member[shared]]
    table = pa.table({"bucket": pa.array(buckets, pa.int64()), "prompt_hash": pa.array(members, pa.uint64())})
    common_table = pa.table({"prompt_hash": pa.array(sorted(near_common), pa.uint64())})
    for name, data in (("lsh_buckets", table), ("near_common", common_table)):
        connection.register(name, data)
    connection.execute("CREATE OR REPLACE TEMP TABLE prompt_buckets AS SELECT * FROM lsh_buckets")
    connection.execute("CREATE OR REPLACE TEMP TABLE common_prompts AS SELECT * FROM near_common")
    for name in ("lsh_buckets", "near_common"):
        connection.unregister(name)
    return known
