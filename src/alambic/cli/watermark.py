"""`alambic watermark detect` and `alambic prove`: find a key's mark in text, and its trace in a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from alambic.cli.common import (
    app,
    before_backend_loads,
    console,
    one_line_errors,
    watermark_app,
    watermark_key,
    watermark_scheme,
)
from alambic.errors import InvalidRequestError
from alambic.prove import MIN_CONTEXT_TEXTS


@watermark_app.command("detect")
@one_line_errors
def watermark_detect(
    files: Annotated[list[Path], typer.Argument(help="Text files (one document each) or JSONL (one per line).")],
    scheme: Annotated[str, typer.Option(help="kgw or gumbel.")] = "kgw",
    key_env: Annotated[str, typer.Option(help="Environment variable holding the key.")] = "ALAMBIC_WATERMARK_KEY",
    gamma: Annotated[float, typer.Option(min=0.01, max=0.99, help="kgw: green fraction.")] = 0.25,
    context: Annotated[int, typer.Option(min=1, help="Tokens of context seeding the hash.")] = 1,
    field: Annotated[str, typer.Option(help="JSONL: the field holding the text.")] = "answer",
    tokenizer: Annotated[str, typer.Option(help="The watermarking model's tokenizer: smollm2 or a directory.")] = (
        "smollm2"
    ),
    fpr: Annotated[float, typer.Option(min=0.0, max=1.0, help="False-positive rate of the verdict.")] = 1e-6,
    per_document: Annotated[bool, typer.Option(help="Also print one JSON line per document.")] = False,
) -> None:
    """Score FILES for a key's watermark; the last line is the pooled result, as JSON."""
    from transformers import AutoTokenizer

    from alambic.models import smollm2_directory
    from alambic.watermark.detect import detect_documents, read_documents

    watermark = watermark_scheme(scheme, key_env, gamma, 0.0, context)
    text_tokenizer = AutoTokenizer.from_pretrained(smollm2_directory() if tokenizer == "smollm2" else tokenizer)
    documents, pooled = detect_documents(watermark, read_documents(files, field), text_tokenizer, fpr)
    if per_document:
        for document in documents:
            print(json.dumps(vars(document)))
    print(pooled.to_json())


@watermark_app.command("cost")
@one_line_errors
def watermark_cost(
    gsm8k: Annotated[Path, typer.Option(help="GSM8K JSONL: the questions answered under each setting.")],
    out: Annotated[Path | None, typer.Option(help="Also write the table here, as JSON.")] = None,
    model: Annotated[str, typer.Option(help="smollm2, tiny or a model directory.")] = "smollm2",
    backend: Annotated[str, typer.Option(help="transformers or llamacpp.")] = "transformers",
    delta: Annotated[list[float] | None, typer.Option(help="kgw strengths to try; repeat (default 1, 2, 4).")] = None,
    gamma: Annotated[float, typer.Option(min=0.01, max=0.99, help="kgw: green fraction.")] = 0.25,
    key_env: Annotated[str, typer.Option(help="Environment variable holding the key.")] = "ALAMBIC_WATERMARK_KEY",
    context: Annotated[int, typer.Option(min=1, help="Tokens of context seeding the hash.")] = 1,
    limit: Annotated[int, typer.Option(min=1, help="Questions asked.")] = 100,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature of the kgw rows.")] = 0.7,
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens per answer.")] = 256,
) -> None:
    """What each watermark setting costs: the answers' perplexity as the unwatermarked model scores them, GSM8K
    accuracy, and one answer's median detection p-value, against the same sampling without a watermark."""
    threads = before_backend_loads(backend)
    from rich.console import Console
    from rich.table import Table

    from alambic.evaluate.gsm8k import load_problems
    from alambic.evaluate.watermark_cost import DEFAULT_DELTAS, watermark_cost_table
    from alambic.generation import GenerationEngine
    from alambic.generation.backends import load_backend
    from alambic.models import load_model

    problems = load_problems(gsm8k, limit)
    key = watermark_key(key_env)
    engine = GenerationEngine(load_backend(model, backend, threads=threads), max_batch_size=32)
    try:
        scorer = engine.backend.model if backend == "transformers" else load_model(model).model
        with console.status(f"Answering {len(problems)} questions per setting…"):
            rows = watermark_cost_table(
                engine,
                scorer,
                problems,
                key,
                deltas=delta or DEFAULT_DELTAS,
                gamma=gamma,
                context_width=context,
                temperature=temperature,
                max_tokens=max_tokens,
            )
    finally:
        engine.close()
    table = Table("setting", "temperature", "perplexity", "GSM8K", "median p (one answer)", "tokens")
    for row in rows:
        pvalue = "-" if row.median_pvalue is None else f"{row.median_pvalue:.2g}"
        table.add_row(
            row.setting,
            f"{row.temperature:g}",
            f"{row.perplexity:.2f}",
            f"{row.accuracy:.1%}",
            pvalue,
            str(row.answer_tokens),
        )
    Console().print(table)  # the result, on stdout
    if out:
        out.write_text(json.dumps([vars(row) for row in rows], indent=2) + "\n")


@app.command()
@one_line_errors
def prove(
    suspect: Annotated[str, typer.Option(help="The suspect: a model directory (reading mode) or an API base URL.")],
    out: Annotated[Path, typer.Option(help="Report directory: report.json, report.html, evidence.png.")],
    text: Annotated[
        list[Path] | None,
        typer.Option(help="Weights: text to read the suspect on (a harvest dir, JSONL or text files); repeat."),
    ] = None,
    prompts: Annotated[Path | None, typer.Option(help="API: prompts the suspect answers.")] = None,
    suspect_model: Annotated[str | None, typer.Option(help="API: the suspect's model id.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="ALAMBIC_SUSPECT_API_KEY", help="API: a key for it.")] = None,
    scheme: Annotated[str, typer.Option(help="kgw or gumbel.")] = "kgw",
    key_env: Annotated[str, typer.Option(help="Environment variable holding the key.")] = "ALAMBIC_WATERMARK_KEY",
    gamma: Annotated[float, typer.Option(min=0.01, max=0.99, help="kgw: green fraction.")] = 0.25,
    context: Annotated[int, typer.Option(min=1, help="Tokens of context seeding the hash.")] = 1,
    tokenizer: Annotated[str, typer.Option(help="API: the tokenizer the watermark was applied with.")] = "smollm2",
    limit: Annotated[int | None, typer.Option(min=1, help="Read at most this many texts or prompts.")] = None,
    null_keys: Annotated[int, typer.Option(min=0, help="Other keys run as the empirical null.")] = 100,
    fpr: Annotated[float, typer.Option(min=0.0, max=1.0, help="False-positive rate of the verdict.")] = 1e-6,
    min_context_texts: Annotated[
        int, typer.Option(min=1, help="Score only watermark contexts found in at least this many texts.")
    ] = MIN_CONTEXT_TEXTS,
) -> None:
    """Test whether SUSPECT was trained on text watermarked with the key (radioactivity); the last line
    printed is the result as JSON."""
    from transformers import AutoTokenizer

    from alambic.harvest import load_prompts
    from alambic.models import smollm2_directory
    from alambic.prove.report import explain, write_report
    from alambic.prove.run import prove_api, prove_weights

    watermark = watermark_scheme(scheme, key_env, gamma, 0.0, context)
    test = {"null_keys": null_keys, "false_positive_rate": fpr, "min_context_texts": min_context_texts}
    if suspect.startswith(("http://", "https://")):
        if not (prompts and suspect_model and api_key):
            raise InvalidRequestError("an API suspect needs --prompts, --suspect-model and --api-key")
        text_tokenizer = AutoTokenizer.from_pretrained(smollm2_directory() if tokenizer == "smollm2" else tokenizer)
        asked = load_prompts(prompts)[:limit]
        with console.status(f"Asking the suspect {len(asked)} prompts…"):
            result = prove_api(
                suspect, suspect_model, api_key, asked, watermark, text_tokenizer, out / "suspect-answers", **test
            )
    else:
        if not text:
            raise InvalidRequestError("give --text to read the suspect's weights on")
        with console.status("Reading the suspect…"):
            result = prove_weights(suspect, watermark, text, limit=limit, **test)
    write_report(result, suspect, out)
    console.print(explain(result, suspect), highlight=False)
    summary = {"verdict": result.verdict, "pvalue": result.pvalue, "tokens_scored": result.tokens_scored}
    print(json.dumps({**summary, "empirical_pvalue": result.empirical_pvalue, "report": str(out / "report.html")}))
