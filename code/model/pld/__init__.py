"""Prompt lookup decoding drafter."""
from .drafter import PromptLookupDrafter

__all__ = ["PromptLookupDrafter"]
