"""transformers backend: one left-padded DynamicCache shared by all rows.

Each row's real tokens end at the right edge of the cache, so a decode step appends one column for every
row. Each joining prompt is prefilled alone (a batch padded to its longest prompt would compute the padding),
then padded on the left and concatenated to the running cache; leaving rows are removed with an index select,
and columns that only hold padding are trimmed. A decode step's attention is `grouped_decode_attention`,
registered with transformers as `GROUPED_DECODE`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from alambic.models import LoadedModel

GROUPED_DECODE = "alambic_grouped_decode"


def grouped_decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention for one new token a row: the query heads that share a key/value head are multiplied against it
    together, softmax in float32. A prompt (several tokens a row) or a position bias is torch's SDPA's, whose CPU
    kernels at one token a row repeat the cache for every query head, or run flash attention, both slower.
    In: query (B, H, 1, D), key and value (B, KV heads, L, D), the mask (B, 1, 1, L): True where a row attends,
    or added to the scores. Out: (B, 1, H, D), as transformers' attention functions return it."""
    if query.shape[2] != 1 or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    rows, heads, _, width = query.shape
    grouped = query.view(rows, key.shape[1], heads // key.shape[1], width)
    scale = scaling if scaling is not None else 1 / math.sqrt(width)
    scores = torch.matmul(grouped, key.transpose(-1, -2)).float() * scale  # (B, KV heads, group, L)
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, -math.inf)
    elif attention_mask is not None:
        scores = scores + attention_mask
    output = torch.matmul(torch.softmax(scores, dim=-1).to(value.dtype), value)  # (B, KV heads, group, D)
    return output.reshape(rows, 1, heads, value.shape[-1]), None


AttentionInterface.register(GROUPED_DECODE, grouped_decode_attention)
AttentionMaskInterface.register(GROUPED_DECODE, sdpa_mask)  # boolean masks, as SDPA's


class TransformersBackend:
    def __init__(self, loaded: LoadedModel, *, threads: int | None = None) -> None:
        """`threads`: torch's in the engine's thread, which runs the forward passes (default: torch's now)."""
        self.name = loaded.name
        self.model = loaded.model
        if self.model.config._attn_implementation == "sdpa":  # models that need another (a soft cap) keep theirs
            self.model.set_attn_implementation(GROUPED_DECODE)
        self.tokenizer = loaded.tokenizer
        self.context_length = loaded.context_length
        self.eos_token_ids = loaded.eos_token_ids
        self.kv_capacity = None  # the DynamicCache grows with the rows, as far as memory goes
        self.cached_tokens: list[int] = []  # always none: each prompt is computed whole
        self.torch_threads = threads or torch.get_num_threads()  # the model's forward passes are torch's
        self.cache: DynamicCache | None = None
        self.attention_mask = torch.zeros(0, 0, dtype=torch.long)  # (B, L) 1 where the cache holds a token

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        # One prompt at a time: 16 ShareGPT first turns, ~90 tokens on average, pad to ~250 (two thirds padding)
        joining, logits = [], []
        for prompt in prompts:
            input_ids = torch.tensor([prompt])
            mask = torch.ones_like(input_ids)
            cache = DynamicCache(config=self.model.config)
            logits.append(self._forward(input_ids, mask, cache))
            joining.append((cache, mask))
        self.cached_tokens = [0] * len(prompts)
        parts = ([(self.cache, self.attention_mask)] if self.cache is not None else []) + joining
        self.cache = parts[0][0]
        self._join(parts)
        return torch.cat(logits)

    @torch.inference_mode()
    def decode(self, tokens: list[int]) -> torch.Tensor:
        self.attention_mask = F.pad(self.attention_mask, (0, 1), value=1)
        return self._forward(torch.tensor(tokens).unsqueeze(1), self.attention_mask, self.cache)  # (B, 1) in

    def keep(self, rows: list[int]) -> None:
        if not rows:
            self.cache, self.attention_mask = None, torch.zeros(0, 0, dtype=torch.long)
            return
        index = torch.tensor(rows, dtype=torch.long)
        mask = self.attention_mask[index]
        first_used = int(mask.any(dim=0).nonzero()[0])
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, first_used:, :]
            layer.values = layer.values[index, :, first_used:, :]
        self.attention_mask = mask[:, first_used:]

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        # Positions count real tokens only, so a left-padded row sees the same positions as alone.
        position_ids = (mask.cumsum(dim=-1) - 1).clamp(min=0)[:, -input_ids.shape[1] :]
        output = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return output.logits[:, -1, :].float()  # (B, V)

    def _join(self, parts: list[tuple[DynamicCache, torch.Tensor]]) -> None:
        """The running cache becomes `parts` (each a cache and its mask) one after another, left-padded to the
        widest."""
        width = max(mask.shape[1] for _, mask in parts)
        for index, running_layer in enumerate(self.cache.layers):
            for name in ("keys", "values"):  # (B, H, L, D)
                padded = [_left_pad(getattr(cache.layers[index], name), width, dim=2) for cache, _ in parts]
                setattr(running_layer, name, torch.cat(padded, dim=0))
        self.attention_mask = torch.cat([_left_pad(mask, width, dim=1) for _, mask in parts], dim=0)


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    padding = [0, 0] * (tensor.dim() - dim - 1) + [missing, 0]
    return F.pad(tensor, padding)
