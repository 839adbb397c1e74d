"""SpS: a separate draft model proposes a chain; the engine verifies it with lossless rejection sampling."""
from .drafter import DraftModelDrafter

__all__ = ["DraftModelDrafter"]
