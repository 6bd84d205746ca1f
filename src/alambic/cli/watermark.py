"""`alambic watermark detect` and `alambic prove`: find a key's mark in text, and its trace in a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from alambic.cli.common import app, console, one_line_errors, watermark_app, watermark_scheme
from alambic.errors import InvalidRequestError


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
) -> None:
    """Test whether SUSPECT was trained on text watermarked with the key (radioactivity); the last line
    printed is the result as JSON."""
    from transformers import AutoTokenizer

    from alambic.harvest import load_prompts
    from alambic.models import smollm2_directory
    from alambic.prove.run import explain, prove_api, prove_weights, write_report

    watermark = watermark_scheme(scheme, key_env, gamma, 0.0, context)
    test = {"null_keys": null_keys, "false_positive_rate": fpr}
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
