"""What the benchmarks share: the real prompts, a gateway in its own process, writing results with where and
when each figure was measured, and what keys cached intermediate results (beside `alambic.paths.fingerprint`)."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import torch

from alambic.generation import GenerationEngine, GenerationRequest, SamplingParams
from alambic.models.cpu import cpuinfo_field
from alambic.serve.server import wait_until_ready

# beside the checkout (/work/main -> /work/shared/data); ALAMBIC_SHARED_DATA for a checkout elsewhere
SHARED_DATA = Path(os.environ.get("ALAMBIC_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
RESULTS = Path(__file__).resolve().parent / "results"
SOURCES = Path(__file__).resolve().parents[1] / "src" / "alambic"
CPUINFO = Path("/proc/cpuinfo")


def sharegpt_first_turns(count: int, tokenizer, max_prompt_tokens: int = 512) -> list[list[dict]]:
    """The first user turn of ShareGPT conversations, as chat messages, skipping very long ones."""
    prompts = []
    with open(SHARED_DATA / "sharegpt" / "conversations.jsonl") as lines:
        for line in lines:
            messages = [{"role": "user", "content": json.loads(line)["turns"][0]}]
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
            if len(ids) <= max_prompt_tokens:
                prompts.append(messages)
            if len(prompts) == count:
                return prompts
    raise ValueError(f"only {len(prompts)} usable prompts")


class GatewayProcess:
    """`alambic serve` in a subprocess, so the client's CPU use is not the server's."""

    def __init__(self, *args: str, db: str) -> None:
        """`args` are `alambic serve`'s options; the server's output goes to this process's."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "alambic", "serve", "--port", str(self.port), *args],
            env={**os.environ, "ALAMBIC_DB": db},
        )
        wait_until_ready(self.url, alive=lambda: self.process.poll() is None)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server started next."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> dict:
    return {
        "cpu": cpuinfo_field("model name", CPUINFO) or platform.processor() or platform.machine(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def cpu_flags() -> list[str]:
    """The CPU's AVX-512 and AMX extensions: what decides bf16's and int8's speed against fp32 here."""
    return sorted(flag for flag in cpuinfo_field("flags", CPUINFO).split() if flag.startswith(("avx512", "amx")))


def write_result(name: str, result: dict, *, update: bool = False, directory: Path | None = None) -> Path:
    """Write `results/{name}.json` (or into `directory`, for a trial run): the figures, and under `measured`
    each top-level figure's date and machine. With `update`, only the keys in `result` change (a rerun of
    some sections); the others keep their own."""
    directory = directory or RESULTS
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    earlier = json.loads(path.read_text()) if update and path.exists() else {}
    measured = earlier.pop("measured", {})
    if "machine" in earlier:  # written before each figure carried its own: the machine is known, the date not
        legacy = earlier.pop("machine")
        measured = {key: {"date": None, "machine": legacy} for key in earlier} | measured
    now = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine()}
    figures = {**earlier, **result}
    measured = {key: now if key in result else measured.get(key) for key in figures}
    path.write_text(json.dumps({**figures, "measured": measured}, indent=2) + "\n")
    return path


def source_of(*functions: Callable) -> str:
    """The source of these functions: the part of a benchmark's own file that a cached result depends on."""
    return "\n".join(inspect.getsource(function) for function in functions)


def harvest_digest(directory: Path) -> str:
    """A hash of a harvest's rows in the order they are read; its shards' names, which carry the time they were
    written, are left out, so the same rows written again hash the same."""
    digest = hashlib.sha256()
    for shard in sorted(directory.glob("part-*")):
        digest.update(shard.read_bytes())
    return digest.hexdigest()


def library_versions(*names: str) -> dict:
    return {name: metadata.version(name) for name in names}


def answered(engine: GenerationEngine, asks: list[tuple[list[dict], SamplingParams]]) -> list[tuple[str, str]]:
    """Each (messages, sampling) answered once by `engine`, all batched together: (text, finish reason)."""
    tokenizer = engine.backend.tokenizer
    requests = [
        GenerationRequest(
            tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False), params
        )
        for chat, params in asks
    ]
    return [(done[0].text, done[0].finish_reason) for done in engine.generate(requests)]
