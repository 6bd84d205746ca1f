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
