"""Generation speed on this CPU: alambic's engine on each backend vs transformers' and llama.cpp's own loops.

Each engine runs in a process of its own, set up as `alambic serve` sets it up. Real teacher, ShareGPT
first turns, exactly 128 new tokens per request (end of sequence held off), greedy, 1/4/16/32 concurrent
streams, KGW watermark on and off, all in one run. Anchors measured in the same run:
`transformers.generate` (batch = streams), and llama-cpp-python's own `create_completion` (one stream; it
has no batching), interleaved with the llama.cpp engine's single-stream runs in that engine's process.
Run: `.venv/bin/python benchmarks/bench_generation.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import torch

from alambic.generation import FinishEvent, GenerationEngine, GenerationRequest, SamplingParams, TokenEvent
from alambic.generation.backends import load_backend
from alambic.models import load_model
from alambic.models.gguf import smollm2_gguf
from alambic.watermark import KirchenbauerScheme
from common import sharegpt_first_turns, write_result

NEW_TOKENS = 128
STREAMS = (1, 4, 16, 32)
WATERMARK_STREAMS = {1: 5, 16: 3}  # KGW off/on pairs at 1 and 16 streams, same run
GGUF_TYPE = "bf16"


def measure_engine(engine: GenerationEngine, prompts: list[list[int]], streams: int, processors: tuple = ()) -> dict:
    """`streams` requests submitted together; aggregate tokens/s and mean time to first token."""
    params = SamplingParams(max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS, temperature=0, logits_processors=processors)
    first_token, done = {}, threading.Semaphore(0)
    tokens = [0] * streams

    def sink_for(i):
        def sink(event):
            if isinstance(event, TokenEvent):
                first_token.setdefault(i, time.perf_counter())
                tokens[i] += 1
            elif isinstance(event, FinishEvent):
                done.release()

        return sink

    started = time.perf_counter()
    for i in range(streams):
        engine.submit(GenerationRequest(prompts[i], params), sink_for(i))
    for _ in range(streams):
        done.acquire()
    seconds = time.perf_counter() - started
    return {
        "tok_s": sum(tokens) / seconds,
        "tok_s_per_stream": sum(tokens) / seconds / streams,
        "ttft_s": sum(first_token[i] - started for i in range(streams)) / streams,
    }


def measure_hf_generate(model, tokenizer, prompts: list[list[int]], streams: int) -> dict:
    """transformers' own loop: one left-padded batch of `streams` prompts."""
    tokenizer.padding_side = "left"
    batch = tokenizer.pad({"input_ids": prompts[:streams]}, return_tensors="pt")
    started = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            **batch, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=2
        )
    seconds = time.perf_counter() - started
    generated = (output.shape[1] - batch["input_ids"].shape[1]) * streams
    return {"tok_s": generated / seconds, "tok_s_per_stream": generated / seconds / streams}


def measure_llama_cpp_python(prompt: list[int], eos: int) -> dict:
    """llama-cpp-python's own completion loop on the same GGUF, one stream."""
    from llama_cpp import Llama

    llama = Llama(str(smollm2_gguf(GGUF_TYPE)), n_ctx=2048, n_threads=torch.get_num_threads(), verbose=False)
    started = time.perf_counter()
    first = None
    count = 0
    for _chunk in llama.create_completion(
        prompt, max_tokens=NEW_TOKENS, temperature=0, logit_bias={eos: -1e9}, stream=True
    ):
        first = first or time.perf_counter()
        count += 1
    seconds = time.perf_counter() - started
    return {"tok_s": count / seconds, "tok_s_per_stream": count / seconds, "ttft_s": first - started}


def median(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda figures: figures["tok_s"])[len(runs) // 2]


def peak_flops(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def flops_per_token(config, context: int) -> float:
    """2 × weights touched (all layers + lm_head) + attention over `context` positions."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (hidden // config.num_attention_heads)
    per_layer = hidden * hidden * 2 + hidden * kv * 2 + 3 * hidden * config.intermediate_size
    attention = 4 * layers * context * hidden
    return 2 * (layers * per_layer + hidden * config.vocab_size) + attention


def engine_figures(backend: str) -> dict[str, dict]:
    """alambic's engine on `backend`, in a process started as `alambic serve --backend` starts it."""
    environment = {**os.environ}
    if backend == "llamacpp":
        environment.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `alambic serve --backend llamacpp` does
    child = subprocess.run(
        [sys.executable, __file__, "--engine", backend], env=environment, capture_output=True, text=True, check=True
    )
    return json.loads(child.stdout.splitlines()[-1])


def measure_backend(backend: str) -> None:
    """The child's side: print {streams: figures} (and the anchor's, for llama.cpp) as one JSON line."""
    engine = GenerationEngine(load_backend("smollm2", backend, gguf_type=GGUF_TYPE), max_batch_size=max(STREAMS))
    tokenizer = engine.backend.tokenizer
    prompts = [
        tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=False)
        for m in sharegpt_first_turns(max(STREAMS), tokenizer)
    ]
    measure_engine(engine, prompts, 1)  # warm-up
    figures = {streams: measure_engine(engine, prompts, streams) for streams in STREAMS if streams > 1}
    # One stream lasts about a second: the median of 5, interleaved with the anchor's runs in this same
    # process (llama.cpp backend), so drift and process state weigh on both alike.
    single, anchor = [], []
    for _ in range(5):
        single.append(measure_engine(engine, prompts, 1))
        if backend == "llamacpp":
            anchor.append(measure_llama_cpp_python(prompts[0], tokenizer.eos_token_id))
    figures[1] = median(single)
    if anchor:
        figures["llama-cpp-python"] = median(anchor)
    watermark = (KirchenbauerScheme("benchmark key").processor(),)
    for streams, pairs in WATERMARK_STREAMS.items():  # off and on interleaved: the cost is a few percent
        off, on = [], []
        for _ in range(pairs):
            off.append(measure_engine(engine, prompts, streams))
            on.append(measure_engine(engine, prompts, streams, watermark))
        figures[streams]["watermark_off_tok_s"] = median(off)["tok_s"]
        figures[streams]["watermark_on_tok_s"] = median(on)["tok_s"]
        figures[streams]["watermark_cost"] = 1 - median(on)["tok_s"] / median(off)["tok_s"]
    print(json.dumps(figures))
    engine.close()


def main() -> None:
    loaded = load_model("smollm2")
    tokenizer = loaded.tokenizer
    prompts = [
        tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=False)
        for m in sharegpt_first_turns(max(STREAMS), tokenizer)
    ]
    mean_prompt = sum(len(p) for p in prompts) / len(prompts)
    flops = flops_per_token(loaded.model.config, int(mean_prompt + NEW_TOKENS / 2))
    peaks = {"fp32": peak_flops(torch.float32), "bf16": peak_flops(torch.bfloat16)}
    print(f"peak fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f}; {flops / 1e6:.0f} MFLOP/token")

    rows: dict[str, dict[int, dict]] = {}

    def record(name: str, streams: int, figures: dict, peak: str) -> None:
        figures["compute_fraction"] = figures["tok_s"] * flops / peaks[peak]
        rows.setdefault(name, {})[streams] = figures
        print(f"{name:24s} streams={streams:2d} {figures['tok_s']:7.1f} tok/s", flush=True)

    for streams in STREAMS:
        record("transformers.generate", streams, measure_hf_generate(loaded.model, tokenizer, prompts, streams), "fp32")

    for backend, peak in (("transformers", "fp32"), ("llamacpp", "bf16")):
        for streams, figures in engine_figures(backend).items():
            if streams == "llama-cpp-python":
                record("llama-cpp-python", 1, figures, peak)
            else:
                record(f"alambic-{backend}", int(streams), figures, peak)

    best = max(rows["alambic-transformers"][16]["tok_s"], rows["alambic-llamacpp"][16]["tok_s"])
    result = {
        "model": "smollm2",
        "new_tokens": NEW_TOKENS,
        "llamacpp_encoding": GGUF_TYPE,
        "mean_prompt_tokens": mean_prompt,
        "flops_per_token": flops,
        "peak_flops": peaks,
        "by_loop": rows,
        "best_aggregate_16_streams_tok_s": best,
        "single_stream_vs_llama_cpp_python": rows["alambic-llamacpp"][1]["tok_s"]
        / rows["llama-cpp-python"][1]["tok_s"],
        "llamacpp_vs_transformers_generate_16_streams": rows["alambic-llamacpp"][16]["tok_s"]
        / rows["transformers.generate"][16]["tok_s"],
        "watermark_cost": {
            backend: {s: rows[f"alambic-{backend}"][s]["watermark_cost"] for s in WATERMARK_STREAMS}
            for backend in ("transformers", "llamacpp")
        },
        "targets": {
            "best_aggregate_16_streams_tok_s": ">= 250",
            "single_stream_vs_llama_cpp_python": ">= 1.0",
            "watermark_cost": "<= 0.05",
        },
    }
    print(
        f"best at 16 streams: {best:.0f} tok/s; single stream vs llama-cpp-python: "
        f"{result['single_stream_vs_llama_cpp_python']:.2f}x"
    )
    print(f"watermark (KGW) cost: {result['watermark_cost']}")
    print("wrote", write_result("generation", result))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--engine":
        measure_backend(sys.argv[2])
    else:
        main()
