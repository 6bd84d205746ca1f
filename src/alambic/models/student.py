"""Students: a teacher cut down to some of its layers (weights copied, as DistilBERT did), or a fresh model
of any size that shares the teacher's tokenizer.
"""

from __future__ import annotations

import copy

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from alambic.errors import InvalidRequestError
from alambic.models.loading import LoadedModel


def evenly_spaced_layers(total: int, keep: int) -> list[int]:
    """`keep` layer indices spread over `total`, first and last included: 6 of 30 gives 0, 6, 12, 18, 24, 29."""
    if not 1 <= keep <= total:
        raise InvalidRequestError(f"a student keeps between 1 and {total} of the teacher's layers, not {keep}")
    if keep == 1:
        return [0]
    return [i * total // (keep - 1) for i in range(keep - 1)] + [total - 1]


def student_from_teacher(teacher: LoadedModel, layers: int | list[int]) -> LoadedModel:
    """A copy of the teacher that keeps only some decoder layers (a count, evenly spaced, or their indices)."""
    total = teacher.model.config.num_hidden_layers
    kept = evenly_spaced_layers(total, layers) if isinstance(layers, int) else sorted(set(layers))
    if not kept or kept[0] < 0 or kept[-1] >= total:
        raise InvalidRequestError(f"layer indices must lie in 0..{total - 1}, got {kept}")
    config = copy.deepcopy(teacher.model.config)
    config.num_hidden_layers = len(kept)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in kept]
    student = AutoModelForCausalLM.from_config(config, dtype=teacher.model.dtype)
    teacher_state = teacher.model.state_dict()
    student_state = {}
    for name in student.state_dict():
        source = name
        if ".layers." in name:
            prefix, rest = name.split(".layers.", 1)
            index, tail = rest.split(".", 1)
            source = f"{prefix}.layers.{kept[int(index)]}.{tail}"
        student_state[name] = teacher_state[source].clone()
    student.load_state_dict(student_state)
    _renumber_attention(student)
    return LoadedModel(name=f"{teacher.name}-layers-{len(kept)}", model=student.eval(), tokenizer=teacher.tokenizer)


def student_from_config(teacher: LoadedModel, *, seed: int = 0, **sizes) -> LoadedModel:
    """A randomly initialised model of the teacher's architecture and tokenizer, resized by `sizes`
    (e.g. `num_hidden_layers=4, hidden_size=256`)."""
    config = copy.deepcopy(teacher.model.config)
    for name, value in sizes.items():
        if not hasattr(config, name):
            raise InvalidRequestError(f"{type(config).__name__} has no setting {name!r}")
        setattr(config, name, value)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        student = AutoModelForCausalLM.from_config(config)
    finally:
        torch.random.set_rng_state(state)
    return LoadedModel(name=f"{teacher.name}-config", model=student.eval(), tokenizer=teacher.tokenizer)


def parameter_count(model: PreTrainedModel) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _renumber_attention(model: PreTrainedModel) -> None:
    """The KV cache indexes layers by `layer_idx`: copied layers must carry their new position."""
    for index, layer in enumerate(model.model.layers):
        if hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = index
