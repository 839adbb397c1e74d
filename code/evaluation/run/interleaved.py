"""Several methods measured under the same conditions: one process, one model, interleaved per question.

Methods run one after another when each has its own process (as the launchers do), so a burst of load during one
run becomes that method's speedup or slowdown. Here every question is answered by each method in turn (the
baseline first), so a burst hits all of them alike. Each method still writes its own answer file, step log and
configuration, exactly as its `inference_<method>` CLI would (same flags, same checks, resumable), so speed.py,
compare.py and plot.py read them unchanged.

    python -m evaluation.interleaved --model-id-prefix TAG --method baseline --method pld \\
        --method "rest --datastore-path X.idx" --method "samd-eagle3=samd --tree_method eagle3 --tree_model_path H" \\
        --model-path MODEL --question-file Q.jsonl --think-twice [any flag of the shared loop]

A --method is "[NAME=]MODULE [FLAGS]": MODULE names evaluation/inference_MODULE.py, NAME (default MODULE) the
answer file `<prefix>-<NAME>.jsonl`; FLAGS are that method's own. Every other flag is shared by all methods.

With --lockstep the runs take turns one engine step at a time instead of one question at a time (one thread per
run, a baton passed after every batch step; evaluation/run/lockstep.py): drift in the machine's speed then hits every
method within a fraction of a second. Methods that read the target's hidden states (EAGLE-3) are refused there:
their capture hooks sit on the shared model for a whole generation.
"""
from __future__ import annotations

import importlib
import math
import os
import shlex
import sys

from evaluation.run.args import Parser, build_parser, finalize
from evaluation.run.cli import run_reporting
from evaluation.run.lockstep import Lockstep
from model.errors import UserError

SHARED = ("model_path", "dtype", "device", "num_gpus_per_model", "question_file", "question_begin", "question_end",
          "paradigm", "num_choices")


def parse_method(spec: str, common: list[str], prefix: str):
    words = shlex.split(spec)
    if not words:
        raise UserError("--method needs a method name")
    name, _, module_name = words[0].rpartition("=")
    name = name or module_name
    try:
        module = importlib.import_module(f"evaluation.inference_{module_name}")
    except ModuleNotFoundError:
        raise UserError(f"--method {spec!r}: no method {module_name!r} (evaluation/inference_{module_name}.py)") \
            from None
    parser = build_parser(module_name)
    if hasattr(module, "add_args"):
        module.add_args(parser)
    args = parser.parse_args(common + words[1:] + ["--model-id", f"{prefix}-{name}"])
    finalize(args, module_name)
    if hasattr(module, "check_args"):
        module.check_args(args)
    return name, module, args


def main(argv=None) -> None:
    cli = Parser(prog="python -m evaluation.interleaved", description=__doc__.splitlines()[0])
    cli.add_argument("--method", action="append", required=True, metavar='"[NAME=]MODULE [FLAGS]"')
    cli.add_argument("--model-id-prefix", required=True, help="answer files are <prefix>-<NAME>.jsonl")
    cli.add_argument("--lockstep", action="store_true",
                     help="the runs take turns one engine step at a time (not one question at a time)")
    known, common = cli.parse_known_args(argv)
    run_reporting(lambda: run(known.method, common, known.model_id_prefix, lockstep=known.lockstep))


def run(specs: list[str], common: list[str], prefix: str, batch_sizes: list[int] | None = None,
        out_dir: str | None = None, lockstep: bool = False, continuous: bool = False) -> list[tuple[int, str, str]]:
    """Answer the questions with every method, interleaved per question group (with `lockstep`, per engine step);
    with `batch_sizes`, every method at every batch size (answer files `<out_dir>/b<B>/<prefix>-<NAME>.jsonl`),
    interleaved as well, with `continuous` batching at B > 1. Returns (batch size, name, answer file) per run."""
    if batch_sizes:
        specs = [f"{spec} --batch-size {b}{' --continuous-batching' if continuous and b > 1 else ''} --answer-file "
                 + shlex.quote(os.path.join(out_dir, f"b{b}", f"{prefix}-{spec_name(spec)}.jsonl"))
                 for b in batch_sizes for spec in specs]
        for b in batch_sizes:
            os.makedirs(os.path.join(out_dir, f"b{b}"), exist_ok=True)
    runs = [parse_method(spec, common, prefix) for spec in specs]
    if batch_sizes:   # names repeat across batch sizes: one run per (B, name)
        runs = [(f"{name}@b{args.batch_size}", module, args) for name, module, args in runs]
    names = [name for name, _, _ in runs]
    if len(set(names)) < len(names):
        raise UserError(f"two --method entries share a name: {names}; name them NAME=MODULE")
    first = runs[0][2]
    if first.num_gpus_total > first.num_gpus_per_model or first.num_replicas > 1:
        raise UserError("interleaved methods share one model in one process: run without --num-gpus-total above "
                        "--num-gpus-per-model and without --num-replicas")
    for name, _, args in runs[1:]:
        for key in SHARED:
            if getattr(args, key) != getattr(first, key):
                raise UserError(f"--method {name} sets --{key.replace('_', '-')} differently from the others; "
                                "interleaved methods share the model and the questions")

    from tqdm import tqdm

    from evaluation.run.loop import end_session, measure_cost_profile, open_run, start_session
    from evaluation.data.questions import load_questions
    from model.engine.loading import load_model

    questions = load_questions(first.question_file, first.question_begin, first.question_end)
    model, tokenizer, device = load_model(first.model_path, first.dtype, first.device, first.num_gpus_per_model)
    opened = [(name, *open_run(args, module.make_drafter, model, tokenizer, device)) for name, module, args in runs]
    if lockstep:
        hooked = [name for name, _, runner in opened if runner.drafter.hidden_layers]
        if hooked:
            raise UserError(f"--lockstep: {', '.join(hooked)} read the target's hidden states through hooks on the "
                            "shared model; interleave them per question (without --lockstep)")
    todo = [q for q in questions if any(q["question_id"] not in store.done for _, store, _ in opened)]
    done = [(runner.batch_size, name, store.answer_file) for name, store, runner in opened]
    if not todo:
        print(f"all {len(questions)} questions already answered by every method")
        return done
    # One forward-cost profile per batch size and engine mode (its settings) for all (same model, dtype and
    # device), up to the widest method's need.
    def profile_of(runner) -> tuple:
        return runner.batch_size, repr(runner.engine.describe_mode())

    profiles = {}
    for name, store, runner in opened:
        key = profile_of(runner)
        if key not in profiles:
            profiles[key] = measure_cost_profile(runner.engine, [r.drafter for _, _, r in opened
                                                                 if profile_of(r) == key], runner.args)
        print(f"== {name}: warming up", file=sys.stderr, flush=True)
        start_session(store, runner, todo[0], profiles[key])
    # Questions go in chunks every run can answer in whole groups (a multi-round group at batch B is B questions).
    sizes = [runner.group_size() for _, _, runner in opened]
    chunk = math.lcm(*sizes)
    bar = tqdm(total=len(todo), desc=f"{len(opened)} runs, interleaved", unit="q", dynamic_ncols=True)
    for i in range(0, len(todo), chunk):
        part = todo[i:i + chunk]
        jobs = [(runner.engine, lambda store=store, runner=runner, size=size: _answer(store, runner, part, size))
                for (_, store, runner), size in zip(opened, sizes)]
        if lockstep:
            Lockstep().run(jobs)
        else:
            for _, job in jobs:
                job()
        bar.update(len(part))
    bar.close()
    for name, store, runner in opened:
        end_session(store, runner)
        print(f"{name}: {store.answer_file}")
    return done


def _answer(store, runner, questions: list[dict], size: int) -> None:
    """One run's answers to these questions (those it has not answered yet), `size` questions per group."""
    left = [q for q in questions if q["question_id"] not in store.done]
    for j in range(0, len(left), size):
        for answer, steps in runner.answer_group(left[j:j + size]):
            store.write(answer, steps)


def spec_name(spec: str) -> str:
    """The NAME of a "[NAME=]MODULE [FLAGS]" method spec."""
    words = shlex.split(spec)
    name, _, module = words[0].rpartition("=") if words else ("", "", "")
    return name or module
