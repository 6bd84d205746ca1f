"""The evaluation written for people: `report.json`, a Markdown table, and an HTML page with the students'
loss curves."""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from alambic.evaluate.run import ModelScore, scores_as_json

COLUMNS = {
    "model": "model",
    "role": "role",
    "params_M": "params (M)",
    "disk_MB": "disk (MB)",
    "agreement": "top-1 agreement",
    "kl": "KL(teacher‖model)",
    "perplexity": "perplexity",
    "gsm8k": "GSM8K",
    "tokens_per_s": "tokens/s",
    "train_cpu_s": "training CPU s",
    "train_tokens": "training tokens",
}


def write_report(scores: list[ModelScore], out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(scores_as_json(scores), indent=2) + "\n")
    table = [[_cell(score.row()[key]) for key in COLUMNS] for score in scores]
    (out / "report.md").write_text(_markdown(table))
    plotted = _plot_losses(scores, out / "loss.png")
    (out / "report.html").write_text(_html(table, plotted))
    return out


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _markdown(table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS.values()) + " |", "|" + " --- |" * len(COLUMNS)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in table)]) + "\n"


def _plot_losses(scores: list[ModelScore], path: Path) -> bool:
    curves = [(score.name, score.loss_curve) for score in scores if score.loss_curve]
    if not curves:
        return False
    figure, axes = plt.subplots(figsize=(7, 4))
    for name, curve in curves:
        steps, losses = zip(*curve, strict=True)
        axes.plot(steps, losses, label=Path(name).name)
    axes.set(xlabel="step", ylabel="training loss", title="Distillation loss")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def _html(table: list[list[str]], with_plot: bool) -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name in COLUMNS.values())
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in table)
    plot = '<img src="loss.png" alt="training loss by step">' if with_plot else ""
    return (
        "<!doctype html><meta charset='utf-8'><title>alambic evaluation</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.3em .8em;text-align:right}"
        "th{border-bottom:1px solid #888}</style>"
        f"<h1>Teacher, students and the undistilled baseline</h1><table><tr>{head}</tr>{rows}</table>{plot}"
        "<p>Agreement and KL are measured teacher-forced on the teacher's held-out answers.</p>\n"
    )
