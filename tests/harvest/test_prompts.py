import json

import pytest

from alambic.errors import InvalidRequestError
from alambic.harvest import Prompt, load_prompts


def test_prompt_ids_are_content_hashes():
    assert Prompt.of("Hi").prompt_id == Prompt.of(["Hi"]).prompt_id
    assert Prompt.of("Hi").prompt_id != Prompt.of("Hi", system="Be brief").prompt_id
    assert Prompt.of(["a", "b"]).turns == ("a", "b")


@pytest.mark.parametrize("suffix", ["jsonl", "json", "csv", "parquet", "txt"])
def test_every_format_loads_and_repeats_are_kept_once(tmp_path, suffix):
    questions = ["What is 2+2?", "Name a colour.", "What is 2+2?"]
    path = tmp_path / f"prompts.{suffix}"
    if suffix == "jsonl":
        path.write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))
    elif suffix == "json":
        path.write_text(json.dumps([{"question": q} for q in questions]))
    elif suffix == "csv":
        path.write_text("question\n" + "\n".join(questions) + "\n")
    elif suffix == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"question": questions}), path)
    else:
        path.write_text("\n".join(questions) + "\n")
    prompts = load_prompts(path, None if suffix == "txt" else "question")
    assert [p.turns for p in prompts] == [("What is 2+2?",), ("Name a colour.",)]


def test_a_list_of_turns_is_a_conversation(tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"id": "c1", "turns": ["Hello", "Tell me more"]}) + "\n")
    [prompt] = load_prompts(path)
    assert prompt.turns == ("Hello", "Tell me more")


@pytest.mark.parametrize(
    ("content", "field", "message"),
    [
        ('{"question": "x"}\n', "prompt", "has no field 'prompt'"),
        ('{"other": "x"}\n', None, "name the prompt's field"),
        ('{"question": ""}\n', "question", "non-empty"),
        ("{not json\n", None, "could not be read"),
        ("", None, "holds no prompts"),
    ],
)
def test_bad_prompt_files_are_clear_errors(tmp_path, content, field, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(InvalidRequestError, match=message):
        load_prompts(path, field)
