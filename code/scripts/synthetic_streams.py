"""Synthetic token streams for the drafter cost benchmarks (no model, no tokenizer)."""
from __future__ import annotations

import random

VOCAB = 32_000


def random_stream(n: int, rng: random.Random) -> list[int]:
    return [rng.randrange(VOCAB) for _ in range(n)]


def repetitive_stream(n: int, rng: random.Random) -> list[int]:
    """Phrases drawn from a small bank, with a random token between some of them: text that repeats itself."""
    bank = [random_stream(rng.randrange(20, 60), rng) for _ in range(50)]
    stream: list[int] = []
    while len(stream) < n:
        stream.extend(rng.choice(bank))
        if rng.random() < 0.3:
            stream.append(rng.randrange(VOCAB))
    return stream[:n]
