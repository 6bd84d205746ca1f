import asyncio
import threading

import pytest
import torch

from alambic.errors import InvalidRequestError
from alambic.generation import FinishEvent, GenerationRequest, SamplingParams, TokenEvent

QUESTIONS = ["Hi", "What is the capital of France?", "Write a long poem about the sea and the wind, please."]


def chat_ids(tokenizer, question):
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True, return_dict=False
    )


class ForceTokens:
    """A logits processor that makes the model write `token_ids`, one per step after the prompt."""

    def __init__(self, prompt_length, token_ids):
        self.prompt_length, self.token_ids = prompt_length, token_ids

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_length
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.token_ids[step % len(self.token_ids)]] = 0.0
        return forced


@pytest.fixture
def prompts(tiny):
    return [chat_ids(tiny.tokenizer, q) for q in QUESTIONS]


@pytest.mark.parametrize(
    "params",
    [SamplingParams(max_tokens=24, temperature=0), SamplingParams(max_tokens=24, temperature=0.9, top_p=0.9, seed=7)],
    ids=["greedy", "sampled"],
)
def test_batched_generation_equals_one_at_a_time(engine, prompts, params):
    requests = [GenerationRequest(p, params) for p in prompts]
    alone = [engine.generate([r])[0][0] for r in requests]
    together = [c[0] for c in engine.generate(requests)]
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]
    assert all(len(c.token_ids) == 24 and c.finish_reason == "length" for c in together)


def test_a_request_joining_mid_batch_is_answered_as_if_alone(engine, prompts):
    long_request = GenerationRequest(prompts[2], SamplingParams(max_tokens=60, temperature=0))
    late_request = GenerationRequest(prompts[1], SamplingParams(max_tokens=20, temperature=0.8, seed=11))
    expected_long, expected_late = engine.generate([long_request])[0][0], engine.generate([late_request])[0][0]

    started, finished, results = threading.Event(), threading.Semaphore(0), {}

    def sink_for(name):
        def sink(event):
            if isinstance(event, TokenEvent) and len(results.setdefault(name + "-tokens", [])) < 10:
                results[name + "-tokens"].append(event)
                if name == "long" and len(results[name + "-tokens"]) == 10:
                    started.set()
            if isinstance(event, FinishEvent):
                results[name] = event.completion
                finished.release()

        return sink

    engine.submit(long_request, sink_for("long"))
    assert started.wait(30)
    engine.submit(late_request, sink_for("late"))
    finished.acquire(timeout=60), finished.acquire(timeout=60)
    assert results["long"].token_ids == expected_long.token_ids
    assert results["late"].token_ids == expected_late.token_ids


def test_logits_processors_steer_generation_and_stop_strings_cut_it(engine, tiny, prompts):
    words = tiny.tokenizer.encode(" alpha beta STOP gamma")
    params = SamplingParams(max_tokens=40, stop=("STOP",), logits_processors=(ForceTokens(len(prompts[0]), words),))
    [[completion]] = engine.generate([GenerationRequest(prompts[0], params)])
    assert completion.text == " alpha beta "
    assert completion.finish_reason == "stop"


def test_end_of_sequence_stops_and_is_not_counted(engine, tiny, prompts):
    words = [*tiny.tokenizer.encode(" one two"), 2]
    params = SamplingParams(max_tokens=40, logits_processors=(ForceTokens(len(prompts[0]), words),))
    [[completion]] = engine.generate([GenerationRequest(prompts[0], params)])
    assert (completion.text, completion.finish_reason) == (" one two", "stop")
    assert completion.token_ids == words[:-1]


def test_a_special_token_the_model_writes_is_in_the_text_as_in_its_logprobs(engine, tiny, prompts):
    # Nothing the model wrote is lost: the text keeps a special token's text (only the end of sequence is left
    # out), so the logprobs' tokens spell the text, and a harvester re-tokenizing the text gets the same ids.
    tokenizer = tiny.tokenizer
    special = next(i for i in tokenizer.all_special_ids if i not in engine.backend.eos_token_ids)
    words = [*tokenizer.encode(" one"), special, *tokenizer.encode(" two")]
    params = SamplingParams(
        max_tokens=len(words), logprobs=True, logits_processors=(ForceTokens(len(prompts[0]), words),)
    )
    [[completion]] = engine.generate([GenerationRequest(prompts[0], params)])
    assert completion.token_ids == words
    assert completion.text == f" one{tokenizer.convert_ids_to_tokens(special)} two"
    assert "".join(t.token for t in completion.logprobs) == completion.text
    assert tokenizer.encode(completion.text, add_special_tokens=False) == words


def test_min_tokens_holds_off_the_end_of_sequence(engine, tiny, prompts):
    def end_now(_input_ids, scores):  # the model would end at once
        scores = scores.clone()
        scores[:, 2] += 100.0
        return scores

    params = SamplingParams(max_tokens=10, min_tokens=4, logits_processors=(end_now,))
    [[completion]] = engine.generate([GenerationRequest(prompts[0], params)])
    assert len(completion.token_ids) == 4 and completion.finish_reason == "stop"


def test_logprobs_are_the_model_distribution_with_sorted_alternatives(engine, tiny, prompts):
    params = SamplingParams(max_tokens=5, temperature=0, logprobs=True, top_logprobs=4)
    [[completion]] = engine.generate([GenerationRequest(prompts[1], params)])
    assert len(completion.logprobs) == len(completion.token_ids) == 5
    with torch.inference_mode():
        first = torch.log_softmax(tiny.model(torch.tensor([prompts[1]])).logits[0, -1], -1)
    record = completion.logprobs[0]
    assert record.token_id == completion.token_ids[0] == int(first.argmax())
    assert record.logprob == pytest.approx(float(first.max()), abs=1e-4)
    top_values = [t.logprob for t in record.top]
    assert len(top_values) == 4 and top_values == sorted(top_values, reverse=True)
    assert record.top[0].token_id == record.token_id  # greedy picks the most likely


def test_n_samples_with_a_seed_are_distinct_and_reproducible(engine, prompts):
    request = GenerationRequest(prompts[1], SamplingParams(max_tokens=12, seed=5), n=3)
    first, again = engine.generate([request])[0], engine.generate([request])[0]
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert len({tuple(c.token_ids) for c in first}) == 3
    assert [c.index for c in first] == [0, 1, 2]


async def test_leaving_a_stream_cancels_the_request_and_frees_its_slot(engine, prompts):
    request = GenerationRequest(prompts[0], SamplingParams(max_tokens=1000))
    received = 0
    async for _event in engine.stream(request):
        received += 1
        if received == 3:
            break
    for _ in range(200):
        if engine.active_sequences == 0:
            break
        await asyncio.sleep(0.01)
    assert engine.active_sequences == 0


def test_a_caller_whose_event_loop_has_closed_does_not_stop_the_engine(engine, prompts):
    async def start_and_leave():
        return engine.stream(GenerationRequest(prompts[0], SamplingParams(max_tokens=20, min_tokens=20)))

    asyncio.run(start_and_leave())  # its loop is closed while its request is in flight
    again = GenerationRequest(prompts[0], SamplingParams(max_tokens=3))
    [completion] = asyncio.run(asyncio.wait_for(engine.complete(again), timeout=60))
    assert completion.finish_reason == "length"


def test_invalid_requests_are_refused_before_queueing(engine):
    with pytest.raises(InvalidRequestError):
        engine.submit(GenerationRequest([], SamplingParams()), lambda e: None)
    with pytest.raises(InvalidRequestError, match="n must be"):
        engine.submit(GenerationRequest([1, 2], SamplingParams(), n=1000), lambda e: None)


class FailsAtStep:
    """A logits processor with a bug that shows at its `step`-th call."""

    def __init__(self, step):
        self.step, self.calls = step, 0

    def __call__(self, input_ids, scores):
        self.calls += 1
        if self.calls == self.step:
            scores.fill_(float("nan"))  # half-way through a change when it fails
            raise RuntimeError("processor bug")
        return scores


def run_together(engine, requests):
    """Submit `requests` while the worker is held, so that they join the batch together; each one's
    completions, or the exceptions its sink received."""
    held, release = threading.Event(), threading.Event()

    def hold(_input_ids, scores):
        held.set()
        release.wait(30)
        return scores

    gate = GenerationRequest(requests[0].prompt_ids, SamplingParams(max_tokens=1, logits_processors=(hold,)))
    engine.submit(gate, lambda event: None)
    assert held.wait(30)
    outcomes, done = [[] for _ in requests], threading.Semaphore(0)

    def sink_for(outcome):
        def sink(event):
            if isinstance(event, Exception | FinishEvent):
                outcome.append(event if isinstance(event, Exception) else event.completion)
                done.release()

        return sink

    for request, outcome in zip(requests, outcomes, strict=True):
        engine.submit(request, sink_for(outcome))
    release.set()
    for _ in range(sum(r.n for r in requests)):
        assert done.acquire(timeout=60)
    return outcomes


@pytest.mark.parametrize("bad_output", ["raises", "nan"])
def test_a_failing_logits_processor_fails_its_sequence_alone(engine, prompts, bad_output):
    good = GenerationRequest(prompts[1], SamplingParams(max_tokens=20, temperature=0.8, seed=3))
    expected = engine.generate([good])[0][0]
    processor = FailsAtStep(5) if bad_output == "raises" else (lambda _ids, scores: scores * float("nan"))
    bad = GenerationRequest(prompts[2], SamplingParams(max_tokens=20, logits_processors=(processor,)))
    [good_outcome], [bad_outcome] = run_together(engine, [good, bad])
    assert isinstance(bad_outcome, Exception)
    assert good_outcome.token_ids == expected.token_ids and good_outcome.finish_reason == "length"


def test_logits_processors_read_one_growing_buffer_not_a_copy_per_step(engine, prompts):
    seen = []

    def record(input_ids, scores):
        seen.append(input_ids)  # kept alive, so a fresh tensor per step would have its own storage
        return scores

    params = SamplingParams(max_tokens=300, min_tokens=300, logits_processors=(record,))
    [[completion]] = engine.generate([GenerationRequest(prompts[0], params)])
    assert len(seen) == 300
    for step, input_ids in enumerate(seen):
        assert input_ids.tolist() == [prompts[0] + completion.token_ids[:step]]
    assert len({ids.untyped_storage().data_ptr() for ids in seen}) <= 10


async def test_events_a_slow_reader_left_waiting_come_at_once(engine, prompts):
    request = GenerationRequest(prompts[0], SamplingParams(max_tokens=8, min_tokens=8, temperature=0))
    stream = engine.stream(request)
    first = await stream.__anext__()
    for _ in range(3000):  # the reader falls behind while the engine generates the rest
        if engine.active_sequences == 0:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.01)  # the last events' deliveries run on this loop
    rest = stream.ready()
    assert isinstance(first, TokenEvent) and len(rest) == 8 and isinstance(rest[-1], FinishEvent)
    assert stream.ready() == [] and [event async for event in stream] == []


async def test_a_whole_answer_wakes_the_event_loop_once_a_sample_not_once_a_token(engine, prompts):
    """A wake-up runs the loop's Python beside the model's forward pass; an unstreamed answer needs none a token."""
    loop, wakes = asyncio.get_running_loop(), []
    wake = loop.call_soon_threadsafe
    loop.call_soon_threadsafe = lambda *args: wakes.append(args) or wake(*args)
    request = GenerationRequest(prompts[0], SamplingParams(max_tokens=12, min_tokens=12, temperature=0), n=2)
    completions = await engine.complete(request)
    assert [len(c.token_ids) for c in completions] == [12, 12]
    assert len(wakes) == 2
