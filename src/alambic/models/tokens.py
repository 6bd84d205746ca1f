"""Each token's raw bytes, as OpenAI's logprobs report them (`bytes`), and the way back from bytes to ids.

A token's text can be a fragment of a UTF-8 character; its bytes are exact. A harvester that kept the
bytes of the teacher's tokens and their top alternatives can rebuild the teacher's token ids, provided the
student shares the teacher's tokenizer: that is what white-box distillation from an API needs.
"""

from __future__ import annotations

import re

from transformers.convert_slow_tokenizer import bytes_to_unicode

BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def vocabulary_bytes(tokenizer) -> list[bytes]:
    """The bytes of every token id, special tokens as their text."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    specials = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    if "ByteLevel" in repr(decoder):
        byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
        piece_bytes = lambda piece: bytes(byte_of[c] for c in piece)  # noqa: E731
    else:  # SentencePiece: '▁' is a space, <0xNN> a raw byte

        def piece_bytes(piece: str) -> bytes:
            matched = BYTE_FALLBACK.fullmatch(piece)
            return bytes([int(matched.group(1), 16)]) if matched else piece.replace("▁", " ").encode()

    return [
        piece.encode() if token_id in specials or piece is None else piece_bytes(piece)
        for token_id, piece in enumerate(pieces)
    ]


def ids_by_bytes(tokenizer) -> dict[bytes, int]:
    """From a token's bytes back to its id; an ordinary token wins over a special one with the same text."""
    specials = set(tokenizer.all_special_ids)
    raw = vocabulary_bytes(tokenizer)
    ordinary = [i for i in range(len(raw)) if i not in specials]
    table: dict[bytes, int] = {}
    for token_id in ordinary + sorted(specials):
        table.setdefault(raw[token_id], token_id)
    return table
