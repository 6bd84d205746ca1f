"""Content signals: topic coverage and novelty from prompt embeddings, near-duplicates across accounts, the cache."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
from sklearn.feature_extraction.text import HashingVectorizer

from alambic.monitor.content import CONTENT_FEATURES, content_features, sampled_prompts
from alambic.monitor.embeddings import EmbeddingCache, minilm_encoder
from alambic.monitor.near_duplicates import load_buckets
from alambic.monitor.prompts import load_prompts
from alambic.monitor.source import open_log
from alambic.simulate import Simulation, SimulationSettings, write_jsonl


class CountingEncoder:
    """A cheap stand-in for the sentence encoder (hashed bag of words and word pairs) that counts its calls."""

    def __init__(self) -> None:
        self.vectorizer = HashingVectorizer(n_features=512, ngram_range=(1, 2), norm="l2", alternate_sign=False)
        self.texts = 0

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.texts += len(texts)
        return self.vectorizer.transform(texts).toarray().astype(np.float32)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("content") / "log.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=1, days=2, scale=0.1, campaigns=("sharded", "hydra"))), out)
    return out, json.loads((out.parent / "labels.json").read_text())


@pytest.fixture(scope="module")
def features(world):
    log, _ = world
    return content_features(open_log([log]), EmbeddingCache(CountingEncoder()), sample=12)


def _by_style(features, labels, name):
    styles: dict[str, list[float]] = {}
    for account, values in features.items():
        styles.setdefault(labels[account]["style"], []).append(values[name])
    return styles


def test_every_account_gets_every_content_feature(world, features):
    _, labels = world
    assert set(features) == set(labels)
    assert all(list(values) == list(CONTENT_FEATURES) for values in features.values())


def test_campaign_accounts_cover_more_topics_than_integrations(world, features):
    _, labels = world
    coverage = _by_style(features, labels, "topic_coverage")
    integrations = [c for style, values in coverage.items() if style.startswith("integration") for c in values]
    for style in ("sharded", "hydra"):
        assert statistics.median(coverage[style]) > max(integrations)
    novelty = _by_style(features, labels, "novelty_share")
    assert min(novelty["sharded"]) > statistics.median(novelty["integration-summarise"])


def test_near_duplicates_are_found_across_accounts(world, features):
    log, labels = world
    connection = open_log([log])
    load_buckets(connection)
    spread = connection.execute("""
        SELECT list(DISTINCT ap.account) FROM prompt_buckets b JOIN account_prompts ap USING (prompt_hash)
        GROUP BY b.bucket HAVING count(DISTINCT ap.account) > 1 AND count(DISTINCT b.prompt_hash) > 1
    """).fetchall()
    sharded = {a for a, label in labels.items() if label["style"] == "sharded"}
    assert any(len(sharded & set(accounts)) >= 2 for (accounts,) in spread)
    near = _by_style(features, labels, "near_duplicate_share")
    assert statistics.median(near["sharded"]) > 0.25 > max(near["integration-summarise"])


def test_the_cache_never_embeds_a_prompt_twice(world, tmp_path):
    log, _ = world
    connection, encoder = open_log([log]), CountingEncoder()
    cache = EmbeddingCache(encoder, path=tmp_path / "embeddings.parquet")
    first = content_features(connection, cache, sample=4)
    embedded = encoder.texts
    assert embedded == cache.embedded > 0 and cache.cached_share < 1
    again = content_features(connection, cache, sample=4)
    assert encoder.texts == embedded and cache.reused >= embedded
    reloaded = EmbeddingCache(CountingEncoder(), path=tmp_path / "embeddings.parquet")
    assert content_features(connection, reloaded, sample=4) == first == again
    assert reloaded.encoder.texts == 0 and reloaded.cached_share == 1


def test_what_is_embedded_is_a_bounded_sample_of_each_accounts_distinct_prompts_in_time_order(world):
    log, labels = world
    connection = open_log([log])
    load_prompts(connection)
    sampled = sampled_prompts(connection, sample=5)
    by_account: dict[str, list] = {}
    for account, prompt_hash, prompt in sampled:
        by_account.setdefault(account, []).append((prompt_hash, prompt))
    assert set(by_account) == set(labels) and max(map(len, by_account.values())) == 5
    assert all(len({h for h, _ in picked}) == len(picked) for picked in by_account.values())
    firsts = connection.execute("SELECT account, prompt_hash, epoch(first_t) FROM account_prompts").fetchall()
    first = {(a, h): t for a, h, t in firsts}
    for account, picked in by_account.items():
        times = [first[account, h] for h, _ in picked]
        assert times == sorted(times)
    assert sampled_prompts(connection, sample=5) == sampled  # the same sample each time


def test_the_shipped_encoder_loads_offline_and_ranks_paraphrases_closest():
    encode = minilm_encoder()
    vectors = encode(["How do I reset my password?", "I forgot my password, how can I change it?", "Bake bread."])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3


def test_a_log_without_accounts_has_no_content_features(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"time": "2026-11-02T10:00:00+00:00", "messages": [{"role": "user", "content": "hi"}]}))
    assert content_features(open_log([log]), EmbeddingCache(CountingEncoder())) == {}
