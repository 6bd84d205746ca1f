"""Content signals per account: how far its prompts spread over the topics of all traffic, how often they move
to new ground, and how many nearly match other accounts' prompts.

An extraction campaign sweeps a topic space systematically; a person or an integration circles its own needs.
Topics are k-means clusters of sentence embeddings (`monitor.embeddings`) of a bounded sample of each account's
distinct prompts; near-duplicates come from MinHash LSH (`monitor.near_duplicates`).
"""

from __future__ import annotations

from collections import defaultdict

import duckdb
import numpy as np
from sklearn.cluster import MiniBatchKMeans

from alambic.monitor.embeddings import EmbeddingCache
from alambic.monitor.near_duplicates import load_buckets

CONTENT_FEATURES = {
    "near_duplicate_share": "requests whose prompt nearly matches (MinHash LSH) a different prompt of another account",
    "topic_clusters": "topic clusters (k-means of prompt embeddings) its sampled distinct prompts fall in",
    "topic_coverage": "topic clusters covered / those as many prompts drawn at random from all traffic would cover",
    "novelty_share": "sampled prompts, in time order, unlike (cosine < 0.5) every earlier prompt of the account",
}
SAMPLE = 16  # distinct prompts embedded per account: the work is bounded by accounts, not by the log
CLUSTERS = 48
NOVEL_BELOW = 0.5  # cosine similarity to the account's most similar earlier prompt

# Up to `SAMPLE` distinct prompts per account, picked by a hash (a deterministic random sample), in time order.
SAMPLED = """
SELECT account, prompt_hash, prompt FROM (
    SELECT ap.account, ap.prompt_hash, pt.prompt, ap.first_t,
           row_number() OVER (PARTITION BY ap.account ORDER BY hash(ap.prompt_hash, ap.account)) AS pick
    FROM account_prompts ap JOIN prompt_texts pt USING (prompt_hash))
WHERE pick <= $sample
ORDER BY account, first_t, prompt_hash
"""

# Buckets that hold different prompts from different accounts: a prompt in one has a near-duplicate elsewhere.
NEAR_DUPLICATE_SHARE = """
WITH spread AS (
    SELECT b.bucket FROM prompt_buckets b JOIN account_prompts ap USING (prompt_hash)
    GROUP BY b.bucket HAVING count(DISTINCT ap.account) > 1 AND count(DISTINCT b.prompt_hash) > 1
),
near AS (SELECT DISTINCT prompt_hash FROM prompt_buckets JOIN spread USING (bucket))
SELECT ap.account, sum(CASE WHEN near.prompt_hash IS NULL THEN 0 ELSE ap.requests END) / sum(ap.requests)
FROM account_prompts ap LEFT JOIN near USING (prompt_hash)
GROUP BY ap.account
"""


def content_features(
    connection: duckdb.DuckDBPyConnection, cache: EmbeddingCache | None = None, sample: int = SAMPLE
) -> dict[str, dict[str, float]]:
    """Every account's `CONTENT_FEATURES` over the `requests` relation (`monitor.source`)."""
    load_buckets(connection)
    near = dict(connection.execute(NEAR_DUPLICATE_SHARE).fetchall())
    rows = sampled_prompts(connection, sample)
    if not rows:
        return {}
    cache = cache if cache is not None else EmbeddingCache()
    vectors = cache.embed({prompt_hash: prompt for _, prompt_hash, prompt in rows})
    topics = _topics(vectors)
    by_account: dict[str, list[int]] = defaultdict(list)
    for account, prompt_hash, _ in rows:
        by_account[account].append(prompt_hash)
    share = np.bincount([topics[h] for _, h, _ in rows], minlength=max(topics.values()) + 1) / len(rows)
    features = {}
    for account, hashes in by_account.items():
        covered = len({topics[h] for h in hashes})
        expected = float(np.sum(1 - (1 - share) ** len(hashes)))  # clusters n random prompts would cover
        features[account] = {
            "near_duplicate_share": float(near.get(account, 0.0)),
            "topic_clusters": float(covered),
            "topic_coverage": covered / expected,
            "novelty_share": _novelty(np.stack([vectors[h] for h in hashes])),
        }
    return features


def sampled_prompts(connection: duckdb.DuckDBPyConnection, sample: int = SAMPLE) -> list[tuple[str, int, str]]:
    """The prompts embedded: (account, prompt hash, prompt), up to `sample` distinct ones per account, from the
    tables `prompts.load_prompts` builds."""
    return connection.execute(SAMPLED, {"sample": sample}).fetchall()


def _topics(vectors: dict[int, np.ndarray]) -> dict[int, int]:
    """A topic cluster for each distinct prompt."""
    hashes = list(vectors)
    clusters = min(CLUSTERS, max(1, len(hashes) // 4))
    if clusters == 1:
        return dict.fromkeys(hashes, 0)
    kmeans = MiniBatchKMeans(n_clusters=clusters, random_state=0, n_init=3, batch_size=1024)
    labels = kmeans.fit_predict(np.stack([vectors[h] for h in hashes]))
    return dict(zip(hashes, labels.tolist(), strict=True))


def _novelty(embeddings: np.ndarray) -> float:
    """Share of prompts after the first whose cosine to every earlier one is below `NOVEL_BELOW`."""
    if len(embeddings) < 2:
        return 0.0
    similarity = embeddings @ embeddings.T  # (n, n), rows of unit norm
    similarity[np.triu_indices(len(embeddings))] = -1.0  # only earlier prompts count
    return float(np.mean(similarity[1:].max(axis=1) < NOVEL_BELOW))
