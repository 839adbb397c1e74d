"""Target distributions and the one acceptance rule every method goes through.

Greedy: follow the child whose token is the target's argmax; the first mismatch gives the bonus token.
Sampling, point-mass drafts (every model-free method): draw x ~ p at the node and follow the child
holding x; a draw no child holds is the bonus token. Each emitted token is then one draw from p, exactly
as in autoregressive sampling, so the output distribution is unchanged.
Sampling, drafts with probabilities q: SpecInfer-style recursive rejection over the node's children,
child c accepted with probability min(1, r(c)/q(c)), on rejection r <- norm(max(r - q, 0)); when every
child is rejected the bonus token is drawn from the final residual r.
All randomness comes from one seeded torch.Generator, through `uniform`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def target_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Turn [n, vocab] logits into the distributions AR sampling would draw from (temperature, top-k, top-p)."""
    logits = logits / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the mass before it already reaches top_p (the first token always stays).
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= cfg.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def draw(p: torch.Tensor, generator: torch.Generator) -> int:
    """One token from distribution p by inverse CDF: exactly one uniform per token."""
    u = torch.rand((), generator=generator, device=generator.device, dtype=p.dtype)
    cdf = p.cumsum(-1)
    index = int(torch.searchsorted(cdf, u * cdf[-1], right=True))
    return min(index, p.shape[-1] - 1)


def children_of(parents: list[int]) -> list[list[int]]:
    """Children (node indices, in order) of the root (index 0) and of each node (index i+1)."""
    kids: list[list[int]] = [[] for _ in range(len(parents) + 1)]
    for i, p in enumerate(parents):
        kids[p + 1].append(i)
    return kids


def accept_greedy(tokens: list[int], parents: list[int], argmax: list[int]) -> tuple[list[int], int]:
    """argmax[j] is the target's choice after input position j (0 = root, i+1 = node i).

    Returns the accepted node indices (root excluded) and the bonus token."""
    kids = children_of(parents)
    path, pos = [], 0
    while True:
        want = argmax[pos]
        nxt = next((c for c in kids[pos] if tokens[c] == want), None)
        if nxt is None:
            return path, want
        path.append(nxt)
        pos = nxt + 1


def accept_sampled(tokens: list[int], parents: list[int], p: torch.Tensor, q: torch.Tensor | None,
                   generator: torch.Generator) -> tuple[list[int], int]:
    """p: [n+1, vocab] target distributions at root + nodes; q: [n, vocab] draft distributions or None."""
    kids = children_of(parents)
    path, pos = [], 0
    while True:
        if not kids[pos]:
            return path, draw(p[pos], generator)
        if q is None:
            x = draw(p[pos], generator)
            nxt = next((c for c in kids[pos] if tokens[c] == x), None)
            if nxt is None:
                return path, x
        else:
            nxt, residual = None, p[pos]
            for c in kids[pos]:
                qc = q[c]
                ratio = residual[tokens[c]] / qc[tokens[c]].clamp_min(1e-30)
                u = torch.rand((), generator=generator, device=generator.device, dtype=residual.dtype)
                if u <= ratio:
                    nxt = c
                    break
                residual = (residual - qc).clamp_min(0)
                total = residual.sum()
                residual = residual / total if total > 0 else p[pos]
            if nxt is None:
                return path, draw(residual, generator)
        path.append(nxt)
        pos = nxt + 1
