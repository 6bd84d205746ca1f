"""Incremental detokenisation with stop strings: release text as soon as no stop string can still match."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

INCOMPLETE_CHARACTER = "\ufffd"  # what a byte-level tokenizer decodes half of a UTF-8 character to


class TextAssembler:
    """Turns one sample's token ids into text, cut at the first stop string, released in safe pieces."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.token_ids: list[int] = []
        self.text = ""
        self.released = 0
        self.stopped = False

    def add(self, token_id: int) -> str:
        """Append a token; return the newly releasable text. Sets `stopped` when a stop string appeared."""
        self.token_ids.append(token_id)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        cut = self._first_stop(text)
        if cut is not None:
            self.text, self.stopped = text[:cut], True
            return self._release(len(self.text))
        self.text = text
        if text.endswith(INCOMPLETE_CHARACTER):
            return ""
        return self._release(len(text) - self._partial_stop_suffix(text))

    def flush(self) -> str:
        """Release all that is left (the sample is over)."""
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        if end <= self.released:
            return ""
        piece, self.released = self.text[self.released : end], end
        return piece

    def _first_stop(self, text: str) -> int | None:
        # A stop string can only newly appear in the tail that the last token touched.
        start = max(0, self.released - max((len(s) for s in self.stop), default=0))
        hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _partial_stop_suffix(self, text: str) -> int:
        """Length of the longest end of `text` that begins some stop string (held back until resolved)."""
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if stop.startswith(text[-size:]):
                    longest = size
                    break
        return longest
