"""`alambic prove`'s two ways in: read a suspect's weights on text, or harvest its answers through its API;
either way the radioactivity test on what it read or wrote (`report` writes the result for a person)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

# Harvest rows to chat-templated token ids live in distill.data, which prove and evaluate import too; STYLE.md
# would put them beside the harvest's rows (harvest/), a move left to whoever next edits distill/ and harvest/.
from alambic.distill.data import ExampleBuilder, read_answers
from alambic.errors import InvalidRequestError
from alambic.harvest import HarvestJob, Prompt, Sampling, run_harvest
from alambic.harvest.dataset import AnswerRow
from alambic.models import load_model
from alambic.prove.radioactivity import RadioactivityResult, ReadingCost, Scored, radioactivity, suspect_predictions
from alambic.watermark.detect import read_documents
from alambic.watermark.schemes import KeyedScheme


def read_texts(paths: list[Path], tokenizer, *, limit: int | None = None) -> tuple[list[list[int]], list[int]]:
    """Token sequences and where scoring starts in each: a harvest directory gives prompt + answer through the
    chat template, scored on the answer (where the watermark was; a context in the prompt, earlier turns
    included, is not scored); files give their text, scored whole."""
    texts, starts = [], []
    for path in paths:
        if path.is_dir():
            rows = rows_read(read_answers(path), tokenizer)
            texts += rows[0]
            starts += rows[1]
        else:
            for _, text in read_documents([path]):
                texts.append(tokenizer.encode(text, add_special_tokens=False))
                starts.append(0)
    if not texts:
        raise InvalidRequestError("no text to read the suspect on")
    return texts[:limit], starts[:limit]


def rows_read(rows: list[AnswerRow], tokenizer) -> tuple[list[list[int]], list[int]]:
    """Harvest rows as reading mode reads them: prompt + answer through the chat template, and where the
    answer starts."""
    builder = ExampleBuilder(tokenizer, max_length=2048)
    examples = [builder.example(row, targets=False) for row in rows]
    starts = [next(i for i, label in enumerate(e["labels"]) if label != -100) for e in examples]
    return [e["input_ids"] for e in examples], starts


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
    began, began_cpu = time.perf_counter(), time.process_time()
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
    answers = answers_read(read_answers(answers_dir), tokenizer)
    cost = ReadingCost(sum(map(len, answers.texts)), time.process_time() - began_cpu, time.perf_counter() - began)
    return radioactivity(scheme, replace(answers, cost=cost), mode="api", **test)


def answers_read(rows: list[AnswerRow], tokenizer) -> Scored:
    """The suspect's answers as API mode scores them, each with the messages it was sent: a context found in
    them is not scored (the suspect could have copied the key's choice from a watermarked prompt)."""
    encode = partial(tokenizer.encode, add_special_tokens=False)
    prompts = [[encode(message.get("content") or "") for message in row.messages] for row in rows]
    return Scored.of_text([encode(row.answer) for row in rows], [0] * len(rows), prompts)
