"""From a harvest directory to training examples: the prompt through the chat template, the teacher's answer
as the labels, and (when the harvest kept logprobs) the teacher's top-k alternatives at each answer token.

The teacher's own tokens are used where its logprobs name them, so the sparse targets line up with the
labels exactly; otherwise the answer text is tokenized. Rows are split into train and held-out by a hash of
the prompt, so every answer to one prompt lands on the same side and the split never changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, Features, List, Value

from alambic.errors import InvalidRequestError
from alambic.harvest.dataset import AnswerRow, read_rows
from alambic.models.tokens import ids_by_bytes

UNKNOWN_TOKEN = -1  # an alternative that maps to no id of the student's tokenizer: it joins the tail mass


@dataclass(frozen=True)
class TeacherAnswers:
    """The harvest's rows, split, with how many carried usable top-k targets."""

    train: list[AnswerRow]
    heldout: list[AnswerRow]

    @classmethod
    def load(cls, directory: str | Path, heldout_fraction: float = 0.1) -> TeacherAnswers:
        rows = [row for row in read_answers(directory) if row.answer.strip()]
        if not rows:
            raise InvalidRequestError(f"{directory} holds no answers: harvest into it first")
        heldout = [row for row in rows if _is_heldout(row.prompt_id, heldout_fraction)]
        train = [row for row in rows if not _is_heldout(row.prompt_id, heldout_fraction)]
        return cls(train, heldout)


def read_answers(directory: str | Path) -> list[AnswerRow]:
    path = Path(directory)
    if not path.is_dir():
        raise InvalidRequestError(f"no harvest directory at {path}")
    return read_rows(path)


class ExampleBuilder:
    """Turns answer rows into token ids, labels and sparse teacher targets for one tokenizer."""

    def __init__(self, tokenizer, *, max_length: int = 1024, top_k: int = 20) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.top_k = top_k
        self.ids = ids_by_bytes(tokenizer)
        self.end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if self.end_of_turn is None or self.end_of_turn == tokenizer.unk_token_id:
            self.end_of_turn = tokenizer.eos_token_id

    def dataset(self, rows: Iterable[AnswerRow], *, targets: bool = True) -> Dataset:
        """Columns `input_ids`, `labels`, and with `targets`: `answer_start`, `teacher_ids`, `teacher_logprobs`
        (one list of `top_k` per answer token; empty where the row had no usable logprobs)."""
        return Dataset.from_list([self.example(row, targets=targets) for row in rows], features=_features(targets))

    def example(self, row: AnswerRow, *, targets: bool = True) -> dict:
        prompt = self.tokenizer.apply_chat_template(
            row.messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        answer, teacher_ids, teacher_logprobs = self._answer_tokens(row)
        if row.finish_reason == "stop":
            answer = [*answer, self.end_of_turn]
        room = max(self.max_length - len(prompt), 0)
        answer = answer[:room]
        teacher_ids, teacher_logprobs = teacher_ids[:room], teacher_logprobs[:room]
        example = {"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer}
        if targets:
            example.update(answer_start=len(prompt), teacher_ids=teacher_ids, teacher_logprobs=teacher_logprobs)
        return example

    def _answer_tokens(self, row: AnswerRow) -> tuple[list[int], list[list[int]], list[list[float]]]:
        """The teacher's answer tokens with its top-k at each; the text re-tokenized, without targets, when the
        logprobs are missing or do not spell the answer."""
        if row.logprobs:
            chosen = [self._token_id(entry) for entry in row.logprobs]
            if UNKNOWN_TOKEN not in chosen and self.tokenizer.decode(chosen) == row.answer:
                alternatives = [entry["top_logprobs"][: self.top_k] for entry in row.logprobs]
                if all(len(a) == self.top_k for a in alternatives):
                    ids = [[self._token_id(a) for a in top] for top in alternatives]
                    return chosen, ids, [[a["logprob"] for a in top] for top in alternatives]
        return self.tokenizer.encode(row.answer, add_special_tokens=False), [], []

    def _token_id(self, entry: dict) -> int:
        raw = bytes(entry["bytes"]) if entry.get("bytes") is not None else entry["token"].encode()
        return self.ids.get(raw, UNKNOWN_TOKEN)


def _features(targets: bool) -> Features:
    """32-bit columns: a top-20 target costs 160 bytes a token (dense fp32 logits: 196,608)."""
    columns = {"input_ids": List(Value("int32")), "labels": List(Value("int32"))}
    if targets:
        columns.update(
            answer_start=Value("int32"),
            teacher_ids=List(List(Value("int32"))),
            teacher_logprobs=List(List(Value("float32"))),
        )
    return Features(columns)


def _is_heldout(prompt_id: str, fraction: float) -> bool:
    digest = hashlib.sha256(f"heldout:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction
