"""Simulated API traffic for testing a monitor: benign populations and labelled extraction campaigns."""

from alambic.simulate.campaigns import CAMPAIGNS, HELD_OUT
from alambic.simulate.world import Simulation, SimulationSettings, write_jsonl, write_labels

__all__ = ["CAMPAIGNS", "HELD_OUT", "Simulation", "SimulationSettings", "write_jsonl", "write_labels"]
