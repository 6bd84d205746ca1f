import math

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from alambic.errors import InvalidRequestError
from alambic.generation.backends import load_backend
from alambic.generation.backends.hf import GROUPED_DECODE, TransformersBackend, grouped_decode_attention
from alambic.generation.backends.select import resolve_dtype
from alambic.models import tiny_model
from alambic.models.gguf import AUTO

ZEN3 = {"fpu", "avx", "avx2", "fma"}  # no AVX-512
ZEN4 = ZEN3 | {"avx512f", "avx512_bf16"}


@pytest.mark.parametrize("additive", [False, True], ids=["boolean-mask", "additive-mask"])
def test_grouped_decode_attention_equals_sdpa_with_its_cache_repeated_per_query_head(additive):
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(3, 6, 1, 8, generator=generator)  # 3 rows, 6 query heads sharing 2 key/value heads
    key, value = torch.randn(2, 3, 2, 5, 8, generator=generator).unbind(0)
    mask = torch.tensor([[True] * 5, [False, False, True, True, True], [False] * 4 + [True]]).view(3, 1, 1, 5)
    if additive:
        mask = torch.zeros(mask.shape).masked_fill(~mask, -math.inf)
    module = torch.nn.Module()
    module.num_key_value_groups = 3  # what SDPA repeats the cache by
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    grouped, _ = grouped_decode_attention(module, query, key, value, mask, scaling=0.3)
    assert grouped.shape == expected.shape == (3, 1, 6, 8)
    torch.testing.assert_close(grouped, expected)


def test_decode_steps_give_the_logits_of_each_row_computed_alone_without_a_cache():
    loaded = tiny_model(initializer_range=0.3, tie_embeddings=False)
    backend = TransformersBackend(loaded)
    prompts = [[5, 9, 11], [7] * 12, [3, 4, 5, 6, 7, 8, 9]]
    logits = [backend.prefill(prompts[:2])]
    logits.append(torch.cat([backend.decode([20, 21]), backend.prefill(prompts[2:])]))  # a row joins
    logits.append(backend.decode([22, 23, 24]))
    backend.keep([0, 2])  # the longest row leaves
    logits.append(backend.decode([25, 27]))
    rows = [prompts[0] + [20, 22, 25], prompts[1] + [21, 23], prompts[2] + [24, 27]]
    with torch.inference_mode():
        alone = [loaded.model(torch.tensor([row])).logits[0].float() for row in rows]
    # each step's logits are a prefix's last position: (row, prefix length) per step
    steps = [[(0, 3), (1, 12)], [(0, 4), (1, 13), (2, 7)], [(0, 5), (1, 14), (2, 8)], [(0, 6), (2, 9)]]
    for step, expected in zip(logits, steps, strict=True):
        torch.testing.assert_close(step, torch.stack([alone[r][n - 1] for r, n in expected]), atol=1e-4, rtol=1e-4)


def test_a_joining_group_computes_its_prompts_tokens_not_padding():
    loaded = tiny_model()
    counted = []
    loaded.model.get_input_embeddings().register_forward_hook(lambda _, inputs, __: counted.append(inputs[0].numel()))
    TransformersBackend(loaded).prefill([[5] * 3, [6] * 10, [7] * 40])
    assert sum(counted) == 53  # padded to its longest prompt, 120


@pytest.mark.parametrize(
    ("flags", "expected"), [(ZEN3, "float32"), (ZEN4, "bfloat16"), (set(), "float32")], ids=["avx2", "bf16", "none"]
)
def test_the_weights_are_bf16_only_where_the_cpu_multiplies_in_bf16(flags, expected):
    assert resolve_dtype(AUTO, flags=flags) == expected
    assert resolve_dtype("float32", flags=ZEN4) == "float32"  # asked for: as asked
    with pytest.raises(InvalidRequestError, match="Unknown dtype 'float16'"):
        resolve_dtype("float16", flags=ZEN4)


def test_the_backend_holds_its_weights_in_the_dtype_asked_for():
    backend = load_backend("tiny", "transformers", dtype="bfloat16")
    assert backend.model.dtype == torch.bfloat16
    assert backend.prefill([[5, 9, 11]]).dtype == torch.float32  # logits as every backend returns them
    with pytest.raises(InvalidRequestError, match="dtype is a transformers setting"):
        load_backend("smollm2", "llamacpp", dtype="float32")


def test_the_grouped_attention_replaces_sdpa_only():
    default, eager = tiny_model(), tiny_model()
    eager.model.set_attn_implementation("eager")  # as a model with a soft cap needs
    TransformersBackend(default), TransformersBackend(eager)
    assert default.model.config._attn_implementation == GROUPED_DECODE
    assert eager.model.config._attn_implementation == "eager"
