"""Generation speed on this CPU: alambic's engine on each backend against the loop a user would run on
the same weights.

Each engine runs in a process of its own, set up as `alambic serve` sets it up. Real teacher, ShareGPT
first turns, exactly 128 new tokens per request (end of sequence held off), greedy, 1/4/16/32 concurrent
streams, KGW watermark on and off, all in one run. Each backend is compared with its own peer, measured in
the same run: the transformers backend with `transformers.generate` on the same model in the same dtype
(batch = streams), the llama.cpp backend with llama-cpp-python's own `create_completion` on the same GGUF
file (one stream; it has no batching), interleaved with that engine's single-stream runs in its process.
Per-token cost against length: one stream on the llama.cpp backend, 1,024 new tokens against 128 (a stop
string and the KGW processor on, so text assembly and processor input are in the loop), beside
llama-cpp-python at the same lengths for the model's own slowdown (attention over a longer context).
Run: `.venv/bin/python benchmarks/bench_generation.py` (`--length` for the per-token part alone).
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
from alambic.generation.backends.select import resolve_dtype
from alambic.models import load_model
from alambic.models.gguf import resolve_gguf_type, smollm2_gguf
from alambic.watermark import KirchenbauerScheme
from common import sharegpt_first_turns, write_result

NEW_TOKENS = 128
LONG_TOKENS = 1024  # the per-token cost at this length against NEW_TOKENS
LENGTH_PAIRS = 3
NEVER_MATCHING_STOP = ("\n\nUser:",)  # checked at every token; an answer that held it would end early
STREAMS = (1, 4, 16, 32)
WATERMARK_STREAMS = {1: 5, 16: 3}  # KGW off/on pairs at 1 and 16 streams, same run
GGUF_TYPE = resolve_gguf_type()  # the encoding `alambic serve` picks for this CPU
LLAMACPP_PEAK = "bf16" if GGUF_TYPE == "bf16" else "fp32"  # the peak its arithmetic is held against


def measure_engine(
    engine: GenerationEngine,
    prompts: list[list[int]],
    streams: int,
    processors: tuple = (),
    new_tokens: int = NEW_TOKENS,
    stop: tuple[str, ...] = (),
) -> dict:
    """`streams` requests submitted together; aggregate tokens/s, mean time to first token, and (one
    stream) tokens/s after the first token, which is the per-token cost alone."""
    params = SamplingParams(
        max_tokens=new_tokens, min_tokens=new_tokens, temperature=0, stop=stop, logits_processors=processors
    )
    first_token, last_token, done = {}, {}, threading.Semaphore(0)
    tokens = [0] * streams

    def sink_for(i):
        def sink(event):
            if isinstance(event, TokenEvent):
                last_token[i] = time.perf_counter()
                first_token.setdefault(i, last_token[i])
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
        "decode_tok_s": (tokens[0] - 1) / (last_token[0] - first_token[0]),
        "tokens": tokens[0],
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


def measure_llama_cpp_python(llama, prompt: list[int], eos: int, new_tokens: int = NEW_TOKENS) -> dict:
    """llama-cpp-python's own completion loop on the same GGUF, one stream."""
    started = time.perf_counter()
    first = last = None
    count = 0
    for _chunk in llama.create_completion(
        prompt, max_tokens=new_tokens, temperature=0, logit_bias={eos: -1e9}, stream=True
    ):
        last = time.perf_counter()
        first = first or last
        count += 1
    seconds = time.perf_counter() - started
    return {
        "tok_s": count / seconds,
        "tok_s_per_stream": count / seconds,
        "ttft_s": first - started,
        "decode_tok_s": (count - 1) / (last - first),
        "tokens": count,
    }


def llama_cpp_python():
    """llama-cpp-python's high-level `Llama` on the GGUF file the llama.cpp backend runs."""
    from llama_cpp import Llama

    context = max(NEW_TOKENS, LONG_TOKENS) + 512  # the longest prompt (512) and answer
    return Llama(str(smollm2_gguf(GGUF_TYPE)), n_ctx=context, n_threads=torch.get_num_threads(), verbose=False)


def measure_length(engine: GenerationEngine, prompt: list[int]) -> dict:
    """One stream at NEW_TOKENS and LONG_TOKENS, interleaved, the engine beside llama-cpp-python's loop:
    medians of tokens/s and of tokens/s after the first token (the per-token cost) at each length, and their
    ratio long / short (1.0: no growth)."""
    eos = engine.backend.tokenizer.eos_token_id
    watermark = (KirchenbauerScheme("benchmark key").processor(),)
    runs: dict[str, dict[int, list[dict]]] = {"engine": {}, "llama-cpp-python": {}}
    measure_engine(engine, [prompt], 1, watermark, new_tokens=16, stop=NEVER_MATCHING_STOP)  # warm-up
    for _ in range(LENGTH_PAIRS):
        for new_tokens in (NEW_TOKENS, LONG_TOKENS):
            engine_run = measure_engine(engine, [prompt], 1, watermark, new_tokens, stop=NEVER_MATCHING_STOP)
            if engine_run["tokens"] != new_tokens:
                raise RuntimeError(f"the answer ended at {engine_run['tokens']} tokens: pick another stop string")
            runs["engine"].setdefault(new_tokens, []).append(engine_run)
            runs["llama-cpp-python"].setdefault(new_tokens, []).append(
                measure_llama_cpp_python(llama_cpp_python(), prompt, eos, new_tokens)
            )
    figures: dict = {}
    for loop, by_length in runs.items():
        figures[loop] = {}
        for key in ("tok_s", "decode_tok_s"):
            short, long = (median(by_length[n], key)[key] for n in (NEW_TOKENS, LONG_TOKENS))
            figures[loop] |= {
                f"{key}_{NEW_TOKENS}": short,
                f"{key}_{LONG_TOKENS}": long,
                f"{key}_long_vs_short": long / short,
            }
    # The model's own slowdown with length (attention over more positions) is llama-cpp-python's; what the
    # engine loses beyond it is its own per-token cost growing.
    figures["engine_vs_llama_cpp_python_long_vs_short"] = (
        figures["engine"]["decode_tok_s_long_vs_short"] / figures["llama-cpp-python"]["decode_tok_s_long_vs_short"]
    )
    return figures


def median(runs: list[dict], key: str = "tok_s") -> dict:
    return sorted(runs, key=lambda figures: figures[key])[len(runs) // 2]


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


def engine_figures(backend: str, part: str = "all") -> dict:
    """alambic's engine on `backend`, in a process started as `alambic serve --backend` starts it."""
    environment = {**os.environ}
    if backend == "llamacpp":
        environment.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `alambic serve --backend llamacpp` does
    child = subprocess.run(
        [sys.executable, __file__, "--engine", backend, part],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(child.stdout.splitlines()[-1])


def chat_prompts(tokenizer) -> list[list[int]]:
    return [
        tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=False)
        for m in sharegpt_first_turns(max(STREAMS), tokenizer)
    ]


def measure_backend(backend: str, part: str) -> None:
    """The child's side: print its figures as one JSON line: by number of streams, its peer's single stream
    (llama.cpp), the dtype it ran in (transformers), and (llama.cpp) the per-token cost against length."""
    engine = GenerationEngine(load_backend("smollm2", backend, gguf_type=GGUF_TYPE), max_batch_size=max(STREAMS))
    tokenizer = engine.backend.tokenizer
    prompts = chat_prompts(tokenizer)
    figures: dict = {}
    if backend == "transformers":
        figures["dtype"] = str(engine.backend.model.dtype)
    if part == "length":
        figures["length"] = measure_length(engine, prompts[0])
        print(json.dumps(figures))
        engine.close()
        return
    measure_engine(engine, prompts, 1)  # warm-up
    by_streams = {streams: measure_engine(engine, prompts, streams) for streams in STREAMS if streams > 1}
    # One stream lasts about a second: the median of 5, interleaved with the peer's runs in this same
    # process (llama.cpp backend), so drift and process state weigh on both alike.
    single, peer = [], []
    for _ in range(5):
        single.append(measure_engine(engine, prompts, 1))
        if backend == "llamacpp":  # a fresh Llama each time: it would otherwise reuse the prompt's KV
            peer.append(measure_llama_cpp_python(llama_cpp_python(), prompts[0], tokenizer.eos_token_id))
    by_streams[1] = median(single)
    if peer:
        figures["llama-cpp-python"] = median(peer)
    watermark = (KirchenbauerScheme("benchmark key").processor(),)
    for streams, pairs in WATERMARK_STREAMS.items():  # off and on interleaved: the cost is a few percent
        off, on = [], []
        for _ in range(pairs):
            off.append(measure_engine(engine, prompts, streams))
            on.append(measure_engine(engine, prompts, streams, watermark))
        by_streams[streams]["watermark_off_tok_s"] = median(off)["tok_s"]
        by_streams[streams]["watermark_on_tok_s"] = median(on)["tok_s"]
        by_streams[streams]["watermark_cost"] = 1 - median(on)["tok_s"] / median(off)["tok_s"]
    figures["streams"] = by_streams
    if backend == "llamacpp":
        figures["length"] = measure_length(engine, prompts[0])
    print(json.dumps(figures))
    engine.close()


def print_length(length: dict) -> None:
    engine, peer = length["engine"], length["llama-cpp-python"]
    print(
        f"1 stream, {LONG_TOKENS} vs {NEW_TOKENS} new tokens, llama.cpp backend with KGW and a stop string: "
        f"{engine[f'decode_tok_s_{LONG_TOKENS}']:.1f} vs {engine[f'decode_tok_s_{NEW_TOKENS}']:.1f} tok/s after the "
        f"first token = {engine['decode_tok_s_long_vs_short']:.2f}x (llama-cpp-python "
        f"{peer['decode_tok_s_long_vs_short']:.2f}x; engine over model "
        f"{length['engine_vs_llama_cpp_python_long_vs_short']:.2f}x); with the first token "
        f"{engine['tok_s_long_vs_short']:.2f}x"
    )


def main_length() -> None:
    """Only the per-token cost against length; updates that key of results/generation.json."""
    length = engine_figures("llamacpp", "length")["length"]
    print_length(length)
    result = {"per_token_cost_vs_length": {"backend": "llamacpp", "encoding": GGUF_TYPE, **length}}
    print("wrote", write_result("generation", result, update=True))


def main() -> None:
    loaded = load_model("smollm2")
    loaded.model.to(getattr(torch, resolve_dtype()))  # the dtype the transformers backend picks for this CPU
    tokenizer = loaded.tokenizer
    prompts = chat_prompts(tokenizer)
    mean_prompt = sum(len(p) for p in prompts) / len(prompts)
    flops = flops_per_token(loaded.model.config, int(mean_prompt + NEW_TOKENS / 2))
    peaks = {"fp32": peak_flops(torch.float32), "bf16": peak_flops(torch.bfloat16)}
    print(f"peak fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f}; {flops / 1e6:.0f} MFLOP/token")

    rows: dict[str, dict[int, dict]] = {}

    def record(name: str, streams: int, figures: dict, peak: str) -> None:
        figures["compute_fraction"] = figures["tok_s"] * flops / peaks[peak]
        rows.setdefault(name, {})[streams] = figures
        print(f"{name:24s} streams={streams:2d} {figures['tok_s']:7.1f} tok/s", flush=True)

    generate_dtype = str(loaded.model.dtype)
    torch_peak = "bf16" if loaded.model.dtype == torch.bfloat16 else "fp32"
    for streams in STREAMS:
        figures = measure_hf_generate(loaded.model, tokenizer, prompts, streams)
        record("transformers.generate", streams, figures, torch_peak)

    children = {}
    for backend, peak in (("transformers", torch_peak), ("llamacpp", LLAMACPP_PEAK)):
        children[backend] = engine_figures(backend)
        for streams, figures in children[backend]["streams"].items():
            record(f"alambic-{backend}", int(streams), figures, peak)
    record("llama-cpp-python", 1, children["llamacpp"]["llama-cpp-python"], LLAMACPP_PEAK)
    if children["transformers"]["dtype"] != generate_dtype:  # the comparison holds only in the same dtype
        raise RuntimeError(f"the transformers backend ran in {children['transformers']['dtype']}, not {generate_dtype}")

    best = max(rows["alambic-transformers"][16]["tok_s"], rows["alambic-llamacpp"][16]["tok_s"])
    result = {
        "model": "smollm2",
        "new_tokens": NEW_TOKENS,
        "llamacpp_encoding": GGUF_TYPE,
        "transformers_dtype": generate_dtype,
        "mean_prompt_tokens": mean_prompt,
        "flops_per_token": flops,
        "peak_flops": peaks,
        "by_loop": rows,
        "best_aggregate_16_streams_tok_s": best,
        # each backend against its peer on the same weights: llama-cpp-python on the same GGUF (one stream,
        # it has no batching), transformers.generate on the same model in the same dtype
        "single_stream_vs_llama_cpp_python": rows["alambic-llamacpp"][1]["tok_s"]
        / rows["llama-cpp-python"][1]["tok_s"],
        "transformers_vs_generate": {
            s: rows["alambic-transformers"][s]["tok_s"] / rows["transformers.generate"][s]["tok_s"] for s in STREAMS
        },
        "watermark_cost": {
            backend: {s: rows[f"alambic-{backend}"][s]["watermark_cost"] for s in WATERMARK_STREAMS}
            for backend in ("transformers", "llamacpp")
        },
        "per_token_cost_vs_length": {"backend": "llamacpp", "encoding": GGUF_TYPE, **children["llamacpp"]["length"]},
        "targets": {
            "best_aggregate_16_streams_tok_s": ">= 250",
            "single_stream_vs_llama_cpp_python": ">= 1.0",
            "transformers_vs_generate": ">= 1.0",
            "watermark_cost": "<= 0.05",
            "per_token_cost_vs_length.engine_vs_llama_cpp_python_long_vs_short": ">= 0.9",
        },
    }
    print(
        f"best at 16 streams: {best:.0f} tok/s; single stream vs llama-cpp-python: "
        f"{result['single_stream_vs_llama_cpp_python']:.2f}x; transformers backend vs generate ({generate_dtype}): "
        + ", ".join(f"{s} streams {r:.2f}x" for s, r in result["transformers_vs_generate"].items())
    )
    print(f"watermark (KGW) cost: {result['watermark_cost']}")
    print_length(children["llamacpp"]["length"])
    print("wrote", write_result("generation", result))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--engine":
        measure_backend(sys.argv[2], sys.argv[3])
    elif sys.argv[1:] == ["--length"]:
        main_length()
    else:
        main()
