"""SDPA for the engine's masked forwards without repeating the keys and values of grouped-query attention.

transformers' SDPA path copies each key/value head once per query head that reads it whenever a mask is given (its
GQA flag requires mask=None), and the engine always gives one (draft trees, ragged rows). That copy is written and
read again at every layer of every step, and it grows with rows x context: for 8 rows of 900 tokens of a model with
3 key/value heads for 9 query heads, 1 GB a step, about 40% of a plain step's time on this project's CPU. Here the
query heads that share a key/value head are stacked along the query axis instead ([B, Hkv, groups * n, d]), so one
SDPA call reads each cached key and value once. Registered through transformers' AttentionInterface: no model file
is patched.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_grouped"


class _GroupedMask:
    """The mask of the last forward, stacked for the grouped query axis: every layer of a forward gets the same mask
    object, so it is stacked once per forward, not once per layer."""

    def __init__(self):
        self.source = None
        self.groups = 0
        self.grouped = None

    def __call__(self, mask: torch.Tensor, groups: int) -> torch.Tensor:
        if mask is not self.source or groups != self.groups:
            b, h, n, k = mask.shape
            self.grouped = mask.unsqueeze(2).expand(b, h, groups, n, k).reshape(b, h, groups * n, k)
            self.source, self.groups = mask, groups
        return self.grouped


_grouped_mask = _GroupedMask()


def grouped_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                         **kwargs):
    """transformers' attention-function signature: query [B, H, n, d], key and value [B, Hkv, K, d]; returns the
    output as [B, n, H, d] and no attention weights."""
    groups = query.shape[1] // key.shape[1]
    # Only the case that copies: grouped heads under a 4-D mask of one head (the engine's). Anything else (a model's
    # position bias, per-head masks, no mask) is transformers' SDPA path unchanged.
    if (groups == 1 or attention_mask is None or attention_mask.dim() != 4 or attention_mask.shape[1] != 1
            or kwargs.get("position_bias") is not None or kwargs.get("output_attentions", False)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    b, heads, n, d = query.shape
    kv_heads = key.shape[1]
    stacked = query.reshape(b, kv_heads, groups * n, d)   # head h = g * groups + j: key/value head g, as repeat_kv
    out = F.scaled_dot_product_attention(stacked, key, value, attn_mask=_grouped_mask(attention_mask, groups),
                                         dropout_p=dropout, scale=scaling)
    return out.reshape(b, heads, n, value.shape[-1]).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, grouped_sdpa_forward)
# The masks transformers builds itself (generate with a padded batch, a forward with a 2-D mask) are SDPA's: without
# this it would build none for an unknown name, and padding would be attended.
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_grouped_sdpa(model) -> bool:
    """Switch a model loaded with SDPA to the grouped path (True), where it dispatches attention through the
    AttentionInterface; others keep what they have (False)."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa" or not model._can_set_attn_implementation():
        return False
    model.set_attn_implementation(NAME)
    return model.config._attn_implementation == NAME
