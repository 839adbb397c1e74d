"""REST datastore build cost and per-step drafting cost.

    PYTHONPATH=. python scripts/bench_rest.py [--tokens 10000000] [--steps 2000]

The corpus is synthetic, written directly as token ids (no tokenizer): ids drawn from a Zipf law
(exponent 1.1) over a Qwen3-sized vocabulary, the frequent ids scattered over the whole id range
(so ids above 65,535 are common), half of the text made of phrases reused from a bank so that
longer matches exist, documents of about 500 tokens separated by an eos id. The contexts are fresh
text from the same process. Printed: build seconds (suffix array), save and load seconds, file
size, then the drafter's propose time per step at contexts of 1k / 10k / 100k tokens. REST reads
only the last max_suffix tokens, so the three rows should match.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.rest.datastore import Datastore  # noqa: E402
from model.rest.drafter import RestDrafter  # noqa: E402
from model.samd.static_sam import tokenizer_identity  # noqa: E402

VOCAB = 151_936        # Qwen3's vocabulary size
SEPARATOR = VOCAB - 1  # the eos id between documents


class SyntheticTokenizer:
    """Stands in for a tokenizer where only the datastore's identity check needs one."""

    def get_vocab(self) -> dict:
        return {"<eos>": SEPARATOR}


class TextSource:
    """Zipf-distributed ids, half of them in phrases drawn from a bank."""

    def __init__(self, rng: np.random.Generator, phrases: int = 20_000):
        ranks = np.arange(1, VOCAB)
        self.rng = rng
        self.cdf = np.cumsum(ranks ** -1.1)
        self.cdf /= self.cdf[-1]
        self.ids = rng.permutation(VOCAB - 1)   # rank -> id: frequent ids spread over the whole range
        self.bank = [self.words(int(n)) for n in rng.integers(5, 30, phrases)]
        phrase_ranks = np.arange(1, phrases + 1) ** -1.0
        self.phrase_cdf = np.cumsum(phrase_ranks) / phrase_ranks.sum()

    def words(self, n: int) -> np.ndarray:
        return self.ids[np.searchsorted(self.cdf, self.rng.random(n))]

    def text(self, n: int) -> np.ndarray:
        """About n tokens: segments that are either a bank phrase or 1-20 fresh words."""
        segments = n // 12 + 1
        use_phrase = self.rng.random(segments) < 0.5
        phrase = np.searchsorted(self.phrase_cdf, self.rng.random(segments))
        lengths = self.rng.integers(1, 21, segments)
        free = iter(np.split(self.words(int(lengths.sum())), np.cumsum(lengths)[:-1]))
        pieces = [self.bank[p] if use else next(free) for use, p in zip(use_phrase, phrase)]
        return np.concatenate(pieces)[:n]

    def corpus(self, n: int, doc_tokens: int = 500) -> np.ndarray:
        body = self.text(n)
        return np.insert(body, np.arange(doc_tokens, len(body), doc_tokens), SEPARATOR)[:n]


def measure(drafter: RestDrafter, source: TextSource, context_tokens: int, steps: int) -> dict:
    """Propose at `steps` consecutive positions of fresh text after a context of `context_tokens`."""
    text = source.text(context_tokens + steps).tolist()
    context = text[:context_tokens]
    times, sizes = [], []
    for position in range(context_tokens, context_tokens + steps):
        start = time.perf_counter_ns()
        tree = drafter.propose(context, 64)
        times.append(time.perf_counter_ns() - start)
        sizes.append(len(tree) if tree is not None else 0)
        context.append(text[position])
    times_us = sorted(t / 1e3 for t in times)
    return {"median": statistics.median(times_us), "mean": statistics.fmean(times_us),
            "p99": times_us[int(0.99 * (len(times_us) - 1))], "drafted": sum(s > 0 for s in sizes) / steps,
            "nodes": statistics.fmean(sizes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=10_000_000, help="datastore size in tokens")
    parser.add_argument("--steps", type=int, default=2000, help="propose calls per context length")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    source = TextSource(np.random.default_rng(args.seed))

    start = time.perf_counter()
    stream = source.corpus(args.tokens)
    generated = time.perf_counter()
    datastore = Datastore.build(stream, SEPARATOR, *tokenizer_identity(SyntheticTokenizer()))
    built = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "bench.idx")
        datastore.save(path)
        saved = time.perf_counter()
        size = os.path.getsize(path)
        datastore = Datastore.load(path, SyntheticTokenizer())
        loaded = time.perf_counter()
    print(f"datastore: {len(stream):,} tokens ({len(np.unique(stream)):,} distinct ids, max id {stream.max():,}); "
          f"corpus generated in {generated - start:.1f} s")
    print(f"build (suffix array) {built - generated:.1f} s, save {saved - built:.1f} s, load {loaded - saved:.1f} s, "
          f"file {size / 2**20:.1f} MiB ({size / len(stream):.2f} bytes/token)")

    drafter = RestDrafter(datastore)
    print(f"{'context':>8} {'us/step median':>15} {'mean':>8} {'p99':>8} {'steps drafted':>14} {'nodes/step':>11}")
    for context_tokens in (1_000, 10_000, 100_000):
        r = measure(drafter, source, context_tokens, args.steps)
        print(f"{context_tokens:>8,} {r['median']:>15.0f} {r['mean']:>8.0f} {r['p99']:>8.0f} "
              f"{r['drafted']:>14.0%} {r['nodes']:>11.1f}")


if __name__ == "__main__":
    main()
