"""Content signals: topic coverage and novelty from prompt embeddings of each account's tasks, near-duplicates
across accounts, the cache."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasketch import LeanMinHash, MinHash, MinHashLSH
from monitor_traffic import HashedWords, opened, row, write

from alambic.monitor import content, embeddings, near_duplicates
from alambic.monitor.assess import campaign_features
from alambic.monitor.content import CONTENT_FEATURES, account_content, sampled_prompts, task_texts
from alambic.monitor.embeddings import EmbeddingCache, minilm_encoder
from alambic.monitor.near_duplicates import PERMUTATIONS, THRESHOLD, Signatures, load_buckets
from alambic.monitor.source import open_log
from alambic.monitor.tables import load_tables
from alambic.simulate import Simulation, SimulationSettings, write_jsonl
from alambic.simulate.text import DOMAINS, TextBank
from alambic.simulate.text import TASKS as TASK_TEMPLATES


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("content") / "log.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=1, days=2, scale=0.1, campaigns=("sharded", "hydra"))), out)
    return out, json.loads((out.parent / "labels.json").read_text())


@pytest.fixture(scope="module")
def features(world):
    log, _ = world
    return account_content(opened([log]), EmbeddingCache(HashedWords()), sample=12).features


def _by_style(features, labels, name):
    styles: dict[str, list[float]] = {}
    for account, values in features.items():
        styles.setdefault(labels[account]["style"], []).append(values[name])
    return styles


def test_a_growing_log_signs_each_prompt_once_and_buckets_as_if_signed_afresh(world):
    # Replay and follow score a log that only grows: the signatures of the prompts scored before are kept, by hash.
    log, _ = world
    connection = open_log([log], name="log")
    connection.execute("CREATE VIEW requests AS SELECT * FROM log WHERE t < (SELECT min(t) FROM log) + INTERVAL 1 DAY")
    load_tables(connection)
    signatures = Signatures()
    early = load_buckets(connection, signatures)
    assert signatures.signed == early > 0
    connection.execute("CREATE OR REPLACE VIEW requests AS SELECT * FROM log")
    load_tables(connection)
    every = load_buckets(connection, signatures)
    kept = connection.execute("SELECT * FROM prompt_buckets ORDER BY ALL").fetchall()
    assert early < every == signatures.signed == len(signatures.hashes)  # each distinct prompt signed once
    assert load_buckets(connection) == every
    assert connection.execute("SELECT * FROM prompt_buckets ORDER BY ALL").fetchall() == kept
    assert len(kept) > 0


def test_every_account_gets_every_content_feature(world, features):
    _, labels = world
    assert set(features) == set(labels)
    assert all(list(values) == list(CONTENT_FEATURES) for values in features.values())


def test_lsh_candidates_are_the_prompts_datasketch_s_own_lsh_puts_together():
    # Signatures that share some bands and not others: the sort-based bucketing must pair exactly the prompts that
    # MinHashLSH.query pairs, every bucket ascending, and keep no bucket of one.
    rng = np.random.default_rng(0)
    signatures = rng.integers(0, 1 << 32, size=(400, PERMUTATIONS), dtype=np.uint64).astype(np.uint32)
    for i in range(0, 400, 3):  # copy a few random bands from an earlier prompt
        j = int(rng.integers(0, 400))
        for band in rng.choice(14, size=int(rng.integers(1, 4)), replace=False):
            signatures[i, band * 4 : band * 4 + 4] = signatures[j, band * 4 : band * 4 + 4]
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=PERMUTATIONS)
    assert (lsh.b, lsh.r) == near_duplicates.bands() == (14, 4)
    hashed = [
        LeanMinHash(seed=1, hashvalues=row.astype(np.uint64), scheme=MinHash(num_perm=PERMUTATIONS).scheme)
        for row in signatures
    ]
    for i, minhash in enumerate(hashed):
        lsh.insert(i, minhash)
    members, starts = near_duplicates._candidates(near_duplicates._band_keys(signatures))
    buckets = np.split(members, starts[1:])
    assert all(len(b) > 1 and (np.diff(b) > 0).all() for b in buckets)
    paired = {i: set() for i in range(len(signatures))}
    for bucket in buckets:
        for i in bucket.tolist():
            paired[i].update(bucket.tolist())
    assert all(paired[i] - {i} == set(lsh.query(m)) - {i} for i, m in enumerate(hashed))
    assert sum(len(p) > 1 for p in paired.values()) > 100


def test_near_duplicates_are_found_across_accounts(world):
    log, labels = world
    connection = opened([log])
    load_buckets(connection)
    spread = connection.execute("""
        SELECT list(DISTINCT ap.account) FROM prompt_buckets b JOIN account_prompts ap USING (prompt_hash)
        GROUP BY b.bucket HAVING count(DISTINCT ap.account) > 1 AND count(DISTINCT b.prompt_hash) > 1
    """).fetchall()
    sharded = {a for a, label in labels.items() if label["style"] == "sharded"}
    assert any(len(sharded & set(accounts)) >= 2 for (accounts,) in spread)


def test_a_template_shared_by_all_of_an_account_s_prompts_is_cut_at_word_boundaries():
    wrapped = [
        f"You are Contoso's assistant. Rules: be kind.\n\nQuestion: {q} Thanks!" for q in ("Why?", "Where is it?")
    ]
    assert task_texts(wrapped) == ["Why?", "Where is it?"]
    assert task_texts(["What is a cat?", "What if I go?"]) == ["is a cat?", "if I go?"]  # never half a word
    assert task_texts(["Summarise: a", "Summarise: a", "Summarise: b"]) == ["a", "a", "b"]
    assert task_texts(["Review: ", "Review: good"]) == ["Review: ", "good"]  # all template: kept whole
    assert task_texts(["same", "same"]) == ["same", "same"]


SUPPORT = (
    "You are the virtual assistant of Contoso Bank. Be polite, concise and accurate. Never reveal internal "
    "policies. Escalate billing disputes to a human. "
    + " ".join(f"Rule {i}: answer in plain words." for i in range(40))
)
TASKS = [
    "Explain quantum entanglement to a physics student.",
    "How do I bake sourdough bread with a stiff starter?",
    "Why did the Western Roman Empire fall?",
    "What is the capital gains tax on shares held for two years?",
    "Write a Python function that sorts a list of dictionaries by a key.",
    "Describe how photosynthesis turns light into sugar.",
    "Which chess opening suits an aggressive beginner?",
    "How do I knit a cable stitch?",
    "What makes a volcano erupt explosively?",
    "How are stock options taxed when exercised?",
    "Which chords make a jazz ii-V-I progression in C?",
    "Give me a 16-week marathon training plan.",
]
REVIEWS = [
    "Great blender, crushes ice in seconds.",
    "The blender leaked after a week.",
    "Loud motor but the smoothies are smooth.",
    "Blades went dull fast, disappointed.",
    "Easy to clean, the jug is dishwasher safe.",
    "Stopped working after two months of smoothies.",
    "Perfect for soups and sauces.",
    "The lid does not seal well and juice spills.",
    "Powerful and quiet, worth the price.",
    "Arrived with a cracked jug.",
    "Makes great frozen drinks for parties.",
    "Too heavy to move around the kitchen.",
]
PEOPLE = [
    ["What should I cook tonight with eggs and spinach?", "Is it going to be hard to learn Spanish?"],
    ["Help me write a birthday message for my sister.", "How do I fix a squeaky door hinge?"],
    ["What is the best way to store fresh basil?", "Recommend a mystery novel for a long flight."],
]


def test_a_campaign_in_a_support_bot_s_template_is_read_by_its_tasks(tmp_path):
    """The real encoder (the claim is about meaning): a campaign's tasks wrapped in a long company template are
    read without it, so they spread over topics and keep moving to new ground; read whole, the encoder's 128
    tokens would hold the rules only, and every prompt would look the same."""
    rows = [("campaign", f"{SUPPORT}\n\nCustomer question: {task}") for task in TASKS]
    classify = "Classify the sentiment of this review as positive or negative.\n\nReview: {}"
    rows += [("integration", classify.format(review)) for review in REVIEWS]
    rows += [(f"person-{i}", prompt) for i, prompts in enumerate(PEOPLE) for prompt in prompts]
    features = account_content(opened([_log(tmp_path, rows)]), EmbeddingCache(minilm_encoder())).features
    assert features["campaign"]["topic_clusters"] >= 3
    assert features["campaign"]["novelty_share"] >= 0.9


def test_a_linked_campaign_is_read_on_the_topics_of_all_traffic(tmp_path):
    """Forty linked accounts sweeping one task set inside a company template, taken as one: its sample is read on
    the clusters that every account's prompts draw, so it covers about as many topics as its members do. On clusters
    drawn afresh once the campaign is one account, its sweep held 16 samples of a few hundred, got few clusters, and
    read as narrower than any of its accounts."""
    rng = random.Random(0)
    tasks = [t.format(concept=c, domain=d) for d, concepts in DOMAINS.items() for c in concepts for t in TASK_TEMPLATES]
    rng.shuffle(tasks)
    rows = [(f"sweep-{i % 40}", f"{SUPPORT}\n\nCustomer question: {task}") for i, task in enumerate(tasks[:480])]
    text = TextBank()
    makers = [text.summarise, text.extract, text.classify, text.translate, text.product, text.code_question]
    rows += [(f"benign-{n}", makers[n % len(makers)](rng)) for n in range(30) for _ in range(16)]
    connection, cache = opened([_log(tmp_path, rows)]), EmbeddingCache(HashedWords())
    members = {f"sweep-{i}": "sweep" for i in range(40)}
    alone = account_content(connection, cache).features
    (campaign,) = campaign_features(connection, members, cache).values()
    assert campaign["topic_clusters"] >= np.median([alone[a]["topic_clusters"] for a in members])
    assert campaign["topic_coverage"] >= 0.8 * np.median([alone[a]["topic_coverage"] for a in members])


def test_a_campaign_s_features_read_no_account_s_content_features(tmp_path, monkeypatch):
    """Without topics given, `campaign_features` fits them on the accounts' prompts, and reads content features for
    the campaigns alone (before, it computed every account's features only to take their topics)."""
    rows = [(f"sweep-{i % 4}", f"Explain concept {i} in detail.") for i in range(40)]
    rows += [(f"person-{n}", f"Summarise my note number {n}: {p}") for n, p in enumerate(["a b", "c d", "e f"])]
    connection, cache = opened([_log(tmp_path, rows)]), EmbeddingCache(HashedWords())
    read = []
    monkeypatch.setattr(content, "_novelty", lambda embeddings: read.append(len(embeddings)) or 0.0)
    campaign_features(connection, {f"sweep-{i}": "sweep" for i in range(4)}, cache)
    assert len(read) == 4  # the campaign and the three people, the rows of the grouped pass; not the 4 members


def _log(directory: Path, rows: list[tuple[str, str]]) -> Path:
    """A v1 log of one single-turn chat request per (account, prompt), a minute apart."""
    asked = [
        row(n, account, n) | {"messages": [{"role": "user", "content": prompt}]}
        for n, (account, prompt) in enumerate(rows)
    ]
    return write(directory / "log.jsonl", asked)[0]


def test_the_cache_never_embeds_a_prompt_twice(world, tmp_path):
    log, _ = world
    connection, encoder = opened([log]), HashedWords()
    cache = EmbeddingCache(encoder, path=tmp_path / "embeddings")
    first = account_content(connection, cache, sample=4).features
    embedded = encoder.texts
    assert embedded == cache.embedded > 0 and cache.cached_share < 1
    again = account_content(connection, cache, sample=4).features
    assert encoder.texts == embedded and cache.reused >= embedded
    reloaded = EmbeddingCache(HashedWords(), path=tmp_path / "embeddings")
    assert account_content(connection, reloaded, sample=4).features == first == again
    assert reloaded.encoder.texts == 0 and reloaded.cached_share == 1


def test_what_is_embedded_is_a_bounded_sample_of_each_accounts_distinct_prompts_in_time_order(world):
    log, labels = world
    connection = opened([log])
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
    assert account_content(opened([log]), EmbeddingCache(HashedWords())).features == {}


def test_a_save_writes_only_what_was_embedded_since_the_last_and_reloads_it_all(tmp_path):
    path = tmp_path / "embeddings"
    cache = EmbeddingCache(HashedWords(), path=path)
    first = cache.embed({1: "one prompt", 2: "another prompt"})
    cache.embed({1: "one prompt", 3: "a third prompt"})
    stored = [pq.read_table(part).column("prompt_hash").to_pylist() for part in path.iterdir()]
    assert sorted(map(sorted, stored)) == [[1, 2], [3]]
    reloaded = EmbeddingCache(HashedWords(), path=path)
    assert sorted(reloaded.vectors) == [1, 2, 3]
    assert np.array_equal(reloaded.embed({2: "another prompt"})[2], first[2]) and reloaded.encoder.texts == 0


def test_the_saved_parts_are_merged_into_one_when_they_pile_up(tmp_path, monkeypatch):
    monkeypatch.setattr(embeddings, "PARTS_MAX", 3)
    path = tmp_path / "embeddings"
    cache = EmbeddingCache(HashedWords(), path=path)
    for n in range(4):
        cache.embed({n: f"prompt number {n}"})
    (part,) = path.iterdir()
    assert sorted(pq.read_table(part).column("prompt_hash").to_pylist()) == [0, 1, 2, 3]
    cache.embed({4: "one more"})
    assert len(list(path.iterdir())) == 2 and sorted(EmbeddingCache(HashedWords(), path=path).vectors) == list(range(5))


def test_the_cache_is_named_by_what_the_encoder_s_vectors_depend_on(monkeypatch):
    key = embeddings.encoder_key()
    assert embeddings.encoder_key() == key and len(key) == 16
    monkeypatch.setattr(embeddings, "MAX_TOKENS", 2 * embeddings.MAX_TOKENS)
    assert embeddings.encoder_key() != key
