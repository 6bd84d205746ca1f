"""Radioactivity with tiny models: a student distilled from a watermarked teacher's answers carries the key's
trace, a student distilled from the same teacher's plain answers does not, and other keys give the null."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from alambic.cli import app
from alambic.distill.losses import Loss
from alambic.distill.run import DistillConfig, distill
from alambic.models import tiny_model
from alambic.prove.radioactivity import Scored, radioactivity, scored_pairs, suspect_predictions
from alambic.prove.run import prove_weights
from alambic.watermark import KirchenbauerScheme
from alambic.watermark.keyed_hash import context_hash
from conftest import harvest_tiny_teacher

KEY = "the provider's secret key"
SCHEME = KirchenbauerScheme(KEY, gamma=0.25, delta=4.0)
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
    assert "very likely trained" in (tmp_path / "report.html").read_text()
    assert (tmp_path / "evidence.png").stat().st_size > 0


def test_repeated_text_is_scored_once():
    tokens = np.random.default_rng(0).integers(0, 5000, 300)
    once = scored_pairs(SCHEME, Scored.of_text([tokens], [0]))[0]
    thrice = scored_pairs(SCHEME, Scored.of_text([tokens, tokens, tokens], [0, 0, 0]))[0]
    assert len(once) == len(thrice) == len(set(zip(tokens[:-1].tolist(), tokens[1:].tolist(), strict=True)))


def test_random_text_is_not_radioactive_under_any_key():
    texts = [np.random.default_rng(i).integers(0, 49152, 400) for i in range(10)]
    result = radioactivity(SCHEME, Scored.of_text(texts, [0] * 10), mode="api", null_keys=200, min_context_texts=1)
    assert result.pvalue > 1e-3 and result.null_ks_pvalue > 0.001


def watermarked_walk(seed: int, length: int = 300, vocabulary: int = 60) -> np.ndarray:
    """Text over a few tokens in which 90% of the steps take a green token of the key: contexts repeat often."""
    rng = np.random.default_rng(seed)
    candidates = np.arange(1000, 1000 + vocabulary)
    text = [int(rng.choice(candidates))]
    for _ in range(length - 1):
        contexts = np.full(vocabulary, context_hash(text[-1:], SCHEME.seed), dtype=np.uint64)
        green = candidates[SCHEME.pair_scores(contexts, candidates) > 0]
        text.append(int(rng.choice(green if len(green) and rng.random() < 0.9 else candidates)))
    return np.array(text)


def copied_predictions(text: np.ndarray) -> np.ndarray:
    """An induction head with no weights at all: at i, the token that followed the last earlier occurrence of
    token i - 1 (else token i - 1 again). It never trained on anything, so it cannot be radioactive."""
    followers, predictions = {}, [0]
    for i in range(1, len(text)):
        predictions.append(followers.get(text[i - 1], text[i - 1]))
        followers[text[i - 1]] = text[i]
    return np.array(predictions)


def test_copying_the_watermarked_input_is_not_taken_for_radioactivity():
    texts = [watermarked_walk(seed) for seed in range(20)]
    predictions = [copied_predictions(text) for text in texts]
    every_position = Scored(texts, predictions, [0] * 20)
    assert radioactivity(SCHEME, every_position, mode="reading", null_keys=0).pvalue < 1e-6  # a false alarm
    fresh = radioactivity(SCHEME, Scored(texts, predictions, [0] * 20, fresh_contexts_only=True), mode="reading")
    assert fresh.pvalue > 1e-3 and fresh.null_ks_pvalue > 0.001


def test_only_contexts_found_in_enough_texts_are_scored():
    common, rare = 7, 8  # tokens as contexts (width 1); `rare` recurs, but in one text only
    texts = [np.array([common, 100 + i, rare, 200 + i, rare, 300 + i]) for i in range(3)]
    texts[1:] = [np.array([common, 100 + i]) for i in (1, 2)]
    pairs = scored_pairs(SCHEME, Scored.of_text(texts, [0] * 3), min_context_texts=3)
    assert pairs[0].tolist() == [context_hash([common], SCHEME.seed)] * 3
    assert sorted(pairs[1].tolist()) == [100, 101, 102]
    assert len(scored_pairs(SCHEME, Scored.of_text(texts, [0] * 3), min_context_texts=1)[0]) == 3 + 4


def test_suspect_predictions_are_the_models_next_token_guesses_from_each_start():
    model = tiny_model(initializer_range=0.3, tie_embeddings=False).model
    rng = np.random.default_rng(0)
    texts = [rng.integers(0, 49152, length) for length in (30, 12, 21)]
    starts = [10, 0, 5]
    read = suspect_predictions(model, texts, starts, batch_size=2)
    for text, start, guesses in zip(texts, starts, read.tokens, strict=True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=torch.from_numpy(text)[None]).logits[0]
        expected = logits.argmax(-1).numpy()[:-1]  # [t]: the guess for t + 1
        first = max(start, 1)
        assert len(guesses) == len(text) and guesses[first:].tolist() == expected[first - 1 :].tolist()
