"""One forward of a batch of rows over a positional KV cache: each row's tokens on top of its own cache entries.

Shared by the target's verification (draft trees) and by draft models that run batched (SpS). Rows are padded to
the widest with tokens that see only themselves (the caller's next keep drops their entries); each row's tokens see
that row's cached past and, among themselves, what its block allows; position ids are each row's own.
"""
from __future__ import annotations

import torch

from .attention import NAME as GROUPED_SDPA


def uses_additive_mask(model) -> bool:
    """SDPA takes a boolean mask; eager attention adds the mask to the scores, so it needs 0 / -inf."""
    return getattr(model.config, "_attn_implementation", "sdpa") not in ("sdpa", GROUPED_SDPA)


def padded_forward(model, cache, inputs: list[list[int]], blocks: list, depths: list, additive_mask: bool,
                   logits_to_keep=0) -> torch.Tensor:
    """`inputs[b]`: row b's token ids; `blocks[b]`: their [n, n] visibility; `depths[b]`: their positions after the
    row's last cached token. Returns the logits, [B, W, vocab] (W: the widest row, or what `logits_to_keep` keeps)."""
    rows, width = len(inputs), max(len(ids) for ids in inputs)
    lengths = cache.lengths
    past = max(lengths)
    dev = next(model.parameters()).device
    if rows == 1 and len(inputs[0]) == width:   # batch 1: no padding (the common case, kept cheap)
        mask = torch.ones(1, 1, width, past + width, dtype=torch.bool, device=dev)
        mask[0, 0, :, past:] = torch.as_tensor(blocks[0], device=dev)
        ids = torch.tensor(inputs, device=dev)
        positions = (torch.as_tensor(depths[0], device=dev) + past).unsqueeze(0)
    else:
        ids = torch.zeros(rows, width, dtype=torch.long)
        positions = torch.zeros(rows, width, dtype=torch.long)
        local = torch.eye(width, dtype=torch.bool).repeat(rows, 1, 1)   # padding sees only itself
        for b, (tokens, block, depth) in enumerate(zip(inputs, blocks, depths)):
            n = len(tokens)
            ids[b, :n] = torch.tensor(tokens)
            positions[b, :n] = torch.as_tensor(depth) + lengths[b]
            positions[b, n:] = torch.arange(n, width) + lengths[b]
            local[b, :n, :n] = torch.as_tensor(block)
        starts = torch.tensor(lengths, device=dev)
        columns = torch.arange(past + width, device=dev)
        valid = torch.tensor([[j < len(tokens) for j in range(width)] for tokens in inputs], device=dev)
        mask = (columns[None, None, :] < starts[:, None, None]) & valid[:, :, None]   # [B, W, K]: the past
        local = local.to(dev)
        for b in range(rows):
            mask[b, :, lengths[b]:lengths[b] + width] = local[b]
        mask = mask.unsqueeze(1)
        ids, positions = ids.to(dev), positions.to(dev)
    if additive_mask:
        dtype = model.dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=dev).masked_fill(~mask, torch.finfo(dtype).min)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
                logits_to_keep=logits_to_keep)
    return out.logits
