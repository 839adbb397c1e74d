"""The verification engine shared by every method."""
from .decoder import Generation, SpeculativeEngine, StepRecord, ThinkingBudget
from .drafter import Drafter, StepFeedback
from .sampling import SamplingConfig
from .tree import DraftError, DraftTree

__all__ = ["Drafter", "DraftError", "DraftTree", "Generation", "SamplingConfig", "SpeculativeEngine",
           "StepFeedback", "StepRecord", "ThinkingBudget"]
