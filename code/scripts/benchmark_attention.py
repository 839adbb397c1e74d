"""AR decoding through the engine with its grouped-query SDPA (model/engine/attention.py) against transformers' SDPA,
which repeats every key/value head under a mask: side by side on one loaded model, alternating per question and
batch size (a batch of B copies of the question's prompt, as Best-of-N decodes it). Prints each implementation's
decoding throughput (all rows' tokens over the steps' forward time, the prefill left out) and the ratio per
question; outputs must be token-identical.

    cd code && python scripts/benchmark_attention.py --questions 6 --batch-sizes 1 4 8 \
        --question-file ../../shared/data/SpecTTS_Bench/question_cot.jsonl --question-begin 60 [--context 2048]
"""
from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from evaluation.data.questions import load_questions  # noqa: E402
from evaluation.run import paradigms  # noqa: E402
from model.engine import Drafter, SamplingConfig, SpeculativeEngine  # noqa: E402
from model.engine.attention import NAME  # noqa: E402
from model.engine.loading import load_model  # noqa: E402
from model.errors import UserError  # noqa: E402

IMPLEMENTATIONS = (NAME, "sdpa")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", default="local_model/SmolLM2-135M-Instruct")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="auto")
    p.add_argument("--question-file", default="data/demo/question.jsonl")
    p.add_argument("--question-begin", type=int, default=0)
    p.add_argument("--questions", type=int, default=4)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--context", type=int, default=0,
                   help="repeat each prompt up to this many tokens: the attention cost of a long reasoning trace")
    args = p.parse_args()

    try:
        model, tokenizer, _ = load_model(args.model_path, args.dtype, args.device)
        questions = load_questions(args.question_file, args.question_begin, args.question_begin + args.questions)
    except UserError as exc:
        sys.exit(f"error: {exc}")
    if model.config._attn_implementation != NAME:
        sys.exit(f"error: {args.model_path} does not run the grouped path ({model.config._attn_implementation})")
    if not questions:
        sys.exit(f"error: no questions in {args.question_file} from row {args.question_begin}")
    engine = SpeculativeEngine(model)
    prompts = [paradigms.encode_prompt(tokenizer, paradigms.turn_messages(q, "best_of_n", 0, None))
               for q in questions]
    if args.context:
        prompts = [(prompt * (args.context // len(prompt) + 1))[-args.context:] for prompt in prompts]
    engine.generate(prompts[0], Drafter(), 8, SamplingConfig())   # warm-up
    print(f"{len(prompts)} prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens, "
          f"{args.max_new_tokens} new tokens per row, greedy")
    for size in args.batch_sizes:
        rates = {impl: [] for impl in IMPLEMENTATIONS}
        for i, prompt in enumerate(prompts):
            outputs = {}
            order = IMPLEMENTATIONS if i % 2 == 0 else IMPLEMENTATIONS[::-1]   # neither always goes first
            for impl in order:
                model.set_attn_implementation(impl)
                rows = engine.generate_batch([prompt] * size, [Drafter() for _ in range(size)], args.max_new_tokens,
                                             SamplingConfig())
                # Decoding only (the prefill's forward is the same either way): each step's forward, all rows'
                # tokens; AR rows step together, so row 0's steps are the batch's.
                seconds = sum(step.verify_seconds for step in rows[0].steps)
                rates[impl].append(sum(len(r.tokens) for r in rows) / seconds)
                outputs[impl] = [r.tokens for r in rows]
            if outputs[NAME] != outputs["sdpa"]:
                sys.exit(f"B={size}, question {i}: the outputs differ")
        ratios = [g / s for g, s in zip(rates[NAME], rates["sdpa"])]
        mean = math.exp(sum(map(math.log, ratios)) / len(ratios))
        each = " ".join(f"{r:.2f}" for r in ratios)
        print(f"B={size}, decoding: grouped {sum(rates[NAME]) / len(prompts):.1f} tok/s, transformers' SDPA "
              f"{sum(rates['sdpa']) / len(prompts):.1f} tok/s; grouped/SDPA per question {each} "
              f"(geometric mean {mean:.2f}x, {min(ratios):.2f}-{max(ratios):.2f})")
    model.set_attn_implementation(NAME)


if __name__ == "__main__":
    main()
