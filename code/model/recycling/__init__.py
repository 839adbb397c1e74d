"""Token Recycling drafter (adjacency matrix of recycled target top-k candidates + static tree)."""
from .drafter import TokenRecyclingDrafter
from .tree_template import TEMPLATES, TEMPLATE_2_2_2

__all__ = ["TEMPLATES", "TEMPLATE_2_2_2", "TokenRecyclingDrafter"]
