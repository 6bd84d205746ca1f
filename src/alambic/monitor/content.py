"""Content signals per account: how far its prompts spread over the topics of all traffic, and how often they
move to new ground.

An extraction campaign sweeps a topic space systematically; a person or an integration circles its own needs.
An account's prompts are read without their template first: the text that all its sampled prompts share at
the start and at the end (a company's rules pasted into the user turn, "Classify this review: ...") is cut
off, so a campaign dressed as an integration is judged by the tasks it sends, not by their wrapper, and an
integration by what varies in it. Topics are k-means clusters of sentence embeddings (`monitor.embeddings`) of
a bounded sample of each account's distinct prompts. Near-duplicate prompts across accounts
(`monitor.near_duplicates`) serve linking, not these signals: classrooms and evaluation harnesses share
prompts as much as campaigns do.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from os.path import commonprefix  # character by character, as templates are cut here

import duckdb
import numpy as np
from sklearn.cluster import MiniBatchKMeans
from threadpoolctl import threadpool_limits

from alambic.monitor.embeddings import EmbeddingCache

CONTENT_FEATURES = {
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
    SELECT ap.account, pt.prompt, ap.first_t, ap.prompt_hash,
           row_number() OVER (PARTITION BY ap.account ORDER BY hash(ap.prompt_hash, ap.account)) AS pick
    FROM account_prompts ap JOIN prompt_texts pt USING (prompt_hash))
WHERE pick <= $sample
ORDER BY account, first_t, prompt_hash
"""


@dataclass(frozen=True)
class Topics:
    """The topics of all traffic: k-means clusters of the accounts' sampled tasks, and each one's share of them."""

    kmeans: MiniBatchKMeans | None  # None: too few prompts for more than one cluster
    share: np.ndarray

    def of(self, vectors: np.ndarray) -> list[int]:
        """The topic of each vector (rows)."""
        return [0] * len(vectors) if self.kmeans is None else self.kmeans.predict(vectors).tolist()


@dataclass(frozen=True)
class Content:
    """What one pass over the accounts' sampled prompts gives: each account's `CONTENT_FEATURES`, and the topics
    they were read on (None: no prompt text to fit them on, and none given)."""

    features: dict[str, dict[str, float]]
    topics: Topics | None


def account_content(
    connection: duckdb.DuckDBPyConnection,
    cache: EmbeddingCache | None = None,
    sample: int = SAMPLE,
    topics: Topics | None = None,
) -> Content:
    """Every account's `CONTENT_FEATURES` over the tables `tables.load_tables` built, on `topics`: by default
    those of these accounts, fitted on the same sample. Where the tables hold linked groups as accounts, pass the
    topics of the accounts themselves: a campaign of many accounts, taken as one, leaves its prompts too few samples
    to draw the clusters that its topic sweep would cover."""
    embedded = _embedded(connection, cache, sample)
    if embedded is None:
        return Content({}, topics)
    vectors, keys = embedded
    topics = topics or _fitted(vectors, keys)
    hashes = list(vectors)
    topic = dict(zip(hashes, topics.of(np.stack([vectors[h] for h in hashes])), strict=True))
    features = {}
    for account, asked in keys.items():
        covered = len({topic[key] for key in asked})
        expected = float(np.sum(1 - (1 - topics.share) ** len(asked)))  # clusters as many random prompts would cover
        features[account] = {
            "topic_clusters": float(covered),
            "topic_coverage": covered / expected,
            "novelty_share": _novelty(np.stack([vectors[key] for key in asked])),
        }
    return Content(features, topics)


def account_topics(
    connection: duckdb.DuckDBPyConnection,
    cache: EmbeddingCache | None = None,
    sample: int = SAMPLE,
) -> Topics | None:
    """The topics `account_content` reads the accounts on by default, without their features (None: no prompt
    text)."""
    embedded = _embedded(connection, cache, sample)
    return None if embedded is None else _fitted(*embedded)


def _embedded(
    connection: duckdb.DuckDBPyConnection, cache: EmbeddingCache | None, sample: int
) -> tuple[dict[int, np.ndarray], dict[str, list[int]]] | None:
    """The vectors of the accounts' sampled tasks by text key, and each account's keys (None: no prompt text)."""
    tasks = account_tasks(connection, sample)
    if not tasks:
        return None
    cache = cache if cache is not None else EmbeddingCache()
    vectors = cache.embed({text_key(task): task for asked in tasks.values() for task in asked})
    return vectors, {account: [text_key(task) for task in asked] for account, asked in tasks.items()}


def sampled_prompts(connection: duckdb.DuckDBPyConnection, sample: int = SAMPLE) -> list[tuple[str, int, str]]:
    """(account, prompt hash, prompt): up to `sample` distinct prompts per account, from the tables
    `tables.load_tables` builds."""
    return connection.execute(SAMPLED, {"sample": sample}).fetchall()


def account_tasks(connection: duckdb.DuckDBPyConnection, sample: int = SAMPLE) -> dict[str, list[str]]:
    """What is embedded: each account's `sampled_prompts` without the template they share (`task_texts`)."""
    prompts: dict[str, list[str]] = defaultdict(list)
    for account, _, prompt in sampled_prompts(connection, sample):
        prompts[account].append(prompt)
    return {account: task_texts(asked) for account, asked in prompts.items()}


def task_texts(prompts: list[str]) -> list[str]:
    """The prompts without the template they share: their common start and end, cut at whitespace so that no
    word is split. A prompt that is all template stays whole; one prompt, or copies of one, has no template."""
    if len(set(prompts)) < 2:
        return list(prompts)
    head = _to_word_boundary(commonprefix(prompts))  # noqa: RUF071
    rests = [prompt[len(head) :] for prompt in prompts]
    tail = _to_word_boundary(commonprefix([rest[::-1] for rest in rests]))[::-1]  # noqa: RUF071
    tasks = [rest[: len(rest) - len(tail)].strip() for rest in rests]
    return [task or prompt for task, prompt in zip(tasks, prompts, strict=True)]


def _to_word_boundary(shared: str) -> str:
    """`shared` up to and including its last whitespace character ('' if it has none)."""
    cut = max((shared.rfind(space) for space in (" ", "\n", "\t")), default=-1)
    return shared[: cut + 1]


def text_key(text: str) -> int:
    """A stable 64-bit key for a text, for the embedding cache (which keeps vectors between runs)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _fitted(vectors: dict[int, np.ndarray], keys: dict[str, list[int]]) -> Topics:
    """k-means over the distinct tasks' `vectors`; each topic's share of all accounts' samples (`keys`)."""
    hashes = list(vectors)
    clusters = min(CLUSTERS, max(1, len(hashes) // 4))
    if clusters == 1:
        return Topics(None, np.ones(1))
    kmeans = MiniBatchKMeans(n_clusters=clusters, random_state=0, n_init=3, batch_size=1024)
    # Many small steps (1,024 rows each): on cores shared with other work (a gateway, the replay's own SQL) its
    # OpenMP threads wait on each other; one thread replayed a small log 2.6x faster on 2 such cores, same topics.
    with threadpool_limits(1):
        topic = dict(zip(hashes, kmeans.fit_predict(np.stack([vectors[h] for h in hashes])).tolist(), strict=True))
    sampled = [topic[key] for asked in keys.values() for key in asked]
    return Topics(kmeans, np.bincount(sampled, minlength=clusters) / len(sampled))


def _novelty(embeddings: np.ndarray) -> float:
    """Share of prompts after the first whose cosine to every earlier one is below `NOVEL_BELOW`."""
    if len(embeddings) < 2:
        return 0.0
    similarity = embeddings @ embeddings.T  # (n, n), rows of unit norm
    similarity[np.triu_indices(len(embeddings))] = -1.0  # only earlier prompts count
    return float(np.mean(similarity[1:].max(axis=1) < NOVEL_BELOW))
