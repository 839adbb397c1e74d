"""STAND: stochastic n-gram drafting from a memory of the target's distributions."""
from .drafter import StandDrafter

__all__ = ["StandDrafter"]
