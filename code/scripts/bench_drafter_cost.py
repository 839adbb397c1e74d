"""What a model-free drafter costs per step (propose + observe, no model) at growing context lengths.

    cd code && python scripts/bench_drafter_cost.py --method {pld,samd,pia,rest,recycling} [--steps 3000]
        [--contexts 1000 10000 100000] [--tokens 10000000 (REST's datastore)]

The drafter first takes a context of N tokens of a synthetic stream (untimed; its build cost per token is printed),
then decodes on against the same stream: each step proposes, accepts the longest path of the draft that agrees with
the stream plus one bonus token (as greedy verification would) and observes them. Timed: propose + observe, garbage
collection included, per-token figures the median over 10 blocks so a scheduler hiccup does not decide them. Flat
rows across 1k -> 100k mean the cost does not grow with the context.

Streams (no tokenizer): `copy` random tokens with spans copied from earlier positions (lookups hit and miss as in real
text), `random`, `repetitive` (phrases from a small bank), `zipf` (independent Zipf-distributed tokens: the worst
case for PIA, whose frequent tokens gather thousands of followers), and for REST fresh text from the process that
wrote its synthetic datastore (Zipf ids over a Qwen3-sized vocabulary, half of them in reused phrases).
"""
from __future__ import annotations

import argparse
import bisect
import gc
import itertools
import os
import random
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from evaluation.run.replay import greedy_path  # noqa: E402  (the engine's greedy rule, a known stream)
from model.engine.drafter import StepFeedback  # noqa: E402

VOCAB = 32_000
QWEN_VOCAB = 151_936   # Qwen3's vocabulary (Token Recycling's matrix, REST's ids)


# ---------------------------------------------------------------------------------------------- streams

def random_stream(n: int, rng: random.Random) -> list[int]:
    return [rng.randrange(VOCAB) for _ in range(n)]


def repetitive_stream(n: int, rng: random.Random) -> list[int]:
    bank = [random_stream(rng.randrange(20, 60), rng) for _ in range(50)]
    stream: list[int] = []
    while len(stream) < n:
        stream.extend(rng.choice(bank))
        if rng.random() < 0.3:
            stream.append(rng.randrange(VOCAB))
    return stream[:n]


def copy_stream(n: int, rng: random.Random, vocab: int = 5_000) -> list[int]:
    stream = [rng.randrange(vocab) for _ in range(8)]
    while len(stream) < n:
        if rng.random() < 0.3:
            start = rng.randrange(len(stream) - 4)
            stream.extend(stream[start: start + rng.randrange(4, 30)])
        else:
            stream.extend(rng.randrange(vocab) for _ in range(rng.randrange(1, 8)))
    return stream[:n]


def zipf_stream(n: int, rng: random.Random) -> list[int]:
    cumulative = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(VOCAB)))
    return [bisect.bisect_left(cumulative, rng.random() * cumulative[-1]) for _ in range(n)]


STREAMS = {"copy": copy_stream, "random": random_stream, "repetitive": repetitive_stream, "zipf": zipf_stream}


class RestText:
    """REST's synthetic corpus and contexts: Zipf ids (exponent 1.1) spread over the whole id range (ids above
    65,535 common), half of the text in phrases drawn from a bank, so longer matches exist."""

    def __init__(self, rng: np.random.Generator, phrases: int = 20_000):
        ranks = np.arange(1, QWEN_VOCAB)
        self.rng = rng
        self.cdf = np.cumsum(ranks ** -1.1)
        self.cdf /= self.cdf[-1]
        self.ids = rng.permutation(QWEN_VOCAB - 1)
        self.bank = [self.words(int(n)) for n in rng.integers(5, 30, phrases)]
        weights = np.arange(1, phrases + 1) ** -1.0
        self.phrase_cdf = np.cumsum(weights) / weights.sum()

    def words(self, n: int) -> np.ndarray:
        return self.ids[np.searchsorted(self.cdf, self.rng.random(n))]

    def text(self, n: int) -> np.ndarray:
        segments = n // 12 + 1
        use_phrase = self.rng.random(segments) < 0.5
        phrase = np.searchsorted(self.phrase_cdf, self.rng.random(segments))
        lengths = self.rng.integers(1, 21, segments)
        free = iter(np.split(self.words(int(lengths.sum())), np.cumsum(lengths)[:-1]))
        return np.concatenate([self.bank[p] if use else next(free) for use, p in zip(use_phrase, phrase)])[:n]

    def stream(self, n: int, _rng=None) -> list[int]:
        return self.text(n).tolist()


# ---------------------------------------------------------------------------------------------- the decode loop

def decode(drafter, stream: list[int], context: int, steps: int, prompt: int | None = None,
           blocks: int = 10) -> dict[str, float]:
    """Prime the drafter with stream[:context] (all of it as the prompt, or a `prompt`-token prompt and the rest
    observed as output in chunks of 4), then decode `steps` steps against the stream."""
    gen = torch.Generator().manual_seed(0)
    tokens = list(stream[:prompt or context])
    start = time.perf_counter_ns()
    drafter.begin_sequence(list(tokens))
    for position in range(len(tokens), context, 4):
        chunk = stream[position: min(position + 4, context)]
        tokens.extend(chunk)
        drafter.observe(StepFeedback(chunk, None, [], [], None))
    build = (time.perf_counter_ns() - start) / 1e3 / context
    gc.collect()
    gc.freeze()   # a full collection of the torch-sized heap must not land in one step's timing
    step_us, per_token, drafted, proposing, emitted_total = [], [], 0, 0, 0
    for _ in range(blocks):
        spent_block, emitted_block = 0, 0
        for _ in range(steps // blocks):
            start = time.perf_counter_ns()
            tree = drafter.propose(tokens, 128)
            proposed = time.perf_counter_ns() - start
            if tree is not None:
                tree.validate(128, 1 << 62)   # fills the depths the acceptance reads
            truth = stream[len(tokens): len(tokens) + 64]
            path = greedy_path(tree, truth)[0] if tree is not None else []
            fed = [tokens[-1]] + (tree.tokens if tree is not None else [])   # root + draft, as the target saw them
            emitted = truth[: len(path) + 1]
            tokens.extend(emitted)
            topk = None
            if drafter.wants_topk:   # Token Recycling learns from the target's top-k at every verified position
                topk = torch.randint(0, QWEN_VOCAB, (len(fed), drafter.wants_topk), generator=gen)
            feedback = StepFeedback(emitted, tree, path, fed, topk)
            start = time.perf_counter_ns()
            drafter.observe(feedback)
            spent = proposed + time.perf_counter_ns() - start
            step_us.append(spent / 1e3)
            spent_block += spent
            proposing += proposed
            drafted += len(tree) if tree is not None else 0
            emitted_block += len(emitted)
        per_token.append(spent_block / 1e3 / emitted_block)
        emitted_total += emitted_block
    gc.unfreeze()
    done = len(step_us)
    step_us.sort()
    return {"build": build, "per_token": statistics.median(per_token), "per_step": statistics.median(step_us),
            "p99": step_us[int(0.99 * (done - 1))], "tokens_per_step": emitted_total / done,
            "nodes_per_step": drafted / done, "per_node": proposing / 1e3 / drafted if drafted else float("nan")}


# ---------------------------------------------------------------------------------------------- the methods

def pld_drafters(args):
    from model.pld import PromptLookupDrafter
    return {"adaptive": lambda: PromptLookupDrafter(adaptive=True),
            "fixed 10": lambda: PromptLookupDrafter(adaptive=False)}


def samd_drafters(args):
    from model.samd.drafter import SamDrafter
    return {"": SamDrafter}


def pia_drafters(args):
    from model.pia.drafter import PiaDrafter
    return {"": PiaDrafter}


def recycling_drafters(args):
    from model.recycling import TokenRecyclingDrafter
    size = TokenRecyclingDrafter(QWEN_VOCAB).matrix_bytes()
    print(f"Token Recycling matrix for a {QWEN_VOCAB:,}-token vocabulary x 8 int32: {size / 1e6:.2f} MB")
    # Every step drafts the whole 80-node template (as the seed does from unknown rows): the cost that matters.
    return {"": lambda: TokenRecyclingDrafter(QWEN_VOCAB, draft_unknown_root=True)}


def rest_drafters(args):
    from model.rest.datastore import Datastore
    from model.rest.drafter import RestDrafter
    from model.samd.static_sam import tokenizer_identity

    separator = QWEN_VOCAB - 1

    class Ids:   # stands in for a tokenizer where only the datastore's identity check needs one
        def get_vocab(self):
            return {"<eos>": separator}

    text = RestText(np.random.default_rng(args.seed))
    start = time.perf_counter()
    body = text.text(args.tokens)
    corpus = np.insert(body, np.arange(500, len(body), 500), separator)[: args.tokens]   # ~500-token documents
    generated = time.perf_counter()
    datastore = Datastore.build(corpus, separator, *tokenizer_identity(Ids()))
    built = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "bench.idx")
        datastore.save(path)
        saved = time.perf_counter()
        size = os.path.getsize(path)
        datastore = Datastore.load(path, Ids())
        loaded = time.perf_counter()
    print(f"datastore: {len(corpus):,} tokens (max id {corpus.max():,}), generated in {generated - start:.1f} s; "
          f"suffix array {built - generated:.1f} s, save {saved - built:.1f} s, load {loaded - saved:.1f} s, "
          f"{size / 2**20:.1f} MiB ({size / len(corpus):.2f} bytes/token)")
    STREAMS["rest text"] = text.stream
    return {"": lambda: RestDrafter(datastore)}


METHODS = {   # drafters, default streams, prompt tokens when the rest of the context is observed as output
    "pld": (pld_drafters, ["copy"], None),
    "samd": (samd_drafters, ["random", "repetitive"], None),
    "pia": (pia_drafters, ["random", "repetitive", "zipf"], 256),   # its output trie is built from observed tokens
    "recycling": (recycling_drafters, ["random"], None),
    "rest": (rest_drafters, ["rest text"], None),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", required=True, choices=sorted(METHODS))
    parser.add_argument("--steps", type=int, default=3000, help="decoding steps per row")
    parser.add_argument("--contexts", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--streams", nargs="+", choices=sorted(STREAMS), help="default: the method's")
    parser.add_argument("--tokens", type=int, default=10_000_000, help="REST: synthetic datastore size in tokens")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 10 or min(args.contexts) < 300:
        parser.error("--steps must be at least 10 and every --contexts at least 300")
    make_drafters, streams, prompt = METHODS[args.method]
    drafters = make_drafters(args)
    decode(next(iter(drafters.values()))(), STREAMS[streams[-1]](3_000, random.Random(1)), 1_000, 100, prompt)
    print(f"{args.method}: propose + observe per step, {args.steps} steps after a context of N tokens (Python "
          f"{sys.version.split()[0]}); us = microseconds")
    print(f"{'variant':<9} {'stream':<11} {'context':>8} {'build us/tok':>12} {'us/token':>9} {'us/step':>8} "
          f"{'p99 us/step':>11} {'tokens/step':>11} {'nodes/step':>10} {'propose us/node':>15}")
    rng = random.Random(args.seed)
    for kind in args.streams or streams:
        for context in args.contexts:
            stream = STREAMS[kind](context + 64 * args.steps, rng)
            for variant, make in drafters.items():
                m = decode(make(), stream, context, args.steps, prompt)
                print(f"{variant:<9} {kind:<11} {context:>8} {m['build']:>12.2f} {m['per_token']:>9.2f} "
                      f"{m['per_step']:>8.2f} {m['p99']:>11.1f} {m['tokens_per_step']:>11.2f} "
                      f"{m['nodes_per_step']:>10.1f} {m['per_node']:>15.2f}")


if __name__ == "__main__":
    main()
