"""The real teacher's answers that the distill and watermark benchmarks train on, harvested once and cached.

2,050 prompts, GSM8K train questions and ShareGPT first turns alternating, answered by `alambic serve
--backend llamacpp --kv-layout per-sequence` (from 2026-12-05; the shared layout before) through `alambic
harvest` (128 new tokens, temperature 0.7, top-20 logprobs): once plain, once with the KGW watermark under a
fixed benchmark key (logprobs served `plain`, the gateway's default), and with logprobs served `marked`; the
first prompts can be harvested alone; and watermarked answers to 1,000 fresh prompts from the same sources, to
read suspects on. A rerun resumes whatever is missing.
Run: `.venv/bin/python benchmarks/teacher_answers.py [plain] [kgw] [kgw-marked-logprobs]`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Container
from itertools import islice
from pathlib import Path

from transformers import AutoTokenizer

from alambic.errors import ConflictError
from alambic.harvest import load_prompts
from alambic.harvest.dataset import HarvestDataset, read_rows
from alambic.models.loading import smollm2_directory
from alambic.paths import cache_dir
from alambic.store import Store, create_account, issue_key
from common import SHARED_DATA, GatewayProcess, sharegpt_first_turns

PROMPTS = 2050
FRESH_PROMPTS = 1000
WORK = cache_dir() / "benchmarks"
WATERMARK_KEY = "alambic-benchmark-watermark-key"  # a benchmark's key, public on purpose
WATERMARKS = {
    "plain": (),
    "kgw": ("--watermark", "kgw"),
    "kgw-marked-logprobs": ("--watermark", "kgw", "--watermark-logprobs", "marked"),
}


def prompts_file(count: int = PROMPTS) -> Path:
    """The prompts, or the first `count` of them (GSM8K and ShareGPT still alternating)."""
    if count < PROMPTS:
        path = WORK / f"prompts-{count}.jsonl"
        if not path.exists():
            path.write_text("".join(prompts_file().read_text().splitlines(keepends=True)[:count]))
        return path
    return _alternating(WORK / "prompts.jsonl", 0, PROMPTS)


def fresh_prompts_file(count: int = FRESH_PROMPTS) -> Path:
    """Prompts from the same sources past the benchmark's own, less any text the benchmark also holds (the
    data sets repeat some): what the provider can have its teacher answer anew, to read a suspect on
    watermarked text it never trained on."""
    seen = {json.loads(line)["prompt"] for line in prompts_file().read_text().splitlines()}
    return _alternating(WORK / f"fresh-prompts-{count}.jsonl", PROMPTS // 2, count, seen)


def _alternating(path: Path, skip: int, count: int, leave_out: Container[str] = ()) -> Path:
    """`path`, written once: `count` prompts, GSM8K train questions and ShareGPT first turns alternating, past
    the first `skip` of each, those in `leave_out` left out."""
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        with open(SHARED_DATA / "gsm8k" / "train.jsonl") as lines:
            math = [json.loads(line)["question"] for line in islice(lines, skip, skip + count // 2)]
        tokenizer = AutoTokenizer.from_pretrained(smollm2_directory())
        turns = sharegpt_first_turns(skip + count // 2, tokenizer, max_prompt_tokens=256)[skip:]
        chat = [m[0]["content"] for m in turns]
        rows = [prompt for pair in zip(math, chat, strict=True) for prompt in pair if prompt not in leave_out]
        path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in rows))
    return path


def answers(watermark: str, count: int = PROMPTS, *, fresh: bool = False) -> Path:
    """The directory of the teacher's answers, plain or watermarked, harvesting what is missing of the first
    `count` prompts' (it may hold more: `first_answers` takes theirs alone); `fresh`: to the `count` prompts
    past the benchmark's."""
    prompts = fresh_prompts_file(count) if fresh else prompts_file(count)
    out = WORK / f"answers-{watermark}{'-fresh' if fresh else ''}"
    if {p.prompt_id for p in load_prompts(prompts)} <= {row.prompt_id for row in read_rows(out)}:
        return out
    db = f"sqlite:///{WORK / f'gateway-{watermark}.db'}"
    key = benchmark_key(db)
    os.environ["ALAMBIC_WATERMARK_KEY"] = WATERMARK_KEY  # the gateway's process inherits it
    # each row its own 1,024 KV cells (prompts of at most 256 tokens, 128 new): 1.2x the shared pool's speed at 16
    # streams in bench_serve
    layout = ("--max-batch-size", "32", "--kv-layout", "per-sequence")
    gateway = GatewayProcess("--backend", "llamacpp", *layout, *WATERMARKS[watermark], db=db)
    try:
        command = [sys.executable, "-m", "alambic", "harvest", "--endpoint", f"{gateway.url}/v1"]
        command += ["--model", "smollm2", "--prompts", str(prompts), "--out", str(out)]
        command += ["--concurrency", "32", "--max-tokens", "128", "--temperature", "0.7", "--seed", "1"]
        command += ["--endpoint-moved"]  # a resumed harvest: the same teacher, its gateway on a new free port
        command += ["--timeout", "1800"]  # 32 answers at once on a busy 2-core machine can take minutes
        subprocess.run([*command, "--top-logprobs", "20"], env={**os.environ, "ALAMBIC_API_KEY": key}, check=True)
    finally:
        gateway.close()
    return out


def benchmark_key(db: str) -> str:
    """An API key of the `benchmark` account in the gateway database `db` (the account made on first use)."""
    store = Store(db)
    try:
        return create_account(store, "benchmark")
    except ConflictError:  # a run before this one
        return issue_key(store, "benchmark")


def first_answers(watermark: str, count: int) -> Path:
    """A harvest directory of the answers to the first `count` prompts alone, harvesting what is missing."""
    wanted = {p.prompt_id for p in load_prompts(prompts_file(count))}
    return rows_of(answers(watermark, count), wanted, WORK / f"first-answers-{watermark}-{count}")


def rows_of(harvest: Path, prompt_ids: set[str], out: Path) -> Path:
    """`out`, written afresh with the rows of `harvest` that answer these prompts, in the harvest's order."""
    shutil.rmtree(out, ignore_errors=True)
    dataset = HarvestDataset(out)
    for row in read_rows(harvest):
        if row.prompt_id in prompt_ids:
            dataset.write(row)
    dataset.close()
    return out


if __name__ == "__main__":
    for name in sys.argv[1:] or list(WATERMARKS):
        print("answers in", answers(name))
