"""Eager against static engine mode, side by side: AR (and PLD) tokens/s of the embedded model on this machine.

Each repeat decodes every prompt once per mode, the modes alternating, so load hits both alike; the ratio static /
eager is taken per repeat and reported as its median and range. Prompts: the demo questions and real benchmark
questions (../shared/data, when present) in the model's chat template.

    cd code && python scripts/bench_engine_modes.py [--new-tokens 128] [--repeats 3] [--kv-bucket 256]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from evaluation.data.questions import load_questions  # noqa: E402
from evaluation.run.paradigms import encode_prompt  # noqa: E402
from model.engine import Drafter, SamplingConfig, SpeculativeEngine  # noqa: E402
from model.engine.loading import load_model  # noqa: E402
from model.pld import PromptLookupDrafter  # noqa: E402

CODE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(CODE, "..", "..", "shared", "data", "SpecTTS_Bench", "question_cot.jsonl")


def questions(path: str, n: int) -> list[str]:
    return [q["turns"][0] for q in load_questions(path, 0, n)]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", default=os.path.join(CODE, "local_model", "SmolLM2-135M-Instruct"))
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--kv-bucket", type=int, default=256)
    p.add_argument("--questions", type=int, default=2, help="from each set")
    p.add_argument("--methods", nargs="+", default=["ar", "pld"], choices=["ar", "pld"])
    args = p.parse_args(argv)
    model, tokenizer, _ = load_model(args.model_path, "float32", "cpu", 1)
    sets = {"demo": questions(os.path.join(CODE, "data", "demo", "question.jsonl"), args.questions)}
    if os.path.exists(SHARED):
        sets["real"] = questions(SHARED, args.questions)
    prompts = {name: [encode_prompt(tokenizer, [{"role": "user", "content": q}]) for q in qs]
               for name, qs in sets.items()}
    engines = {"eager": SpeculativeEngine(model), "static": SpeculativeEngine(model, mode="static",
                                                                              kv_bucket=args.kv_bucket)}
    make = {"ar": Drafter, "pld": PromptLookupDrafter}
    for engine in engines.values():   # warm-up: first calls, and static mode's shapes
        for method in args.methods:
            engine.generate(prompts["demo"][0], make[method](), 32, SamplingConfig())
    ratios = {(s, m): [] for s in prompts for m in args.methods}
    rates = {(s, m, e): [] for s in prompts for m in args.methods for e in engines}
    for rep in range(args.repeats):
        for name, ps in prompts.items():
            for method in args.methods:
                seconds = {}
                for mode, engine in (engines.items() if rep % 2 == 0 else reversed(engines.items())):
                    start, tokens = time.perf_counter(), 0
                    outs = [engine.generate(prompt, make[method](), args.new_tokens, SamplingConfig()) for prompt in ps]
                    seconds[mode] = time.perf_counter() - start
                    tokens = sum(len(o.tokens) for o in outs)
                    rates[name, method, mode].append(tokens / seconds[mode])
                ratios[name, method].append(seconds["eager"] / seconds["static"])
    print(f"| questions | method | eager tok/s | static tok/s | static / eager (median [min, max] of {args.repeats}) |")
    print("|---|---|---|---|---|")
    for (name, method), values in ratios.items():
        print(f"| {name} | {method} | {statistics.median(rates[name, method, 'eager']):.1f} | "
              f"{statistics.median(rates[name, method, 'static']):.1f} | {statistics.median(values):.3f} "
              f"[{min(values):.3f}, {max(values):.3f}] |")
    print(f"\nstatic engine: {engines['static'].describe()}")


if __name__ == "__main__":
    main()
