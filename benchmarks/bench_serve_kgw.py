"""KGW's cost on one warm gateway: blocks of the same requests alternate between an account marked and one not.

`bench_serve.py` measures the watermark with two gateways, one started with KGW, in turns of minutes, and this
machine's speed drifts by up to 25% from one turn to the next: more than the cost to be measured. Here one gateway,
started with `--watermark kgw`, serves two accounts, one of them with its watermark off (`store.set_watermark`), and
the load (bench_serve's client and settings) switches between them block by block, in pairs whose order alternates
(plain then marked, marked then plain, ...): the same process, caches and KV layout, and drift over seconds rather
than minutes. Both blocks of a pair send the same prompts, `--waves` requests a stream, so that they differ in the
watermark alone (a block of other prompts differs by their prefill: +-15% at one stream in a first run); the slots'
kept prefixes hold the block's last prompts, never its first. Each block ends when its requests are answered, so no
batch mixes the two, and each level opens with a block that is not counted. A pair's slowdown is 1 - marked tok/s /
plain tok/s; the result is their median with its distribution-free 95% interval per level (the host halves a block's
speed now and then, for seconds, whichever account it serves: in two runs of 12 pairs at one stream, three marked
blocks of one and a marked and two plain ones of the other ran at 53-69 tok/s against ~100), and their mean with a t
interval. Short blocks in many pairs leave fewer pairs to such a spell. The request log is read after: every marked
answer carries KGW's key id and no plain one does, or the run fails. The gateway drafts at one stream, as it does by
default (`--draft-tokens`), for both accounts: each block records the drafted tokens its sampler accepted.

Run (about 12 minutes at the defaults, nothing else on the machine):
    .venv/bin/python benchmarks/bench_serve_kgw.py [--pairs 24] [--waves 2] [--streams 1,16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

from sqlalchemy import func, select

from alambic.generation.speculation import DRAFT_TOKENS
from alambic.models.gguf import resolve_gguf_type
from alambic.store import Store, create_account, set_watermark
from alambic.store.schema import Account, RequestLog
from bench_serve import (
    KV_CELLS_PER_STREAM,
    MAX_TOKENS,
    MODEL,
    PROMPTS,
    WATERMARK_KEY,
    FreshPrompts,
    draft_tokens,
    gateway_metrics,
    load_level,
    paired_by_round,
    record,
    slowdown,
)
from common import RESULTS, GatewayProcess, sharegpt_first_turns

ACCOUNTS = ("plain", "marked")  # the marked account keeps the server's watermark; the plain one turns it off


def block_order(pairs: int) -> list[tuple[str, str]]:
    """The accounts' turns, pair by pair: plain, marked; marked, plain; ...: a linear drift falls on both alike."""
    return [ACCOUNTS if pair % 2 == 0 else ACCOUNTS[::-1] for pair in range(pairs)]


def logged_watermarks(store: Store) -> dict[str, dict[str, int]]:
    """Per account, its logged requests with and without a watermark key id."""
    marked = func.count(RequestLog.watermark_key_id)
    query = select(Account.name, func.count(), marked).join(Account, RequestLog.account_id == Account.id)
    with store.session() as session:
        rows = session.execute(query.group_by(Account.name)).all()
    return {name: {"with_key": with_key, "without_key": total - with_key} for name, total, with_key in rows}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="1,16", help="concurrency levels")
    parser.add_argument("--pairs", type=int, default=24, help="pairs of blocks (plain, marked) per level")
    parser.add_argument("--waves", type=int, default=2, help="requests per stream in a block")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help="new tokens per request, forced")
    parser.add_argument("--gguf-type", default="auto", help="the GGUF the gateway loads (auto: alambic's choice)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="directory of the results file")
    parser.add_argument("--name", default="serve-kgw-blocks", help="the results file's name")
    args = parser.parse_args()
    if args.pairs < 6:
        parser.error("--pairs must be 6 or more: the median's 95% interval needs six pairs")
    streams = [int(s) for s in args.streams.split(",")]
    gguf_type = resolve_gguf_type(args.gguf_type)
    from transformers import AutoTokenizer

    from alambic.models import smollm2_directory

    prompts = sharegpt_first_turns(PROMPTS, AutoTokenizer.from_pretrained(smollm2_directory()))
    unsent = FreshPrompts(prompts)
    levels: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        store = Store(f"sqlite:///{Path(scratch) / 'bench.db'}")
        keys = {name: create_account(store, name) for name in ACCOUNTS}
        set_watermark(store, "plain", False)
        os.environ["ALAMBIC_WATERMARK_KEY"] = WATERMARK_KEY  # the gateway's process inherits it
        options = ["--model", MODEL, "--backend", "llamacpp", "--gguf-type", gguf_type, "--watermark", "kgw"]
        options += ["--max-batch-size", str(max(streams)), "--kv-tokens", str(max(streams) * KV_CELLS_PER_STREAM)]
        server = GatewayProcess(*options, "--kv-layout", "per-sequence", db=store.url)
        extra = {"min_tokens": args.max_tokens}
        try:
            for level in streams:
                block = argparse.Namespace(seconds=0.0, min_requests=level * args.waves, max_tokens=args.max_tokens)
                name = f"streamed_{level}"
                await load_level(server.url, keys["plain"], extra, unsent, level, True, block)
                blocks: dict[str, list[dict]] = {account: [] for account in ACCOUNTS}
                for turns in block_order(args.pairs):
                    shared = [unsent.take() for _ in range(block.min_requests)]  # the prompts of both blocks
                    for account in turns:
                        before = draft_tokens(gateway_metrics(server.url))["accepted"]
                        tokens, seconds, requests = await load_level(
                            server.url, keys[account], extra, FreshPrompts(shared), level, True, block
                        )
                        accepted = draft_tokens(gateway_metrics(server.url))["accepted"] - before
                        figures = {"tok_s": tokens / seconds, "requests": requests, "draft_tokens_accepted": accepted}
                        blocks[account].append({name: figures})
                        print(f"{level:2d} streams, {account:6s}: {tokens / seconds:7.1f} tok/s", flush=True)
                paired = paired_by_round(blocks["plain"], blocks["marked"], [name], slowdown)[name]
                levels[name] = {
                    "plain_tok_s": [b[name]["tok_s"] for b in blocks["plain"]],
                    "marked_tok_s": [b[name]["tok_s"] for b in blocks["marked"]],
                    **{
                        f"{account}_draft_tokens_accepted": sum(b[name]["draft_tokens_accepted"] for b in mine)
                        for account, mine in blocks.items()
                    },
                    "slowdown_by_pair": paired["by_round"],
                    "slowdown_median": paired["median"],
                    "slowdown_median_ci95": paired["median_ci95"],
                    "slowdown_mean": paired["mean"],
                    "slowdown_mean_ci95": paired["ci95"],
                }
                (low, high), (mean_low, mean_high) = paired["median_ci95"], paired["ci95"]
                print(
                    f"{name}: slowdown median {paired['median']:.2%} (95% interval {low:.2%} to {high:.2%}), "
                    f"mean {paired['mean']:.2%} ({mean_low:.2%} to {mean_high:.2%})",
                    flush=True,
                )
        finally:
            server.close()
        logged = logged_watermarks(store)
    if logged["plain"]["with_key"] or logged["marked"]["without_key"]:
        raise SystemExit(f"the watermark was not applied as the accounts ask: {logged}")
    result = {
        "model": MODEL,
        "gguf_type": gguf_type,
        "settings": {
            "max_tokens": args.max_tokens,
            "streams": streams,
            "pairs": args.pairs,
            "requests_per_stream_in_a_block": args.waves,
            "watermark": "kgw",
            "draft_tokens": DRAFT_TOKENS,  # the gateway's default
        },
        "levels": levels,
        "logged_requests": logged,
        "targets": {"slowdown": "<= 0.05"},
    }
    print("wrote", record(result, args.results, args.name))


if __name__ == "__main__":
    asyncio.run(main())
