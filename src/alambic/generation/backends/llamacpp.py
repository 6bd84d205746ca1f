"""llama.cpp backend: the GGUF runs in llama.cpp (llama-cpp-python's low-level API), sequences share
one KV cache by sequence id, and the logits come back to alambic's own sampling loop, so logits
processors, logprobs and seeds behave as with the transformers backend.

Each call to `llama_decode` releases the GIL for the whole forward pass, so the gateway's event loop
runs freely beside it.

Two KV layouts. `shared`: one pool of cells for all sequences, so short rows leave room for a long one; but a
decode step's attention runs over every row's cells (masked), which at 16 rows of a few hundred tokens costs
about a quarter of the step. `per-sequence` (llama-server's slots): each sequence has `kv_tokens //
max_sequences` cells of its own and attends to them alone. llama.cpp then splits a batch into one forward pass
per run of consecutive sequence ids with the same token count, so a row takes the lowest free id, a decode
step goes to llama.cpp in id order, and each joining prompt is prefilled alone.

Per sequence, a row that leaves keeps its cells (as llama-server's slots do): a new prompt is prefilled only
past the longest prefix it shares with what its slot holds, which is the chat template's system prompt for any
chat and the whole conversation so far for its next turn. It takes the lowest free slot, unless another holds
`REUSE_OVER_LOWEST` of the prompt more (a gap among the running ids costs every step a forward pass).
"""

from __future__ import annotations

import ctypes
import functools
import heapq
import sys
import weakref
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from alambic.errors import AlambicError, ServerBusyError

try:
    import llama_cpp
except ImportError:  # an optional extra: pip install 'alambic[llamacpp]'
    llama_cpp = None


def require_llama_cpp():
    """The llama_cpp module, initialised once and quiet, or a clear error when the extra is missing."""
    if llama_cpp is None:
        raise AlambicError("The llama.cpp backend needs llama-cpp-python: pip install 'alambic[llamacpp]'.")
    if not hasattr(require_llama_cpp, "log_callback"):
        llama_cpp.llama_backend_init()
        require_llama_cpp.log_callback = _errors_only_log_callback()  # llama.cpp keeps calling it
        llama_cpp.llama_log_set(require_llama_cpp.log_callback, ctypes.c_void_p())
    return llama_cpp


KV_LAYOUTS = ("shared", "per-sequence")
REUSE_OVER_LOWEST = 0.25


class LlamaCppBackend:
    """Rows map to llama.cpp sequence ids; a row's KV lives in the cache under its id, laid out as `kv_layout`
    says. `encoding` names the GGUF's weight type where alambic chose it (bf16, f16, ...), shown in /healthz."""

    def __init__(
        self,
        gguf_path: Path,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str,
        eos_token_ids: frozenset[int],
        encoding: str | None = None,
        max_sequences: int = 32,
        kv_tokens: int = 32768,
        batch_tokens: int = 2048,
        threads: int | None = None,
        kv_layout: str = "shared",
    ) -> None:
        require_llama_cpp()
        self.per_sequence = kv_layout == "per-sequence"
        self.name, self.tokenizer, self.eos_token_ids, self.encoding = name, tokenizer, eos_token_ids, encoding
        self.model = llama_cpp.llama_model_load_from_file(
            str(gguf_path).encode(), llama_cpp.llama_model_default_params()
        )
        if not self.model:
            raise AlambicError(f"llama.cpp could not load {gguf_path}.")
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = kv_tokens
        params.n_batch = params.n_ubatch = batch_tokens
        params.n_seq_max = max_sequences
        params.kv_unified = not self.per_sequence
        threads = threads or torch.get_num_threads()
        params.n_threads = params.n_threads_batch = threads
        self.context = llama_cpp.llama_init_from_model(self.model, params)
        if not self.context:
            raise AlambicError("llama.cpp could not create a context.")
        self.memory = llama_cpp.llama_get_memory(self.context)
        self.vocab_size = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        cells = llama_cpp.llama_n_ctx(self.context)
        row_cells = cells // max_sequences if self.per_sequence else cells
        self.context_length = min(llama_cpp.llama_model_n_ctx_train(self.model), row_cells)
        self.kv_capacity = None if self.per_sequence else cells  # per-sequence: context_length bounds a row
        self.batch_tokens = batch_tokens
        self.batch = llama_cpp.llama_batch_init(batch_tokens, 0, 1)
        # freed with the backend, or at exit before llama_cpp's module is torn down
        weakref.finalize(self, _free, self.batch, self.context, self.model)
        self.free_ids = list(range(max_sequences))  # a heap: the lowest free id first
        self.sequence_ids: list[int] = []  # per row
        self.positions: list[int] = []  # per row: the position its next token takes
        # per sequence id (per-sequence layout): the tokens its cells hold, a running row's so far
        self.held: dict[int, list[int]] = {}
        self.cached_tokens: list[int] = []
        # torch only samples beside llama.cpp: with more threads its idle workers spin against llama.cpp's (in
        # process, one row sampled at temperature 0.7 went 73 -> 111 tok/s with one, 16 rows 375 -> 435)
        self.torch_threads = 1

    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        if len(prompts) > len(self.free_ids):
            raise ServerBusyError("llama.cpp has no free sequence slot.")
        running_rows = len(self.sequence_ids)
        logits = np.empty((len(prompts), self.vocab_size), dtype=np.float32)
        self.cached_tokens = [0] * len(prompts)
        try:
            groups = [[row] for row in range(len(prompts))] if self.per_sequence else [list(range(len(prompts)))]
            for group in groups:
                self._prefill_together(group, prompts, logits)
        except Exception:  # free the new rows' slots and whatever chunks of theirs went into the cache
            for sequence_id in self.sequence_ids[running_rows:]:
                self.held[sequence_id] = []
            self.keep(list(range(running_rows)))
            raise
        return torch.from_numpy(logits)

    def _prefill_together(self, rows: list[int], prompts: list[list[int]], logits: np.ndarray) -> None:
        """Append `rows` (indices into `prompts`) in llama_decode calls of their own; their logits into `logits`."""
        entries, last_of = [], {}
        for row in rows:
            prompt = prompts[row]
            sequence_id, reused = self._slot_for(prompt)
            self.cached_tokens[row] = reused
            self.sequence_ids.append(sequence_id)
            self.positions.append(len(prompt))
            if self.per_sequence:
                llama_cpp.llama_memory_seq_rm(self.memory, sequence_id, reused, -1)
                self.held[sequence_id] = list(prompt)
            entries.extend((prompt[p], p, sequence_id) for p in range(reused, len(prompt)))
            last_of[len(entries) - 1] = row
        for start in range(0, len(entries), self.batch_tokens):
            chunk = entries[start : start + self.batch_tokens]
            wanted = [i for i in range(len(chunk)) if start + i in last_of]
            self._decode(chunk, wanted)
            for i in wanted:
                logits[last_of[start + i]] = _floats(llama_cpp.llama_get_logits_ith(self.context, i), self.vocab_size)

    def _slot_for(self, prompt: list[int]) -> tuple[int, int]:
        """A free sequence id for `prompt`, and how many of its first tokens that id's cells hold already (never
        all: the last is fed again for its logits)."""
        if not self.per_sequence:
            return heapq.heappop(self.free_ids), 0
        lowest = self.free_ids[0]
        reuse = {i: _common_prefix(self.held.get(i, ()), prompt, len(prompt) - 1) for i in self.free_ids}
        best = max(self.free_ids, key=lambda i: (reuse[i], -i))
        chosen = best if reuse[best] - reuse[lowest] >= REUSE_OVER_LOWEST * len(prompt) else lowest
        self.free_ids.remove(chosen)
        heapq.heapify(self.free_ids)
        return chosen, reuse[chosen]

    def decode(self, tokens: list[int]) -> torch.Tensor:
        entries = list(zip(tokens, self.positions, self.sequence_ids, strict=True))
        order = sorted(range(len(entries)), key=self.sequence_ids.__getitem__) if self.per_sequence else None
        if order is not None:
            entries = [entries[row] for row in order]
        self._decode(entries, list(range(len(entries))))
        self.positions = [p + 1 for p in self.positions]
        if self.per_sequence:
            for token, sequence_id in zip(tokens, self.sequence_ids, strict=True):
                self.held[sequence_id].append(token)
        logits = self._outputs(len(entries))
        if order is None or order == list(range(len(order))):
            return logits
        return logits[torch.tensor(order).argsort()]  # back to row order (a copy)

    def decode_ahead(self, token: int, draft: list[int]) -> torch.Tensor:
        """Feed the only row `token`, then `draft` as if each came next, in one forward pass; the logits after each
        of them, (1 + len(draft), V), valid until the next call. `rewind` takes back the drafted tokens not kept."""
        fed, sequence_id, position = [token, *draft], self.sequence_ids[0], self.positions[0]
        self._decode([(t, position + i, sequence_id) for i, t in enumerate(fed)], list(range(len(fed))))
        self.positions[0] += len(fed)
        if self.per_sequence:
            self.held[sequence_id].extend(fed)
        return self._outputs(len(fed))

    def rewind(self, tokens: int) -> None:
        """Take the last `tokens` fed to the only row out of its KV cells."""
        sequence_id = self.sequence_ids[0]
        self.positions[0] -= tokens
        llama_cpp.llama_memory_seq_rm(self.memory, sequence_id, self.positions[0], -1)
        if self.per_sequence:
            del self.held[sequence_id][self.positions[0] :]

    def _outputs(self, count: int) -> torch.Tensor:
        """The last decode's `count` rows of logits, (count, V): llama.cpp's buffer, valid until the next decode."""
        outputs = _floats(llama_cpp.llama_get_logits(self.context), count * self.vocab_size)
        return torch.from_numpy(outputs.reshape(count, self.vocab_size))

    def keep(self, rows: list[int]) -> None:
        kept = set(rows)
        for row, sequence_id in enumerate(self.sequence_ids):
            if row not in kept:  # per sequence, its cells stay for the next prompt that shares their prefix
                held = len(self.held.get(sequence_id, ())) if self.per_sequence else 0
                llama_cpp.llama_memory_seq_rm(self.memory, sequence_id, held, -1)
                heapq.heappush(self.free_ids, sequence_id)
        self.sequence_ids = [self.sequence_ids[row] for row in rows]
        self.positions = [self.positions[row] for row in rows]

    def _decode(self, entries: list[tuple[int, int, int]], wanted: list[int]) -> None:
        batch = self.batch
        batch.n_tokens = len(entries)
        outputs = set(wanted)
        for i, (token, position, sequence_id) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = sequence_id
            batch.logits[i] = i in outputs
        status = llama_cpp.llama_decode(self.context, batch)
        if status == 1:
            raise ServerBusyError("llama.cpp's KV cache is full; retry when fewer requests are running.")
        if status != 0:
            raise AlambicError(f"llama_decode failed with status {status}.")


def _common_prefix(held: list[int], prompt: list[int], at_most: int) -> int:
    """How many first tokens `held` and `prompt` share, up to `at_most`."""
    length = min(len(held), at_most)
    return next((i for i in range(length) if held[i] != prompt[i]), length)


def _free(batch, context, model) -> None:
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(context)
    llama_cpp.llama_model_free(model)


@functools.lru_cache(maxsize=256)
def _view(address: int, count: int) -> np.ndarray:
    return np.ctypeslib.as_array(ctypes.cast(address, ctypes.POINTER(ctypes.c_float)), shape=(count,))


def _floats(pointer, count: int) -> np.ndarray:
    """A view of `count` floats that llama.cpp owns (valid until the next decode). llama.cpp keeps one logits buffer
    while the batch's outputs fit in it, so the view of an address and count is made once (`as_array` builds a ctypes
    array type each call: ~30 us of a step's ~0.6 ms of Python at one row)."""
    return _view(ctypes.cast(pointer, ctypes.c_void_p).value, count)


GGML_LOG_LEVEL_ERROR = 4


def _errors_only_log_callback():
    """llama.cpp logs every load to stderr at length; pass on its errors only."""

    @llama_cpp.llama_log_callback
    def log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        if level == GGML_LOG_LEVEL_ERROR:
            sys.stderr.write(text.decode(errors="replace"))

    return log
