"""The static engine mode's forward: the same padded tree forward as `forward.py`, in a few fixed shapes.

A step's rows are padded to a width bucket (1, 2, 4, ..., up to the engine's widest forward) and attend a key
length that is a multiple of `kv_bucket` (0: the cache's whole capacity), so a run meets a handful of shapes. The
host uploads one packed int32 tensor per forward (each row's token ids, depths and tree block); position ids, the
[B, 1, W, K] mask and the KV write slots are computed from it and the rows' device lengths on the device, inside
the forward. On CUDA each decode shape is captured once in a CUDA graph (the eager forward captured: warm-up takes
seconds) and replayed after; the target's hidden states at the layers a drafter reads are outputs of the captured
forward (the hook's tensors at capture are the graph's buffers, refilled at each replay). Prefill chunks are not
captured: their shapes are many and they run once a sequence.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .static_cache import StaticKVCache

PREFILL_CHUNK = 512   # prompt tokens a prefill forward takes at most: no dense [P, P] mask for long prompts


def width_buckets(widest: int) -> list[int]:
    """Powers of two below the widest forward, then the widest itself (129 for 128-node trees)."""
    buckets, w = [], 1
    while w < widest:
        buckets.append(w)
        w *= 2
    return buckets + [widest]


def bucket(n: int, buckets: list[int]) -> int:
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"a forward of {n} tokens is wider than the widest static shape ({buckets[-1]})")


class StaticForward:
    def __init__(self, model, additive_mask: bool, widest: int, kv_bucket: int = 256, graphs: bool | None = None,
                 compile: bool = False):
        self.model = model
        self.additive_mask = additive_mask
        self.buckets = width_buckets(widest)
        self.kv_bucket = kv_bucket
        self.device = next(model.parameters()).device
        self.graphs = self.device.type == "cuda" if graphs is None else graphs
        self.compiled = compile
        self.step = torch.compile(self._step, dynamic=False) if compile else self._step
        self._captured: dict[tuple, tuple] = {}
        self._buffers_id = None
        self._pool = None
        self.capture_seconds = 0.0   # warm-up: capturing graphs (or compiling), not counted in any step's time
        self.shapes: set[tuple] = set()

    def describe(self) -> dict:
        return {"width_buckets": self.buckets, "kv_bucket": self.kv_bucket or "full", "cuda_graphs": self.graphs,
                "torch_compile": self.compiled, "prefill_chunk": PREFILL_CHUNK}

    def __call__(self, cache: StaticKVCache, inputs: list[list[int]], blocks: list, depths: list,
                 logits_to_keep=0, capture=None) -> torch.Tensor:
        """As `padded_forward`: [B, W, vocab] logits (W: the widest row), or what `logits_to_keep` keeps."""
        rows, width = len(inputs), max(len(ids) for ids in inputs)
        prefill = not isinstance(logits_to_keep, int) or logits_to_keep != 0
        padded = width if prefill else bucket(width, self.buckets)
        end = max(cache.lengths) + padded
        kv_length = cache.capacity if not self.kv_bucket else min(-(-end // self.kv_bucket) * self.kv_bucket,
                                                                  cache.capacity)
        if end > cache.capacity:
            raise RuntimeError(f"the static KV cache holds {cache.capacity} entries a row; {end} were needed")
        packed = _pack(inputs, blocks, depths, padded)
        key = (rows, padded, kv_length)
        self.shapes.add(key)
        if self.graphs and not prefill:
            logits, states = self._replay(key, cache, packed, capture)
        elif self.compiled and not prefill:
            t0 = time.perf_counter()
            logits, states = self.step(cache, packed.to(self.device, non_blocking=True), padded, kv_length, 0,
                                       capture)
            if key not in self._captured:
                self._captured[key] = ()
                self.capture_seconds += time.perf_counter() - t0   # (the first call of a shape compiles it)
        else:   # (prefill chunks run eagerly: their shapes are many and each runs once a sequence)
            logits, states = self._step(cache, packed.to(self.device, non_blocking=True), padded, kv_length,
                                        logits_to_keep, capture)
        cache.advance(padded)
        if capture is not None:
            capture.states = dict(states)
        return logits if prefill else logits[:, :width]

    def _step(self, cache: StaticKVCache, packed: torch.Tensor, width: int, kv_length: int, logits_to_keep,
              capture) -> tuple[torch.Tensor, dict]:
        """The forward on the device: ids, positions, mask and write slots from the packed upload and the rows'
        device lengths, which it advances."""
        rows = packed.shape[0]
        ids = packed[:, :width].long()
        depths = packed[:, width:2 * width].long()
        block = packed[:, 2 * width:].view(rows, width, width).bool()
        lengths = cache.device_lengths
        positions = lengths[:, None] + depths
        offsets = torch.arange(kv_length, device=packed.device)[None, :] - lengths[:, None]   # [B, K]
        inside = (offsets >= 0) & (offsets < width)
        tree = block.gather(2, offsets.clamp(0, width - 1)[:, None, :].expand(rows, width, kv_length))
        # The past for every query (padding included: its outputs are dropped), the block among the new tokens.
        mask = torch.where(inside[:, None, :], tree, (offsets < 0)[:, None, :]).unsqueeze(1)
        if self.additive_mask:
            dtype = self.model.dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        cache.slots = (lengths[:, None] + torch.arange(width, device=packed.device))[:, None, :, None]
        cache.kv_length = kv_length
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, logits_to_keep=logits_to_keep)
        lengths += width
        cache.slots = None
        return out.logits, dict(capture.states) if capture is not None else {}

    def _replay(self, key: tuple, cache: StaticKVCache, packed: torch.Tensor, capture):
        """The decode forward of this shape from its CUDA graph, captured on first use (again on other buffers: a
        reallocated arena, or another cache's, such as the one a profile is measured on)."""
        if self._buffers_id != cache.arena.buffers_id:   # (graphs hold the addresses of the buffers they ran on)
            self._captured, self._buffers_id = {}, cache.arena.buffers_id
        entry = self._captured.get(key)
        if entry is None:
            t0 = time.perf_counter()
            static_in = packed.to(self.device)
            replay, outputs = self._capture(lambda: self.step(cache, static_in, key[1], key[2], 0, capture), cache)
            entry = self._captured[key] = (replay, static_in, outputs)
            self.capture_seconds += time.perf_counter() - t0
        replay, static_in, outputs = entry
        static_in.copy_(packed.pin_memory() if static_in.is_cuda else packed, non_blocking=True)
        replay()
        return outputs

    def _capture(self, step, cache: StaticKVCache):
        """Capture `step` (the forward on its fixed input buffer) in a CUDA graph: (replay, its outputs), which each
        replay refills. One eager run comes first, on a side stream, so that kernels pick their algorithms outside
        capture; its writes are the replay's own (the same slots), and the lengths it advanced are put back."""
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        lengths = cache.device_lengths.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            step()
        torch.cuda.current_stream().wait_stream(stream)
        cache.device_lengths.copy_(lengths)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            outputs = step()
        torch.cuda.synchronize(self.device)
        return graph.replay, outputs


def _pack(inputs: list[list[int]], blocks: list, depths: list, width: int) -> torch.Tensor:
    """[rows, width x (2 + width)] int32: each row's ids, depths and block, padded to `width` (a padding token sits
    at the next depth and sees only itself)."""
    rows = len(inputs)
    ids = np.zeros((rows, width), dtype=np.int32)
    depth = np.tile(np.arange(width, dtype=np.int32), (rows, 1))
    block = np.tile(np.eye(width, dtype=np.int32), (rows, 1, 1))
    for b, (tokens, seen, at) in enumerate(zip(inputs, blocks, depths)):
        n = len(tokens)
        ids[b, :n] = tokens
        depth[b, :n] = np.asarray(at.cpu() if isinstance(at, torch.Tensor) else at)
        block[b, :n, :n] = np.asarray(seen.cpu() if isinstance(seen, torch.Tensor) else seen)
    return torch.from_numpy(np.concatenate([ids, depth, block.reshape(rows, -1)], axis=1))
