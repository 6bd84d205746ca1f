"""The harvest's progress bar and closing summary, in Rich."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from alambic.harvest.job import HarvestStats


class HarvestProgress:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]harvest"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.0f} tok/s  errors {task.fields[errors]}  ${task.fields[cost]:.4f}"),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = None

    def __enter__(self) -> HarvestProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def update(self, stats: HarvestStats) -> None:
        fields = {"rate": stats.tokens_per_second, "errors": stats.failed, "cost": stats.cost}
        if self.task is None:
            self.task = self.progress.add_task("harvest", total=stats.rows_total, **fields)
        self.progress.update(self.task, completed=stats.rows_done, **fields)

    def summarise(self, stats: HarvestStats, out: Path) -> None:
        retries = ", ".join(f"{reason} {count}" for reason, count in sorted(stats.retries.items())) or "none"
        self.console.print(
            f"{stats.status}: {stats.rows_done}/{stats.rows_total} rows in {out} "
            f"({stats.rows_written} new, {stats.failed} failed; retries: {retries}; "
            f"concurrency {stats.concurrency_limit} at the end, {stats.concurrency_lowest} at the lowest; "
            f"{stats.prompt_tokens + stats.completion_tokens} tokens, ${stats.cost:.4f}; "
            f"with earlier runs {stats.tokens_total} tokens, ${stats.cost_total:.4f})",
            highlight=False,
            soft_wrap=True,
        )
