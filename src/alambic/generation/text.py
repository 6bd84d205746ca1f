"""Incremental detokenisation with stop strings: release text as soon as no stop string can still match."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

INCOMPLETE_CHARACTER = "\ufffd"  # what a byte-level tokenizer decodes half of a UTF-8 character to


class TextAssembler:
    """Turns one sample's token ids into text, cut at the first stop string, released in safe pieces.

    Each token decodes a short window of the latest ids, as vLLM's and TGI's detokenizers do: the window
    starts where a whole character ended (the prefix offset) and the text it adds is what lies past the ids
    already read (the read offset). So a token costs the same at the 10th and the 10,000th token, and the text
    is the full decode's, multi-byte characters split across byte-level tokens included. A special token the
    model wrote keeps its text (the end of sequence never reaches here): nothing written is lost, the logprobs'
    tokens spell the text, and re-tokenizing the text gives back the ids.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.token_ids: list[int] = []
        self.stopped = False
        self._released: list[str] = []  # text given out, piece by piece
        self._held = ""  # decoded text not given out yet: it may begin a stop string
        self._prefix_offset = 0  # token_ids[prefix_offset:read_offset] decode to text already taken in
        self._read_offset = 0

    @property
    def text(self) -> str:
        """The sample's text so far (all of it once it is over)."""
        return "".join(self._released) + self._held

    def add(self, token_id: int) -> str:
        """Append a token; return the newly releasable text. Sets `stopped` when a stop string appeared."""
        self.token_ids.append(token_id)
        new_text, whole = self._decode_window()
        # A stop string can only newly appear in the held tail and the new text (held text never holds one).
        text = self._held + new_text
        cut = self._first_stop(text)
        if cut is not None:
            self._held, self.stopped = text[:cut], True
            return self._release(cut)
        if not whole:  # half of a character: wait for the rest of its bytes
            return ""
        self._take_in(text)
        return self._release(len(text) - self._partial_stop_suffix(text))

    def flush(self) -> str:
        """Release all that is left (the sample is over, maybe in the middle of a character)."""
        if not self.stopped:
            self._take_in(self._held + self._decode_window()[0])
        return self._release(len(self._held))

    def _decode_window(self) -> tuple[str, bool]:
        """The text the ids past the read offset add, and whether it ends on a whole character."""
        read = self.tokenizer.decode(self.token_ids[self._prefix_offset : self._read_offset])
        window = self.tokenizer.decode(self.token_ids[self._prefix_offset :])
        new_text = window[len(read) :]
        return new_text, bool(new_text) and not window.endswith(INCOMPLETE_CHARACTER)

    def _take_in(self, text: str) -> None:
        self._held = text
        self._prefix_offset, self._read_offset = self._read_offset, len(self.token_ids)

    def _release(self, end: int) -> str:
        if end <= 0:
            return ""
        piece, self._held = self._held[:end], self._held[end:]
        self._released.append(piece)
        return piece

    def _first_stop(self, text: str) -> int | None:
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
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
