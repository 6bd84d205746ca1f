"""Detection over documents: each scored alone, and all pooled into one test over their unique pairs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from alambic.errors import InvalidRequestError
from alambic.watermark.schemes import Detection, KeyedScheme, unique_pairs


@dataclass(frozen=True)
class DocumentDetection:
    source: str
    score: float
    tokens_scored: int
    pvalue: float


@dataclass(frozen=True)
class PooledDetection:
    scheme: str
    documents: int
    score: float
    tokens_scored: int
    pvalue: float
    false_positive_rate: float
    verdict: str  # "watermarked" or "not detected"

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def read_documents(paths: list[Path], field: str = "answer") -> Iterator[tuple[str, str]]:
    """(source, text): a JSONL file gives one document per line (its `field`), any other file is one."""
    for path in paths:
        if not path.is_file():
            raise InvalidRequestError(f"No file at {path}.")
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as lines:
                for number, line in enumerate(lines, start=1):
                    if line.strip():
                        record = json.loads(line)
                        if field not in record:
                            raise InvalidRequestError(f"{path}:{number} has no field '{field}'.", param="field")
                        yield f"{path}:{number}", record[field]
        else:
            yield str(path), path.read_text(encoding="utf-8")


def detect_documents(
    scheme: KeyedScheme,
    documents: Iterator[tuple[str, str]],
    tokenizer: PreTrainedTokenizerBase,
    false_positive_rate: float = 1e-6,
) -> tuple[list[DocumentDetection], PooledDetection]:
    per_document: list[DocumentDetection] = []
    contexts, tokens = [], []
    for source, text in documents:
        document_contexts, document_tokens = unique_pairs(
            tokenizer.encode(text, add_special_tokens=False), scheme.context_width, scheme.seed
        )
        detection: Detection = scheme.detect_pairs(document_contexts, document_tokens)
        per_document.append(DocumentDetection(source, detection.score, detection.tokens_scored, detection.pvalue))
        contexts.append(document_contexts)
        tokens.append(document_tokens)
    if not per_document:
        raise InvalidRequestError("No documents to score.")
    # pooled: a pair repeated across documents counts once, like within one
    stacked = np.unique(np.stack([np.concatenate(contexts), np.concatenate(tokens).astype(np.uint64)], 1), axis=0)
    pooled = scheme.detect_pairs(stacked[:, 0], stacked[:, 1].astype(np.int64))
    verdict = "watermarked" if pooled.pvalue < false_positive_rate else "not detected"
    return per_document, PooledDetection(
        scheme.name, len(per_document), pooled.score, pooled.tokens_scored, pooled.pvalue, false_positive_rate, verdict
    )
