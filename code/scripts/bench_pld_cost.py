"""Drafter bookkeeping cost: PLD propose+observe per token at growing contexts, Token Recycling size.

PLD should cost the same per token at 1k, 10k and 100k tokens of context, since its n-gram index is
updated incrementally and a lookup is a few dict probes. The stream is synthetic: random tokens
with spans copied from earlier positions, so lookups hit and miss like in real text. Each step
plays greedy verification against the stream: accept the draft's agreeing prefix plus one token.

Run: cd code && python scripts/bench_pld_cost.py
"""
from __future__ import annotations

import gc
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.engine.drafter import StepFeedback  # noqa: E402
from model.pld import PromptLookupDrafter  # noqa: E402
from model.recycling import TokenRecyclingDrafter  # noqa: E402

CONTEXTS = (1_000, 10_000, 100_000)
STEPS = 3_000
QWEN_VOCAB = 152064


def synthetic_stream(length: int, vocab: int = 5_000, copy_chance: float = 0.3, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    stream = [rng.randrange(vocab) for _ in range(8)]
    while len(stream) < length:
        if rng.random() < copy_chance:
            start = rng.randrange(len(stream) - 4)
            stream.extend(stream[start: start + rng.randrange(4, 30)])
        else:
            stream.extend(rng.randrange(vocab) for _ in range(rng.randrange(1, 8)))
    return stream[:length]


def settle_garbage() -> None:
    """Collect and freeze what exists now, so a full collection of the torch-sized heap (tens of ms)
    does not land inside one drafter's timing and get charged to it."""
    gc.collect()
    gc.freeze()


def bench_pld(context: int, adaptive: bool) -> tuple[float, float, float]:
    """(index build us/token, propose+observe us/step, us/emitted token)."""
    stream = synthetic_stream(context + STEPS * 12)
    drafter = PromptLookupDrafter(adaptive=adaptive)
    t0 = time.perf_counter()
    drafter.begin_sequence(stream[:context])
    build = time.perf_counter() - t0
    tokens = stream[:context]
    settle_garbage()
    spent, emitted_total = 0.0, 0
    for _ in range(STEPS):
        t0 = time.perf_counter()
        tree = drafter.propose(tokens, 128)
        spent += time.perf_counter() - t0
        truth = stream[len(tokens): len(tokens) + 11]
        accepted = 0
        if tree is not None:
            while accepted < len(tree) and tree.tokens[accepted] == truth[accepted]:
                accepted += 1
        emitted = truth[: accepted + 1]
        tokens.extend(emitted)
        feedback = StepFeedback(emitted, tree, list(range(accepted)), [], None)
        t0 = time.perf_counter()
        drafter.observe(feedback)
        spent += time.perf_counter() - t0
        emitted_total += len(emitted)
    return build / context * 1e6, spent / STEPS * 1e6, spent / emitted_total * 1e6


def bench_recycling(steps: int = 2_000) -> float:
    """us per propose+observe step of the 80-node tree at the Qwen vocabulary."""
    drafter = TokenRecyclingDrafter(QWEN_VOCAB)
    gen = torch.Generator().manual_seed(0)
    root = 11
    drafter.observe(StepFeedback([root], None, [], [root], torch.randint(0, QWEN_VOCAB, (1, 8), generator=gen)))
    topks = [torch.randint(0, QWEN_VOCAB, (81, 8), generator=gen) for _ in range(16)]
    settle_garbage()
    t0 = time.perf_counter()
    for step in range(steps):
        tree = drafter.propose([root], 128)
        drafter.observe(StepFeedback([root], tree, [], [root] + tree.tokens, topks[step % 16]))
    return (time.perf_counter() - t0) / steps * 1e6


def main() -> None:
    print(f"PLD bookkeeping, {STEPS} steps after a context of N tokens (Python {'.'.join(map(str, __import__('sys').version_info[:3]))})")
    print(f"{'context':>8} {'adaptive':>8} {'index build us/tok':>19} {'us/step':>8} {'us/emitted tok':>15}")
    for context in CONTEXTS:
        for adaptive in (True, False):
            build, per_step, per_token = bench_pld(context, adaptive)
            print(f"{context:>8} {str(adaptive):>8} {build:>19.2f} {per_step:>8.2f} {per_token:>15.2f}")
    size = TokenRecyclingDrafter(QWEN_VOCAB).matrix_bytes()
    print(f"Token Recycling matrix for vocab {QWEN_VOCAB} x 8 int32: {size / 1e6:.2f} MB ({size / 2**20:.2f} MiB)")
    print(f"Token Recycling propose+observe (80-node tree, 81x8 top-k): {bench_recycling():.1f} us/step")


if __name__ == "__main__":
    main()
