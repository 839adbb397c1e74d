"""Side-by-side benchmark of the drafters on one model, with transformers' own decoding as a reference.

Every method answers the same prompts in one process: per question, round 1 then round 2 (multi-round
thinking; round 2 quotes the AR answer of round 1, which every lossless greedy method reproduces). Rows:
our AR, each drafter through our engine, transformers `generate` (plain), `generate(prompt_lookup_num_tokens=10)`
and, with a draft model, `generate(assistant_model=...)` (its defaults: 20 tokens, constant, confidence 0.4).
Prints per method and round: tokens/s, speedup over our AR, MAT (bonus token counted) and drafting share.

    cd code && python scripts/benchmark_drafters.py --max-new-tokens 256 --questions 8 --datastore-path X.idx
    cd code && python scripts/benchmark_drafters.py --methods ar hf hf-sps sps \
        --drafter-path local_model/SmolLM2-135M-Instruct --drafter-dtype bfloat16
    cd code && python scripts/benchmark_drafters.py --methods ar samd eagle3 samd-eagle3 \
        --ea-model-path local_model/eagle3-SmolLM2-135M-Instruct
    cd code && python scripts/benchmark_drafters.py --cost-aware both    # each method without and with (+ca)
    cd code && python scripts/benchmark_drafters.py --batch-sizes 1 2 4 8 --paradigm bon --bon-n 8 \
        --temperature 0.6 --cost-aware both    # the batch-size sweep (scripts/batch_sweep.py)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from evaluation.run import paradigms  # noqa: E402
from evaluation.data.questions import load_questions  # noqa: E402
from model.eagle3 import Eagle3Drafter, load_head  # noqa: E402
from evaluation.reports.uncertainty import speedup_interval  # noqa: E402
from model.engine import Drafter, SamplingConfig, SpeculativeEngine  # noqa: E402
from model.engine.cost import CostAwareVerifier  # noqa: E402
from model.engine.profile import DENSE_WIDTHS, ForwardCostProfile  # noqa: E402
from model.engine.loading import load_draft_model, load_model  # noqa: E402
from model.lade import LookaheadDrafter  # noqa: E402
from model.pia.drafter import PiaDrafter  # noqa: E402
from model.pld import PromptLookupDrafter  # noqa: E402
from model.recycling import TokenRecyclingDrafter  # noqa: E402
from model.rest.datastore import Datastore  # noqa: E402
from model.rest.drafter import RestDrafter  # noqa: E402
from model.samd.drafter import SamDrafter  # noqa: E402
from model.sps import DraftModelDrafter  # noqa: E402
from model.stand import StandDrafter  # noqa: E402
from model.suffix.drafter import SuffixDrafter  # noqa: E402


def engine_methods(model, tokenizer, datastore_path, draft, head_path, cost_aware=False):
    vocab = model.get_output_embeddings().weight.shape[0]
    # Under cost-aware verification PLD drafts whole, as inference_pld --cost-aware: the verifier decides the length.
    methods = {"ar": Drafter(), "pld": PromptLookupDrafter(adaptive=not cost_aware),
               "pld-fixed10": PromptLookupDrafter(adaptive=False),
               "samd": SamDrafter(), "recycling": TokenRecyclingDrafter(vocab), "lookahead": LookaheadDrafter(),
               "pia": PiaDrafter(), "stand": StandDrafter(vocab), "suffix": SuffixDrafter()}
    if datastore_path:
        methods["rest"] = RestDrafter(Datastore.load(datastore_path, tokenizer))
    if draft is not None:
        methods["sps"] = DraftModelDrafter(draft, vocab)
        methods["sps-heuristic"] = DraftModelDrafter(draft, vocab, schedule="heuristic")
    if head_path:
        head, embedding, layers = load_head(head_path, model)
        methods["eagle3"] = Eagle3Drafter(head, embedding, layers)
        methods["samd-eagle3"] = SamDrafter(alpha=1e9, fallback=Eagle3Drafter(head, embedding, layers))
    return methods


def assistant(draft):
    """transformers' assisted generation with the defaults the seed's SpS ran, set explicitly."""
    config = draft.generation_config
    config.num_assistant_tokens, config.num_assistant_tokens_schedule = 20, "constant"
    config.assistant_confidence_threshold = 0.4
    return {"assistant_model": draft}


def hf_generate(model, prompt, max_new_tokens, stop, **kwargs):
    ids = torch.tensor([prompt], device=model.device)
    start = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=sorted(stop), pad_token_id=sorted(stop)[0], **kwargs)
    return out[0, len(prompt):].tolist(), time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", default="local_model/SmolLM2-135M-Instruct")
    parser.add_argument("--question-file", default="data/demo/question.jsonl")
    parser.add_argument("--question-begin", type=int, default=0)
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--methods", nargs="*", default=None, help="subset of: ar pld pld-fixed10 samd recycling "
                                                                  "lookahead pia stand suffix rest sps sps-heuristic eagle3 samd-eagle3 "
                                                                  "hf hf-pld hf-sps")
    parser.add_argument("--datastore-path", default=None, help="REST datastore (REST is skipped without one)")
    parser.add_argument("--drafter-path", default=None, help="SpS draft model (sps and hf-sps are skipped without one)")
    parser.add_argument("--drafter-dtype", default=None, help="the draft's dtype (default: --dtype)")
    parser.add_argument("--ea-model-path", default=None, help="EAGLE-3 head (eagle3, samd-eagle3 skipped without)")
    parser.add_argument("--cost-aware", choices=["off", "on", "both"], default="off",
                        help="verify whole drafts (off), with cost-aware verification (on, rows named <method>+ca), "
                             "or both side by side")
    parser.add_argument("--cost-profile-contexts", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--json-out", default=None)
    sweep = parser.add_argument_group("batch-size sweep (scripts/batch_sweep.py): every method at each batch size, "
                                      "through the harness's loop, answer files under --out-dir")
    sweep.add_argument("--batch-sizes", type=int, nargs="+", default=None, metavar="B")
    sweep.add_argument("--paradigm", choices=["bon", "multi-round"], default="bon")
    sweep.add_argument("--bon-n", type=int, default=8)
    sweep.add_argument("--temperature", type=float, default=0.0)
    sweep.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    sweep.add_argument("--out-dir", default="bench_out/batch-sweep")
    sweep.add_argument("--prefix", default="sweep", help="answer files are <out-dir>/b<B>/<prefix>-<method>.jsonl")
    sweep.add_argument("--lockstep", action="store_true",
                       help="the runs take turns one engine step at a time (evaluation.interleaved --lockstep)")
    sweep.add_argument("--continuous-batching", action="store_true",
                       help="at B > 1, a Best-of-N sample that finishes hands its row to the next at once")
    args = parser.parse_args()
    if args.batch_sizes:
        if min(args.batch_sizes) < 1:
            parser.error("--batch-sizes must be positive")
        if args.continuous_batching and args.paradigm != "bon":
            parser.error("--continuous-batching refills the rows of Best-of-N batches: use --paradigm bon")
        import batch_sweep
        from evaluation.run.cli import run_reporting
        run_reporting(lambda: batch_sweep.run(args))
        return

    model, tokenizer, device = load_model(args.model_path, args.dtype, "auto")
    engine = SpeculativeEngine(model)
    stop = paradigms.stop_tokens(tokenizer, model.generation_config)
    draft = load_draft_model(args.drafter_path, model, tokenizer, args.model_path, args.drafter_dtype) \
        if args.drafter_path else None
    drafters = engine_methods(model, tokenizer, args.datastore_path, draft, args.ea_model_path)
    hf_kwargs = {"hf": {}, "hf-pld": {"prompt_lookup_num_tokens": 10}}
    if draft is not None:
        hf_kwargs["hf-sps"] = assistant(draft)
    names = args.methods or list(drafters) + list(hf_kwargs)
    unknown = [name for name in names if name not in drafters and name not in hf_kwargs]
    if unknown:
        parser.error(f"unknown or unavailable methods {unknown} (REST needs --datastore-path, SpS --drafter-path, "
                     f"EAGLE-3 --ea-model-path)")
    engines = {name: engine for name in drafters}
    if args.cost_aware != "off":
        # Each +ca row has its own drafter and its own acceptance estimate; all share one measured profile.
        bound = max(((engine.max_tree_nodes if d.max_draft_nodes() is None else d.max_draft_nodes())
                     for n, d in drafters.items() if n in names),
                    default=0)
        max_width = min(engine.max_tree_nodes + 1, max(DENSE_WIDTHS, 2 * (bound + 1)))
        start = time.perf_counter()
        profile = ForwardCostProfile.measure(engine, max_width, args.cost_profile_contexts)
        print(f"forward cost profile ({time.perf_counter() - start:.1f} s): {json.dumps(profile.to_dict())}",
              file=sys.stderr, flush=True)
        aware = engine_methods(model, tokenizer, args.datastore_path, draft, args.ea_model_path, cost_aware=True)
        plain_names, names = names, []
        for name in plain_names:
            if args.cost_aware == "both" or name not in drafters or name == "ar":
                names.append(name)
            if name in drafters and name != "ar":   # AR verifies no draft: cost-aware AR is AR
                drafters[f"{name}+ca"] = aware[name]
                engines[f"{name}+ca"] = SpeculativeEngine(model, cost_aware=CostAwareVerifier(profile))
                names.append(f"{name}+ca")
    totals = defaultdict(lambda: defaultdict(float))   # (method, round) -> sums
    mismatches = defaultdict(int)
    per_question = defaultdict(list)                    # (method, round) -> [(tokens, seconds)] in question order
    questions = load_questions(args.question_file, args.question_begin, args.question_begin + args.questions)

    # Warm-up: one short generation per path, so no method pays first-call costs.
    warm = paradigms.encode_prompt(tokenizer, paradigms.turn_messages(questions[0], "single", 0, None))
    for name, d in drafters.items():
        engines[name].generate(warm, d, 16, SamplingConfig(), stop_tokens=stop)
        d.reset()
        if engines[name].cost_aware is not None:
            engines[name].cost_aware.reset()
    for kwargs in hf_kwargs.values():
        hf_generate(model, warm, 16, stop, **kwargs)

    for qi, question in enumerate(questions):
        previous = None
        reference = {}
        prompts = []
        for r in range(args.rounds):
            prompt = paradigms.encode_prompt(tokenizer, paradigms.turn_messages(question, "multi_round", r, previous))
            gen = engine.generate(prompt, Drafter(), args.max_new_tokens, SamplingConfig(), stop_tokens=stop)
            reference[r] = gen.tokens
            prompts.append(prompt)
            previous = tokenizer.decode(gen.tokens[:-1] if gen.stopped else gen.tokens, skip_special_tokens=True)
        for name in names:
            if name in drafters:
                drafters[name].reset()   # state lives across the rounds of one question (SAM's scope)
            for r, prompt in enumerate(prompts):
                t = totals[(name, r)]
                if name in drafters:
                    start = time.perf_counter()
                    gen = engines[name].generate(prompt, drafters[name], args.max_new_tokens, SamplingConfig(),
                                                 stop_tokens=stop)
                    seconds = time.perf_counter() - start
                    tokens = gen.tokens
                    t["steps"] += len(gen.steps)
                    t["draft"] += sum(s.draft_seconds for s in gen.steps)
                    t["verify"] += sum(s.verify_seconds for s in gen.steps)
                else:
                    tokens, seconds = hf_generate(model, prompt, args.max_new_tokens, stop, **hf_kwargs[name])
                t["tokens"] += len(tokens)
                t["seconds"] += seconds
                per_question[(name, r)].append((len(tokens), seconds))
                mismatches[name] += tokens != reference[r]
        print(f"question {qi + 1}/{len(questions)} done", file=sys.stderr, flush=True)

    report(names, totals, mismatches, per_question, args)


def interval(per_question, name, rs):
    """95% paired-bootstrap interval of the speedup over AR, questions resampled (rounds of one question together)."""
    def sums(method):
        rows = [per_question[(method, r)] for r in rs]
        return [sum(row[q][0] for row in rows) for q in range(len(rows[0]))], \
            [sum(row[q][1] for row in rows) for q in range(len(rows[0]))]
    return speedup_interval(*sums(name), *sums("ar"))


def report(names, totals, mismatches, per_question, args):
    rounds = sorted({r for (_, r) in totals})

    def rate(name, rs):
        tok = sum(totals[(name, r)]["tokens"] for r in rs)
        return tok / sum(totals[(name, r)]["seconds"] for r in rs), tok

    rows, summary = [], {}
    for name in names:
        cells = [name]
        entry = {}
        for rs, label in [([r], f"round {r + 1}") for r in rounds] + [(rounds, "overall")]:
            tps, tok = rate(name, rs)
            speedup = tps / rate("ar", rs)[0] if "ar" in names else float("nan")
            steps = sum(totals[(name, r)]["steps"] for r in rs)
            draft = sum(totals[(name, r)]["draft"] for r in rs)
            verify = sum(totals[(name, r)]["verify"] for r in rs)
            mat = tok / steps if steps else None
            share = draft / (draft + verify) if steps else None
            ci = interval(per_question, name, rs) if "ar" in names else None
            entry[label] = {"tokens_per_s": tps, "speedup": speedup, "speedup_95ci": ci, "mat": mat,
                            "drafting_share": share}
            cells += [f"{tps:.1f}", f"{speedup:.2f}x" + ("" if ci is None else f" [{ci[0]:.2f}, {ci[1]:.2f}]"),
                      "-" if mat is None else f"{mat:.2f}", "-" if share is None else f"{100 * share:.1f}%"]
        cells.append(f"{int(mismatches[name])}")
        rows.append(cells)
        summary[name] = entry
    header = ["Method"]
    for label in [f"round {r + 1}" for r in rounds] + ["overall"]:
        header += [f"tok/s {label}", f"speedup {label}", f"MAT {label}", f"draft share {label}"]
    header.append("turns != AR")
    print(f"\nmodel {args.model_path}, {args.dtype}, {args.questions} questions x {len(rounds)} rounds, "
          f"max-new-tokens {args.max_new_tokens}, greedy; MAT counts the bonus token (AR = 1.00); speedups over "
          f"our AR with their 95% paired-bootstrap interval over questions; +ca: cost-aware verification\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    for pld in ("pld", "pld+ca"):
        if pld in summary and "hf-pld" in summary:
            ours, theirs = summary[pld]["overall"]["tokens_per_s"], summary["hf-pld"]["overall"]["tokens_per_s"]
            print(f"\nour {pld} / transformers PLD tokens/s: {ours / theirs:.2f}x")
    if "pld" in summary and "hf" in summary:
        r1 = summary["pld"]["round 1"]["tokens_per_s"] / summary["hf"]["round 1"]["tokens_per_s"]
        print(f"our PLD / transformers plain generate, round 1: {r1:.2f}x")
    if "sps" in summary and "hf-sps" in summary:
        ours, theirs = summary["sps"]["overall"]["tokens_per_s"], summary["hf-sps"]["overall"]["tokens_per_s"]
        print(f"our SpS / transformers assisted generation tokens/s: {ours / theirs:.2f}x")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
