"""The EAGLE-3 draft head: one Llama decoder layer fed with the target's low/mid/high hidden states.

Row t of the draft's sequence pairs the target's states at position t (the chosen layers side by side, projected by
`fc` to the hidden size) with the embedding of token t+1, at RoPE position t; its output predicts token t+2:

    hidden = fc(states)                                                # `project`
    residual = hidden
    x = cat(input_layernorm(embedding), hidden_norm(hidden))        # 2H wide: embedding first
    h = residual + o_proj(attention(q/k/v_proj(x)))
    h = h + mlp(post_attention_layernorm(h))
    logits = lm_head(norm(h))                                         # over the draft vocabulary

`h` (before the final norm) is the `hidden` of the next draft step. Draft id d is target id d + d2t[d].
Module and weight names are those of the published checkpoints (EAGLE, SpecForge), so the state dict loads as is.

Variants the published formats use, each a config attribute; absent, the head is the plain one above:
  norm_before_fc        one RMSNorm (`input_norm`) over the concatenated states before `fc` (speculators)
  fc_norm               one RMSNorm per target layer (`fc_norm.i`) before `fc` (speculators, SpecForge)
  norm_before_residual  residual = hidden_norm(hidden) (speculators, vLLM)
  feed_normed_hidden    the next step gets norm(h) and the logits are lm_head(norm(h)) (speculators' norm_output)
  norm_before_lm_head   False: logits = lm_head(h), no final norm (SpecForge's norm_output: false); default True
  qk_norm               per-head RMSNorm of q and k before RoPE (`q_norm`, `k_norm`: a Qwen3 decoder layer)
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding, \
    apply_rotary_pos_emb


def option(config, name: str, default: bool = False) -> bool:
    """A head variant's switch (module docstring), read from the config the loader filled in."""
    return bool(getattr(config, name, default))


class DraftAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
        self.heads, self.kv_heads = heads, kv_heads
        self.head_dim = getattr(config, "head_dim", None) or hidden // heads   # Qwen3 heads set it explicitly
        bias = getattr(config, "attention_bias", False)
        self.q_proj = nn.Linear(2 * hidden, heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(2 * hidden, kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(2 * hidden, kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(heads * self.head_dim, hidden, bias=bias)
        if option(config, "qk_norm"):
            self.q_norm = LlamaRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = LlamaRMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x [b, n, 2H] -> rotated q [b, heads, n, d], rotated k and v [b, kv_heads, n, d]."""
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim)
        k = self.k_proj(x).view(b, n, self.kv_heads, self.head_dim)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        return q, k, v

    def attend(self, q, k, v, mask: torch.Tensor) -> torch.Tensor:
        """mask: bool, True = may attend, broadcastable to [b, heads, n, keys]."""
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.heads != self.kv_heads)
        b, _, n, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


class DraftLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        eps = config.rms_norm_eps
        self.hidden_norm = LlamaRMSNorm(config.hidden_size, eps=eps)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=eps)
        self.self_attn = DraftAttention(config)
        self.mlp = LlamaMLP(config)
        self.norm_before_residual = option(config, "norm_before_residual")

    def attention_input(self, embeddings: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.input_layernorm(embeddings), self.hidden_norm(hidden)], dim=-1)

    def finish(self, hidden: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The layer's output from its input `hidden` and the attention's output."""
        residual = self.hidden_norm(hidden) if self.norm_before_residual else hidden
        h = residual + attended
        return h + self.mlp(self.post_attention_layernorm(h))


class Eagle3Head(nn.Module):
    def __init__(self, config, target_hidden_size: int, vocab_size: int, draft_vocab_size: int,
                 target_layers: int = 3):
        super().__init__()
        self.config = config
        eps = config.rms_norm_eps
        width = target_layers * target_hidden_size
        if option(config, "norm_before_fc"):
            self.input_norm = LlamaRMSNorm(width, eps=eps)
        if option(config, "fc_norm"):
            self.fc_norm = nn.ModuleList(LlamaRMSNorm(target_hidden_size, eps=eps) for _ in range(target_layers))
        self.fc = nn.Linear(width, config.hidden_size, bias=False)
        self.midlayer = DraftLayer(config)
        self.norm = LlamaRMSNorm(config.hidden_size, eps=eps)
        self.lm_head = nn.Linear(config.hidden_size, draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.zeros(draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.ones(vocab_size, dtype=torch.bool))
        self.feed_normed_hidden = option(config, "feed_normed_hidden")
        self.norm_before_lm_head = option(config, "norm_before_lm_head", True)
        # Not a submodule: `.to(dtype)` would round the frequencies to bfloat16 / float16 (radians of error at a
        # distance of 1,000 tokens); only its device follows the inputs (see `rope`).
        object.__setattr__(self, "rotary", LlamaRotaryEmbedding(config))

    @property
    def draft_vocab_size(self) -> int:
        return self.lm_head.weight.shape[0]

    def rope(self, x: torch.Tensor, positions: torch.Tensor):
        """cos/sin for positions [b, n] (the head's own RoPE parameters, as its config gives them, in float32)."""
        if self.rotary.inv_freq.device != x.device:
            self.rotary.to(x.device)   # a device move keeps the float32 frequencies
        return self.rotary(x, positions)

    def project(self, states: torch.Tensor) -> torch.Tensor:
        """The target's states at the chosen layers, side by side [..., layers x Ht] -> the head's hidden [..., H]."""
        if hasattr(self, "input_norm"):
            states = self.input_norm(states)
        if hasattr(self, "fc_norm"):
            parts = states.chunk(len(self.fc_norm), dim=-1)
            states = torch.cat([norm(part) for norm, part in zip(self.fc_norm, parts)], dim=-1)
        return self.fc(states)

    def carry(self, h: torch.Tensor) -> torch.Tensor:
        """What the next draft step receives as `hidden` from this step's layer output."""
        return self.norm(h) if self.feed_normed_hidden else h

    def step(self, embeddings, hidden, positions, cache, mask) -> torch.Tensor:
        """Inference: rows [n] appended to the draft's KV cache; mask [n, cached + n] bool. Returns the carried
        hidden [n, H] (`carry`). Batched: embeddings and hidden [b, n, .], positions [b, n], mask [b, n, keys], each
        batch row appended at its own cache length. Returns [b, n, H]."""
        single = embeddings.dim() == 2
        if single:
            embeddings, hidden, positions, mask = embeddings[None], hidden[None], positions[None], mask[None]
        x = self.midlayer.attention_input(embeddings, hidden)
        cos, sin = self.rope(x, positions)
        q, k, v = self.midlayer.self_attn.project(x, cos, sin)
        keys, values = cache.update(k, v, 0)
        h = self.carry(self.midlayer.finish(hidden, self.midlayer.self_attn.attend(q, keys, values, mask[:, None])))
        return h[0] if single else h

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary logits of a carried hidden (`step`'s output)."""
        if self.feed_normed_hidden or not self.norm_before_lm_head:
            return self.lm_head(h)
        return self.lm_head(self.norm(h))

    def to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids + self.d2t[draft_ids]


def head_config(target_config, vocab_size: int):
    """A one-layer Llama config with the target's shapes and RoPE: what a new head for that target is."""
    from transformers import LlamaConfig
    c = target_config
    rope = getattr(c, "rope_parameters", None) or {"rope_type": "default", "rope_theta": 10000.0}
    return LlamaConfig(hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                       num_attention_heads=c.num_attention_heads,
                       num_key_value_heads=getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
                       head_dim=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
                       rms_norm_eps=getattr(c, "rms_norm_eps", 1e-6), rope_parameters=dict(rope),
                       max_position_embeddings=c.max_position_embeddings, num_hidden_layers=1, vocab_size=vocab_size,
                       hidden_act="silu")


def new_head(target, draft_ids: torch.Tensor, target_layers: int = 3) -> Eagle3Head:
    """A freshly initialised head for `target` whose draft vocabulary is the (sorted) target ids `draft_ids`, in
    the target's dtype (its RoPE frequencies stay float32)."""
    vocab = target.get_input_embeddings().weight.shape[0]
    draft_ids = torch.as_tensor(draft_ids, dtype=torch.long).sort().values
    head = Eagle3Head(head_config(target.config, vocab), target.config.hidden_size, vocab, len(draft_ids),
                      target_layers)
    head.d2t.copy_(draft_ids - torch.arange(len(draft_ids)))
    head.t2d.zero_()
    head.t2d[draft_ids] = True
    weight = target.get_input_embeddings().weight
    return head.to(device=weight.device, dtype=weight.dtype)
