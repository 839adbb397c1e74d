"""A draft model's KV cache shared by the drafters of a batch's rows, one cache row each (SpS, EAGLE-3), so the draft
model runs once per drafting step for all rows. A row leaves when its sequence ends (`Drafter.end_sequence`) or a new
one begins, and the sequence that takes its place joins with an empty row (continuous batching); rows not drafting at
a step stay and are padded in that step's forwards."""
from __future__ import annotations

from .kv_cache import PositionalKVCache
from .static_cache import StaticKVCache


class DraftBatch:
    def __init__(self, rows: list, cache: PositionalKVCache | None = None):
        self.rows = list(rows)
        self.cache = cache if cache is not None else PositionalKVCache(capacity=1024, batch_size=len(rows))
        for drafter in rows:
            drafter.batch = self

    @staticmethod
    def shared_by(rows: list, fresh) -> "DraftBatch | None":
        """The one batch these rows draft in: the batch the rows that have one are in, the others (new sequences,
        `fresh(drafter)`: nothing fed yet) joining it. None if the rows are in several batches or in none, a row
        without one is not fresh, or a static cache has no rows left for the new ones."""
        batches = {id(d.batch): d.batch for d in rows if d.batch is not None}
        new = [d for d in rows if d.batch is None]
        if len(batches) != 1 or not all(fresh(d) for d in new):
            return None
        batch = next(iter(batches.values()))
        if new:
            if isinstance(batch.cache, StaticKVCache) and len(batch.rows) + len(new) > batch.cache.arena.rows:
                return None   # (an arena's rows are fixed)
            batch.join(new)
        return batch

    def join(self, drafters: list) -> None:
        """New sequences' drafters take new, empty rows (continuous batching: a sequence begins in the row of one
        that ended), the others' rows kept as they are."""
        n = len(self.rows)
        self.cache.select_rows(list(range(n)) + [0] * len(drafters))
        self.cache.set_lengths(self.cache.lengths[:n] + [0] * len(drafters))
        self.rows += drafters
        for drafter in drafters:
            drafter.batch = self

    def finish(self, drafter) -> None:
        """Its sequence ended: its row is freed, unless it is the last (what it fed stays readable)."""
        if len(self.rows) > 1:
            self.leave(drafter)

    def leave(self, drafter) -> None:
        i = self.rows.index(drafter)
        del self.rows[i]
        if self.rows:
            self.cache.select_rows([j for j in range(len(self.rows) + 1) if j != i])
        drafter.batch = None

    def cut(self, drafter, length: int) -> None:
        """Cut this drafter's row back to `length` entries."""
        lengths = self.cache.lengths
        lengths[self.rows.index(drafter)] = length
        self.cache.set_lengths(lengths)
