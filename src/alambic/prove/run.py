"""`alambic prove`: the radioactivity test end to end, from a suspect (weights or an endpoint) and some text
to a report a person can read: `report.json` and `report.html` with the p-value's growth and the null."""

from __future__ import annotations

import asyncio
import html
import json
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from alambic.distill.data import ExampleBuilder, read_answers
from alambic.errors import InvalidRequestError
from alambic.harvest import HarvestJob, Prompt, Sampling, run_harvest
from alambic.models import load_model
from alambic.prove.radioactivity import RadioactivityResult, Scored, radioactivity, suspect_predictions
from alambic.watermark.detect import read_documents
from alambic.watermark.schemes import KeyedScheme


def read_texts(paths: list[Path], tokenizer, *, limit: int | None = None) -> tuple[list[list[int]], list[int]]:
    """Token sequences and where scoring starts in each: a harvest directory gives prompt + answer through the
    chat template, scored on the answer (where the watermark was); files give their text, scored whole."""
    texts, starts = [], []
    for path in paths:
        if path.is_dir():
            builder = ExampleBuilder(tokenizer, max_length=2048)
            for row in read_answers(path):
                example = builder.example(row, targets=False)
                texts.append(example["input_ids"])
                starts.append(next(i for i, label in enumerate(example["labels"]) if label != -100))
        else:
            for _, text in read_documents([path]):
                texts.append(tokenizer.encode(text, add_special_tokens=False))
                starts.append(0)
    if not texts:
        raise InvalidRequestError("no text to read the suspect on")
    return texts[:limit], starts[:limit]


def read_suspect(suspect: str, text: list[Path], *, limit: int | None = None) -> Scored:
    """The suspect's predictions, teacher-forced on `text`: what reading mode scores."""
    model = load_model(suspect)
    texts, starts = read_texts(text, model.tokenizer, limit=limit)
    return suspect_predictions(model.model, texts, starts)


def prove_weights(
    suspect: str, scheme: KeyedScheme, text: list[Path], *, limit: int | None = None, **test
) -> RadioactivityResult:
    """Reading mode: teacher-force the suspect's weights on `text`."""
    return radioactivity(scheme, read_suspect(suspect, text, limit=limit), mode="reading", **test)


def prove_api(
    endpoint: str,
    model: str,
    api_key: str,
    prompts: list[Prompt],
    scheme: KeyedScheme,
    tokenizer,
    answers_dir: Path,
    *,
    max_tokens: int = 256,
    **test,
) -> RadioactivityResult:
    """API mode: sample the suspect's answers (resumable, into `answers_dir`) and detect the key in them."""
    job = HarvestJob(
        endpoint=endpoint,
        model=model,
        api_keys=(api_key,),
        prompts=tuple(prompts),
        out=answers_dir,
        sampling=Sampling(max_tokens=max_tokens, temperature=1.0),
    )
    stats = asyncio.run(run_harvest(job))
    if stats.status != "complete":
        raise InvalidRequestError(f"the suspect answered {stats.rows_done} of {len(prompts)} prompts: {stats.status}")
    texts = [tokenizer.encode(row.answer, add_special_tokens=False) for row in read_answers(answers_dir)]
    return radioactivity(scheme, Scored.of_text(texts, [0] * len(texts)), mode="api", **test)


def explain(result: RadioactivityResult, suspect: str) -> str:
    """The verdict in plain words."""
    closest = min(result.null_pvalues, default=1.0)
    null = (
        f"Under {len(result.null_pvalues)} other keys the smallest p-value was {closest:.2g}"
        f" (empirical p-value {result.empirical_pvalue:.2g})."
        if result.null_pvalues
        else ""
    )
    reading = "its next-token predictions" if result.mode == "reading" else "its answers"
    if result.verdict == "radioactive":
        return (
            f"{suspect}: {reading} lean towards this key's watermark. Over {result.tokens_scored:,} distinct scored "
            f"tokens the chance of a bias this strong in a model that never saw the watermark is p = "
            f"{result.pvalue:.2g}, below the chosen false-positive rate {result.false_positive_rate:g}. {null} "
            "The suspect was very likely trained on text watermarked with this key."
        )
    return (
        f"{suspect}: no evidence of this key's watermark in {reading}: p = {result.pvalue:.2g} over "
        f"{result.tokens_scored:,} distinct scored tokens, not below the false-positive rate "
        f"{result.false_positive_rate:g}. {null} This does not prove the suspect never saw watermarked text: "
        "a small share of it, or too little text read, can leave the trace below detection."
    )


def write_report(result: RadioactivityResult, suspect: str, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    summary = {"suspect": suspect, "verdict": result.verdict, "explanation": explain(result, suspect), **asdict(result)}
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot(result, out / "evidence.png")
    figures = "".join(
        f"<tr><th>{name}</th><td>{html.escape(str(value))}</td></tr>"
        for name, value in [
            ("verdict", result.verdict),
            ("p-value", f"{result.pvalue:.3g}"),
            ("distinct tokens scored", f"{result.tokens_scored:,}"),
            ("score", f"{result.score:.1f}"),
            ("empirical p-value (other keys)", f"{result.empirical_pvalue:.3g}"),
            ("null p-values uniform? (KS p)", f"{result.null_ks_pvalue:.3g}"),
            ("scheme, mode", f"{result.scheme}, {result.mode}"),
        ]
    )
    (out / "report.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>alambic prove</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:60em}th{text-align:left;padding-right:1em}</style>"
        f"<h1>Was {html.escape(suspect)} trained on our watermarked text?</h1>"
        f"<p>{html.escape(explain(result, suspect))}</p><table>{figures}</table>"
        "<img src='evidence.png' alt='p-value by tokens scored, and the null from other keys'>\n"
    )
    return out


def _plot(result: RadioactivityResult, path: Path) -> None:
    figure, (growth, null) = plt.subplots(1, 2, figsize=(10, 4))
    if result.growth:
        counts, pvalues = zip(*result.growth, strict=True)
        growth.semilogx(counts, -np.log10(np.maximum(pvalues, 1e-300)), marker="o", label="our key")
    growth.axhline(-np.log10(result.false_positive_rate), color="red", linestyle="--", label="false-positive rate")
    growth.set(xlabel="distinct tokens scored", ylabel="-log10 p", title="Evidence grows with tokens read")
    growth.legend()
    if result.null_pvalues:
        null.hist(-np.log10(np.maximum(result.null_pvalues, 1e-300)), bins=20, color="grey", label="other keys")
    null.axvline(-np.log10(max(result.pvalue, 1e-300)), color="blue", label="our key")
    null.set(xlabel="-log10 p", ylabel="keys", title="Our key against the null")
    null.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
