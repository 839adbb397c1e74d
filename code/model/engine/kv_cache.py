"""A KV cache where rollback is just a position (gpt-fast style), plugged into transformers' Cache API.

Keys and values live in preallocated buffers that double when full. `update` writes the new
entries after the current length and returns views up to it, so attention only touches the
live prefix. After verification, the engine moves the accepted path's entries into place
(`keep`) and the rest is dropped by lowering the length: no recomputation, no reallocation.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class PositionalLayer(CacheLayerMixin):
    is_sliding = False
    is_compileable = False

    def __init__(self, capacity: int = 1024):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states, value_states):
        b, h, _, _ = key_states.shape
        self.keys = key_states.new_zeros(b, h, self.capacity, key_states.shape[-1])
        self.values = value_states.new_zeros(b, h, self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def _grow(self, needed: int) -> None:
        capacity = max(needed, 2 * self.capacity)
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_zeros(*old.shape[:2], capacity, old.shape[-1])
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)
        self.capacity = capacity

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            self._grow(end)
        self.keys[:, :, self.length:end] = key_states
        self.values[:, :, self.length:end] = value_states
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def keep(self, start: int, offsets: torch.Tensor | None, count: int) -> None:
        """Keep `count` entries from `start`: those at start+offsets (if given) moved to start.. in order."""
        if offsets is not None and self.is_initialized:
            offsets = offsets.to(self.keys.device)  # layers may sit on several GPUs (device_map="auto")
            end = start + count
            self.keys[:, :, start:end] = self.keys.index_select(2, offsets + start)
            self.values[:, :, start:end] = self.values.index_select(2, offsets + start)
        self.length = start + count

    def get_mask_sizes(self, query_length: int, *args, **kwargs):
        return self.length + query_length, 0

    def get_seq_length(self, *args, **kwargs) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1


class PositionalKVCache(Cache):
    def __init__(self, capacity: int = 1024):
        self._capacity = capacity
        super().__init__(layer_class_to_replicate=self._new_layer)

    def _new_layer(self) -> PositionalLayer:
        return PositionalLayer(self._capacity)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].length if self.layers else 0

    def crop(self, length: int) -> None:
        """Drop every entry from `length` on (a chain's rejected tail, or everything for a new sequence)."""
        for layer in self.layers:
            layer.keep(0, None, min(length, layer.length))

    def keep(self, start: int, offsets: list[int], device) -> None:
        """Rollback to `start` + the entries at the given offsets from `start` (the accepted path)."""
        count = len(offsets)
        # A path that is a prefix of the input (a chain, or AR) needs no copy: just truncate.
        moved = None if offsets == list(range(count)) else torch.tensor(offsets, device=device)
        for layer in self.layers:
            layer.keep(start, moved, count)
