"""EAGLE-3: a one-layer draft head on the target's low/mid/high hidden states grows a dynamic tree."""
from .checkpoint import load_head, save_head
from .drafter import Eagle3Drafter
from .head import Eagle3Head

__all__ = ["Eagle3Drafter", "Eagle3Head", "load_head", "save_head"]
