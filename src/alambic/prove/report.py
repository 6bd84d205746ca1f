"""`alambic prove`'s report for a person: `report.json`, `report.html` and `evidence.png` (the p-value's growth
with tokens read, and our key against the null of other keys)."""

from __future__ import annotations

import html
import json
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from alambic.prove.radioactivity import RadioactivityResult


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


# Why positions were not scored, in words, by the key `ScoredPairs.excluded` counts them under.
EXCLUSIONS = {
    "context_seen_in_input": "context seen earlier in the input (the suspect could copy it)",
    "rare_context": "context in fewer texts than --min-context-texts",
    "repeated_pair": "(context, token) pair already scored",
}


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
            ("positions the text offered", f"{result.positions:,}"),
            *((f"not scored: {EXCLUSIONS[rule]}", f"{count:,}") for rule, count in result.excluded.items()),
            *_cost_rows(result),
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


def _cost_rows(result: RadioactivityResult) -> list[tuple[str, str]]:
    if result.cost is None:
        return []
    read = "tokens read (teacher-forced)" if result.mode == "reading" else "tokens read (the suspect's answers)"
    cost = result.cost
    seconds = f"{cost.cpu_seconds:.1f}, {cost.wall_seconds:.1f}"
    return [(read, f"{cost.tokens_read:,}"), ("CPU seconds, wall seconds", seconds)]


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
