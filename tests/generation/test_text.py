import random

import pytest

from alambic.generation.text import TextAssembler


@pytest.fixture
def assembler_for(tiny):
    def make(stop=()):
        return TextAssembler(tiny.tokenizer, stop)

    return make


def feed(assembler, text):
    released = [assembler.add(t) for t in assembler.tokenizer.encode(text)]
    return "".join(released) + assembler.flush()


def test_text_is_released_in_full_without_stop_strings(assembler_for):
    assembler = assembler_for()
    assert feed(assembler, "Hello there, world!") == "Hello there, world!"
    assert not assembler.stopped


def test_stop_string_cuts_the_text_and_is_never_released(assembler_for):
    assembler = assembler_for(stop=["STOP"])
    released = []
    for token in assembler.tokenizer.encode("one two STOP three"):
        released.append(assembler.add(token))
        if assembler.stopped:
            break
    assert "".join(released) + assembler.flush() == "one two "
    assert assembler.text == "one two "
    assert assembler.stopped


def test_a_possible_stop_prefix_is_held_back_until_resolved(assembler_for):
    assembler = assembler_for(stop=["\n\nUser:"])
    pieces = [assembler.add(t) for t in assembler.tokenizer.encode("Answer\n\nUs")]
    assert "".join(pieces) == "Answer"  # "\n\nUs" could still become the stop string
    assert assembler.flush() == "\n\nUs"


def test_split_utf8_characters_are_not_released_half_done(assembler_for):
    assembler = assembler_for()
    assert feed(assembler, "café 東京 🎉") == "café 東京 🎉"


def full_decode_reference(tokenizer, token_ids, stop):
    """What the assembler must produce: the full decode after each token, cut at the first stop string."""
    for count in range(1, len(token_ids) + 1):
        text = tokenizer.decode(token_ids[:count])
        hits = [text.find(s) for s in stop if s in text]
        if hits:
            return text[: min(hits)], count
    return tokenizer.decode(token_ids), None


def test_incremental_text_equals_the_full_decode_on_random_streams(tiny):
    tokenizer = tiny.tokenizer
    byte_tokens = tokenizer.convert_tokens_to_ids([chr(c) for c in range(0xA1, 0xAD)] + ["Ã", "æ", "ð", "Ł"])
    pool = sorted({*tokenizer.encode("café 東京 🎉 naïve — STOP\n\nUser: the sea, and wind!"), *byte_tokens, 0, 1, 2})
    rng = random.Random(0)
    stopped = 0
    for _ in range(300):
        token_ids = [rng.choice(pool) for _ in range(rng.randint(1, 40))]
        whole = tokenizer.decode(token_ids)
        start = rng.randrange(len(whole) + 1)
        stop = rng.choice([(), ("STOP",), ("\n\nUser:", "東"), (whole[start : start + rng.randint(1, 4)],)])
        expected_text, expected_count = full_decode_reference(tokenizer, token_ids, [s for s in stop if s])

        assembler = TextAssembler(tokenizer, stop)
        released, count = [], 0
        for token in token_ids:
            released.append(assembler.add(token))
            count += 1
            if assembler.stopped:
                break
        released.append(assembler.flush())
        assert "".join(released) == assembler.text == expected_text, (token_ids, stop)
        assert (count if assembler.stopped else None) == expected_count
        stopped += assembler.stopped
    assert stopped > 40  # the streams did exercise the stop strings


class CountingTokenizer:
    """A tokenizer that counts the token ids it is asked to decode."""

    def __init__(self, tokenizer):
        self.tokenizer, self.decoded = tokenizer, 0

    def decode(self, token_ids, **options):
        self.decoded += len(token_ids)
        return self.tokenizer.decode(token_ids, **options)


def test_each_token_decodes_a_bounded_window_not_the_whole_text(tiny):
    counting = CountingTokenizer(tiny.tokenizer)
    token_ids = tiny.tokenizer.encode("The sea is calm tonight, café 東京 🎉 and the wind is low. " * 60)
    assembler = TextAssembler(counting, ["\n\nUser:"])
    pieces = [assembler.add(token) for token in token_ids]
    assert "".join(pieces) + assembler.flush() == tiny.tokenizer.decode(token_ids)
    assert len(token_ids) > 1000
    assert counting.decoded <= 10 * len(token_ids)  # a full decode at each token is len² / 2
