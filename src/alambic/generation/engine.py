"""The generation engine: a worker thread that owns the model and runs the continuous-batching loop.

Callers submit requests from any thread or event loop; `stream` and `complete` bridge to asyncio,
`generate` serves offline code. All of them go through the same `DecodeBatch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import threading
from collections.abc import Callable

import torch

from alambic.errors import ContextLengthError, InvalidRequestError, ServerBusyError
from alambic.generation.backends import ModelBackend
from alambic.generation.batch import DecodeBatch, Sequence
from alambic.generation.params import Completion, FinishEvent, GenerationEvent, GenerationRequest, TokenEvent

logger = logging.getLogger(__name__)

EventSink = Callable[[GenerationEvent | Exception], None]


class GenerationHandle:
    """A submitted request; `cancel` frees its rows in the batch at the next token boundary."""

    def __init__(self, request: GenerationRequest, sink: EventSink) -> None:
        self.request = request
        self.sink = sink
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventStream:
    """The events of a submitted request as they are generated. Leaving before its end (cancelled while
    waiting, closed, or dropped, even before the first event) cancels the request."""

    def __init__(self, handle: GenerationHandle, events: asyncio.Queue[GenerationEvent | Exception]) -> None:
        self._handle = handle
        self._events = events
        self._unfinished = handle.request.n

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> GenerationEvent:
        if not self._unfinished:
            raise StopAsyncIteration
        try:
            event = await self._events.get()
        except BaseException:  # the caller was cancelled while it waited
            self.close()
            raise
        return self._take(event)

    def ready(self) -> list[GenerationEvent]:
        """The events already generated and not yet read, without waiting: a reader that fell behind (a slow
        client) takes them together, to send them in one write. An error among them raises, as in iteration."""
        events = []
        while self._unfinished and not self._events.empty():
            events.append(self._take(self._events.get_nowait()))
        return events

    def _take(self, event: GenerationEvent | Exception) -> GenerationEvent:
        if isinstance(event, Exception):
            self.close()
            raise event
        self._unfinished -= isinstance(event, FinishEvent)
        return event

    def close(self) -> None:
        if self._unfinished:
            self._handle.cancel()
            self._unfinished = 0

    async def aclose(self) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class GenerationEngine:
    """Owns one model backend; batches every request in flight, up to `max_batch_size` sequences at a time; a
    sequence running alone drafts up to `draft_tokens` ahead (`DecodeBatch`)."""

    def __init__(
        self, backend: ModelBackend, *, max_batch_size: int = 32, max_queue: int = 4096, draft_tokens: int = 0
    ) -> None:
        self.backend = backend
        self.max_batch_size = max_batch_size
        self.batch = DecodeBatch(backend, draft_tokens)
        self._pending: queue.Queue[GenerationHandle] = queue.Queue(maxsize=max_queue)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.largest_batch = 0  # evidence that concurrent callers share forward passes

    @property
    def active_sequences(self) -> int:
        return len(self.batch)

    @property
    def queued_requests(self) -> int:
        return self._pending.qsize()

    def submit(self, request: GenerationRequest, sink: EventSink) -> GenerationHandle:
        """Queue a request; `sink` receives its events (or an exception) from the worker thread."""
        if not 1 <= request.n <= self.max_batch_size:
            raise InvalidRequestError(f"n must be between 1 and {self.max_batch_size}.", param="n")
        if not request.prompt_ids:
            raise InvalidRequestError("The prompt is empty.", param="prompt")
        self._check_kv_cells(request)
        self._ensure_started()
        handle = GenerationHandle(request, sink)
        try:
            self._pending.put_nowait(handle)
        except queue.Full:
            raise ServerBusyError("The server has too many queued requests; retry later.") from None
        return handle

    def stream(self, request: GenerationRequest, tokens: bool = True) -> EventStream:
        """Submits the request now (so a refusal raises here, before any event) and returns its events: without
        `tokens`, only each sample's `FinishEvent` (the event loop is not woken for every token)."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[GenerationEvent | Exception] = asyncio.Queue()

        def deliver(event: GenerationEvent | Exception) -> None:
            if not tokens and isinstance(event, TokenEvent):
                return
            # A caller whose loop has closed (a server shut down mid-request) has left: drop its events rather
            # than raise in the worker thread, which would stop the engine for every other caller.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(events.put_nowait, event)

        return EventStream(self.submit(request, deliver), events)

    async def complete(self, request: GenerationRequest) -> list[Completion]:
        """All `n` completions of a request, in sample order."""
        done = [e.completion async for e in self.stream(request, tokens=False) if isinstance(e, FinishEvent)]
        return sorted(done, key=lambda c: c.index)

    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        """Blocking, for offline code: every request batched together, completions in request order."""
        results: list[list[Completion]] = [[] for _ in requests]
        remaining = threading.Semaphore(0)
        failures: list[Exception] = []

        def sink_for(slot: list[Completion]) -> EventSink:
            def sink(event: GenerationEvent | Exception) -> None:
                if isinstance(event, Exception):
                    failures.append(event)
                    remaining.release()
                elif isinstance(event, FinishEvent):
                    slot.append(event.completion)
                    remaining.release()

            return sink

        for request, slot in zip(requests, results, strict=True):
            self.submit(request, sink_for(slot))
        for _ in range(sum(r.n for r in requests)):
            remaining.acquire()
            if failures:
                raise failures[0]
        return [sorted(slot, key=lambda c: c.index) for slot in results]

    def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="alambic-generation", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        torch.set_num_threads(self.backend.torch_threads)  # this thread's, and the default of threads started after
        while not self._stopping.is_set():
            joining = self._take_joining()
            if joining:
                self._admit(joining)
            if len(self.batch):
                self.largest_batch = max(self.largest_batch, len(self.batch))
                try:
                    self.batch.step()
                except Exception as error:  # the forward pass failed: every row shared it; keep serving
                    logger.exception("generation step failed")
                    self.batch.cancel_all(error)

    def _admit(self, requests: list[list[Sequence]]) -> None:
        """Prefill the joining requests (each a list of its samples) together; if that fails, again one
        request at a time, so that only the request at fault fails and the others join."""
        try:
            self.batch.admit([sequence for samples in requests for sequence in samples])
        except Exception as error:
            if len(requests) > 1:
                for samples in requests:
                    self._admit([samples])
                return
            logger.exception("prefill failed")
            for sequence in requests[0]:
                sequence.fail(error)

    def _take_joining(self) -> list[list[Sequence]]:
        """Requests that fit in the batch and in the KV cells left now, in queue order, each as its samples;
        blocks briefly only when the batch is idle. The first that does not fit waits at the queue's head."""
        joining: list[list[Sequence]] = []
        free_rows = self.max_batch_size - len(self.batch)
        free_cells = self._free_kv_cells()
        while free_rows > 0:
            try:
                idle = not (len(self.batch) or joining)
                handle = self._pending.get(timeout=0.05) if idle else self._pending.get_nowait()
            except queue.Empty:
                break
            if handle.cancelled:
                continue
            cells = self._kv_cells(handle.request)
            if handle.request.n > free_rows or cells > free_cells:
                self._requeue_front(handle)
                break
            samples = self._sequences(handle)
            if samples:
                joining.append(samples)
                free_rows -= handle.request.n
                free_cells -= cells
        return joining

    def _kv_cells(self, request: GenerationRequest) -> int:
        """KV cells a request may fill: each sample holds its prompt and every token it may generate."""
        per_sample = min(len(request.prompt_ids) + request.params.max_tokens, self.backend.context_length)
        return request.n * per_sample

    def _free_kv_cells(self) -> float:
        if self.backend.kv_capacity is None:
            return math.inf
        return self.backend.kv_capacity - sum(sequence.kv_cells for sequence in self.batch.sequences)

    def _check_kv_cells(self, request: GenerationRequest) -> None:
        capacity, cells = self.backend.kv_capacity, self._kv_cells(request)
        if capacity is not None and cells > capacity:
            raise ContextLengthError(
                f"The prompt ({len(request.prompt_ids)} tokens) plus max_tokens ({request.params.max_tokens}), "
                f"for {request.n} sample(s), needs {cells} cells of KV cache; the backend's KV cache holds "
                f"{capacity}. Ask for fewer tokens or samples.",
                param="max_tokens",
            )

    def _requeue_front(self, handle: GenerationHandle) -> None:
        with self._pending.mutex:
            self._pending.queue.appendleft(handle)
            self._pending.not_empty.notify()

    def _sequences(self, handle: GenerationHandle) -> list[Sequence]:
        """The request's samples, or none when they cannot be set up (its sink gets the error)."""
        request = handle.request
        cells = self._kv_cells(request) // request.n
        try:
            return [
                Sequence.create(
                    request.prompt_ids,
                    request.params,
                    index,
                    handle.sink,
                    self.backend.tokenizer,
                    lambda: handle.cancelled,
                    cells,
                )
                for index in range(request.n)
            ]
        except Exception as error:
            logger.exception("could not set up a request")
            handle.sink(error)
            return []
