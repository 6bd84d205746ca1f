"""The watermark's costs and its proof, on the real teacher.

- Detection throughput: the vectorised detector against a straightforward per-token loop of the same KGW
  scheme (hash the context, draw for the token, count it once per distinct pair), same tokens, same run;
  their scores must agree exactly.
- Generation overhead: teacher tokens/s on the llama.cpp backend at 16 streams with each scheme on vs off,
  interleaved in one process.
- Quality cost: the teacher answers 200 GSM8K test questions under KGW at delta 1, 2 and 4 and without a
  watermark (temperature 0.7, as the harvests ask), and under Gumbel and without (temperature 1): the answers'
  perplexity as the unwatermarked teacher scores them, GSM8K exact match, one answer's median p-value.
- Radioactivity: 6-layer students distilled (SFT, as bench_distill trains them, but for two epochs, as
  instruction tuning commonly runs several: after one the key's bias is learnt only in the commonest contexts)
  on the teacher's answers with 100%, 50%, 10% and 5% of them watermarked, and a control with none; `prove` in
  reading mode on the watermarked answers the provider served: p-value and distinct tokens scored at `prove`'s
  default context filter (contexts in at least 10 of the texts read), the p-value's growth, and the p-value at
  other filters. The unwatermarked teacher read on 1,000 of the served answers is a further control.
- Sparse targets: what logprobs served with marked text pass on (`--watermark-logprobs`). Students distilled
  with forward KL on the top-20 logprobs alone of the first 400 watermarked answers, harvested twice: with
  logprobs served `plain` (the model's own) and `marked` (the distribution sampled from); each read on the
  answers it was trained on.
- Power, pre-registered: students on development mixtures (10% and 5%) read on the served answers, on fresh
  watermarked answers to 1,000 prompts they never saw, or both, at each context filter; the reading is fixed
  from those figures (PREREGISTERED) before students on held-out mixtures at 100/50/10/5/1% and a control are
  trained and read once with it; the 10% student and the control also answer the fresh prompts through
  `alambic serve` (API mode): the p-value by answers read.
- Robustness, with the same reading: a student of the watermarked harvest paraphrased by the unwatermarked
  teacher (temperature 1), and one of the harvest diluted half and half with people's GSM8K solutions.
Run: `.venv/bin/python benchmarks/bench_watermark.py [detection] [overhead] [quality] [radioactivity] [sparse]
[teacher] [power-development] [power] [robustness]` (all by default, the last two once the reading is fixed;
the sections named replace theirs in the results; the radioactivity sections harvest the answers they train on
first if they are missing: 35 to 45 minutes each, 10 to 15 for the 400, ~20 for the fresh 1,000; a student on
2,050 answers takes ~35 minutes on 2 cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from itertools import islice
from pathlib import Path
from statistics import median

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `alambic serve --backend llamacpp` sets it

import numpy as np
from openai import OpenAI
from scipy import stats

from alambic.distill.data import read_answers
from alambic.distill.losses import Loss
from alambic.evaluate.gsm8k import load_problems
from alambic.evaluate.watermark_cost import watermark_cost_table
from alambic.generation import GenerationEngine, SamplingParams
from alambic.generation.backends import load_backend
from alambic.harvest import load_prompts
from alambic.harvest.dataset import HarvestDataset, read_rows
from alambic.models import load_model
from alambic.paths import fingerprint
from alambic.prove import MIN_CONTEXT_TEXTS
from alambic.prove.radioactivity import Scored, radioactivity
from alambic.prove.run import answers_read, prove_api, prove_weights, read_suspect
from alambic.watermark import AaronsonScheme, KirchenbauerScheme
from alambic.watermark.keyed_hash import GOLDEN, MIX_1, MIX_2, MIX_32, context_hash
from bench_distill import TRAINING, run
from bench_generation import measure_engine
from common import (
    SHARED_DATA,
    SOURCES,
    GatewayProcess,
    answered,
    harvest_digest,
    library_versions,
    sharegpt_first_turns,
    source_of,
    write_result,
)
from teacher_answers import WATERMARK_KEY, WORK, answers, benchmark_key, first_answers, fresh_prompts_file, rows_of

FRACTIONS = (1.0, 0.0, 0.5, 0.1, 0.05)  # the acceptance's two first, then the fainter traces
STUDENT_EPOCHS = 2
DETECTION_TOKENS = 200_000
QUALITY_QUESTIONS = 200
TEACHER_READ = 1000
MIN_CONTEXT_TEXTS_SWEEP = (1, 3, 10, 30, 100)
SPARSE_TARGET_ANSWERS = 400
DEVELOPMENT_FRACTIONS = (0.1, 0.05)  # students the held-out test's reading is chosen on
POWER_FRACTIONS = (1.0, 0.5, 0.1, 0.05, 0.01, 0.0)  # held-out students, the last a control
PARAPHRASE = "Rewrite the following answer in your own words, keeping everything it says:\n\n"
OTHER_DATA_FROM = 4000  # GSM8K training solutions past the benchmark's questions: the diluting data
API_FRACTIONS = (0.1, 0.0)  # held-out students also asked through an API: how many answers p < 1e-6 takes
# The reading text ("served", "fresh" or "both") and context filter of the held-out test, fixed from the
# development students' figures (results/radioactivity.json `power_development`) before any held-out student
# was trained: None until then.
PREREGISTERED: dict | None = None
MASK64, MASK32 = 2**64 - 1, 2**32 - 1


def reference_green_count(scheme: KirchenbauerScheme, tokens: list[int]) -> tuple[int, int]:
    """The textbook detector, one token at a time in Python: (green pairs, distinct pairs)."""
    seen, green = set(), 0
    for i in range(scheme.context_width, len(tokens)):
        context = int(context_hash(tokens[i - scheme.context_width : i], scheme.seed))
        if (context, tokens[i]) in seen:
            continue
        seen.add((context, tokens[i]))
        key = _splitmix(tokens[i] * int(GOLDEN) & MASK64)
        folded_context = (context ^ (context >> 32)) & MASK32
        mixed = ((folded_context ^ ((key ^ (key >> 32)) & MASK32)) * int(MIX_32)) & MASK32
        green += (mixed ^ (mixed >> 16)) < int(scheme.green_below)
    return green, len(seen)


def _splitmix(x: int) -> int:
    z = (x + int(GOLDEN)) & MASK64
    z = ((z ^ (z >> 30)) * int(MIX_1)) & MASK64
    z = ((z ^ (z >> 27)) * int(MIX_2)) & MASK64
    return z ^ (z >> 31)


def detection_throughput(scheme: KirchenbauerScheme) -> dict:
    tokens = np.random.default_rng(0).integers(0, 49152, DETECTION_TOKENS)
    started = time.perf_counter()
    fast = scheme.detect(tokens)
    fast_s = time.perf_counter() - started
    started = time.perf_counter()
    green, scored = reference_green_count(scheme, tokens.tolist())
    slow_s = time.perf_counter() - started
    return {
        "tokens": DETECTION_TOKENS,
        "vectorised_tok_s": DETECTION_TOKENS / fast_s,
        "reference_tok_s": DETECTION_TOKENS / slow_s,
        "speedup": slow_s / fast_s,
        "scores_agree": fast.score == green and fast.tokens_scored == scored,
        "reference_pvalue": float(stats.binom.sf(green - 1, scored, scheme.gamma)),
        "vectorised_pvalue": fast.pvalue,
    }


def generation_overhead(pairs: int = 3, streams: int = 16) -> dict:
    engine = GenerationEngine(load_backend("smollm2", "llamacpp"), max_batch_size=streams)
    tokenizer = engine.backend.tokenizer
    prompts = [
        tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=False)
        for m in sharegpt_first_turns(streams, tokenizer)
    ]
    measure_engine(engine, prompts, streams)  # warm-up
    figures = {}
    for scheme in (KirchenbauerScheme(WATERMARK_KEY), AaronsonScheme(WATERMARK_KEY)):
        off, on = [], []
        for _ in range(pairs):
            off.append(measure_engine(engine, prompts, streams)["tok_s"])
            on.append(measure_engine(engine, prompts, streams, (scheme.processor(),))["tok_s"])
        figures[scheme.name] = {"off_tok_s": median(off), "on_tok_s": median(on), "ratio": median(on) / median(off)}
    engine.close()
    return figures


def mixture(plain: Path, marked: Path, fraction: float, salt: str = "") -> tuple[Path, list[str]]:
    """A harvest directory with `fraction` of the prompts answered by the watermarked teacher (chosen by a
    hash of the prompt and `salt`: another salt, other prompts), the rest by the plain one; and the prompts
    whose watermarked answers were used."""
    watermarked = {row.prompt_id: row for row in read_rows(marked)}
    rows = sorted(read_rows(plain), key=lambda row: hashlib.sha256((salt + row.prompt_id).encode()).digest())
    chosen = {row.prompt_id for row in rows[: round(fraction * len(rows))] if row.prompt_id in watermarked}
    out = WORK / "radioactivity" / f"mix-{salt}{fraction}"
    shutil.rmtree(out, ignore_errors=True)
    dataset = HarvestDataset(out)
    for row in rows:
        dataset.write(watermarked[row.prompt_id] if row.prompt_id in chosen else row)
    dataset.close()
    return out, sorted(chosen)


def served_text(marked: Path, prompt_ids: list[str] | None = None) -> Path:
    """The watermarked answers the provider served for these prompts (all of them by default): the text
    `prove` reads the suspect on."""
    wanted = set(prompt_ids) if prompt_ids else {row.prompt_id for row in read_rows(marked)}
    return rows_of(marked, wanted, WORK / "radioactivity" / f"served-{len(wanted)}")


def quality_cost() -> list[dict]:
    engine = GenerationEngine(load_backend("smollm2", "llamacpp"), max_batch_size=32)
    problems = load_problems(SHARED_DATA / "gsm8k" / "test.jsonl", QUALITY_QUESTIONS)
    try:
        rows = watermark_cost_table(engine, load_model("smollm2").model, problems, WATERMARK_KEY)
    finally:
        engine.close()
    return [vars(row) for row in rows]


def student(data: Path, name: str, **losses) -> Path:
    """The student distilled on these rows (SFT unless `losses` say otherwise); one that an earlier run finished
    from the same rows, settings, code and libraries is reused (its directory is named by their fingerprint)."""
    settings = {**TRAINING, "loss": Loss.SFT, "epochs": STUDENT_EPOCHS, **losses}
    key = fingerprint(
        {**settings, "data": harvest_digest(data), **library_versions("torch", "transformers", "trl", "accelerate")},
        *(SOURCES / part for part in ("distill", "models", "harvest/dataset.py")),
    )
    out = WORK / "distill" / f"radioactive-{name}-{key}"
    if (out / "distill.json").exists():
        return out
    return run(data, out.name, **settings)[1]


def reading(suspect: Path, text: Path) -> Scored:
    """The suspect's predictions on the served text, kept beside its weights (reading is the slow part), keyed
    by the text, the suspect and the code that reads."""
    key = fingerprint(
        {"suspect": suspect.name, "text": harvest_digest(text)}, *(SOURCES / part for part in ("prove", "models"))
    )
    path = suspect / f"reading-{key}.npz"
    if not path.exists():
        scored = read_suspect(str(suspect), [text])
        lengths = [len(t) for t in scored.texts]
        np.savez(
            path,
            texts=np.concatenate(scored.texts),
            tokens=np.concatenate(scored.tokens),
            lengths=lengths,
            starts=scored.starts,
        )
    saved = np.load(path)
    cuts = np.cumsum(saved["lengths"])[:-1]
    texts, tokens = np.split(saved["texts"], cuts), np.split(saved["tokens"], cuts)
    return Scored(texts, tokens, saved["starts"].tolist(), fresh_contexts_only=True)


def prove(scored: Scored, scheme: KirchenbauerScheme) -> dict:
    """The test at `alambic prove`'s default context filter, and at others for comparison."""
    found = radioactivity(scheme, scored, mode="reading", null_keys=100)
    return {
        "pvalue": found.pvalue,
        "tokens_scored": found.tokens_scored,
        "empirical_pvalue": found.empirical_pvalue,
        "null_ks_pvalue": found.null_ks_pvalue,
        "growth": found.growth,
        "by_min_context_texts": by_filter(scored, scheme),
    }


def by_filter(scored: Scored, scheme: KirchenbauerScheme) -> dict:
    """The p-value and distinct predictions scored at each context filter of the sweep."""
    return {
        texts: {"pvalue": found.pvalue, "tokens_scored": found.tokens_scored}
        for texts in MIN_CONTEXT_TEXTS_SWEEP
        for found in [radioactivity(scheme, scored, mode="reading", null_keys=0, min_context_texts=texts)]
    }


def radioactivity_by_fraction() -> dict:
    """By fraction of watermarked answers, the acceptance's first; the results are written as each lands."""
    plain, marked = answers("plain"), answers("kgw")
    scheme = KirchenbauerScheme(WATERMARK_KEY)  # what `alambic serve --watermark kgw` applied
    figures = {
        "scheme": {"name": "kgw", "gamma": scheme.gamma, "delta": scheme.delta, "context": scheme.context_width},
        "min_context_texts": MIN_CONTEXT_TEXTS,
        "student_epochs": STUDENT_EPOCHS,
    }
    by_fraction = figures["by_fraction"] = {}
    for fraction in FRACTIONS:
        data, used = mixture(plain, marked, fraction)
        text = served_text(marked, used)  # the control (none used) is read on all the served answers
        found = prove(reading(student(data, str(fraction)), text), scheme)
        by_fraction[fraction] = {"watermarked_answers": len(used), **found}
        print(fraction, found["pvalue"], found["tokens_scored"], flush=True)
        if 1.0 in by_fraction:
            figures |= {
                "student_pvalue": by_fraction[1.0]["pvalue"],
                "tokens_scored": by_fraction[1.0]["tokens_scored"],
            }
        if 0.0 in by_fraction:
            figures["control_pvalue"] = by_fraction[0.0]["pvalue"]
        write_result("radioactivity", {**figures, "targets": TARGETS}, update=True)
    return figures


def radioactivity_of_sparse_targets() -> dict:
    """Students distilled with forward KL on the harvest's top-20 logprobs alone, of the same watermarked
    answers served with logprobs `plain` and `marked` (`--watermark-logprobs`), each read on the answers it
    was trained on: how much of the key each kind of logprobs passes on."""
    scheme = KirchenbauerScheme(WATERMARK_KEY)
    figures = {}
    for logprobs, harvest in (("plain", "kgw"), ("marked", "kgw-marked-logprobs")):
        data = first_answers(harvest, SPARSE_TARGET_ANSWERS)
        suspect = student(data, f"sparse-{logprobs}", loss=Loss.FORWARD_KL, targets="sparse", top_k=20)
        figures[logprobs] = {"answers": len(read_rows(data)), **prove(reading(suspect, data), scheme)}
        print("sparse targets,", logprobs, "logprobs:", figures[logprobs]["pvalue"], flush=True)
    return {"sparse_targets": figures}


def reading_texts(suspect: Path, marked: Path, used: list[str]) -> dict[str, Scored]:
    """What the provider can read a suspect on: the watermarked answers it served for the prompts the
    suspect trained on (all of them for a control), fresh watermarked answers to prompts the suspect never
    saw, or both."""
    served = reading(suspect, served_text(marked, used))
    fresh = reading(suspect, answers("kgw", fresh=True))
    both = Scored(served.texts + fresh.texts, served.tokens + fresh.tokens, served.starts + fresh.starts, True)
    return {"served": served, "fresh": fresh, "both": both}


def power_development() -> dict:
    """Students on development mixtures (their own salt) at 10% and 5% watermarked answers, read on each
    text at each context filter: the figures from which the held-out test's reading is chosen, once."""
    plain, marked = answers("plain"), answers("kgw")
    scheme = KirchenbauerScheme(WATERMARK_KEY)
    figures = {}
    for fraction in DEVELOPMENT_FRACTIONS:
        data, used = mixture(plain, marked, fraction, salt="development")
        texts = reading_texts(student(data, f"development-{fraction}"), marked, used)
        figures[fraction] = {name: by_filter(scored, scheme) for name, scored in texts.items()}
        print("development", fraction, figures[fraction], flush=True)
    return {"power_development": figures}


def api_answers_needed(suspect: Path, scheme: KirchenbauerScheme) -> dict:
    """API mode: the suspect, served by `alambic serve`, answers the fresh prompts (temperature 1, 128 tokens,
    as `alambic prove --endpoint` asks); the p-value on its first answers, doubling, and the fewest answers
    that reach 1e-6."""
    db = f"sqlite:///{suspect / 'gateway.db'}"
    key = benchmark_key(db)
    gateway = GatewayProcess("--model", str(suspect), "--backend", "transformers", db=db)
    try:
        model = OpenAI(base_url=f"{gateway.url}/v1", api_key=key).models.list().data[0].id
        tokenizer = load_model(str(suspect)).tokenizer
        prompts = load_prompts(fresh_prompts_file())
        prove_api(f"{gateway.url}/v1", model, key, prompts, scheme, tokenizer, suspect / "api-answers", max_tokens=128)
    finally:
        gateway.close()
    rows = read_answers(suspect / "api-answers")
    by_answers = {}
    for count in [*(2**k for k in range(4, 20) if 2**k < len(rows)), len(rows)]:
        found = radioactivity(scheme, answers_read(rows[:count], tokenizer), mode="api", null_keys=0)
        by_answers[count] = {"pvalue": found.pvalue, "tokens_scored": found.tokens_scored}
    reached = [count for count, found in by_answers.items() if found["pvalue"] < 1e-6]
    return {"by_answers": by_answers, "answers_for_1e-6": min(reached) if reached else None}


def power_held_out() -> dict:
    """The pre-registered test: students on held-out mixtures (another salt) at each fraction, read once with
    the reading fixed from the development students (`PREREGISTERED`, committed before these were trained)."""
    if PREREGISTERED is None:
        sys.exit("run the `power-development` section first and fix PREREGISTERED from its figures")
    plain, marked = answers("plain"), answers("kgw")
    scheme = KirchenbauerScheme(WATERMARK_KEY)
    figures = {}
    for fraction in POWER_FRACTIONS:
        data, used = mixture(plain, marked, fraction, salt="held-out")
        suspect = student(data, f"held-out-{fraction}")
        scored = reading_texts(suspect, marked, used)[PREREGISTERED["text"]]
        found = radioactivity(
            scheme, scored, mode="reading", min_context_texts=PREREGISTERED["min_context_texts"], null_keys=100
        )
        figures[fraction] = {
            "watermarked_answers": len(used),
            "pvalue": found.pvalue,
            "tokens_scored": found.tokens_scored,
            "tokens_read": int(sum(len(text) for text in scored.texts)),
            "null_ks_pvalue": found.null_ks_pvalue,
        }
        if fraction in API_FRACTIONS:
            figures[fraction]["api"] = api_answers_needed(suspect, scheme)
        print("held out", fraction, figures[fraction], flush=True)
        write_result("radioactivity", {"power": {"reading": PREREGISTERED, "by_fraction": figures}}, update=True)
    return {"power": {"reading": PREREGISTERED, "by_fraction": figures}}


def paraphrased(marked: Path) -> Path:
    """The watermarked harvest laundered as an attacker would: each answer rewritten by the unwatermarked
    teacher at temperature 1 (llama.cpp, every answer batched), kept under the rows and code that made it."""
    rows = read_rows(marked)
    key = fingerprint({"rows": harvest_digest(marked), "ask": PARAPHRASE, "code": source_of(paraphrased, answered)})
    out = WORK / "radioactivity" / f"paraphrased-{key}"
    if (out / "done").exists():
        return out
    engine = GenerationEngine(load_backend("smollm2", "llamacpp"), max_batch_size=32)
    try:
        asks = [
            ([{"role": "user", "content": PARAPHRASE + row.answer}], SamplingParams(max_tokens=192, seed=index))
            for index, row in enumerate(rows)
        ]
        rewritten = answered(engine, asks)
    finally:
        engine.close()
    shutil.rmtree(out, ignore_errors=True)
    dataset = HarvestDataset(out)
    for row, (text, finish_reason) in zip(rows, rewritten, strict=True):
        dataset.write(replace(row, answer=text, finish_reason=finish_reason, logprobs=None))
    dataset.close()
    (out / "done").touch()
    return out


def diluted(marked: Path) -> Path:
    """The watermarked harvest mixed half and half with other data: as many GSM8K training solutions written
    by people (questions past those the benchmark asks)."""
    rows = read_rows(marked)
    out = WORK / "radioactivity" / "diluted"
    shutil.rmtree(out, ignore_errors=True)
    dataset = HarvestDataset(out)
    with open(SHARED_DATA / "gsm8k" / "train.jsonl") as lines:
        others = [json.loads(line) for line in islice(lines, OTHER_DATA_FROM, OTHER_DATA_FROM + len(rows))]
    for index, (row, other) in enumerate(zip(rows, others, strict=True)):
        dataset.write(row)
        question = [{"role": "user", "content": other["question"]}]
        dataset.write(
            replace(row, prompt_id=f"other-{index}", messages=question, answer=other["answer"], logprobs=None)
        )
    dataset.close()
    return out


def robustness() -> dict:
    """What p-values survive an attacker's laundering, read with the pre-registered reading: a student of
    the paraphrased harvest, and one of the harvest diluted half and half with other data."""
    if PREREGISTERED is None:
        sys.exit("run the `power-development` section first and fix PREREGISTERED from its figures")
    marked = answers("kgw")
    scheme = KirchenbauerScheme(WATERMARK_KEY)
    figures = {}
    for name, data in (("paraphrased", paraphrased(marked)), ("diluted_50pct", diluted(marked))):
        scored = reading_texts(student(data, name), marked, [])[PREREGISTERED["text"]]
        found = radioactivity(
            scheme, scored, mode="reading", min_context_texts=PREREGISTERED["min_context_texts"], null_keys=100
        )
        figures[name] = {"pvalue": found.pvalue, "tokens_scored": found.tokens_scored, "rows": len(read_rows(data))}
        print("robustness", name, figures[name], flush=True)
    return {"robustness": {"reading": PREREGISTERED, **figures}}


def teacher_control() -> dict:
    """The unwatermarked teacher, which predicts the served text best, read on it: the strictest control."""
    text = served_text(answers("kgw"))
    found = prove_weights("smollm2", KirchenbauerScheme(WATERMARK_KEY), [text], limit=TEACHER_READ, null_keys=100)
    return {
        "teacher_control": {"answers_read": TEACHER_READ, "pvalue": found.pvalue, "tokens_scored": found.tokens_scored}
    }


SECTIONS = {
    "detection": lambda: {"detection": detection_throughput(KirchenbauerScheme(WATERMARK_KEY))},
    "overhead": lambda: {"generation_overhead": generation_overhead()},
    "quality": lambda: {"quality_cost": quality_cost()},
    "radioactivity": radioactivity_by_fraction,
    "sparse": radioactivity_of_sparse_targets,
    "teacher": teacher_control,
    "power-development": power_development,
    "power": power_held_out,
    "robustness": robustness,
}
TARGETS = {"student_pvalue": "< 1e-6", "control_pvalue": "> 0.01", "speedup": ">= 20", "ratio": ">= 0.95"}


def main() -> None:
    unknown = set(sys.argv[1:]) - set(SECTIONS)
    if unknown:
        sys.exit(f"unknown section {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    fixed_reading = ("power", "robustness")
    for name in sys.argv[1:] or [name for name in SECTIONS if name not in fixed_reading or PREREGISTERED]:
        figures = SECTIONS[name]()
        print(name, figures, flush=True)
        write_result("radioactivity", {**figures, "targets": TARGETS}, update=True)


if __name__ == "__main__":
    main()
