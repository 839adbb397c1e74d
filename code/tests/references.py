"""AR references computed once per worker: the plain greedy (or seeded) decoding of a prompt by a tiny model.

Identity tests compare every method with AR on the same few prompts, architectures and limits; the reference itself
does not depend on the method, so it is decoded once per key and shared (a Generation is read, never changed).
"""
from __future__ import annotations

import functools

import torch

from conftest import tiny_model
from model.engine import Drafter, SamplingConfig, SpeculativeEngine, ThinkingBudget


@functools.lru_cache(maxsize=None)
def _ar(arch: str, prompt: tuple, n: int, sampling: SamplingConfig, seed: int | None, stop: frozenset,
        budget: tuple | None):
    engine = SpeculativeEngine(tiny_model(arch))
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return engine.generate(list(prompt), Drafter(), n, sampling, generator, stop_tokens=stop,
                           budget=None if budget is None else ThinkingBudget(budget[0], list(budget[1]), budget[2]))


def ar(arch: str, prompt, n: int, sampling: SamplingConfig = SamplingConfig(), seed: int | None = None,
       stop=frozenset(), budget: ThinkingBudget | None = None):
    """AR's Generation of `prompt` by tiny_model(arch) (float64): n new tokens at most, the seed's generator when
    sampling, with these stop tokens and thinking budget."""
    key = None if budget is None else (budget.trigger_at, tuple(budget.phrase), budget.end_token)
    return _ar(arch, tuple(prompt), n, sampling, seed, frozenset(stop), key)
