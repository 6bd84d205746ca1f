"""transformers backend: one left-padded DynamicCache shared by all rows.

Each row's real tokens end at the right edge of the cache, so a decode step appends one column for every
row. A joining group is prefilled on its own, then padded on the left and concatenated to the running
cache; leaving rows are removed with an index select, and columns that only hold padding are trimmed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from alambic.models import LoadedModel


class TransformersBackend:
    def __init__(self, loaded: LoadedModel) -> None:
        self.name = loaded.name
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.context_length = loaded.context_length
        self.eos_token_ids = loaded.eos_token_ids
        self.kv_capacity = None  # the DynamicCache grows with the rows, as far as memory goes
        self.pad_token_id = self.tokenizer.pad_token_id or min(self.eos_token_ids)
        self.cached_tokens: list[int] = []  # always none: each prompt is computed whole
        self.torch_threads = torch.get_num_threads()  # the model's forward passes are torch's
        self.cache: DynamicCache | None = None
        self.attention_mask = torch.zeros(0, 0, dtype=torch.long)  # (B, L) 1 where the cache holds a token

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(input_ids, mask, cache)
        self.cached_tokens = [0] * len(prompts)
        if self.cache is None:
            self.cache, self.attention_mask = cache, mask
        else:
            self._merge(cache, mask)
        return logits

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

    def _merge(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        width = max(self.attention_mask.shape[1], mask.shape[1])
        for running_layer, joining_layer in zip(self.cache.layers, cache.layers, strict=True):
            for name in ("keys", "values"):  # (B, H, L, D)
                a = _left_pad(getattr(running_layer, name), width, dim=2)
                b = _left_pad(getattr(joining_layer, name), width, dim=2)
                setattr(running_layer, name, torch.cat([a, b], dim=0))
        self.attention_mask = torch.cat(
            [_left_pad(self.attention_mask, width, dim=1), _left_pad(mask, width, dim=1)], dim=0
        )


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    padding = [0, 0] * (tensor.dim() - dim - 1) + [missing, 0]
    return F.pad(tensor, padding)
