"""The verification engine shared by every method."""
from .drafter import Drafter, StepFeedback
from .sampling import SamplingConfig
from .tree import DraftError, DraftTree

__all__ = ["Drafter", "DraftError", "DraftTree", "Generation", "SamplingConfig", "SpeculativeEngine",
           "StepFeedback", "StepRecord", "ThinkingBudget"]
_DECODER = ("Generation", "SpeculativeEngine", "StepRecord", "ThinkingBudget")


def __getattr__(name: str):
    # The decoder brings in transformers (its forward and attention): imported when first asked for, so that a
    # drafter's module, and a command checking its flags, stays light (a mistyped flag is answered at once).
    if name in _DECODER:
        from . import decoder
        return getattr(decoder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
