"""`alambic log import | export` and `alambic simulate`: the request log as v1 files (docs/request-log.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from alambic.cli.common import DatabaseOption, app, console, moment, one_line_errors
from alambic.errors import InvalidRequestError

log_app = typer.Typer(no_args_is_help=True, help="The request log as data: import and export v1 files.")
app.add_typer(log_app, name="log")


def _progress(label: str) -> Progress:
    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        TextColumn("{task.completed:,} rows"),
        TimeElapsedColumn(),
        console=console,
    )


@log_app.command("import")
@one_line_errors
def import_log(
    files: Annotated[list[Path], typer.Argument(help="v1 files: .jsonl, .jsonl.gz, .csv or .parquet.")],
    db: DatabaseOption = None,
    preset: Annotated[str | None, typer.Option(help="Another gateway's export: litellm or nginx-json.")] = None,
    map_rules: Annotated[
        list[str] | None,
        typer.Option("--map", help="FIELD=SOURCE.PATH: where a v1 field is in the source rows (repeatable)."),
    ] = None,
    count_tokens: Annotated[
        bool, typer.Option(help="Count null prompt/completion tokens with the teacher's tokenizer.")
    ] = True,
) -> None:
    """Import request logs into the store; rows already there (by id) are skipped, bad rows reported."""
    from alambic.logs.importer import LogImporter
    from alambic.logs.mapping import field_map
    from alambic.store import Store

    rules = field_map(preset, map_rules or [])
    store = Store(db)
    started = time.perf_counter()
    with _progress("import") as progress:
        task = progress.add_task("import", total=None)
        importer = LogImporter(
            store,
            rules,
            count_tokens=_teacher_token_counter() if count_tokens else None,
            on_progress=lambda rows: progress.advance(task, rows),
        )
        report = importer.import_files(files)
    seconds = time.perf_counter() - started
    for rejected in report.rejected:
        console.print(f"rejected {rejected}", highlight=False, soft_wrap=True, markup=False)
    console.print(
        f"imported {report.imported:,} rows ({report.already_present:,} already in the store, "
        f"{len(report.rejected):,} rejected, {report.accounts_created:,} new accounts, "
        f"{report.per_row:,} checked one by one) "
        f"in {seconds:.1f} s: {report.read / max(seconds, 1e-9):,.0f} rows/s",
        highlight=False,
    )


@log_app.command("export")
@one_line_errors
def export_log(
    out: Annotated[Path, typer.Option(help="A .jsonl or .parquet file to write.")],
    db: DatabaseOption = None,
    since: Annotated[str | None, typer.Option(help="Only requests at or after this ISO 8601 time.")] = None,
    until: Annotated[str | None, typer.Option(help="Only requests before this ISO 8601 time.")] = None,
    account: Annotated[str | None, typer.Option(help="Only this account's requests.")] = None,
) -> None:
    """Export the store's request log as v1, oldest first, in bounded memory."""
    from alambic.logs.exporter import ExportFilter
    from alambic.logs.exporter import export_log as write
    from alambic.store import Store

    where = ExportFilter(moment("--since", since), moment("--until", until), account)
    started = time.perf_counter()
    with _progress("export") as progress:
        task = progress.add_task("export", total=None)
        written = write(Store(db, create=False), out, where, on_progress=lambda rows: progress.advance(task, rows))
    seconds = time.perf_counter() - started
    console.print(f"exported {written:,} rows to {out} in {seconds:.1f} s: {written / max(seconds, 1e-9):,.0f} rows/s")


@app.command()
@one_line_errors
def simulate(
    out: Annotated[Path | None, typer.Option(help="Write the log here (.jsonl or .jsonl.gz).")] = None,
    db: Annotated[str | None, typer.Option("--db", help="Or import it into this store (SQLAlchemy URL).")] = None,
    endpoint: Annotated[
        str | None, typer.Option(help="Or send it to a live gateway's /v1 URL, in accelerated time.")
    ] = None,
    admin_key: Annotated[
        str | None, typer.Option(envvar="ALAMBIC_ADMIN_KEY", help="--endpoint: the gateway's admin key.")
    ] = None,
    speed: Annotated[float, typer.Option(min=1, help="--endpoint: simulated seconds per real second.")] = 3600,
    max_requests: Annotated[int | None, typer.Option(min=1, help="--endpoint: stop after this many.")] = None,
    labels: Annotated[
        Path | None, typer.Option(help="Where the labels go.", show_default="labels.json beside --out")
    ] = None,
    days: Annotated[int, typer.Option(min=1, help="Days of traffic, from a Monday.")] = 7,
    scale: Annotated[float, typer.Option(min=0.01, help="Accounts and volumes, relative to the default world.")] = 1.0,
    seed: Annotated[int, typer.Option(help="The same seed gives the same bytes.")] = 0,
    campaigns: Annotated[str, typer.Option(help="Comma-separated campaign styles, or 'none'.")] = "all",
    data: Annotated[
        Path | None, typer.Option(help="Real prompts from a directory laid out as ../shared/data (else built-in).")
    ] = None,
) -> None:
    """Simulate an API's traffic (benign integrations, people, extraction campaigns) as request log v1."""
    from alambic.simulate import CAMPAIGNS, Simulation, SimulationSettings, write_jsonl, write_labels

    if sum(target is not None for target in (out, db, endpoint)) != 1:
        raise InvalidRequestError("Give one of --out FILE, --db URL or --endpoint URL.")
    if out is None and labels is None:
        raise InvalidRequestError("Say where the labels go with --labels FILE.")
    if endpoint is not None and not admin_key:
        raise InvalidRequestError("--endpoint needs the gateway's --admin-key to create the simulated accounts.")
    styles = (
        tuple(CAMPAIGNS)
        if campaigns == "all"
        else ()
        if campaigns == "none"
        else tuple(s.strip() for s in campaigns.split(",") if s.strip())
    )
    simulation = Simulation(SimulationSettings(seed=seed, days=days, scale=scale, campaigns=styles, data=data))
    started = time.perf_counter()
    accounts: set[str] = set()

    def rows():
        for row in simulation.rows():
            accounts.add(row["account"])
            yield row

    with _progress("simulate") as progress:
        task = progress.add_task("simulate", total=None)
        if out is not None:
            written = write_jsonl(simulation, out, labels, on_progress=lambda n: progress.advance(task, n))
            where = str(out)
        elif db is not None:
            from alambic.logs.importer import LogImporter
            from alambic.logs.sources import SourceRow
            from alambic.store import Store

            importer = LogImporter(Store(db), on_progress=lambda n: progress.advance(task, n))
            sources = (SourceRow("simulate", number, row) for number, row in enumerate(rows(), start=1))
            written, where = importer.import_rows(sources).imported, db
        else:
            import asyncio
            from itertools import islice

            from alambic.simulate.live import LiveTraffic

            live = LiveTraffic(endpoint, admin_key, speed=speed)
            report = asyncio.run(live.run(islice(rows(), max_requests)))
            written, where = report.sent, f"{endpoint} (statuses {dict(sorted(report.statuses.items()))})"
    if out is None:
        write_labels(simulation, labels, accounts)
    seconds = time.perf_counter() - started
    console.print(
        f"simulated {written:,} requests to {where} in {seconds:.1f} s: {written / max(seconds, 1e-9):,.0f} rows/s",
        highlight=False,
    )


def _teacher_token_counter():
    """Counts tokens with the teacher's tokenizer, loaded only if some row needs it."""
    tokenizer = None

    def count(texts: list[str]) -> list[int]:
        nonlocal tokenizer
        if not texts:
            return []
        if tokenizer is None:
            from transformers import AutoTokenizer

            from alambic.models.loading import smollm2_directory

            tokenizer = AutoTokenizer.from_pretrained(smollm2_directory())
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    return count
