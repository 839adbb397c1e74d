"""STAND's n-gram memory: for each n-gram context seen, the target's distribution over the next token.

An entry is a top-k (token ids, probabilities) pair plus the number of distributions merged into it. When a context
recurs, its new distribution is merged by the running mean over the union of ids, of which the k most probable stay:
the entry estimates the average next-token distribution after that context. Entries live in one pool of fixed-width
numpy rows (k int32 ids, k float32 probabilities, one int32 count), indexed by a dict from the n-gram tuple; a
stored position (one distribution added: before an emitted token, or at a verified draft node) adds at most one
entry per order, so the payload grows by at most orders x (8k + 4) bytes per stored position.

Prompt tokens have no target distribution (the prefill keeps no logits): their n-grams enter as point masses on the
token that followed, and only where the memory has no entry yet, so they never dilute a real distribution.
"""
from __future__ import annotations

import numpy as np


class NgramMemory:
    def __init__(self, orders: tuple[int, ...] = (1, 2, 3, 4), k: int = 8, capacity: int = 1024):
        if not orders or min(orders) < 1:
            raise ValueError("n-gram orders must be positive")
        if k < 1:
            raise ValueError("k must be >= 1")
        self.orders = tuple(sorted(set(orders), reverse=True))   # longest first: lookups back off to shorter
        self.k = k
        self.index: dict[tuple[int, ...], int] = {}
        self.ids = np.zeros((capacity, k), dtype=np.int32)
        self.probs = np.zeros((capacity, k), dtype=np.float32)
        self.counts = np.zeros(capacity, dtype=np.int32)
        self.positions = 0   # trace positions whose distribution (or point mass) was stored

    def __len__(self) -> int:
        return len(self.index)

    def payload_bytes(self) -> int:
        """Bytes of the entries in use (ids, probabilities, counts); the dict's keys come on top."""
        return len(self.index) * (self.ids.itemsize * self.k + self.probs.itemsize * self.k + self.counts.itemsize)

    def bound_per_position(self) -> int:
        return len(self.orders) * (self.ids.itemsize * self.k + self.probs.itemsize * self.k + self.counts.itemsize)

    def _row(self, key: tuple[int, ...]) -> int:
        row = len(self.index)
        if row == len(self.counts):
            grow = len(self.counts)
            self.ids = np.concatenate([self.ids, np.zeros_like(self.ids[:grow])])
            self.probs = np.concatenate([self.probs, np.zeros_like(self.probs[:grow])])
            self.counts = np.concatenate([self.counts, np.zeros_like(self.counts[:grow])])
        self.index[key] = row
        return row

    def add(self, context: list[int], ids: list[int], probs: list[float]) -> None:
        """The target's distribution after `context` (its last tokens are what is keyed): top ids and probabilities."""
        self.positions += 1
        for n in self.orders:
            if n > len(context):
                continue
            key = tuple(context[-n:])
            row = self.index.get(key)
            if row is None:
                row = self._row(key)
                self._write(row, ids, probs, 1)
            else:
                self._merge(row, ids, probs)

    def add_point_mass(self, context: list[int], token: int) -> None:
        """`token` followed `context` where no distribution is known (the prompt): fill the gaps only."""
        stored = False
        for n in self.orders:
            if n <= len(context):
                key = tuple(context[-n:])
                if key not in self.index:
                    self._write(self._row(key), [token], [1.0], 1)
                    stored = True
        self.positions += stored

    def _write(self, row: int, ids: list[int], probs: list[float], count: int) -> None:
        m = min(len(ids), self.k)
        self.ids[row, :m] = ids[:m]
        self.ids[row, m:] = 0
        self.probs[row, :m] = probs[:m]
        self.probs[row, m:] = 0.0
        self.counts[row] = count

    def _merge(self, row: int, ids: list[int], probs: list[float], count: int = 1) -> None:
        """Running mean of the entry's `counts[row]` distributions and `count` more whose mean is (ids, probs)."""
        own = int(self.counts[row])
        mixed: dict[int, float] = {}
        for token, p in zip(self.ids[row].tolist(), self.probs[row].tolist()):
            if p > 0:
                mixed[token] = p * own
        for token, p in zip(ids, probs):
            if p > 0:
                mixed[token] = mixed.get(token, 0.0) + p * count
        best = sorted(mixed.items(), key=lambda item: -item[1])[: self.k]
        self._write(row, [t for t, _ in best], [p / (own + count) for _, p in best], own + count)

    def lookup(self, context: list[int]) -> tuple[list[int], list[float]] | None:
        """The entry of the longest stored n-gram ending `context`: (ids, probabilities renormalised to sum 1), most
        probable first (entries are kept sorted), or None."""
        for n in self.orders:
            if n <= len(context):
                row = self.index.get(tuple(context[-n:]))
                if row is not None:
                    probs = [p for p in self.probs[row].tolist() if p > 0]
                    total = sum(probs)
                    return self.ids[row, :len(probs)].tolist(), [p / total for p in probs]
        return None

    def merge_from(self, other: "NgramMemory") -> None:
        """Take in every entry of another memory, as if its distributions had been added here."""
        for key, row in other.index.items():
            ids, probs, count = other.ids[row].tolist(), other.probs[row].tolist(), int(other.counts[row])
            mine = self.index.get(key)
            if mine is None:
                self._write(self._row(key), ids, probs, count)
            else:
                self._merge(mine, ids, probs, count)
        self.positions += other.positions
