"""The global tree: earlier responses (not prompts) in one suffix tree, at most `max_cached` of them, the oldest
evicted first (arctic-inference's SuffixDecodingCache; vLLM's suffix_decoding_max_cached_requests; 0 = no global tree,
-1 = no limit). A response takes its slot when it opens; an open one may be extended as it is generated."""
from __future__ import annotations

from .tree import SuffixTree


class ResponseCache:
    def __init__(self, max_depth: int, max_cached: int):
        self.max_depth, self.max_cached = max_depth, max_cached
        self.clear()

    def clear(self) -> None:
        """Forget every response (in place: the rows that share this cache keep sharing it)."""
        self.tree = SuffixTree(self.max_depth)
        self.slots: dict[int, None] = {}   # cached responses' ids, oldest first
        self.next_id = 0

    def open(self) -> int | None:
        """A slot for a new response (None: the global tree is off), evicting the oldest others beyond the limit."""
        if self.max_cached == 0:
            return None
        slot = self.next_id
        self.next_id += 1
        self.slots[slot] = None
        if self.max_cached > 0:
            while len(self.slots) > self.max_cached:
                oldest = next(s for s in self.slots if s != slot)
                del self.slots[oldest]
                if oldest in self.tree.seqs:
                    self.tree.remove(oldest)
        return slot

    def extend(self, slot: int | None, tokens: list[int]) -> None:
        """Append to an open response (nothing if it was evicted meanwhile, or the global tree is off)."""
        if slot in self.slots:
            self.tree.extend(slot, tokens)

    def add(self, tokens: list[int]) -> None:
        """A whole response at once."""
        self.extend(self.open(), tokens)
