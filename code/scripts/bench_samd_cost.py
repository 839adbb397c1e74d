"""Per-token CPU cost of the SAM drafter (propose + observe) at growing context lengths.

    PYTHONPATH=. python scripts/bench_samd_cost.py [--steps 3000]

For each synthetic stream and context length, the drafter first sees the context as its prompt
(untimed), then decodes on: every step calls propose, accepts the longest draft prefix that agrees
with the stream plus one bonus token (as greedy verification would) and calls observe with them.
Timed: propose + observe, garbage collection included. Flat numbers across 1k -> 100k mean the cost
does not grow with the context.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.engine.drafter import StepFeedback  # noqa: E402
from model.samd.drafter import SamDrafter  # noqa: E402
from synthetic_streams import random_stream, repetitive_stream  # noqa: E402


def measure(stream: list[int], context: int, steps: int, blocks: int = 10) -> tuple[float, float, float]:
    """(microseconds per emitted token, microseconds per step, mean tokens per step).

    The steps run in `blocks` blocks and the per-token time is the median over blocks, so a stray
    scheduler hiccup does not decide the figure.
    """
    drafter = SamDrafter()
    drafter.reset()
    drafter.begin_sequence(stream[:context])
    position, per_token, per_step, emitted_total = context, [], [], 0
    for _ in range(blocks):
        elapsed, emitted_block = 0, 0
        for _ in range(steps // blocks):
            start = time.perf_counter_ns()
            tree = drafter.propose(stream[:0], 128)
            draft = tree.tokens if tree is not None else []
            accepted = 0
            while accepted < len(draft) and draft[accepted] == stream[position + accepted]:
                accepted += 1
            emitted = stream[position:position + accepted + 1]
            drafter.observe(StepFeedback(emitted, tree, list(range(accepted)), [], None))
            elapsed += time.perf_counter_ns() - start
            position += len(emitted)
            emitted_block += len(emitted)
        per_token.append(elapsed / 1e3 / emitted_block)
        per_step.append(elapsed / 1e3 / (steps // blocks))
        emitted_total += emitted_block
    return statistics.median(per_token), statistics.median(per_step), emitted_total / (steps // blocks * blocks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5000)
    args = parser.parse_args()
    rng = random.Random(0)
    print(f"{'stream':<11} {'context':>8} {'us/token':>9} {'us/step':>8} {'tokens/step':>11}")
    for kind, make in (("random", random_stream), ("repetitive", repetitive_stream)):
        for context in (1_000, 10_000, 100_000):
            stream = make(context + 60 * args.steps, rng)
            per_token, per_step, tokens_per_step = measure(stream, context, args.steps)
            print(f"{kind:<11} {context:>8} {per_token:>9.2f} {per_step:>8.2f} {tokens_per_step:>11.2f}")


if __name__ == "__main__":
    main()
