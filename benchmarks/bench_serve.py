"""Serving speed as a user gets it: alambic's gateway against llama.cpp's own `llama-server`, same client.

Both servers are driven by the same openai async client with the same prompts and settings: ShareGPT first turns,
each sent once per server run (llama-server keeps answered prompts' KV in RAM, 8 GiB by default, and a prompt sent
again skips its prefill: a benchmark that cycles a few prompts measures that cache), 128 new tokens forced
(`min_tokens` for alambic, `ignore_eos` for llama-server), temperature 0.7, streamed and not, at 1, 4, 16 and 32
concurrent streams, each level for at least `--seconds` and `--min-requests`. `llama-server` samples with its own
defaults (top-k 40, top-p 0.95, min-p 0.05 before the temperature); `llama-server-full` is the same server asked for
the whole distribution, as alambic samples. The gateway drafts tokens from a sequence's own past while it runs alone
(`--draft-tokens`, 4 by default; each kept only when sampled): `alambic-no-drafts` is the gateway without them,
`llama-server-ngram` llama-server with its own (`--spec-type ngram-simple`), and each level records the gateway's
drafted tokens, accepted and taken back; `alambic-transformers` is the gateway on its transformers backend (the
weights in the dtype it picks for the CPU). Each server runs alone on the machine; with `--rounds` above 1 the servers
take turns, in reverse order every other round (A, B, B, A, ...), so that drift in the machine's speed falls on
both; each round's figures are kept beside their mean, and KGW's slowdown is also given round by round with a 95%
interval. Both load the GGUF encoding alambic picks for this CPU (`--gguf-type auto`), and the CPU's flags are
recorded beside the figures. Both hold the same KV cells, 1,024 per stream, as llama-server's slots (`--kv-layout
per-sequence`); `alambic-shared` is the gateway's default layout (one pool for all rows) on as many cells. The
gateway's own cost per request (auth, policy, log) comes from its /metrics, idle and under 16 streams.
`results/serve.json` holds one run per kind of CPU (with bf16 instructions, with AVX-512 without them, without
AVX-512): a run replaces its kind's alone.

llama-server is built once by `benchmarks/build_llama_server.sh` (from the llama.cpp tree vendored in the
llama-cpp-python sdist; nothing else downloaded). Run the whole benchmark (about an hour, nothing else
on the machine): `.venv/bin/python benchmarks/bench_serve.py` (every server but `alambic-shared` and
`alambic-no-drafts`).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
from scipy import stats

from alambic.generation.speculation import DRAFT_TOKENS
from alambic.models.cpu import cpu_flags, native_bf16
from alambic.models.gguf import resolve_gguf_type, smollm2_gguf
from alambic.paths import cache_dir
from alambic.serve.server import wait_until_ready
from alambic.store import Store, create_account
from common import RESULTS, GatewayProcess, free_port, sharegpt_first_turns, write_result

MAX_TOKENS = 128
PROMPTS = 3000  # distinct prompts drawn: a full run sends about 1,100 requests to each server
TEMPERATURE = 0.7
STREAMS = (1, 4, 16, 32)
SERVERS = (
    "alambic",
    "alambic-kgw",
    "alambic-shared",
    "alambic-no-drafts",
    "alambic-transformers",
    "llama-server",
    "llama-server-full",
    "llama-server-ngram",
)
MEASURED_BY_DEFAULT = ("alambic", "alambic-kgw", "llama-server", "llama-server-full", "llama-server-ngram")
# What each llama-server is asked beside the shared settings, in each request and on its command line: its own
# default sampler chain (top-k 40, top-p 0.95, min-p 0.05 before the temperature), or the whole distribution at the
# temperature, as alambic samples (OpenAI's defaults: top_p 1, no top-k); or its default chain with drafts from each
# sequence's own past, as alambic's gateway drafts by default (`--draft-tokens`)
LLAMA_SERVERS = {
    "llama-server": ({}, ()),
    "llama-server-full": ({"top_k": 0, "top_p": 1.0, "min_p": 0.0}, ()),
    "llama-server-ngram": ({}, ("--spec-type", "ngram-simple")),
}
KV_CELLS_PER_STREAM = 1024
LLAMA_SERVER = cache_dir() / "llama-server" / "llama-server"
WATERMARK_KEY = "bench-serve-watermark-key"  # a benchmark's key: nothing it marks is kept
MODEL = "smollm2"


class LlamaServer:
    """llama.cpp's own server on `gguf`, configured as ANCHORS.md measured it, with a slot per stream."""

    def __init__(self, gguf: Path, slots: int, options: tuple[str, ...] = ()) -> None:
        if not LLAMA_SERVER.is_file():
            raise SystemExit(f"{LLAMA_SERVER} is missing: run benchmarks/build_llama_server.sh first.")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [str(LLAMA_SERVER), "-m", str(gguf), "--port", str(self.port), "-t", "2", "-tb", "2"]
        command += ["-np", str(slots), "-c", str(slots * KV_CELLS_PER_STREAM), "-cb", "--alias", MODEL, "--log-disable"]
        command += options
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_ready(self.url, alive=lambda: self.process.poll() is None, path="/health")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


class FreshPrompts:
    """The prompts in order, each handed out once: no request repeats one the server has answered."""

    def __init__(self, prompts: list) -> None:
        self.prompts = prompts
        self.taken = 0

    def take(self) -> list[dict]:
        if self.taken == len(self.prompts):
            raise SystemExit(f"All {len(self.prompts)} prompts were sent: raise PROMPTS or shorten the levels.")
        self.taken += 1
        return self.prompts[self.taken - 1]


async def load_level(
    url: str, key: str, extra: dict, prompts: FreshPrompts, streams: int, stream: bool, args: argparse.Namespace
) -> tuple[int, float, int]:
    """`streams` clients ask in a loop until `args.seconds` have passed and `args.min_requests` were sent;
    returns (completion tokens, seconds from the first request to the last answer, requests)."""
    # A new connection per request, for both servers: llama-server closes a kept-alive connection that the
    # client may have picked for its next request (a "Server disconnected" error, with retries off).
    client = openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=900, default_headers={"Connection": "close"}
    )
    deadline, sent, tokens = time.perf_counter() + args.seconds, 0, 0

    async def ask(messages) -> int:
        settings = {"model": MODEL, "messages": messages, "max_tokens": args.max_tokens, "temperature": TEMPERATURE}
        settings["extra_body"] = extra
        if not stream:
            return (await client.chat.completions.create(**settings)).usage.completion_tokens
        chunks, usage = 0, None
        response = await client.chat.completions.create(**settings, stream=True, stream_options={"include_usage": True})
        async for chunk in response:
            chunks += bool(chunk.choices and chunk.choices[0].delta.content)
            usage = chunk.usage or usage
        return usage.completion_tokens if usage else chunks

    async def worker() -> None:
        nonlocal sent, tokens
        while time.perf_counter() < deadline or sent < args.min_requests:
            messages = prompts.take()
            sent += 1
            produced = await ask(messages)  # not `tokens += await ...`: that loses concurrent updates
            tokens += produced

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(streams)))
    finally:
        await client.close()
    return tokens, time.perf_counter() - started, sent


def gateway_metrics(url: str) -> str:
    """The gateway's /metrics page, read once for each figure taken from it."""
    return httpx.get(f"{url}/metrics").text


def overhead_histogram(metrics: str) -> list[tuple[float, float]]:
    """Cumulative bucket counts of the gateway's auth + policy + logging time, from its /metrics page."""
    pairs = re.findall(r'alambic_gateway_overhead_seconds_bucket{le="([^"]+)"} (\S+)', metrics)
    return [(float(le), float(count)) for le, count in pairs]


def draft_tokens(metrics: str) -> dict[str, float]:
    """The gateway's drafted tokens so far by outcome (accepted, taken_back), from its /metrics page."""
    return {o: float(n) for o, n in re.findall(r'alambic_draft_tokens_total{outcome="([^"]+)"} (\S+)', metrics)}


def median_ms(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> float:
    """The median between two snapshots, interpolated within its bucket as Prometheus' histogram_quantile does."""
    histogram = [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]
    total = histogram[-1][1]
    lower, below = 0.0, 0.0
    for upper, cumulative in histogram:
        if cumulative >= total / 2:
            if upper == float("inf"):
                return float("inf")
            return 1000 * (lower + (upper - lower) * (total / 2 - below) / max(cumulative - below, 1e-9))
        lower, below = upper, cumulative
    return float("inf")


def idle_overhead_ms(url: str, key: str, requests: int = 50) -> float:
    """One request at a time, one token each: bookkeeping with no generation load beside it."""
    before = overhead_histogram(gateway_metrics(url))
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    for _ in range(requests):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
    return median_ms(before, overhead_histogram(gateway_metrics(url)))


async def measure_server(name: str, gguf_type: str, prompts: list, args) -> dict:
    """Every level, streamed and not, on one server started for the purpose and stopped after."""
    figures: dict = {}
    fresh = FreshPrompts(prompts)  # every server is sent the same prompts in the same order
    gateway = name not in LLAMA_SERVERS  # alambic's: it has /metrics
    with tempfile.TemporaryDirectory() as scratch:
        if not gateway:
            sampling, options = LLAMA_SERVERS[name]
            server, key = LlamaServer(smollm2_gguf(gguf_type), max(args.streams), options), "none"
            extra = {"ignore_eos": True, **sampling}
        else:
            db = f"sqlite:///{Path(scratch) / 'bench.db'}"
            key = create_account(Store(db), "bench")
            options = ["--model", MODEL, "--max-batch-size", str(max(args.streams))]
            if name == "alambic-transformers":
                options += ["--backend", "transformers"]  # its weights in the dtype that fits the CPU
            else:
                options += ["--backend", "llamacpp", "--gguf-type", gguf_type]
                options += ["--kv-tokens", str(max(args.streams) * KV_CELLS_PER_STREAM)]
                if name != "alambic-shared":
                    options += ["--kv-layout", "per-sequence"]
            if name == "alambic-no-drafts":
                options += ["--draft-tokens", "0"]
            if name == "alambic-kgw":
                os.environ["ALAMBIC_WATERMARK_KEY"] = WATERMARK_KEY  # the gateway's process inherits it
                options += ["--watermark", "kgw"]
            server, extra = GatewayProcess(*options, db=db), {"min_tokens": args.max_tokens}
        try:
            for stream in (True, False):
                for streams in args.streams:
                    before = gateway_metrics(server.url) if gateway else None
                    tokens, seconds, requests = await load_level(server.url, key, extra, fresh, streams, stream, args)
                    level = {"tok_s": tokens / seconds, "requests": requests, "seconds": seconds}
                    if before is not None:
                        after = gateway_metrics(server.url)
                        level["overhead_median_ms"] = median_ms(overhead_histogram(before), overhead_histogram(after))
                        drafted = draft_tokens(before)
                        level |= {f"draft_tokens_{o}": n - drafted[o] for o, n in draft_tokens(after).items()}
                    figures[f"{'streamed' if stream else 'whole'}_{streams}"] = level
                    print(f"{name:13s} {'streamed' if stream else 'whole   '} {streams:2d} streams: {level}")
            if gateway:
                figures["overhead_idle_median_ms"] = idle_overhead_ms(server.url, key)
        finally:
            server.close()
    return figures


def mean_of_rounds(rounds: list[dict]) -> dict:
    """Each figure averaged over the rounds (tokens/s and milliseconds alike)."""
    merged: dict = {}
    for key, value in rounds[0].items():
        if isinstance(value, dict):
            merged[key] = mean_of_rounds([r[key] for r in rounds])
        else:
            merged[key] = sum(r[key] for r in rounds) / len(rounds)
    return merged


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--servers", default=",".join(MEASURED_BY_DEFAULT), help="comma-separated: " + ", ".join(SERVERS)
    )
    parser.add_argument("--streams", default=",".join(map(str, STREAMS)), help="concurrency levels")
    parser.add_argument("--seconds", type=float, default=60.0, help="least time per level")
    parser.add_argument("--min-requests", type=int, default=32, help="least requests per level")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help="new tokens per request, forced")
    parser.add_argument("--rounds", type=int, default=1, help="turns of each server, interleaved")
    parser.add_argument("--gguf-type", default="auto", help="the GGUF both servers load (auto: alambic's choice)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="directory of the results file")
    parser.add_argument("--name", default="serve", help="the results file's name (serve: the full run)")
    args = parser.parse_args()
    args.streams = [int(s) for s in args.streams.split(",")]
    servers = args.servers.split(",")
    if unknown := set(servers) - set(SERVERS):
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    gguf_type = resolve_gguf_type(args.gguf_type)
    from transformers import AutoTokenizer

    from alambic.models import smollm2_directory

    prompts = sharegpt_first_turns(PROMPTS, AutoTokenizer.from_pretrained(smollm2_directory()))
    rounds: dict[str, list[dict]] = {name: [] for name in servers}
    for turn in range(args.rounds):  # A B, B A, A B, ...: a drift in the machine's speed falls on both alike
        for name in servers if turn % 2 == 0 else servers[::-1]:
            rounds[name].append(await measure_server(name, gguf_type, prompts, args))
    by_server = {name: mean_of_rounds(results) for name, results in rounds.items()}
    result = {
        "model": MODEL,
        "gguf_type": gguf_type,
        "cpu_flags_all": sorted(cpu_flags()),
        "settings": {
            "max_tokens": args.max_tokens,
            "temperature": TEMPERATURE,
            "streams": args.streams,
            "seconds_per_level": args.seconds,
            "min_requests_per_level": args.min_requests,
            "rounds": args.rounds,
            "draft_tokens": DRAFT_TOKENS,  # the gateway's default (none for alambic-no-drafts)
        },
        "by_server": by_server,
        "rounds": rounds,
    }
    for peer_name in LLAMA_SERVERS.keys() & by_server.keys():
        peer = by_server[peer_name]
        for name in ("alambic", "alambic-shared", "alambic-no-drafts", "alambic-transformers"):
            if name in by_server:
                ratios = {level: ratio(peer[level]["tok_s"], by_server[name][level]["tok_s"]) for level in peer}
                field = f"ratio_vs_{peer_name}{name.removeprefix('alambic')}".replace("-", "_")
                result[field] = ratios
                if args.rounds > 1:
                    result[f"{field}_by_round"] = paired_by_round(rounds[peer_name], rounds[name], list(peer), ratio)
    if "alambic" in by_server and "alambic-kgw" in by_server:
        plain, marked = by_server["alambic"], by_server["alambic-kgw"]
        levels = [level for level, figures in plain.items() if isinstance(figures, dict)]
        result["kgw_slowdown"] = {level: slowdown(plain[level]["tok_s"], marked[level]["tok_s"]) for level in levels}
        if args.rounds > 1:
            result["kgw_slowdown_by_round"] = paired_by_round(
                rounds["alambic"], rounds["alambic-kgw"], levels, slowdown
            )
    result["targets"] = {
        "ratio_vs_llama_server": {"streamed_1": ">= 1.0", "streamed_16": ">= 1.2"},
        "kgw_slowdown": "<= 0.05",
        "overhead_median_ms_under_16_streams": "<= 5",
    }
    print("wrote", record(result, args.results, args.name))


def ratio(peer: float, alambic: float) -> float:
    """alambic's tok/s against its peer's."""
    return alambic / peer


def slowdown(plain: float, marked: float) -> float:
    """The share of the plain server's tok/s that the watermarked one loses."""
    return 1 - marked / plain


def paired_by_round(
    first: list[dict], second: list[dict], levels: list[str], compare: Callable[[float, float], float]
) -> dict:
    """Per level, `compare(first's tok/s, second's tok/s)` in each round (the two measured one after the other), their
    mean and a 95% Student t interval over the rounds: the machine's drift between rounds cancels within a pair. Also
    their median and its distribution-free interval (`median_interval`): the host halves a block's speed now and then
    for seconds, whichever server or account it serves, and such a block moves the mean but not the median."""
    paired = {}
    for level in levels:
        by_round = [compare(a[level]["tok_s"], b[level]["tok_s"]) for a, b in zip(first, second, strict=True)]
        mean = statistics.fmean(by_round)
        half = stats.t.ppf(0.975, len(by_round) - 1) * statistics.stdev(by_round) / math.sqrt(len(by_round))
        paired[level] = {
            "by_round": by_round,
            "mean": mean,
            "ci95": [mean - half, mean + half],
            "median": statistics.median(by_round),
            "median_ci95": median_interval(by_round),
        }
    return paired


def median_interval(values: list[float], confidence: float = 0.95) -> list[float] | None:
    """The order statistics [x_(k), x_(n+1-k)] around the median, k the largest for which P(Binomial(n, 1/2) < k) is
    at most (1 - confidence) / 2: they cover the median with at least `confidence` whatever the distribution (12
    values: the 3rd and the 10th, 96.1%). None for too few values (5 or fewer at 95%)."""
    n, ordered, tail = len(values), sorted(values), (1 - confidence) / 2
    below = int(stats.binom.ppf(tail, n, 0.5))  # the smallest j with P(B <= j) >= tail
    below -= stats.binom.cdf(below, n, 0.5) > tail  # now the largest with P(B <= j) <= tail (-1 if none)
    k = below + 1  # 1-based
    return [ordered[k - 1], ordered[n - k]] if k >= 1 else None


def record(result: dict, directory: Path, name: str = "serve") -> Path:
    """`{name}.json` with `result` as this CPU kind's run: a run on a machine of another kind adds to it."""
    return write_result(name, {cpu_kind(): result}, update=True, directory=directory)


def cpu_kind(flags: frozenset[str] | None = None) -> str:
    """What decides the encodings' speed on a CPU (default: this one): bf16 instructions, AVX-512 without them, or
    neither."""
    flags = cpu_flags() if flags is None else flags
    if native_bf16(flags):
        return "cpu_with_bf16"
    return "cpu_with_avx512" if any(flag.startswith("avx512") for flag in flags) else "cpu_without_avx512"


if __name__ == "__main__":
    asyncio.run(main())
