"""The empirical null of `alambic prove`: the p-values of models that never trained on a key, under many keys.

For each of `--keys` independent keys and each scheme (KGW at temperature 0.7, as the harvests ask; Gumbel at
1), the real teacher (llama.cpp backend, every key's requests batched together) writes a watermarked harvest
of one ShareGPT conversation with two short user turns, ANSWER_TOKENS new tokens an answer: the first answer
(a single-turn row), the second with the first in its prompt (a two-turn row, as the harvester writes a
conversation) and a summary of the first (a prompt that contains watermarked text).
- Reading mode: the three rows, read as `alambic prove --text` reads a harvest, by the unwatermarked teacher,
  its undistilled 6-layer cut, that cut distilled (SFT) on the teacher's plain answers to other
  conversations, and the copier (`alambic.prove.null`).
- API mode: the same four answer the two prompts that hold the key's watermarked text (temperature 1, as
  `prove_api` samples): the teacher on llama.cpp in the harvest, the layer cut and the plain student each on
  the transformers backend, every key of a chunk batched, seeded by the trial; the API copier copies from the
  passage in the prompt. Contexts found in the prompt are not scored.
Each (key, scheme, mode, reader) is one trial: `radioactivity` under that key, every context scored
(`min_context_texts=1`: a trial reads three texts), no other keys. Reported over all trials, per scheme and
mode, and per reader: the KS p-value of the p-values against uniform (KGW's randomised in their atom), the
false-positive rate at each level the trials can show, the smallest p-value and how likely so small a
minimum is among that many honest trials.
Harvests, the plain student and each key's trials are cached under the cache directory, named by a
fingerprint of the settings and the code that made them: a rerun resumes.
Run: `.venv/bin/python benchmarks/bench_prove_null.py [--keys 200 | --trials 2400] [--out results/prove_null.json]`
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `alambic serve --backend llamacpp` sets it

import argparse
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from alambic.distill.losses import Loss
from alambic.distill.run import DistillConfig, distill
from alambic.generation import GenerationEngine
from alambic.generation.backends import TransformersBackend, load_backend
from alambic.generation.params import SamplingParams
from alambic.harvest.dataset import AnswerRow, HarvestDataset
from alambic.models import LoadedModel, load_model
from alambic.models.student import student_from_teacher
from alambic.paths import cache_dir, fingerprint
from alambic.prove.null import Trial, copied_predictions, copying_answer, summarise, trial
from alambic.prove.radioactivity import Scored, radioactivity, suspect_predictions
from alambic.prove.run import answers_read, rows_read
from alambic.watermark import AaronsonScheme, KirchenbauerScheme
from alambic.watermark.schemes import KeyedScheme
from common import RESULTS, SHARED_DATA, SOURCES, answered, library_versions, source_of, write_result

KEYS = 200
ANSWER_TOKENS = 64
MAX_TURN_TOKENS = 64  # each user turn of a conversation used
TEMPERATURES = {"kgw": 0.7, "gumbel": 1.0}
API_TEMPERATURE = 1.0
SUMMARISE = "Summarise this:\n\n"
ROWS = ("single", "two_turn", "summary")  # the watermarked harvest of one key, in reading order
API_ROWS = ("two_turn", "summary")  # the prompts with watermarked text in them, as an API suspect is sent them
READERS = {
    "reading": ("teacher", "layer_cut", "plain_student", "copier"),
    "api": ("teacher", "layer_cut", "plain_student", "copier"),
}
CHUNK = 16  # keys harvested and read together
STUDENT_ANSWERS = 128
STUDENT = dict(student_layers=6, loss=Loss.SFT, epochs=2, batch_size=8, learning_rate=2e-4, max_length=256)
WORK = cache_dir() / "benchmarks" / "prove-null"
HARVEST_CODE = [SOURCES / part for part in ("generation", "watermark", "models")]
STUDENT_CODE = [*HARVEST_CODE, SOURCES / "distill", SOURCES / "harvest" / "dataset.py"]
# what a trial runs, and nothing else (the verdict's wording, this file's summary): a change elsewhere reuses
# every trial read so far
TRIALS_CODE = [
    SOURCES / "generation",  # the readers' own API answers
    *(SOURCES / "prove" / name for name in ("__init__.py", "null.py", "radioactivity.py", "run.py")),
    *(SOURCES / "models" / name for name in ("cpu.py", "forward.py", "loading.py", "student.py")),
    SOURCES / "watermark",
    SOURCES / "distill" / "data.py",
]
TARGETS = {"smallest_pvalue": ">= 1e-4 over >= 1,000 trials", "ks_pvalue": "> 0.01"}


@dataclass(frozen=True)
class Conversation:
    first: str
    second: str


def conversations(tokenizer) -> list[Conversation]:
    """ShareGPT conversations whose first two user turns are short, in file order."""
    found = []
    with open(SHARED_DATA / "sharegpt" / "conversations.jsonl") as lines:
        for line in lines:
            turns = json.loads(line)["turns"][:2]
            short = len(turns) == 2 and all(len(turn) <= 8 * MAX_TURN_TOKENS for turn in turns)  # before encoding
            if short and all(len(tokenizer.encode(turn)) <= MAX_TURN_TOKENS for turn in turns):
                found.append(Conversation(*turns))
    return found


def schemes(index: int) -> list[KeyedScheme]:
    """Key `index`'s two schemes, as `alambic serve --watermark` applies them."""
    key = f"prove-null-key-{index}"
    return [KirchenbauerScheme(key), AaronsonScheme(key)]


def messages(conversation: Conversation, first_answer: str) -> dict[str, list[dict]]:
    user = {"role": "user", "content": conversation.first}
    return {
        "single": [user],
        "two_turn": [
            user,
            {"role": "assistant", "content": first_answer},
            {"role": "user", "content": conversation.second},
        ],
        "summary": [{"role": "user", "content": SUMMARISE + first_answer}],
    }


def generate(engine: GenerationEngine, asks: list[tuple[list[dict], float, KeyedScheme | None]], tokens: int) -> list:
    """(messages, temperature, watermark) each answered once, all batched together: (text, finish reason)."""
    sampled = [
        SamplingParams(
            max_tokens=tokens, temperature=temperature, logits_processors=(scheme.processor(),) if scheme else ()
        )
        for _, temperature, scheme in asks
    ]
    return answered(engine, [(chat, params) for (chat, _, _), params in zip(asks, sampled, strict=True)])


def harvest(engine: GenerationEngine, keys: dict[int, Conversation], tokens: int) -> dict[int, dict]:
    """Each key's harvest under each scheme: `rows` the watermarked teacher wrote, `api` the unwatermarked
    teacher's answers to the prompts among them that hold watermarked text. Two rounds: first answers, then
    what is asked with them."""
    cases = [(index, scheme) for index in keys for scheme in schemes(index)]
    firsts = generate(engine, [(messages(keys[i], "")["single"], TEMPERATURES[s.name], s) for i, s in cases], tokens)
    asks = []
    for (index, scheme), (first, _) in zip(cases, firsts, strict=True):
        chats = messages(keys[index], first)
        asks += [(chats[row], TEMPERATURES[scheme.name], scheme) for row in ROWS[1:]]
        asks += [(chats[row], API_TEMPERATURE, None) for row in API_ROWS]
    answers = iter(generate(engine, asks, tokens))
    harvests: dict[int, dict] = {index: {} for index in keys}
    for (index, scheme), first in zip(cases, firsts, strict=True):
        chats = messages(keys[index], first[0])
        written = [first, next(answers), next(answers)]
        harvests[index][scheme.name] = {
            "rows": [_row(chats[row], *answer) for row, answer in zip(ROWS, written, strict=True)],
            "api": [_row(chats[row], *next(answers)) for row in API_ROWS],
        }
    return harvests


def _row(chat: list[dict], answer: str, finish_reason: str) -> dict:
    return {"messages": chat, "answer": answer, "finish_reason": finish_reason}


def answer_row(row: dict, prompt_id: str = "null") -> AnswerRow:
    return AnswerRow(
        prompt_id, 0, 0, row["messages"], row["answer"], row["finish_reason"], 0, 0, 0.0, 1, 0, "", "", 0.0
    )


def key_trials(
    harvests: dict[int, dict], tokenizer, models: dict[str, LoadedModel], answer_tokens: int
) -> dict[int, list[dict]]:
    """Every trial of these keys: each scheme's harvest read by each reader, in reading and in API mode. A
    model reads every key's rows in one batch, and (but the teacher, whose API answers are the harvest's)
    answers every key's API prompts in one batch; each trial's randomisation and answers are seeded by the
    trial."""
    cases = [(index, scheme) for index in harvests for scheme in schemes(index)]
    rows = [answer_row(row) for index, scheme in cases for row in harvests[index][scheme.name]["rows"]]
    texts, starts = rows_read(rows, tokenizer)
    arrays = [np.asarray(text, dtype=np.int64) for text in texts]
    readings = {name: suspect_predictions(loaded.model, texts, starts) for name, loaded in models.items()}
    readings["copier"] = Scored(arrays, [copied_predictions(t) for t in arrays], starts, fresh_contexts_only=True)
    prompts = [(index, scheme.name, row) for index, scheme in cases for row in API_ROWS]
    chats = [row["messages"] for index, scheme in cases for row in harvests[index][scheme.name]["api"]]
    answering = [name for name in models if name != "teacher"]
    own = {}
    for name in answering:
        asks = [(chat, answer_seed(*prompt, name)) for chat, prompt in zip(chats, prompts, strict=True)]
        own[name] = iter(own_answers(models[name], asks, answer_tokens))
    trials: dict[int, list[dict]] = {index: [] for index in harvests}
    for case, (index, scheme) in enumerate(cases):
        found = {("reading", name): _rows(read, len(ROWS) * case) for name, read in readings.items()}
        written = harvests[index][scheme.name]
        api = [answer_row(row) for row in written["api"]]
        passage = _tokens(tokenizer, written["rows"][0]["answer"])
        copies = [_copier_row(row, passage, tokenizer, answer_tokens, index) for row in api]
        found["api", "teacher"] = answers_read(api, tokenizer)
        for name in answering:
            answered = [answer_row(_row(row.messages, *next(own[name]))) for row in api]
            found["api", name] = answers_read(answered, tokenizer)
        found["api", "copier"] = answers_read(copies, tokenizer)
        for number, ((mode, reader), scored) in enumerate(found.items()):
            result = radioactivity(scheme, scored, mode=mode, null_keys=0, min_context_texts=1)
            rng = np.random.default_rng([index, list(TEMPERATURES).index(scheme.name), number])
            measured = trial(scheme, result, rng)
            trials[index].append({"scheme": scheme.name, "mode": mode, "reader": reader, **asdict(measured)})
    return trials


def own_answers(loaded: LoadedModel, asks: list[tuple[list[dict], int]], tokens: int) -> list[tuple[str, str]]:
    """Each (messages, seed) answered once by this model on the transformers backend at API_TEMPERATURE, all
    batched together: (text, finish reason)."""
    engine = GenerationEngine(TransformersBackend(loaded), max_batch_size=CHUNK * len(TEMPERATURES) * len(API_ROWS))
    try:
        return answered(
            engine,
            [(chat, SamplingParams(max_tokens=tokens, temperature=API_TEMPERATURE, seed=seed)) for chat, seed in asks],
        )
    finally:
        engine.close()


def answer_seed(index: int, scheme: str, row: str, reader: str) -> int:
    """The seed of `reader`'s API answer to key `index`'s `row` prompt under `scheme`: one per trial and prompt."""
    entropy = [index, list(TEMPERATURES).index(scheme), API_ROWS.index(row), *reader.encode()]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _rows(scored: Scored, first: int) -> Scored:
    rows = slice(first, first + len(ROWS))
    return Scored(scored.texts[rows], scored.tokens[rows], scored.starts[rows], scored.fresh_contexts_only)


def _tokens(tokenizer, text: str) -> np.ndarray:
    return np.asarray(tokenizer.encode(text, add_special_tokens=False), dtype=np.int64)


def _copier_row(row: AnswerRow, passage: np.ndarray, tokenizer, tokens: int, seed: int) -> AnswerRow:
    """The API copier's answer to a prompt that holds the watermarked `passage`: copying from it, its own words
    those of the unwatermarked teacher's answer (`row`'s) that the passage lacks."""
    own = _tokens(tokenizer, row.answer)
    own = np.setdiff1d(own, passage) if len(np.setdiff1d(own, passage)) else passage
    answer = tokenizer.decode(copying_answer(passage, own, seed, tokens))
    return answer_row({"messages": row.messages, "answer": answer, "finish_reason": "length"})


def plain_student(engine: GenerationEngine, prompts: list[Conversation], answer_tokens: int) -> Path:
    """The 6-layer cut distilled (SFT) on the teacher's plain answers to these conversations' first turns."""
    settings = {**STUDENT, "answers": len(prompts), "answer_tokens": answer_tokens, "temperature": TEMPERATURES["kgw"]}
    versions = library_versions("torch", "transformers", "trl", "accelerate", "llama_cpp_python")
    out = WORK / f"student-{fingerprint({**settings, **versions, 'prompts': prompts}, *STUDENT_CODE)}"
    if (out / "distill.json").exists():
        return out
    data = out.with_name(out.name + "-answers")
    dataset = HarvestDataset(data)
    chats = [messages(prompt, "")["single"] for prompt in prompts]
    answers = generate(engine, [(chat, TEMPERATURES["kgw"], None) for chat in chats], answer_tokens)
    for number, (chat, answer) in enumerate(zip(chats, answers, strict=True)):
        dataset.write(answer_row(_row(chat, *answer), f"student-{number}"))
    dataset.close()
    distill(DistillConfig(data=data, out=out, teacher="smollm2", **STUDENT))
    return out


def chunks(indices: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(indices), CHUNK):
        yield indices[start : start + CHUNK]


def trials_directory(harvested: Path, student: Path, settings: dict) -> Path:
    """Where the trials read from this harvest by this student are kept: named by them, the settings, and the
    code a trial runs (this file's part of it, and TRIALS_CODE)."""
    reading = source_of(key_trials, own_answers, answered, answer_seed, _rows, _tokens, _copier_row, answer_row, _row)
    made_by = {"harvest": harvested.name, "student": student.name, **settings, "readers": READERS, "code": reading}
    return WORK / f"trials-{fingerprint(made_by, *TRIALS_CODE)}"


def run(keys: int, out: Path, threads: int | None = None) -> dict:
    """`threads` for llama.cpp's and torch's forward passes (default torch's): one is faster on a shared
    machine, where a descheduled worker leaves the others spinning at the barrier."""
    began = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    engine = GenerationEngine(load_backend("smollm2", "llamacpp", threads=threads), max_batch_size=32)
    tokenizer = engine.backend.tokenizer
    usable = conversations(tokenizer)
    if keys > len(usable) - STUDENT_ANSWERS:
        sys.exit(f"at most {len(usable) - STUDENT_ANSWERS} keys: one conversation each")
    settings = {"answer_tokens": ANSWER_TOKENS, "temperatures": TEMPERATURES, "api": API_TEMPERATURE}
    asked = {"summarise": SUMMARISE, "rows": ROWS, "api_rows": API_ROWS, "turn_tokens": MAX_TURN_TOKENS}
    versions = library_versions("torch", "transformers", "llama_cpp_python")
    harvesting = source_of(conversations, schemes, messages, generate, answered, harvest, _row)
    harvested = WORK / f"harvest-{fingerprint({**settings, **asked, **versions, 'code': harvesting}, *HARVEST_CODE)}"
    student = plain_student(engine, usable[-STUDENT_ANSWERS:], ANSWER_TOKENS)
    tried = trials_directory(harvested, student, settings)
    harvested.mkdir(parents=True, exist_ok=True)
    tried.mkdir(parents=True, exist_ok=True)
    missing = [index for index in range(keys) if not (tried / f"key-{index:05d}.json").exists()]
    models: dict[str, LoadedModel] = {}
    if missing:
        teacher = load_model("smollm2")
        models = {
            "teacher": teacher,
            "layer_cut": student_from_teacher(teacher, STUDENT["student_layers"]),
            "plain_student": load_model(str(student)),
        }
    for chunk in chunks(missing):
        todo = {i: usable[i] for i in chunk if not (harvested / f"key-{i:05d}.json").exists()}
        for index, written in (harvest(engine, todo, ANSWER_TOKENS) if todo else {}).items():
            (harvested / f"key-{index:05d}.json").write_text(json.dumps(written))
        harvests = {i: json.loads((harvested / f"key-{i:05d}.json").read_text()) for i in chunk}
        for index, found in key_trials(harvests, tokenizer, models, ANSWER_TOKENS).items():
            (tried / f"key-{index:05d}.json").write_text(json.dumps(found))
        print(f"keys {chunk[0]}-{chunk[-1]} done, {time.perf_counter() - began:.0f} s", flush=True)
    engine.close()
    trials = [t for index in range(keys) for t in json.loads((tried / f"key-{index:05d}.json").read_text())]
    figures = {
        "keys": keys,
        "answer_tokens": ANSWER_TOKENS,
        "readers": READERS,
        "min_context_texts": 1,
        "all": summary(trials),
        "by_scheme_mode": {
            f"{s}/{m}": summary([t for t in trials if (t["scheme"], t["mode"]) == (s, m)])
            for s in TEMPERATURES
            for m in READERS
        },
        "by_reader": {
            f"{s}/{m}/{r}": summary([t for t in trials if (t["scheme"], t["mode"], t["reader"]) == (s, m, r)])
            for s in TEMPERATURES
            for m in READERS
            for r in READERS[m]
        },
        "run": {"wall_seconds": time.perf_counter() - began, "keys_read_now": len(missing)},
        "targets": TARGETS,
    }
    write_result(out.stem, figures, directory=out.parent)
    return figures


def summary(trials: list[dict]) -> dict:
    return summarise([Trial(t["pvalue"], t["uniform_pvalue"], t["tokens_scored"]) for t in trials])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sized = parser.add_mutually_exclusive_group()
    sized.add_argument("--keys", type=int, default=KEYS, help="independent keys, each a trial per scheme, mode, reader")
    sized.add_argument("--trials", type=int, help="keys enough for at least this many trials in all")
    parser.add_argument("--out", type=Path, default=RESULTS / "prove_null.json")
    parser.add_argument("--threads", type=int, help="threads for the forward passes (default: torch's)")
    options = parser.parse_args()
    per_key = len(TEMPERATURES) * sum(map(len, READERS.values()))
    keys = math.ceil(options.trials / per_key) if options.trials else options.keys
    if keys < 1:
        sys.exit("--keys and --trials must be at least 1")
    figures = run(keys, options.out, options.threads)
    print(json.dumps({name: figures[name] for name in ("all", "by_scheme_mode")}, indent=1))


if __name__ == "__main__":
    main()
