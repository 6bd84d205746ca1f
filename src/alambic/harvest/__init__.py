"""Harvest: a teacher's answers through any OpenAI-compatible API, concurrent, paced, resumable.

The names below are loaded on first use: the `alambic` command imports the package for two enums, and the
client pulls in the openai SDK, which takes longer to import than the rest of the command together.
"""

from importlib import import_module

_MODULES = {
    "AnswerRow": "dataset",
    "Budget": "job",
    "HarvestDataset": "dataset",
    "HarvestJob": "job",
    "HarvestStats": "job",
    "KeyStrategy": "keys",
    "Pacing": "keys",
    "Prompt": "prompts",
    "RetryPolicy": "client",
    "Sampling": "job",
    "ShardFormat": "dataset",
    "harvest": "job",
    "load_prompts": "prompts",
    "run_harvest": "job",
}
__all__ = sorted(_MODULES)


def __getattr__(name: str):
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_MODULES[name]}"), name)
