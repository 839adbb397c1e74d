"""Replay speed and MAT by context length: each model-free drafter replayed over the same recorded traces.

    cd code && python scripts/bench_replay.py --answer-file A.jsonl --model-path M [--methods pld samd pia]
        [--repeats 3] [--question-file Q.jsonl]

Prints, per method, the recorded tokens replayed per second (median of --repeats replays; the goal is 50,000 tokens/s
for PLD and SAM, so a 15,000-token trace replays in well under a second), the drafter's own time per step, MAT
(bonus token counted) and the recorded run's estimated speedup, then MAT per context-length bucket.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from evaluation.run import replay  # noqa: E402
from model.engine.loading import load_tokenizer  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--answer-file", required=True, help="an answer file recorded with --save-token-ids")
    parser.add_argument("--model-path", required=True, help="the tokenizer of the recorded model")
    parser.add_argument("--methods", nargs="+", default=["pld", "samd", "pia"], choices=replay.REPLAYABLE)
    parser.add_argument("--question-file", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    tokenizer = load_tokenizer(args.model_path)
    lines = replay.read_jsonl(args.answer_file)
    config = replay.read_config(args.answer_file)
    turns = replay.answer_turns(lines, config, args.question_file, tokenizer)
    profile = replay.load_profile(None, config)
    tokens = sum(len(t.tokens) for t in turns)
    print(f"{len(turns)} turns, {tokens:,} recorded tokens ({sum(t.retokenized for t in turns)} re-tokenized), "
          f"longest {max(len(t.prompt) + len(t.tokens) for t in turns):,} tokens with its prompt")
    print(f"{'method':<8} {'tokens/s':>10} {'spread':>17} {'us/step':>8} {'MAT':>6} {'est. speedup':>12}")
    buckets = {}
    for method in args.methods:
        method_args, module = replay.parse_args(["--answer-file", args.answer_file, "--model-path", args.model_path,
                                                 "--method", method])
        rates = []
        for _ in range(args.repeats):
            drafter = module.make_drafter(method_args, None, tokenizer)
            start = time.perf_counter()
            steps = replay.replay(turns, drafter, *replay.recorded_settings(drafter, config))
            seconds = time.perf_counter() - start
            rates.append(tokens / seconds)
        summary = replay.summarize(steps, turns, seconds, profile, "answer file")
        buckets[method] = summary["per context length"]
        estimate = f"{summary['estimated_speedup']:.2f}x" if summary["estimated_speedup"] else "-"
        print(f"{method:<8} {statistics.median(rates):>10,.0f} {min(rates):>8,.0f}-{max(rates):<8,.0f} "
              f"{summary['draft_us_per_step']:>8.1f} {summary['mat']:>6.2f} {estimate:>12}")
    names = sorted({b for per in buckets.values() for b in per}, key=lambda b: int(b.split("-")[0].rstrip("+")))
    print("\nMAT by context length (tokens before the step; steps in the bucket)")
    print(f"{'method':<8} " + " ".join(f"{n:>16}" for n in names))
    for method, per in buckets.items():
        cells = [f"{per[n]['mat']:.2f} ({per[n]['steps']})" if n in per else "-" for n in names]
        print(f"{method:<8} " + " ".join(f"{c:>16}" for c in cells))


if __name__ == "__main__":
    main()
