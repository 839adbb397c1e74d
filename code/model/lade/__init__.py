"""Lookahead decoding: a Jacobi lookahead branch and an n-gram pool, verified in the same forward."""
from .drafter import LookaheadDrafter

__all__ = ["LookaheadDrafter"]
