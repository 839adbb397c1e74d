"""The batch-size sweep of scripts/benchmark_drafters.py (`--batch-sizes`): every method at every batch size, in one
process, interleaved per question group through the harness's own loop (evaluation.interleaved), so each run writes
a normal answer file (`<out-dir>/b<B>/<prefix>-<method>.jsonl`) that speed.py, compare.py and plot.py read. Prints,
per batch size: AR's throughput and its batching gain over B = 1, and per method its batch throughput, its speedup
over AR at the same B (95% paired-bootstrap interval), MAT and per-sequence latency."""
from __future__ import annotations

import json
import sys

# name -> "[NAME=]MODULE [FLAGS]" of evaluation.interleaved; {datastore}, {drafter}, {head}: the paths given
METHOD_SPECS = {
    "ar": "ar=baseline",
    "ar-again": "ar-again=baseline",   # AR once more, last in each question's turn: the timing noise floor
    "pld": "pld",
    "samd": "samd",
    "samd-solo": "samd-solo=samd --no-cross-sample",   # SAM without cross-sample drafting
    "pia": "pia",
    "pia-solo": "pia-solo=pia --no-cross-sample",     # PIA without cross-sample drafting
    "recycling": "recycling",
    "stand": "stand",
    "stand-solo": "stand-solo=stand --no-cross-sample",   # STAND without cross-sample drafting
    "lookahead": "lookahead",
    "suffix": "suffix",
    "suffix-live": "suffix-live=suffix --live-responses",   # responses enter the global tree as generated (vLLM)
    "suffix-question": "suffix-question=suffix --draft-state-scope question",   # the question's responses only
    "rest": "rest --datastore-path {datastore}",
    "sps": "sps --drafter-path {drafter}",
    "eagle3": "eagle3 --ea-model-path {head}",
    "samd-eagle3": "samd-eagle3=samd --tree_method eagle3 --tree_model_path {head}",
}
NEEDS = {"rest": "datastore", "sps": "drafter", "eagle3": "head", "samd-eagle3": "head"}
FLAGS = {"datastore": "datastore-path", "drafter": "drafter-path", "head": "ea-model-path"}


def specs(names: list[str], paths: dict, cost_aware: str) -> list[str]:
    out = []
    for name in names:
        need = NEEDS.get(name)
        if need and not paths.get(need):
            print(f"skipping {name}: no --{FLAGS[need]}", file=sys.stderr)
            continue
        spec = METHOD_SPECS[name].format(**paths)
        plain = name in ("ar", "ar-again")   # AR verifies no draft: cost-aware AR is AR
        if cost_aware in ("off", "both") or plain:
            out.append(spec)
        if cost_aware in ("on", "both") and not plain:
            label, _, rest = spec.partition(" ")
            base, _, module = label.rpartition("=")
            out.append(" ".join(filter(None, [f"{base or module}+ca={module}", rest, "--cost-aware"])))
    return out


def common_flags(args) -> list[str]:
    flags = ["--model-path", args.model_path, "--question-file", args.question_file,
             "--question-begin", str(args.question_begin), "--question-end", str(args.question_begin + args.questions),
             "--max-new-tokens", str(args.max_new_tokens), "--dtype", args.dtype, "--device", args.device,
             "--warmup", "1", "--warmup-tokens", "16", "--cost-profile-contexts", *map(str, args.cost_profile_contexts),
             "--temperature", str(args.temperature)]
    if args.paradigm == "bon":
        flags += ["--BON", "--bon-n", str(args.bon_n)]
    else:
        flags += ["--think-twice", "--num-rounds", str(args.rounds)]
    return flags


def run(args) -> None:
    from evaluation.run.interleaved import run as interleaved
    paths = {"datastore": args.datastore_path, "drafter": args.drafter_path, "head": args.ea_model_path}
    names = args.methods or ["ar", "pld", "samd", "samd-solo", "pia", "pia-solo", "recycling", "lookahead"]
    unknown = sorted(set(names) - set(METHOD_SPECS))
    if unknown:
        from model.errors import UserError
        raise UserError(f"unknown --methods {unknown}; known: {' '.join(METHOD_SPECS)}")
    if "ar" not in names:
        names = ["ar"] + names
    if "ar-again" in names:   # last: between it and AR every method ran, so their gap is the machine's drift
        names = [n for n in names if n != "ar-again"] + ["ar-again"]
    runs = interleaved(specs(names, paths, args.cost_aware), common_flags(args), args.prefix, args.batch_sizes,
                       args.out_dir, lockstep=args.lockstep, continuous=args.continuous_batching)
    files = {(size, name.rsplit("@b", 1)[0]): path for size, name, path in runs}
    from evaluation.reports import batch
    summary = batch.sweep_table(files, print_table=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(summary, f, indent=2)
