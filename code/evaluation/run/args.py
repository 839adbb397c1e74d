"""Command-line flags shared by every `inference_<method>` CLI (the seed's names, kept so its launch lines work)."""
from __future__ import annotations

import argparse
import os
import re

from model.errors import UserError

SCOPES = ("sequence", "question", "global")


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line and exit code 2 (its default), without the usage dump."""

    def error(self, message):
        self.exit(2, f"error: {message}\n")


def build_parser(method: str) -> Parser:
    # "resolve": a method may take over a common flag's name (EAGLE-3's --top-k is its tree's, as in the seed).
    p = Parser(prog=f"python -m evaluation.inference_{method}", conflict_handler="resolve",
               description=f"Run the {method} method over a question file through the shared test-time-scaling loop.")
    p.add_argument("--model-path", "--base-model-path", dest="model_path", required=True,
                   help="target model: a local directory or a Hugging Face hub id")
    p.add_argument("--model-id", default=None, help="name of the run; the answer file is named after it")
    p.add_argument("--bench-name", default="SpecTTS_Bench")
    p.add_argument("--question-file", default=None, help="default: data/<bench>/question[_cot].jsonl")
    p.add_argument("--question-begin", type=int, default=None)
    p.add_argument("--question-end", type=int, default=None)
    p.add_argument("--answer-file", default=None, help="default: data/<bench>/model_answer[_BON]/<model-id>.jsonl")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--num-choices", type=int, default=1)
    p.add_argument("--num-gpus-per-model", type=int, default=1)
    p.add_argument("--num-gpus-total", type=int, default=1,
                   help="GPUs in all: N / --num-gpus-per-model replicas, each a Ray task holding that many GPUs, "
                        "the questions split between them and merged into one answer file")
    p.add_argument("--num-replicas", type=int, default=1,
                   help="CPU replicas (with --device cpu), each a Ray task with its own thread pool")
    p.add_argument("--ray-address", default=None,
                   help="join this Ray cluster (its nodes must share the repository and answer folder paths); "
                        "default: start a local one")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32", "float64"])
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--use-cot-data", action="store_true", help="read data/<bench>/question_cot.jsonl")
    p.add_argument("--think-twice", action="store_true", help="multi-round thinking")
    p.add_argument("--num-rounds", type=int, default=2)
    p.add_argument("--BON", action="store_true", help="Best-of-N sampling of the same prompt")
    p.add_argument("--bon-n", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=1,
                   help="decode this many sequences together: with --BON the samples of a question, B at a time; "
                        "with --think-twice round r of B questions, then round r+1 (default 1: one at a time)")
    p.add_argument("--continuous-batching", action="store_true",
                   help="with --BON and --batch-size B < N: a sample that finishes hands its row to the next waiting "
                        "sample at once (as vLLM serves n = N), rather than the batch of B waiting for its slowest row")
    p.add_argument("--no-cross-sample", action="store_true",
                   help="in a batch, question-scope drafters (SAM, PIA) draft only from their own sample's text, "
                        "not from what concurrent samples of the same question generate")
    p.add_argument("--warmup", type=int, default=3, help="warm-up generations before measuring (not recorded)")
    p.add_argument("--warmup-tokens", type=int, default=256, help="new-token cap of each warm-up generation")
    p.add_argument("--draft-state-scope", choices=SCOPES, default=None,
                   help="how long a drafter keeps what it learned (default: the method's, as in the seed)")
    p.add_argument("--max-tree-nodes", type=int, default=128, help="cap on draft tree size")
    p.add_argument("--engine-mode", choices=["eager", "static"], default="eager",
                   help="eager (default): transformers' forward as it is, the regime of the paper and Spec-Bench; "
                        "static: fixed shapes (tree widths padded to buckets, a KV arena allocated once at its exact "
                        "size), captured in CUDA graphs on CUDA: the regime of vLLM and SGLang")
    p.add_argument("--kv-bucket", type=int, default=256, metavar="N",
                   help="static mode: attend the cache up to the next multiple of N entries (0: all of its capacity)")
    p.add_argument("--compile", action="store_true",
                   help="static mode: also torch.compile the forward (each shape compiled once, at warm-up)")
    p.add_argument("--cost-aware", action="store_true",
                   help="verify, of each draft, the part worth the target's measured forward cost (default: all of "
                        "it, as the method was published)")
    p.add_argument("--cost-profile-contexts", type=int, nargs="+", default=[256, 1024], metavar="N",
                   help="context lengths at which the forward cost t(n)/t(1) is measured before the run")
    p.add_argument("--cost-profile-repeats", type=int, default=3, help="timed forwards per width (median)")
    p.add_argument("--cost-profile-cache", default=None, metavar="DIR",
                   help="where measured forward-cost profiles are kept, one file per model, dtype, device, library "
                        "versions and profile flags: a run whose profile is there reuses it, and a run killed while "
                        "measuring continues the measurement next time (default: $SPECTTS_CACHE_DIR/cost-profiles, "
                        "else ~/.cache/spectts/cost-profiles)")
    p.add_argument("--remeasure-cost-profile", action="store_true",
                   help="measure the forward-cost profile afresh instead of taking it from the cache (the new one "
                        "replaces it there; a resumed run keeps the profile its first session recorded)")
    p.add_argument("--save-token-ids", action="store_true",
                   help="keep each turn's token ids in the answer file (`token_ids`), so `python -m "
                        "evaluation.replay` replays the exact trace")
    p.add_argument("--no-thinking-budget", action="store_true",
                   help="do not force the end of thinking past 80%% of --max-new-tokens")
    # Accepted so the seed's launch lines keep working; the engine always uses tree attention over SDPA.
    p.add_argument("--attn_implementation", default="sdpa", choices=["sdpa", "eager"], help=argparse.SUPPRESS)
    p.add_argument("--ea-model-path", default=None, help=argparse.SUPPRESS)
    return p


def finalize(args: argparse.Namespace, method: str) -> argparse.Namespace:
    """Fill the seed's defaults and reject values no run can use."""
    for flag in ("max_new_tokens", "num_choices", "num_rounds", "bon_n", "max_tree_nodes", "batch_size",
                 "num_gpus_per_model", "num_gpus_total", "num_replicas"):
        if getattr(args, flag) <= 0:
            raise UserError(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
    if args.kv_bucket < 0:
        raise UserError(f"--kv-bucket must be >= 0 (0: attend the whole cache), got {args.kv_bucket}")
    if args.engine_mode == "eager" and (args.compile or args.kv_bucket != 256):
        raise UserError("--compile and --kv-bucket are settings of --engine-mode static")
    if min(args.cost_profile_contexts) < 1 or args.cost_profile_repeats < 1:
        raise UserError("--cost-profile-contexts and --cost-profile-repeats must be positive")
    if args.cost_profile_cache is not None and os.path.exists(args.cost_profile_cache) and \
            not os.path.isdir(args.cost_profile_cache):
        raise UserError(f"--cost-profile-cache {args.cost_profile_cache} is a file, not a directory")
    if args.warmup < 0 or args.warmup_tokens <= 0:
        raise UserError("--warmup must be >= 0 and --warmup-tokens > 0")
    if args.temperature < 0:
        raise UserError(f"--temperature must be >= 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p must lie in (0, 1], got {args.top_p}")
    if args.top_k < 0:
        raise UserError(f"--top-k must be >= 0, got {args.top_k}")
    if args.think_twice and args.BON:
        raise UserError("--think-twice and --BON are two paradigms: choose one")
    if args.continuous_batching and (not args.BON or args.batch_size < 2):
        raise UserError("--continuous-batching refills the rows of a Best-of-N batch: add --BON and --batch-size 2 "
                        "or more")
    if args.num_gpus_total % args.num_gpus_per_model:
        raise UserError("--num-gpus-total must be a multiple of --num-gpus-per-model")
    gpu_replicas = args.num_gpus_total // args.num_gpus_per_model
    if gpu_replicas > 1 and args.num_replicas > 1:
        raise UserError("--num-replicas (CPU replicas) and --num-gpus-total / --num-gpus-per-model (GPU replicas) "
                        "both ask for replicas: use one of them")
    if args.num_replicas > 1 and args.device != "cpu":
        raise UserError("--num-replicas runs CPU replicas: add --device cpu (GPU replicas: --num-gpus-total N "
                        "--num-gpus-per-model M)")
    if gpu_replicas > 1 and args.device == "cpu":
        raise UserError(f"--num-gpus-total {args.num_gpus_total} / --num-gpus-per-model {args.num_gpus_per_model} "
                        "asks for GPU replicas, but --device cpu: use --num-replicas K for CPU replicas")
    if args.ray_address is not None and max(gpu_replicas, args.num_replicas) == 1:
        raise UserError("--ray-address is used only with several replicas (--num-gpus-total N --num-gpus-per-model "
                        "M with N > M, or --num-replicas K --device cpu)")
    if args.model_id is None:
        args.model_id = f"{os.path.basename(os.path.normpath(args.model_path))}-{method}"
    if args.question_file is None:
        name = "question_cot.jsonl" if args.use_cot_data else "question.jsonl"
        args.question_file = os.path.join("data", args.bench_name, name)
    if args.answer_file is None:
        folder = "model_answer_BON" if args.BON else "model_answer"
        args.answer_file = os.path.join("data", args.bench_name, folder, f"{args.model_id}.jsonl")
    if re.search(r"\.shard-\d+-of-\d+\.jsonl$", args.answer_file):
        raise UserError(f"--answer-file {args.answer_file}: names like <stem>.shard-<k>-of-<K>.jsonl are kept for "
                        "the replicas' shards; choose another name")
    args.paradigm = "multi_round" if args.think_twice else "best_of_n" if args.BON else "single"
    return args
