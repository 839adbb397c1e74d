"""A KV cache where rollback is just a position (gpt-fast style), plugged into transformers' Cache API.

Keys and values live in preallocated [batch, heads, capacity, dim] buffers that double when full. Every batch row
has its own length: `update` writes each row's new entries after that row's length and returns views up to the
longest row's end, so attention only touches the live prefix (the engine's mask hides what lies beyond each row's
own entries). After verification the engine moves each row's accepted entries into place (`keep_rows`) and the
rest is dropped by lowering that row's length: no recomputation, no reallocation. Position ids are given by the
engine, so a row's slots need not match its positions: rows of different lengths share one buffer.
"""
from __future__ import annotations

import functools

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class PositionalLayer(CacheLayerMixin):
    is_sliding = False
    is_compileable = False

    def __init__(self, capacity: int = 1024, lengths: list[int] | None = None):
        super().__init__()
        self.capacity = capacity
        self.lengths = list(lengths or [0])   # one per batch row

    @property
    def length(self) -> int:
        """The longest row's length: the live prefix every row's attention spans."""
        return max(self.lengths)

    def lazy_initialization(self, key_states, value_states):
        b, h, _, _ = key_states.shape
        self.keys = key_states.new_zeros(b, h, self.capacity, key_states.shape[-1])
        self.values = value_states.new_zeros(b, h, self.capacity, value_states.shape[-1])
        if len(self.lengths) != b:
            self.lengths = self.lengths[:1] * b
        self.is_initialized = True

    def _grow(self, needed: int) -> None:
        capacity = max(needed, 2 * self.capacity)
        live = self.length
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_zeros(*old.shape[:2], capacity, old.shape[-1])
            new[:, :, :live] = old[:, :, :live]
            setattr(self, name, new)
        self.capacity = capacity

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        start, end = min(self.lengths), self.length + n
        if end > self.capacity:
            self._grow(end)
        if start == self.length:   # every row at the same length (batch 1 always): one slice
            self.keys[:, :, start:end] = key_states
            self.values[:, :, start:end] = value_states
        else:   # (a scatter: at 8 rows on CPU a third cheaper than advanced-index assignment)
            lengths, device = tuple(self.lengths), self.keys.device   # (values may be narrower than keys: MLA)
            self.keys.scatter_(2, _row_slots(lengths, tuple(key_states.shape), device), key_states)
            self.values.scatter_(2, _row_slots(lengths, tuple(value_states.shape), device), value_states)
        self.lengths = [length + n for length in self.lengths]
        return self.keys[:, :, :end], self.values[:, :, :end]

    def keep_rows(self, plan: "KeepPlan") -> None:
        """Row b keeps its entries before starts[b], then those at starts[b] + offsets[b] moved to starts[b].. in
        order (the root and the accepted path of the last forward); everything after is dropped."""
        if plan.moving and self.is_initialized:
            # Rows whose kept entries are already in place (a chain's prefix) copy onto themselves.
            src, dst = plan.indices(self.keys.device)   # layers may sit on several GPUs (device_map="auto")
            for name in ("keys", "values"):
                buffer = getattr(self, name)
                shape = (buffer.shape[0], buffer.shape[1], plan.width, buffer.shape[3])
                buffer.scatter_(2, dst.expand(shape), buffer.gather(2, src.expand(shape)))
        self.lengths = list(plan.lengths)

    def select_rows(self, rows: list[int]) -> None:
        """Keep (or repeat) these batch rows, in this order. Only live entries are copied."""
        if self.is_initialized and all(a < b for a, b in zip(rows, rows[1:])):
            # Rows leaving (the rest in order): the kept rows move up in place, each its own entries only, and the
            # buffers become their first len(rows) rows, a view: no new buffer, and a row leaving last copies nothing.
            for name in ("keys", "values"):
                buffer = getattr(self, name)
                for i, r in enumerate(rows):
                    if r != i:
                        buffer[i, :, :self.lengths[r]] = buffer[r, :, :self.lengths[r]]
                setattr(self, name, buffer[:len(rows)])
        elif self.is_initialized:
            index = torch.tensor(rows, device=self.keys.device)
            live = self.length
            for name in ("keys", "values"):
                old = getattr(self, name)
                new = old.new_zeros(len(rows), *old.shape[1:])   # (never garbage: masked entries still meet a matmul)
                new[:, :, :live] = old[:, :, :live].index_select(0, index)
                setattr(self, name, new)
        self.lengths = [self.lengths[r] for r in rows]

    def clone_rows(self, rows: list[int]) -> "PositionalLayer":
        """A new layer holding copies of these rows' live entries (the source is left as it is)."""
        twin = PositionalLayer(self.capacity, [self.lengths[r] for r in rows])
        if self.is_initialized:
            index = torch.tensor(rows, device=self.keys.device)
            twin.keys, twin.values = self.keys.index_select(0, index), self.values.index_select(0, index)
            twin.is_initialized = True
        return twin

    def load_rows(self, rows: list[int], source: "PositionalLayer", source_rows: list[int]) -> None:
        """Row rows[i] becomes a copy of source row source_rows[i] (a new sequence taking a finished one's row): only
        the source's live entries are written; whatever the row held beyond them is dropped with its length."""
        needed = max(source.lengths[s] for s in source_rows)
        if needed > self.capacity:
            self._grow(needed)
        for r, s in zip(rows, source_rows):
            n = source.lengths[s]
            self.keys[r, :, :n] = source.keys[s, :, :n]
            self.values[r, :, :n] = source.values[s, :, :n]
            self.lengths[r] = n

    def get_mask_sizes(self, query_length: int, *args, **kwargs):
        return self.length + query_length, 0

    def get_seq_length(self, *args, **kwargs) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1


@functools.lru_cache(maxsize=8)
def _row_slots(lengths: tuple[int, ...], shape: tuple[int, ...], device) -> torch.Tensor:
    """Where each row's new entries (`shape`: [B, heads, n, dim]) go along the cache's slot dimension, as a scatter
    index of that shape; the same for every layer of a forward."""
    rows, heads, n, dim = shape
    slots = torch.tensor(lengths, device=device)[:, None] + torch.arange(n, device=device)
    return slots[:, None, :, None].expand(rows, heads, n, dim)


class KeepPlan:
    """One rollback for every layer: row b keeps starts[b] entries and then those at starts[b] + offsets[b]. The
    index tensors are built once per device, not once per layer."""

    def __init__(self, starts: list[int], offsets: list[list[int]]):
        self.lengths = [start + len(offs) for start, offs in zip(starts, offsets)]
        self.moving = any(offs != list(range(len(offs))) for offs in offsets)
        self.width = max(len(offs) for offs in offsets)
        self.starts, self.offsets = starts, offsets
        self._indices = {}

    def indices(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._indices:
            width = self.width
            src = [[start + o for o in offs] + [start + j for j in range(len(offs), width)]
                   for start, offs in zip(self.starts, self.offsets)]
            dst = [[start + j for j in range(width)] for start in self.starts]
            self._indices[device] = (torch.tensor(src, device=device)[:, None, :, None],
                                     torch.tensor(dst, device=device)[:, None, :, None])
        return self._indices[device]


class PositionalKVCache(Cache):
    def __init__(self, capacity: int = 1024, batch_size: int = 1):
        self._capacity = capacity
        self._lengths = [0] * batch_size   # before the first layer exists
        super().__init__(layer_class_to_replicate=self._new_layer)

    def _new_layer(self) -> PositionalLayer:
        return PositionalLayer(self._capacity, self._lengths)

    @property
    def lengths(self) -> list[int]:
        """Each batch row's length."""
        return list(self.layers[0].lengths) if self.layers else list(self._lengths)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].length if self.layers else 0

    def crop(self, length: int) -> None:
        """Drop every entry from `length` on, in every row (a chain's rejected tail, or all for a new sequence)."""
        for layer in self.layers:
            layer.lengths = [min(length, n) for n in layer.lengths]
        self._lengths = [min(length, n) for n in self._lengths]

    def set_lengths(self, lengths: list[int]) -> None:
        """Cut each row back to its own length (never longer than it is)."""
        for layer in self.layers:
            layer.lengths = [min(n, cut) for n, cut in zip(layer.lengths, lengths)]
        self._lengths = list(lengths)

    def keep(self, start: int, offsets: list[int], device=None) -> None:
        """Batch 1: rollback to `start` + the entries at the given offsets from `start` (the accepted path)."""
        self.keep_rows([start], [offsets])

    def keep_rows(self, starts: list[int], offsets: list[list[int]]) -> None:
        """Row b: rollback to starts[b] + the entries at offsets[b] from there (the root and its accepted path)."""
        plan = KeepPlan(starts, offsets)
        for layer in self.layers:
            layer.keep_rows(plan)
        self._lengths = list(plan.lengths)

    def select_rows(self, rows: list[int]) -> None:
        """Keep these batch rows in this order (rows that finished leave; a repeated row is copied)."""
        for layer in self.layers:
            layer.select_rows(rows)
        self._lengths = [self._lengths[r] if r < len(self._lengths) else 0 for r in rows]

    def clone_rows(self, rows: list[int]) -> "PositionalKVCache":
        """A new cache holding copies of these rows, this one left as it is (continuous batching: the first rows'
        prompts, the prefilled prompts kept for the rows that join later)."""
        twin = PositionalKVCache(self._capacity, len(rows))
        twin._lengths = [self.lengths[r] for r in rows]
        for layer in self.layers:
            twin.layers.append(layer.clone_rows(rows))
        return twin

    def load_rows(self, rows: list[int], source: "PositionalKVCache", source_rows: list[int]) -> None:
        """Rows rows[i] become copies of `source`'s rows source_rows[i] (continuous batching: a new sequence takes
        the row of one that finished, its prompt copied from the prefilled prompts)."""
        for layer, other in zip(self.layers, source.layers):
            layer.load_rows(rows, other, source_rows)
        for r, s in zip(rows, source_rows):
            self._lengths[r] = source.lengths[s]
