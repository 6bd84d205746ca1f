"""How fast `--watermark-logprobs marked` gives a KGW green list away, on the real teacher.

The attacker holds the unwatermarked model (SmolLM2's weights are public) and asks the marked teacher for
`top_logprobs=20` at prefixes that end in one context token c. Each answer's logprobs exceed the model's by
delta on green tokens and by 0 on red ones (less a shared normaliser), so one answer tells the colour of 20
tokens after c. Watermark stealing (Jovanović et al. 2024) needs the colours of the tokens the model writes
after c; measured here: how exactly the colours are read, and, by number of answers, the share of the
teacher's next-token probability after c (on held-out prefixes ending in c, their top 20) whose colour is known.
Run: `.venv/bin/python benchmarks/bench_logprob_stealing.py` (a few minutes on the llama.cpp backend).
"""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `alambic serve --backend llamacpp` sets it

import numpy as np

from alambic.generation import GenerationEngine, GenerationRequest, SamplingParams
from alambic.generation.backends import load_backend
from alambic.watermark import KirchenbauerScheme
from alambic.watermark.keyed_hash import context_hash
from common import SHARED_DATA, write_result

CONTEXTS = (" the", " to", " and")
QUERIES, HELD_OUT = 200, 100  # prefixes per context token: the attacker's, and those the coverage is read on
PREFIX_TOKENS = 48
REFERENCE_TOP = 1000  # the attacker's own model gives any token's logprob; the 1,000 likeliest are enough
DELTA = 2.0  # the gateway's default
QUERY_COUNTS = (1, 3, 10, 30, 100, 200)


def prefixes_ending_in(token: int, tokenizer, count: int) -> list[list[int]]:
    """Up to two prefixes a ShareGPT turn, each its last `PREFIX_TOKENS` tokens up to an occurrence of `token`."""
    prefixes = []
    with open(SHARED_DATA / "sharegpt" / "conversations.jsonl") as lines:
        for line in lines:
            for turn in json.loads(line)["turns"]:
                ids = tokenizer.encode(turn[:4000], add_special_tokens=False)
                ends = [i for i, t in enumerate(ids) if t == token and i >= 8][:2]
                prefixes.extend(ids[max(0, end + 1 - PREFIX_TOKENS) : end + 1] for end in ends)
                if len(prefixes) >= count:
                    return prefixes[:count]
    raise ValueError(f"only {len(prefixes)} prefixes end in token {token}")


def next_token_logprobs(engine: GenerationEngine, prefixes: list[list[int]], top: int, processors=()) -> list[dict]:
    """{token: logprob} of the `top` likeliest next tokens after each prefix (empty where it would end)."""
    params = SamplingParams(max_tokens=1, temperature=0, logprobs=True, top_logprobs=top, logits_processors=processors)
    completions = engine.generate([GenerationRequest(p, params) for p in prefixes])
    return [{t.token_id: t.logprob for t in c.logprobs[0].top} if c.logprobs else {} for [c] in completions]


def steal(engine: GenerationEngine, context: str, scheme: KirchenbauerScheme) -> dict:
    tokenizer = engine.backend.tokenizer
    [token] = tokenizer.encode(context, add_special_tokens=False)
    prefixes = prefixes_ending_in(token, tokenizer, QUERIES + HELD_OUT)
    served = next_token_logprobs(engine, prefixes[:QUERIES], 20, (scheme.processor(),))
    model = next_token_logprobs(engine, prefixes, REFERENCE_TOP)
    green = scheme.green_mask(context_hash([token], scheme.seed), len(tokenizer))
    colours: dict[int, bool] = {}  # token -> green, as read
    known_after, correct = [], []
    for answer, reference in zip(served, model[:QUERIES], strict=True):
        shared = [t for t in answer if t in reference]
        shift = np.array([answer[t] - reference[t] for t in shared])
        for t, read_green in zip(shared, shift > shift.max() - DELTA / 2, strict=True):
            colours[t] = bool(read_green)
            correct.append(bool(read_green) == bool(green[t]))
        known_after.append(set(colours))
    # the held-out prefixes' top 20, as probabilities
    held_out = [
        dict(sorted(((t, math.exp(v)) for t, v in top.items()), key=lambda x: -x[1])[:20]) for top in model[QUERIES:]
    ]
    held_out = [top for top in held_out if top]

    def mass_known(known: set[int]) -> float:
        return float(np.mean([sum(p for t, p in top.items() if t in known) for top in held_out]))

    by_queries = {
        q: {"tokens_known": len(known_after[q - 1]), "mass_known": mass_known(known_after[q - 1])} for q in QUERY_COUNTS
    }
    return {
        "colours_read": len(correct),
        "colour_accuracy": float(np.mean(correct)),
        "held_out_prefixes": len(held_out),
        "held_out_top20_mass": float(np.mean([sum(top.values()) for top in held_out])),
        "by_queries": by_queries,
    }


def main() -> None:
    engine = GenerationEngine(load_backend("smollm2", "llamacpp", max_sequences=32), max_batch_size=32)
    scheme = KirchenbauerScheme("stealing-benchmark-key", delta=DELTA, logprobs="marked")
    try:
        result = {context: steal(engine, context, scheme) for context in CONTEXTS}
    finally:
        engine.close()
    print(json.dumps(result, indent=2))
    write_result("stealing", {"delta": DELTA, "gamma": scheme.gamma, "contexts": result})


if __name__ == "__main__":
    main()
