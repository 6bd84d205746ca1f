"""What the benchmarks share: the real prompts, a gateway in its own process, and writing results."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import torch

from alambic.serve.server import wait_until_ready

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"


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
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "alambic", "serve", "--port", str(self.port), *args],
            env={**os.environ, "ALAMBIC_DB": db},
        )
        wait_until_ready(self.url, alive=lambda: self.process.poll() is None)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def write_result(name: str, result: dict, *, update: bool = False) -> Path:
    """Write `results/{name}.json`; with `update`, only the keys in `result` change (a rerun of some sections)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    earlier = json.loads(path.read_text()) if update and path.exists() else {}
    path.write_text(json.dumps({**earlier, "machine": machine(), **result}, indent=2) + "\n")
    return path
