"""Near-duplicate prompts across the log: MinHash signatures over word 3-grams, bucketed by LSH (datasketch).

Broder's MinHash estimates the Jaccard similarity of two prompts' 3-gram sets; LSH bands the signatures so that
prompts of similarity >= THRESHOLD share a bucket with high probability. The buckets (never pairwise
comparisons) become the table `prompt_buckets(bucket, prompt_hash)`, which SQL joins to the accounts.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
from datasketch import LeanMinHash, MinHash, MinHashLSH

from alambic.monitor.prompts import load_prompts

THRESHOLD = 0.5  # Jaccard of word 3-gram sets: a reworded tail or a swapped name still matches
PERMUTATIONS = 64
CONFIRM_MAX = 256  # members of one bucket compared pairwise (larger buckets: their first ones)

# Each distinct prompt's word 3-grams, hashed to 32 bits in SQL (prompts of under three words: the whole text).
SHINGLES = """
SELECT prompt_hash,
       CASE WHEN len(words) < 3 THEN [hash(words) % 4294967296]
            ELSE list_transform(range(1, len(words) - 1),
                                lambda i: hash(words[i], words[i + 1], words[i + 2]) % 4294967296) END
FROM (SELECT prompt_hash, string_split_regex(lower(trim(prompt)), '\\s+') AS words FROM prompt_texts)
"""


def _identity(shingle: int) -> int:
    return shingle  # already hashed by DuckDB


def _confirmed(signatures: np.ndarray, candidates: set[int]) -> list[int]:
    """The candidates of one LSH bucket whose estimated Jaccard to another one reaches `THRESHOLD`.

    Banding lets through pairs well below it (prompts built from one template and a small vocabulary)."""
    indices = sorted(candidates)[:CONFIRM_MAX]
    block = signatures[indices]  # (k, PERMUTATIONS)
    similarity = (block[:, None, :] == block[None, :, :]).mean(axis=2)  # (k, k)
    np.fill_diagonal(similarity, 0.0)
    kept = [i for i, row in zip(indices, similarity, strict=True) if row.max() >= THRESHOLD]
    return kept if len(kept) > 1 else []


def load_buckets(connection: duckdb.DuckDBPyConnection) -> int:
    """Builds `prompt_buckets(bucket, prompt_hash)`: the LSH buckets holding two or more distinct prompts.

    Returns the number of distinct prompts signed."""
    exists = connection.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'prompt_buckets' AND temporary"
    ).fetchone()
    load_prompts(connection)
    if exists[0]:
        return connection.execute("SELECT count(*) FROM prompt_texts").fetchone()[0]
    rows = connection.execute(SHINGLES).fetchall()
    hashes = [prompt_hash for prompt_hash, _ in rows]
    signatures = MinHash.bulk([shingles for _, shingles in rows], num_perm=PERMUTATIONS, hashfunc=_identity)
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=PERMUTATIONS)
    with lsh.insertion_session() as session:
        for index, signature in enumerate(signatures):
            session.insert(index, LeanMinHash(signature), check_duplication=False)
    matrix = np.stack([signature.hashvalues for signature in signatures]) if signatures else None
    buckets, members = [], []
    candidates = (band.get(key) for band in lsh.hashtables for key in band.keys())  # noqa: SIM118 (not a dict)
    for bucket, indices in enumerate(_confirmed(matrix, c) for c in candidates if len(c) > 1):
        buckets += [bucket] * len(indices)
        members += [hashes[i] for i in indices]
    table = pa.table({"bucket": pa.array(buckets, pa.int64()), "prompt_hash": pa.array(members, pa.uint64())})
    connection.register("lsh_buckets", table)
    connection.execute("CREATE OR REPLACE TEMP TABLE prompt_buckets AS SELECT * FROM lsh_buckets")
    connection.unregister("lsh_buckets")
    return len(rows)
