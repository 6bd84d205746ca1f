"""`alambic distill`, `alambic evaluate` and `alambic judge`: train a student on the teacher's answers,
measure what it kept, and have the teacher grade it."""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path
from typing import Annotated

import typer

from alambic.cli.common import app, console, one_line_errors
from alambic.distill.kinds import Loss
from alambic.errors import InvalidRequestError

TeacherOption = Annotated[str, typer.Option(help="smollm2 (the real teacher), tiny, or a model directory.")]


@app.command()
@one_line_errors
def distill(
    context: typer.Context,
    data: Annotated[Path | None, typer.Option(help="A harvest directory of the teacher's answers.")] = None,
    out: Annotated[Path | None, typer.Option(help="Where the student goes; run again to resume.")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML file of settings; flags given override it.")] = None,
    teacher: TeacherOption = "smollm2",
    student: Annotated[
        str | None, typer.Option(help="A model directory to train.", show_default="a cut of the teacher")
    ] = None,
    student_layers: Annotated[int, typer.Option(min=1, help="Teacher layers kept, evenly spaced.")] = 6,
    loss: Annotated[
        Loss,
        typer.Option(help="sft (answers), a divergence from the teacher's distribution, or on_policy (GKD)."),
    ] = Loss.SFT,
    targets: Annotated[str, typer.Option(help="sparse (harvested top-k), dense (local teacher), or auto.")] = "auto",
    ce_weight: Annotated[float, typer.Option(min=0.0, max=1.0, help="Cross-entropy share in a KL loss.")] = 0.0,
    beta: Annotated[float, typer.Option(min=0.0, max=1.0, help="jsd, on_policy: the mixture weight.")] = 0.5,
    on_policy_tokens: Annotated[int, typer.Option(min=1, help="on_policy: tokens the student samples.")] = 128,
    top_k: Annotated[
        int, typer.Option(min=1, max=20, help="Teacher alternatives used per token, at most the harvest's.")
    ] = 20,
    epochs: Annotated[float, typer.Option(min=0.0)] = 1.0,
    max_steps: Annotated[int, typer.Option(help="Stop after this many steps (-1: the epochs decide).")] = -1,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    gradient_accumulation: Annotated[int, typer.Option(min=1)] = 1,
    learning_rate: Annotated[float, typer.Option(min=0.0)] = 2e-4,
    max_length: Annotated[int, typer.Option(min=16, help="Tokens per example, prompt included.")] = 512,
    heldout_fraction: Annotated[float, typer.Option(min=0.0, max=0.9, help="Prompts kept for evaluation.")] = 0.1,
    packing: Annotated[bool, typer.Option(help="Pack examples into full-length sequences (sft).")] = False,
    lora_rank: Annotated[int | None, typer.Option(min=1, help="Train LoRA adapters of this rank (PEFT).")] = None,
    bf16: Annotated[bool, typer.Option(help="bf16 autocast (fp32 master weights).")] = False,
    save_steps: Annotated[int, typer.Option(min=1, help="Checkpoint every this many steps.")] = 100,
    seed: int = 0,
) -> None:
    """Train a smaller student on a teacher's harvested answers (sft) or on its logits (forward_kl, reverse_kl,
    jsd): checkpoints, resume, metrics.jsonl and TensorBoard in OUT."""
    from alambic.distill.run import DistillConfig
    from alambic.distill.run import distill as run_distill

    settings = _config_file(config, context) if config else {}
    for name, value in context.params.items():
        given = context.get_parameter_source(name).name != "DEFAULT"  # typed on the command line or env
        if name != "config" and (given or name not in settings):
            settings[name] = value
    if settings.get("data") is None or settings.get("out") is None:
        raise InvalidRequestError("give --data and --out (or data and out in the --config file)")
    say = functools.partial(console.print, highlight=False, soft_wrap=True)  # which targets, before training
    result = run_distill(DistillConfig.from_mapping(settings), progress=True, say=say)
    console.print(
        f"student in {result.out}: {result.steps} steps, {result.tokens_seen:,} tokens, "
        f"{result.cpu_seconds:.0f} CPU s ({result.targets} targets)",
        highlight=False,
    )


def _config_file(path: Path, context: typer.Context) -> dict:
    """The `--config` file's settings, each checked and converted as its flag would be; those with no flag, and lists
    (`student_layers` as the teacher's layer indices, where its flag counts layers), `DistillConfig.from_mapping`
    checks."""
    try:
        settings = tomllib.loads(path.read_text())
    except OSError as error:
        raise InvalidRequestError(f"--config {path}: {error.strerror}.") from None
    except tomllib.TOMLDecodeError as error:
        raise InvalidRequestError(f"--config {path} is not TOML: {error}.") from None
    flags = {flag.name: flag for flag in context.command.params if flag.name != "config"}
    for name, value in settings.items():
        if (flag := flags.get(name)) is None or isinstance(value, list):
            continue
        try:
            settings[name] = flag.process_value(context, value)
        except typer.BadParameter as error:
            raise InvalidRequestError(f"--config {path}: {name} = {value!r}: {error.message}") from None
    return settings


@app.command()
@one_line_errors
def evaluate(
    student: Annotated[list[str], typer.Option(help="A distilled student directory; repeat to compare several.")],
    data: Annotated[Path, typer.Option(help="The harvest the students were trained on (its held-out part).")],
    out: Annotated[Path, typer.Option(help="Report directory: report.json, report.md, report.html.")],
    teacher: TeacherOption = "smollm2",
    gsm8k: Annotated[Path | None, typer.Option(help="GSM8K test JSONL for exact-match accuracy.")] = None,
    gsm8k_limit: Annotated[int, typer.Option(min=1, help="Problems used from the GSM8K file.")] = 100,
    max_examples: Annotated[int, typer.Option(min=1, help="Held-out answers scored.")] = 200,
) -> None:
    """Compare the teacher, the students and the undistilled student: agreement and KL with the teacher,
    perplexity, GSM8K, size, speed on this machine and training cost."""
    from alambic.evaluate.gsm8k import load_problems
    from alambic.evaluate.report import write_report
    from alambic.evaluate.run import EvaluationSettings
    from alambic.evaluate.run import evaluate as run_evaluate

    problems = load_problems(gsm8k, gsm8k_limit) if gsm8k else None
    with console.status("Evaluating…"):
        scores = run_evaluate(teacher, student, data, gsm8k=problems, settings=EvaluationSettings(max_examples))
    report = write_report(scores, out)
    print((report / "report.md").read_text(), end="")


@app.command()
@one_line_errors
def judge(
    student: Annotated[str, typer.Option(help="The student model directory whose answers are judged.")],
    questions: Annotated[Path, typer.Option(help="Prompt file (e.g. vicuna-bench question.jsonl); first turns.")],
    endpoint: Annotated[str, typer.Option(help="The judge's OpenAI-compatible API, e.g. the teacher's gateway.")],
    model: Annotated[str, typer.Option(help="The judge's model id.")],
    api_key: Annotated[str, typer.Option(envvar="ALAMBIC_API_KEY")],
    out: Annotated[Path, typer.Option(help="Directory for judgments.jsonl, summary.json, preferences.jsonl.")],
    mode: Annotated[str, typer.Option(help="rubric (1-10 scores), pairwise (vs the judge's answers) or both.")] = (
        "both"
    ),
    field: Annotated[str | None, typer.Option(help="The questions' field.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Judge only the first questions.")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens per answer.")] = 256,
    concurrency: Annotated[int, typer.Option(min=1)] = 8,
) -> None:
    """Have the teacher (or any endpoint) grade a student's answers on a rubric, and compare them pairwise
    with its own answers, both orders; print the summary as JSON."""
    import asyncio
    import json

    from alambic.evaluate.answers import model_answers
    from alambic.evaluate.judge import Judge, answer_all, compare, rate, write_judgments
    from alambic.harvest import load_prompts
    from alambic.models import load_model

    if mode not in ("rubric", "pairwise", "both"):
        raise InvalidRequestError("mode is rubric, pairwise or both")
    asked = [prompt.turns[0] for prompt in load_prompts(questions, field)][:limit]
    grader = Judge(endpoint, api_key, model, concurrency=concurrency)
    with console.status(f"{student} answers {len(asked)} questions…"):
        answers = model_answers(load_model(student), asked, max_tokens=max_tokens)

    async def judged():
        ratings = await rate(grader, asked, answers) if mode != "pairwise" else []
        comparisons = []
        if mode != "rubric":
            references = await answer_all(grader, asked, max_tokens=max_tokens)
            comparisons = await compare(grader, asked, answers, references)
        return ratings, comparisons

    with console.status("The judge is reading…"):
        ratings, comparisons = asyncio.run(judged())
    print(json.dumps(write_judgments(out, ratings, comparisons)))
