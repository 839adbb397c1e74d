"""Per-token CPU cost of the PIA drafter (propose + observe) at growing context lengths.

    PYTHONPATH=. python scripts/bench_pia_cost.py [--steps 2000]

For each synthetic stream and context length N, the drafter sees a 256-token prompt, then the rest of
the N tokens as emitted output in chunks of 4 (untimed: its insertion cost is printed as build us/tok),
then decodes on: every step calls propose, accepts the longest path of the draft tree that agrees with
the stream plus one bonus token (as greedy verification would) and calls observe with them. Timed:
propose + observe only, garbage collection included. observe costs O(branch_length) per token and
propose O(nodes drafted x offers per node), offers capped at 32 per kept node; the draft grows as the
trie fills (up to 63 nodes), so per-step figures rise to a bound while observe and the per-node cost
stay flat. The zipf stream is the adversarial case: its frequent tokens' nodes fill up to the cap.
"""
from __future__ import annotations

import argparse
import bisect
import itertools
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.engine.drafter import StepFeedback  # noqa: E402
from model.pia.drafter import PiaDrafter  # noqa: E402
from synthetic_streams import VOCAB, random_stream, repetitive_stream  # noqa: E402

PROMPT = 256
CONTEXTS = (1_000, 10_000, 100_000)


def zipf_stream(n: int, rng: random.Random) -> list[int]:
    """Independent tokens with Zipf frequencies: the worst case for fanout, as frequent tokens gather
    thousands of distinct followers (their large nodes are where the best-few ranking takes over)."""
    cumulative = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(VOCAB)))
    return [bisect.bisect_left(cumulative, rng.random() * cumulative[-1]) for _ in range(n)]


def accepted_path(tree, truth: list[int]) -> list[int]:
    """Indices of the draft nodes greedy verification would accept against the true continuation."""
    children: dict[int, dict[int, int]] = {}
    for node, (token, parent) in enumerate(zip(tree.tokens, tree.parents)):
        children.setdefault(parent, {})[token] = node
    path, node = [], -1
    while len(path) < len(truth) and truth[len(path)] in children.get(node, {}):
        node = children[node][truth[len(path)]]
        path.append(node)
    return path


def measure(stream: list[int], context: int, steps: int, blocks: int = 10) -> dict[str, float]:
    """Build us per context token; median over blocks of us per emitted token and per step; mean
    tokens per step, draft nodes per step and propose us per drafted node.

    Steps run in `blocks` blocks and the per-token time is the median over blocks, so that a stray
    scheduler hiccup does not decide the figure."""
    drafter = PiaDrafter()
    tokens = stream[:PROMPT]
    start = time.perf_counter_ns()
    drafter.begin_sequence(tokens)
    for position in range(PROMPT, context, 4):
        chunk = stream[position: min(position + 4, context)]
        tokens.extend(chunk)
        drafter.observe(StepFeedback(chunk, None, [], [], None))
    build = (time.perf_counter_ns() - start) / 1e3 / context
    per_token, per_step, emitted_total, drafted, proposing = [], [], 0, 0, 0
    for _ in range(blocks):
        elapsed, emitted_block = 0, 0
        for _ in range(steps // blocks):
            start = time.perf_counter_ns()
            tree = drafter.propose(tokens, 128)
            spent = time.perf_counter_ns() - start
            elapsed += spent
            proposing += spent
            drafted += len(tree) if tree is not None else 0
            truth = stream[len(tokens): len(tokens) + 64]
            path = accepted_path(tree, truth) if tree is not None else []
            emitted = truth[: len(path) + 1]
            tokens.extend(emitted)
            feedback = StepFeedback(emitted, tree, path, [], None)
            start = time.perf_counter_ns()
            drafter.observe(feedback)
            elapsed += time.perf_counter_ns() - start
            emitted_block += len(emitted)
        per_token.append(elapsed / 1e3 / emitted_block)
        per_step.append(elapsed / 1e3 / (steps // blocks))
        emitted_total += emitted_block
    done = steps // blocks * blocks
    return {"build": build, "per_token": statistics.median(per_token), "per_step": statistics.median(per_step),
            "tokens_per_step": emitted_total / done, "nodes_per_step": drafted / done,
            "per_node": proposing / 1e3 / max(drafted, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    measure(repetitive_stream(2_000, random.Random(1)), 1_000, 100)   # warm-up: first-call costs stay out of the table
    rng = random.Random(0)
    print(f"{'stream':<11} {'context':>8} {'build us/tok':>12} {'us/token':>9} {'us/step':>8} "
          f"{'tokens/step':>11} {'nodes/step':>10} {'propose us/node':>15}")
    for kind, make in (("random", random_stream), ("repetitive", repetitive_stream), ("zipf", zipf_stream)):
        for context in CONTEXTS:
            stream = make(context + 64 * args.steps, rng)
            m = measure(stream, context, args.steps)
            print(f"{kind:<11} {context:>8} {m['build']:>12.2f} {m['per_token']:>9.2f} {m['per_step']:>8.2f} "
                  f"{m['tokens_per_step']:>11.2f} {m['nodes_per_step']:>10.1f} {m['per_node']:>15.2f}")


if __name__ == "__main__":
    main()
