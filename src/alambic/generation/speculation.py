"""Drafts for speculative decoding from a sequence's own past (prompt lookup decoding, Saxena 2023).

When a sequence's last few tokens occurred before, in its prompt or in what it has generated, the tokens that
followed them then are a cheap guess at what follows now. The model runs on the guess in the same forward pass as
the token just chosen, and each guessed token is kept only while it is the very token the sampler then chooses from
the model's own logits at that position (`batch.DecodeBatch`): the output is the one decoding without drafts gives,
token for token (the keyed draws of `sampling.choose_tokens` depend on the step, not on the forward pass), and a
guess that is right saves a forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

NGRAM_SIZES = (4, 3, 2)  # the longest suffix that occurred before is looked up first; a single token guesses badly
# What `alambic serve` drafts on llama.cpp. On the teacher (BF16, this repo's AMD EPYC with AVX512_BF16) one token fed
# with k drafted costs 1.26x (k=1) to 1.68x (k=3) one fed alone; over ShareGPT prompts 3000-3047 (outside those the
# serving benchmark sends), 128 tokens forced at temperature 0.7, 26% of the steps found a draft and took 1.36 of
# its 4 tokens: 2 to 6 drafted tokens all came out 13-14% faster a token on that estimate; 4 was kept.
DRAFT_TOKENS = 4


class PromptLookup:
    """A sequence's tokens, indexed by each n-gram of `NGRAM_SIZES` to where its latest occurrence ended."""

    def __init__(self, tokens: Sequence[int]) -> None:
        self.tokens: list[int] = []
        self.follows: dict[tuple[int, ...], int] = {}  # n-gram -> index of the token after its latest occurrence
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        """Add the next token; the n-grams ending just before it now have a known continuation (`token`)."""
        end = len(self.tokens)
        for n in NGRAM_SIZES:
            if end >= n:
                self.follows[tuple(self.tokens[end - n : end])] = end
        self.tokens.append(token)

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the longest suffix that has one."""
        if limit <= 0:
            return []
        for n in NGRAM_SIZES:
            start = self.follows.get(tuple(self.tokens[-n:])) if len(self.tokens) > n else None
            if start is not None:
                return self.tokens[start : start + limit]
        return []
