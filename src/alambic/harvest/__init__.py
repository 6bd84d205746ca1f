"""Harvest: a teacher's answers through any OpenAI-compatible API, concurrent, paced, resumable."""

from alambic.harvest.client import RetryPolicy
from alambic.harvest.dataset import AnswerRow, HarvestDataset, ShardFormat
from alambic.harvest.job import Budget, HarvestJob, HarvestStats, Sampling, harvest, run_harvest
from alambic.harvest.keys import KeyStrategy, Pacing
from alambic.harvest.prompts import Prompt, load_prompts

__all__ = [
    "AnswerRow",
    "Budget",
    "HarvestDataset",
    "HarvestJob",
    "HarvestStats",
    "KeyStrategy",
    "Pacing",
    "Prompt",
    "RetryPolicy",
    "Sampling",
    "ShardFormat",
    "harvest",
    "load_prompts",
    "run_harvest",
]
