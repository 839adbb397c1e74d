"""The static engine mode's KV cache: the positional cache with buffers that never move.

Keys and values live in an `Arena`: per layer one [rows, heads, capacity, dim] buffer, allocated once at the size a
run asks for (each row: prompt + max new tokens + the widest padded forward; no doubling), and reused by every
sequence after it, so that a forward captured in a CUDA graph keeps reading and writing the same addresses. The
rows' lengths are kept twice: on the host (what the engine plans with) and on the device (what a captured forward
reads: positions, mask and write slots are computed from them there). A forward writes each row's new entries at
its device length and advances it; a rollback moves the kept entries and sets the lengths in one upload.
"""
from __future__ import annotations

import itertools

import torch

from .kv_cache import PositionalKVCache, PositionalLayer


class Arena:
    """The buffers of a static cache: per layer keys and values of [rows, heads, capacity, dim], and the rows' device
    lengths. `buffers_id` names the buffers now allocated, unique in the process (a new arena, or a reallocation, gets
    a new one): a forward captured against other buffers must never be replayed on these."""

    _ids = itertools.count(1)

    def __init__(self):
        self.buffers_id = next(Arena._ids)
        self.rows = self.capacity = 0
        self.buffers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.lengths: torch.Tensor | None = None

    def reserve(self, rows: int, capacity: int) -> None:
        """Make room for `rows` rows of `capacity` entries (the buffers are reallocated, empty, only if they are
        smaller; their contents are not kept)."""
        if rows > self.rows or capacity > self.capacity:
            self.rows, self.capacity = max(rows, self.rows), max(capacity, self.capacity)
            self.buffers, self.lengths = {}, None
            self.buffers_id = next(Arena._ids)

    def layer(self, index: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `index`'s buffers, allocated at its first forward, shaped after its new keys and values."""
        if index not in self.buffers:
            _, heads, _, kdim = keys.shape
            shape = (self.rows, heads, self.capacity)
            # (zeros, not garbage: masked entries still meet a matmul, and 0 x NaN would poison the output)
            self.buffers[index] = (keys.new_zeros(*shape, kdim), values.new_zeros(*shape, values.shape[-1]))
        return self.buffers[index]

    def device_lengths(self, device) -> torch.Tensor:
        if self.lengths is None:
            self.lengths = torch.zeros(self.rows, dtype=torch.long, device=device)
        return self.lengths

    def bytes_per_token(self) -> int:
        """KV bytes one cached token holds, every layer together (0 before the first forward)."""
        return sum(k.element_size() * k.shape[1] * k.shape[3] + v.element_size() * v.shape[1] * v.shape[3]
                   for k, v in self.buffers.values())


class StaticLayer(PositionalLayer):
    is_compileable = True

    def __init__(self, owner: "StaticKVCache", index: int):
        super().__init__(owner.capacity, owner._lengths)
        self.owner, self.index = owner, index

    def lazy_initialization(self, key_states, value_states):
        keys, values = self.owner.arena.layer(self.index, key_states, value_states)
        rows = self.owner.rows
        self.keys, self.values = keys[:rows], values[:rows]
        if len(self.lengths) != rows:
            self.lengths = self.lengths[:1] * rows
        self.is_initialized = True

    def _grow(self, needed: int) -> None:
        raise RuntimeError(f"the static KV cache holds {self.capacity} entries a row; {needed} were needed "
                           "(its size is set when a run starts: prompt + max new tokens + the widest forward)")

    def update(self, key_states, value_states, *args, **kwargs):
        """Write each row's new entries at its device length (the slots the forward computed) and return the first
        `kv_length` entries of every row: a fixed shape per forward shape, the rest hidden by the mask."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        slots = self.owner.slots
        b, h, n, _ = key_states.shape
        if b == 1:   # (one row: an index copy, cheaper than the scatter on CPU; both read the slots on the device)
            self.keys.index_copy_(2, slots[0, 0, :, 0], key_states)
            self.values.index_copy_(2, slots[0, 0, :, 0], value_states)
        else:
            self.keys[:b].scatter_(2, slots.expand(b, h, n, key_states.shape[-1]), key_states)
            self.values[:b].scatter_(2, slots.expand(b, h, n, value_states.shape[-1]), value_states)
        end = self.owner.kv_length
        return self.keys[:b, :, :end], self.values[:b, :, :end]

    def select_rows(self, rows: list[int]) -> None:
        """Keep (or repeat) these rows in this order, in place: the buffers stay where they are."""
        if self.is_initialized:
            index = torch.tensor(rows, device=self.keys.device)
            live = max(self.lengths[r] for r in rows)
            full_k, full_v = self.owner.arena.buffers[self.index]
            for name, full in (("keys", full_k), ("values", full_v)):
                moved = getattr(self, name)[:, :, :live].index_select(0, index)
                full[:len(rows), :, :live] = moved
                setattr(self, name, full[:len(rows)])
        self.lengths = [self.lengths[r] for r in rows]


class StaticKVCache(PositionalKVCache):
    """A positional KV cache in an arena (see the module's comment). Between the host and the device lengths the
    engine keeps one rule: the forward advances both; a rollback, row selection or cut sets both."""

    def __init__(self, capacity: int, batch_size: int = 1, arena: Arena | None = None, device=None,
                 max_rows: int = 0):
        """`max_rows`: rows the cache may grow to by repeating rows (`select_rows`), reserved now."""
        self.arena = arena if arena is not None else Arena()
        self.arena.reserve(max(batch_size, max_rows), capacity)
        self.capacity, self.rows = self.arena.capacity, batch_size   # (an arena may hold longer rows)
        self.device = torch.device(device or "cpu")
        self.slots: torch.Tensor | None = None   # [B, 1, n, 1]: where the running forward writes, per row
        self.kv_length = 0                       # entries the running forward attends (its keys' length)
        super().__init__(capacity, batch_size)
        self._upload_lengths()

    def _new_layer(self) -> StaticLayer:
        return StaticLayer(self, len(self.layers))

    @property
    def device_lengths(self) -> torch.Tensor:
        """The rows' lengths on the device, [rows] (a view of the arena's: a fixed address)."""
        return self.arena.device_lengths(self.device)[:self.rows]

    def advance(self, n: int) -> None:
        """After a forward of n tokens a row: every row's host length (the device ones the forward advanced)."""
        for layer in self.layers:
            layer.lengths = [length + n for length in layer.lengths]
        self._lengths = [length + n for length in self._lengths]

    def _upload_lengths(self) -> None:
        self.device_lengths.copy_(torch.tensor(self.lengths), non_blocking=True)

    def crop(self, length: int) -> None:
        super().crop(length)
        self._upload_lengths()

    def set_lengths(self, lengths: list[int]) -> None:
        super().set_lengths(lengths)
        self._upload_lengths()

    def keep_rows(self, starts: list[int], offsets: list[list[int]]) -> None:
        """Row b keeps starts[b] entries, then those at starts[b] + offsets[b] moved after them. The gather and
        scatter indices and the new lengths go to the device in one upload."""
        width = max(len(offs) for offs in offsets)
        lengths = [start + len(offs) for start, offs in zip(starts, offsets)]
        moving = any(offs != list(range(len(offs))) for offs in offsets)
        moved = moving and self.layers and self.layers[0].is_initialized
        if moved:
            rows = len(starts)
            src = [start + o for start, offs in zip(starts, offsets)
                   for o in offs + list(range(len(offs), width))]
            dst = [start + j for start in starts for j in range(width)]
            packed = torch.tensor(src + dst + lengths, dtype=torch.long)
            packed = packed.pin_memory() if self.device.type == "cuda" else packed
            packed = packed.to(self.device, non_blocking=True)
            src = packed[:rows * width].view(rows, 1, width, 1)
            dst = packed[rows * width:2 * rows * width].view(rows, 1, width, 1)
            self.device_lengths.copy_(packed[2 * rows * width:])
            for layer in self.layers:
                for name in ("keys", "values"):
                    buffer = getattr(layer, name)
                    shape = (buffer.shape[0], buffer.shape[1], width, buffer.shape[3])
                    buffer.scatter_(2, dst.expand(shape), buffer.gather(2, src.expand(shape)))
        for layer in self.layers:
            layer.lengths = list(lengths)
        self._lengths = list(lengths)
        if not moved:
            self._upload_lengths()

    def select_rows(self, rows: list[int]) -> None:
        if len(rows) > self.arena.rows:
            raise RuntimeError(f"{len(rows)} rows do not fit the static arena's {self.arena.rows} (reserve them: "
                               "max_rows)")
        super().select_rows(rows)
        self.rows = len(rows)
        self._upload_lengths()

    def clone_rows(self, rows: list[int], arena: Arena | None = None) -> "StaticKVCache":
        """A new static cache (in `arena`, else its own) holding copies of these rows."""
        twin = StaticKVCache(self.capacity, len(rows), arena, self.device)
        if self.layers and self.layers[0].is_initialized:
            for layer in self.layers:
                new = twin._new_layer()
                new.lazy_initialization(layer.keys, layer.values)
                index = torch.tensor(rows, device=layer.keys.device)
                live = max(layer.lengths[r] for r in rows)
                new.keys[:, :, :live] = layer.keys[:, :, :live].index_select(0, index)
                new.values[:, :, :live] = layer.values[:, :, :live].index_select(0, index)
                new.lengths = [layer.lengths[r] for r in rows]
                twin.layers.append(new)
        twin._lengths = [self.lengths[r] for r in rows]
        twin._upload_lengths()
        return twin

    def load_rows(self, rows: list[int], source: PositionalKVCache, source_rows: list[int]) -> None:
        super().load_rows(rows, source, source_rows)
        self._upload_lengths()
