"""Radioactivity with tiny models: a student distilled from a watermarked teacher's answers carries the key's
trace, a student distilled from the same teacher's plain answers does not, and other keys give the null."""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from transformers import AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerBase
from typer.testing import CliRunner

from alambic.cli import app
from alambic.distill.losses import Loss
from alambic.distill.run import DistillConfig, distill
from alambic.harvest.dataset import AnswerRow
from alambic.models import smollm2_directory, tiny_model
from alambic.models.cpu import bf16_autocast_pays
from alambic.models.tiny import tiny_config
from alambic.prove.null import copied_predictions, copying_answer
from alambic.prove.radioactivity import Scored, radioactivity, scored_pairs, suspect_predictions
from alambic.prove.run import answers_read, prove_weights
from alambic.watermark import AaronsonScheme, KirchenbauerScheme
from alambic.watermark.keyed_hash import context_hash
from conftest import harvest_tiny_teacher

KEY = "the provider's secret key"
SCHEME = KirchenbauerScheme(KEY, gamma=0.25, delta=4.0)
BOTH_SCHEMES = [SCHEME, AaronsonScheme(KEY)]
NULL_KEYS = 60
TINY_CONTEXT_TEXTS = 1  # the tiny student memorises its 160 short answers: even a context seen once carries the key


@pytest.fixture(scope="module")
def watermarked_answers(sharp_teacher, tmp_path_factory) -> Path:
    return harvest_tiny_teacher(sharp_teacher, tmp_path_factory.mktemp("watermarked"), watermark=SCHEME)


def student(data: Path, teacher: Path, out: Path) -> Path:
    settings = dict(student_layers=[0], loss=Loss.SFT, max_steps=40, learning_rate=2e-3, logging_steps=10)
    distill(DistillConfig(data=data, out=out, teacher=str(teacher), save_steps=40, **settings))
    return out


@pytest.fixture(scope="module")
def suspects(watermarked_answers, answers, sharp_teacher, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("suspects")
    return (
        student(watermarked_answers, sharp_teacher, root / "distilled-from-watermarked"),
        student(answers, sharp_teacher, root / "distilled-from-plain"),
    )


def test_the_student_of_watermarked_answers_is_radioactive_and_the_control_is_not(suspects, watermarked_answers):
    suspect, control = suspects
    test = {"null_keys": 50, "min_context_texts": TINY_CONTEXT_TEXTS}
    found = prove_weights(str(suspect), SCHEME, [watermarked_answers], **test)
    clean = prove_weights(str(control), SCHEME, [watermarked_answers], **test)
    assert found.pvalue < 1e-6 and found.verdict == "radioactive"
    assert found.empirical_pvalue == pytest.approx(1 / 51)  # no other key comes close
    assert clean.pvalue > 0.01 and clean.verdict == "not detected"
    assert clean.null_ks_pvalue > 0.001  # other keys' p-values look uniform
    assert found.growth[-1][0] == found.tokens_scored and found.growth[-1][1] == pytest.approx(found.pvalue)


def test_prove_writes_a_report_and_prints_the_result(suspects, watermarked_answers, tmp_path, monkeypatch):
    monkeypatch.setenv("ALAMBIC_WATERMARK_KEY", KEY)
    suspect, _ = suspects
    command = ["prove", "--suspect", str(suspect), "--text", str(watermarked_answers), "--out", str(tmp_path)]
    result = CliRunner().invoke(app, [*command, "--null-keys", "20", "--min-context-texts", str(TINY_CONTEXT_TEXTS)])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed["verdict"] == "radioactive" and printed["pvalue"] < 1e-6
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["tokens_scored"] == printed["tokens_scored"] and len(report["null_pvalues"]) == 20
    assert report["tokens_scored"] + sum(report["excluded"].values()) == report["positions"]
    assert set(report["excluded"]) == {"context_seen_in_input", "repeated_pair", "rare_context"}
    assert report["cost"]["tokens_read"] > report["positions"] and report["cost"]["cpu_seconds"] > 0
    page = (tmp_path / "report.html").read_text()
    assert "very likely trained" in page and "context seen earlier in the input" in page and "CPU seconds" in page
    assert (tmp_path / "evidence.png").stat().st_size > 0


def test_repeated_text_is_scored_once():
    tokens = np.random.default_rng(0).integers(0, 5000, 300)
    once = scored_pairs(SCHEME, Scored.of_text([tokens], [0]))
    thrice = scored_pairs(SCHEME, Scored.of_text([tokens, tokens, tokens], [0, 0, 0]))
    distinct = len(set(zip(tokens[:-1].tolist(), tokens[1:].tolist(), strict=True)))
    assert len(once.contexts) == len(thrice.contexts) == distinct
    assert thrice.excluded == {"context_seen_in_input": 0, "rare_context": 0, "repeated_pair": 3 * 299 - distinct}


def test_random_text_is_not_radioactive_under_any_key():
    texts = [np.random.default_rng(i).integers(0, 49152, 400) for i in range(10)]
    result = radioactivity(SCHEME, Scored.of_text(texts, [0] * 10), mode="api", null_keys=200, min_context_texts=1)
    assert result.pvalue > 1e-3 and result.null_ks_pvalue > 0.001


FAVOURED = {"kgw": 0.5, "gumbel": float(np.log(4))}  # score above which a token is among the key's favoured quarter
CANDIDATES = np.arange(1000, 1060)


def watermarked_walk(seed: int, length: int = 300, candidates: np.ndarray = CANDIDATES, scheme=SCHEME) -> np.ndarray:
    """Text over a few tokens in which 90% of the steps take one of the quarter of tokens the key favours after
    the last (kgw: green; gumbel: a draw above 3/4): contexts repeat often."""
    size, rng = len(candidates), np.random.default_rng(seed)
    # [a * size + b]: candidate b after candidate a
    contexts = np.repeat([context_hash([token], scheme.seed) for token in candidates], size)
    favoured = scheme.pair_scores(contexts, np.tile(candidates, size)).reshape(size, size) > FAVOURED[scheme.name]
    row = {int(token): favoured[index] for index, token in enumerate(candidates)}
    text = [int(rng.choice(candidates))]
    for _ in range(length - 1):
        after = candidates[row[text[-1]]]
        text.append(int(rng.choice(after if len(after) and rng.random() < 0.9 else candidates)))
    return np.array(text)


def test_copying_the_watermarked_input_is_not_taken_for_radioactivity():
    texts = [watermarked_walk(seed) for seed in range(20)]
    predictions = [copied_predictions(text) for text in texts]
    every_position = Scored(texts, predictions, [0] * 20)
    assert radioactivity(SCHEME, every_position, mode="reading", null_keys=0).pvalue < 1e-6  # a false alarm
    fresh = radioactivity(SCHEME, Scored(texts, predictions, [0] * 20, fresh_contexts_only=True), mode="reading")
    assert fresh.pvalue > 1e-3 and fresh.null_ks_pvalue > 0.001


@pytest.mark.parametrize("scheme", BOTH_SCHEMES, ids=lambda scheme: scheme.name)
def test_a_copier_reading_a_watermarked_earlier_turn_is_not_taken_for_radioactivity(scheme):
    """Two-turn rows, as the harvester writes a conversation: the teacher's watermarked first answer sits in
    the prompt of the second, scored from its start. The copier repeats green tokens it read in turn one."""
    first_turns = [watermarked_walk(seed, scheme=scheme) for seed in range(20)]
    # the second answer: the same words and 60 of its own, so it has new contexts to score
    second_words = [np.r_[CANDIDATES, 2000 + 60 * seed : 2060 + 60 * seed] for seed in range(20)]
    second_turns = [watermarked_walk(100 + seed, candidates=second_words[seed], scheme=scheme) for seed in range(20)]
    texts = [np.concatenate(turns) for turns in zip(first_turns, second_turns, strict=True)]
    read = Scored(texts, [copied_predictions(text) for text in texts], [300] * 20, fresh_contexts_only=True)
    result = radioactivity(scheme, read, mode="reading", min_context_texts=1)
    assert result.tokens_scored > 500  # the second turns' new contexts are still read
    assert result.pvalue > 1e-3 and result.null_ks_pvalue > 0.001


@pytest.mark.parametrize("scheme_class", [KirchenbauerScheme, AaronsonScheme], ids=["kgw", "gumbel"])
def test_innocent_readers_p_values_are_uniform_over_the_keys_that_watermarked_their_text(scheme_class):
    """The empirical null in small: under each of many keys, two-turn rows watermarked with that key, read by
    the copier and by a tiny random model (neither trained on any watermark); their p-values are uniform."""
    torch.manual_seed(0)
    reader = LlamaForCausalLM(tiny_config(2000, layers=1, hidden=32, initializer_range=0.3, tie_embeddings=False))
    schemes, texts = [scheme_class(f"null key {index}") for index in range(NULL_KEYS)], []
    for index, scheme in enumerate(schemes):
        for row in range(3):  # each row has its own words, and its second turn 60 more
            words, seed = np.arange(1000 + 240 * row, 1060 + 240 * row), 100 * index + row
            second = watermarked_walk(seed + 50, 100, np.r_[words, words + 60], scheme)
            texts.append(np.concatenate([watermarked_walk(seed, 100, words, scheme), second]))
    readings = {
        "copier": Scored(texts, [copied_predictions(text) for text in texts], [100] * len(texts), True),
        "tiny model": suspect_predictions(reader.eval(), texts, [100] * len(texts), batch_size=len(texts)),
    }
    for reader_name, reading in readings.items():
        pvalues = [
            radioactivity(scheme, _rows(reading, 3 * index, 3), mode="reading", null_keys=0, min_context_texts=1).pvalue
            for index, scheme in enumerate(schemes)
        ]
        assert stats.kstest(pvalues, "uniform").pvalue > 0.01, reader_name


def _rows(scored: Scored, first: int, count: int) -> Scored:
    rows = slice(first, first + count)
    return Scored(scored.texts[rows], scored.tokens[rows], scored.starts[rows], scored.fresh_contexts_only)


@pytest.fixture(scope="module")
def word_tokens() -> tuple[PreTrainedTokenizerBase, np.ndarray]:
    """The tokenizer, and ids of whole words with their leading space: any run of them encodes back to itself."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2_directory())
    encode = partial(tokenizer.encode, add_special_tokens=False)
    words = [
        i for i in range(1000, 20000) if re.fullmatch(r" [a-z]+", text := tokenizer.decode([i])) and encode(text) == [i]
    ]
    return tokenizer, np.array(words[:2000])


@pytest.mark.parametrize("scheme", BOTH_SCHEMES, ids=lambda scheme: scheme.name)
def test_an_api_suspect_copying_a_watermarked_prompt_is_not_taken_for_radioactivity(scheme, word_tokens):
    tokenizer, words = word_tokens
    rows = []
    for seed in range(20):
        passage = watermarked_walk(seed, candidates=words[:60], scheme=scheme)
        answer = copying_answer(passage, words[60 + 60 * seed : 120 + 60 * seed], seed)
        messages = [
            {"role": "system", "content": "You summarise."},
            {"role": "user", "content": "Summarise this:" + tokenizer.decode(passage)},
        ]
        rows.append(answer_row(f"p{seed}", messages, tokenizer.decode(answer)))
    read = answers_read(rows, tokenizer)
    alone = Scored.of_text(read.texts, read.starts)  # the answers without what the suspect was sent
    assert radioactivity(scheme, alone, mode="api", null_keys=0, min_context_texts=1).pvalue < 1e-6  # a false alarm
    result = radioactivity(scheme, read, mode="api", min_context_texts=1)
    assert result.tokens_scored > 500 and result.pvalue > 1e-3 and result.null_ks_pvalue > 0.001
    assert result.excluded["context_seen_in_input"] > 0


def answer_row(prompt_id: str, messages: list[dict], answer: str) -> AnswerRow:
    return AnswerRow(prompt_id, 0, 0, messages, answer, "stop", 0, 0, 0.0, 1, 0, "", "suspect", 0.0)


def test_only_contexts_found_in_enough_texts_are_scored():
    common, rare = 7, 8  # tokens as contexts (width 1); `rare` recurs, but in one text only
    texts = [np.array([common, 100 + i, rare, 200 + i, rare, 300 + i]) for i in range(3)]
    texts[1:] = [np.array([common, 100 + i]) for i in (1, 2)]
    pairs = scored_pairs(SCHEME, Scored.of_text(texts, [0] * 3), min_context_texts=3)
    assert pairs.contexts.tolist() == [context_hash([common], SCHEME.seed)] * 3
    assert sorted(pairs.tokens.tolist()) == [100, 101, 102]
    assert pairs.excluded["rare_context"] == 4 and pairs.positions == 3 + 4
    assert len(scored_pairs(SCHEME, Scored.of_text(texts, [0] * 3), min_context_texts=1).contexts) == 3 + 4


def test_suspect_predictions_are_the_models_next_token_guesses_from_each_start():
    model = tiny_model(initializer_range=0.3, tie_embeddings=False).model
    rng = np.random.default_rng(0)
    texts = [rng.integers(0, 49152, length) for length in (30, 12, 21)]
    starts = [10, 0, 5]
    read = suspect_predictions(model, texts, starts, batch_size=2)
    for text, start, guesses in zip(texts, starts, read.tokens, strict=True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_autocast_pays("cpu")):
            logits = model(input_ids=torch.from_numpy(text)[None]).logits[0]
        expected = logits.argmax(-1).numpy()[:-1]  # [t]: the guess for t + 1
        first = max(start, 1)
        assert len(guesses) == len(text) and guesses[first:].tolist() == expected[first - 1 :].tolist()
