"""Replay recorded traces through a model-free drafter: the accepted lengths a live run would get, without the model.

For a drafter whose proposals depend only on the tokens (PLD, SAM, PIA, REST), what the engine accepts on a recorded
trace is known without the target: each step follows the draft's children that hold the recorded next tokens (the
target's argmax in a greedy trace; at temperature > 0, the draw the point-mass rule follows, which is the recorded
token), and the next recorded token is the bonus. Replaying a trace step by step (propose, accept, observe, in the
order and the batches the live run ran the turns, with its drafter-state scope and thinking budget) therefore gives
the live run's accepted lengths exactly; tests check it step for step against live runs, batched ones included.

    python -m evaluation.replay --answer-file A.jsonl --model-path TOKENIZER --method pld [method flags]
        [--question-file Q.jsonl] [--cost-profile FILE] [--json-out F] [--steps-out F]
        [--batch-size B] [--batching static|continuous] [--cross-sample on|off] [--verify-accepted-only]
        [--prompt-format raw|chat] [--trace-model NAME]

Traces (evaluation/run/traces.py): an answer file of this harness (with `--save-token-ids` its turns' exact ids;
else the text is re-tokenized, and replay says so), or a JSONL of generations: {"prompt", "response"} pairs (with
optional `question_id` and `sample`: a question's samples replay as Best-of-N), vLLM / OpenAI-style lines with several
outputs per prompt, lm-evaluation-harness `--log_samples` lines.
"""
from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from evaluation.run.args import SCOPES, Parser
from evaluation.run.cli import run_reporting
from evaluation.run.loop import batch_schedule, group_size, ready_drafter, tell_siblings
from evaluation.run.traces import (PROMPT_FORMATS, Trace, Turn, answer_turns, check_traces,  # noqa: F401
                                   read_config, read_jsonl, read_traces)
from model.engine.cost import cut
from model.engine.drafter import Drafter, StepFeedback
from model.engine.sampling import accept_greedy
from model.engine.tree import DraftTree
from model.errors import UserError

REPLAYABLE = ("pld", "samd", "pia", "rest", "suffix")
REFUSED = {
    "baseline": "AR drafts nothing (its MAT is 1.00 by definition)",
    "recycling": "Token Recycling drafts from the target's top-k at every verified position, which a trace does "
                 "not hold",
    "lookahead": "Lookahead drafts from the target's argmax at its Jacobi window, which a trace does not hold",
    "sps": "SpS drafts with a draft model; its acceptance needs the target's and the draft's probabilities",
    "eagle3": "EAGLE-3 drafts from the target's hidden states, which a trace does not hold",
    "stand": "STAND drafts from the target's next-token distributions, which a trace does not hold",
}
# Context-length buckets of the report (tokens of prompt + output before the step).
BUCKETS = (0, 512, 1024, 2048, 4096, 8192, 16384)


def parse_args(argv):
    p = Parser(prog="python -m evaluation.replay", conflict_handler="resolve",
               description=__doc__.splitlines()[0])
    p.add_argument("--answer-file", "--traces", dest="answer_file", required=True,
                   help="an answer file of this harness, or a JSONL of generations: {prompt, response} pairs, vLLM "
                        "{prompt, outputs}, OpenAI-style {prompt, choices}, lm-eval --log_samples lines")
    p.add_argument("--model-path", "--tokenizer-path", dest="model_path", default=None,
                   help="the target model (only its tokenizer is loaded); default: the tokenizer `make tokenizers` "
                        "built for the model the traces' `model` field names")
    p.add_argument("--trace-model", default=None,
                   help="replay only the lines whose `model` field is this (a file may mix models' traces)")
    p.add_argument("--prompt-format", choices=PROMPT_FORMATS, default=None,
                   help="raw: the prompt is the text the model continued, tokenized as it is; chat: the prompt is "
                        "the user message of the chat template. Default: chat for {prompt, response} pairs and "
                        "message lists, raw for vLLM, OpenAI-style and lm-eval prompts")
    p.add_argument("--method", required=True, help=f"one of {', '.join(REPLAYABLE)}")
    p.add_argument("--question-file", default=None, help="default: the one the recorded run's configuration names")
    p.add_argument("--draft-state-scope", choices=SCOPES, default=None,
                   help="default: the recorded run's when it ran this method, else the method's own")
    p.add_argument("--max-tree-nodes", type=int, default=None, help="default: the recorded run's, else 128")
    p.add_argument("--cost-profile", default=None,
                   help="a forward-cost profile for the speedup estimate: a run configuration, its cost_profile, or "
                        "scripts/gpu_check.py's --json-out (FILE:SHAPE); default: the recorded run's")
    p.add_argument("--batch-size", type=int, default=None,
                   help="rows decoded together, batched as the live loop batches them; default: the recorded run's")
    p.add_argument("--batching", choices=["static", "continuous"], default=None,
                   help="Best-of-N at batch > 1: continuous gives a finished sample's row to the next at once; "
                        "default: the recorded run's")
    p.add_argument("--cross-sample", choices=["on", "off"], default=None,
                   help="whether question-scope drafters of concurrent samples draft from each other; default: the "
                        "recorded run's (on)")
    p.add_argument("--verify-accepted-only", action="store_true",
                   help="each row verifies only the draft nodes it will accept: what a verifier that knew the "
                        "outcome would verify (a reference for cost-aware verification, not a method)")
    p.add_argument("--json-out", default=None, help="write the summary as JSON")
    p.add_argument("--steps-out", default=None, help="write the replayed step log (the live format)")
    p.add_argument("--cost-aware", action="store_true", help=argparse.SUPPRESS)
    known, rest = p.parse_known_args(argv)
    if known.method in REFUSED:
        raise UserError(f"--method {known.method} cannot be replayed: {REFUSED[known.method]}")
    if known.method not in REPLAYABLE:
        raise UserError(f"--method {known.method}: replay knows {', '.join(REPLAYABLE)}")
    if known.cost_aware:
        raise UserError("--cost-aware cannot be replayed: it decides from measured verification times")
    module = importlib.import_module(f"evaluation.inference_{known.method}")
    if hasattr(module, "add_args"):
        module.add_args(p)
    args = p.parse_args(argv)
    if hasattr(module, "check_args"):
        module.check_args(args)
    if getattr(args, "tree_method", None):
        raise UserError(f"--tree_method {args.tree_method} cannot be replayed: its fallback drafter needs the target")
    if args.max_tree_nodes is not None and args.max_tree_nodes <= 0:
        raise UserError(f"--max-tree-nodes must be a positive integer, got {args.max_tree_nodes}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer, got {args.batch_size}")
    return args, module


# ---------------------------------------------------------------------------------------------- replaying

def greedy_path(tree: DraftTree, truth: list[int]) -> tuple[list[int], int]:
    """The engine's own greedy rule, the recorded continuation standing in for the target's argmax: after the root
    it is truth[0], after a node at depth d truth[d] (-1 past the trace's end)."""
    argmax = [truth[0]] + [truth[d] if d < len(truth) else -1 for d in tree.depths]
    return accept_greedy(tree.tokens, tree.parents, argmax)


def recorded_settings(drafter, config: dict, scope: str | None = None, max_nodes: int | None = None):
    """(state scope, tree cap) as the recorded run had them: the run's scope when it ran this method, else the
    method's own; the run's cap, else the CLI default. Explicit values win."""
    if scope is None:
        scope = config.get("draft_state_scope") if config.get("method") == drafter.name else None
    return scope or drafter.default_scope, max_nodes or config.get("max_tree_nodes") or 128


@dataclass
class Batching:
    """How the recorded turns are batched, as the live loop batches them (evaluation/run/loop.py)."""
    size: int = 1
    continuous: bool = False      # Best-of-N: a finished sample's row goes to the next at once
    cross_sample: bool = True     # question-scope drafters of one question's concurrent rows draft from each other
    paradigm: str = "single"      # "best_of_n" batches a question's samples; the others batch questions, round by round
    num_choices: int = 1


@dataclass
class _Row:
    """A turn being replayed in a batch row."""
    turn: Turn
    drafter: object
    b: int
    done: int = 0
    context: list = field(default_factory=list)
    steps: list = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.done >= len(self.turn.tokens)


def batches(turns: list[Turn], batching: Batching):
    """The turns as the live loop's batches of (turn, row), in the order they ran: its question groups and its batch
    schedule (row None where continuous batching gives a sample the row of the first to finish)."""
    chains: dict = {}        # (question, choice) -> its turns, in order
    for turn in turns:
        chains.setdefault((turn.question_id, turn.choice), []).append(turn)
    questions: dict = {}     # question -> its chains
    for key in chains:
        questions.setdefault(key[0], []).append(key)
    groups = list(questions.values())
    per_group = group_size(batching.paradigm, batching.size, batching.num_choices)
    for g in range(0, len(groups), per_group):
        keys = [key for group in groups[g:g + per_group] for key in group]
        count = len(chains[keys[0]])
        uneven = next((key for key in keys if len(chains[key]) != count), None)
        if uneven is not None:
            raise UserError(f"question {uneven[0]!r}, choice {uneven[1]}: {len(chains[uneven])} turns where others "
                            f"have {count} (a run of this harness gives every choice as many)")
        for batch in batch_schedule(keys, count, batching.paradigm, batching.size, batching.continuous):
            yield [(chains[key][t], row) for key, t, row in batch]


def replay(turns: list[Turn], drafter, scope: str, max_nodes: int, batching: Batching | None = None,
           accepted_only: bool = False) -> list[dict]:
    """Every turn through the live run's batches, each row's drafter readied at the boundaries of its scope (as the
    live loop does). `accepted_only`: each row verifies only the draft nodes it will accept (what a verifier that
    knew the outcome would verify): no verified node is wasted, a reference for cost-aware verification."""
    batching = batching or Batching()
    slots = [drafter] + [drafter.fork(share_memory=scope == "global") for _ in range(batching.size - 1)]
    for d in slots:
        d.reset()
    owner = [None] * batching.size
    lines: dict[int, list[dict]] = {}   # id(turn) -> its step lines

    def take_row(turn: Turn, b: int) -> None:
        key = (turn.question_id, turn.choice)
        ready_drafter(slots[b], scope, owner[b], key)
        owner[b] = key

    for n, batch in enumerate(batches(turns, batching)):
        n_rows = min(batching.size, len(batch)) if batching.continuous else len(batch)
        rows = list(range(n_rows)) if batching.continuous else [b for _, b in batch]
        for i, b in enumerate(rows):
            take_row(batch[i][0], b)
        drafters = [slots[b] for b in rows]
        questions = [turn.question_id for turn, _ in batch[:n_rows]]
        tell_siblings(drafters, questions, batching.cross_sample and scope == "question")
        for row in replay_batch([turn for turn, _ in batch], drafters, rows, take_row, max_nodes, accepted_only):
            lines[id(row.turn)] = [
                {"question_id": row.turn.question_id, "category": row.turn.category, "choice": row.turn.choice,
                 "turn": row.turn.turn, "step": i, **step, "verify_seconds": None,
                 **({"batch_id": f"replay-{n}", "batch_row": row.b} if batching.size > 1 else {})}
                for i, step in enumerate(row.steps)]
    if batching.size == 1:
        for step in (s for steps in lines.values() for s in steps):
            for name in ("batch_step", "batch_rows", "batch_width"):
                del step[name]
    return [s for turn in turns for s in lines[id(turn)]]   # in the answer file's order, as the live log


def replay_batch(turns: list[Turn], drafters: list, rows: list[int], take_row, max_nodes: int,
                 accepted_only: bool) -> list[_Row]:
    """One batch, step by step as SpeculativeEngine.generate_batch runs it: every row proposes (a forced phrase past
    the thinking budget's trigger), each accepts what its trace continues with, every row observes in row order, and
    a row whose turn ended takes the next waiting turn (fewer drafters than turns: continuous batching) or leaves."""
    waiting = deque(range(len(turns)))
    replayed: list[_Row] = [None] * len(turns)

    def join(b: int) -> _Row:
        i = waiting.popleft()
        turn = turns[i]
        drafters[b].begin_sequence(list(turn.prompt))
        replayed[i] = _Row(turn, drafters[b], rows[b], 0, list(turn.prompt))
        return replayed[i]

    live = [join(b) for b in range(len(drafters))]   # (their rows were readied, and told their siblings, before)
    live = [row for row in live if not row.finished]
    step = 0
    while live:
        # Past the thinking budget's trigger a row's phrase is forced; every other row proposes.
        trees, proposing = _propose([row for row in live if row.done != row.turn.forced_at], max_nodes)
        trees = iter(trees)
        results, width = [], 1
        for row in live:
            tokens, done, forced_at = row.turn.tokens, row.done, row.turn.forced_at
            if done == forced_at:
                phrase = tokens[done: done + row.turn.forced]
                results.append((None, [], phrase, 0))
                width = max(width, len(phrase))
                continue
            tree = next(trees)
            # The engine never steps past the budget's trigger or the end of the trace.
            end = forced_at if forced_at is not None and done < forced_at else len(tokens)
            path, bonus = greedy_path(tree, tokens[done:end])
            if accepted_only:
                tree, path = cut(tree, path), list(range(len(path)))
                tree.validate(max_nodes, 1 << 62)
            emitted = ([tree.tokens[i] for i in path] + [bonus])[:end - done]
            size = len(tree.tokens)
            results.append((tree, path[: len(emitted)], emitted, size))
            width = max(width, 1 + size)
        for row, (tree, path, emitted, size) in zip(live, results):
            row.context.extend(emitted)
            row.done += len(emitted)
            start = time.perf_counter()
            if tree is None:
                row.drafter.observe(StepFeedback(list(emitted), None, [], [], None))
                seconds = 0.0
            else:
                row.drafter.observe(StepFeedback(emitted, tree, path, [row.context[-len(emitted) - 1]] + tree.tokens,
                                                 None))
                # Drafting time as the live log counts it: propose + observe (the acceptance is the target's part).
                seconds = proposing + time.perf_counter() - start
            row.steps.append({"draft_size": size, "proposed_size": size, "accepted": len(emitted),
                              "draft_source": tree.source if tree is not None else "forced", "draft_seconds": seconds,
                              "context_length": len(row.context), "batch_step": step, "batch_rows": len(live),
                              "batch_width": width})
        if any(row.finished for row in live):
            for b, row in enumerate(live):
                if row.finished:
                    row.drafter.end_sequence()
                    if waiting:   # the next sample takes the row, its drafter readied as its scope says
                        take_row(turns[waiting[0]], rows[b])
                        live[b] = join(b)
            live = [row for row in live if not row.finished]
        step += 1
    return replayed


def _propose(rows: list[_Row], max_nodes: int) -> tuple[list[DraftTree], float]:
    """Each row's validated proposal, and each row's share of the proposing seconds; rows whose drafters are distinct
    objects of one class are asked together, as the engine asks them (`Drafter.propose_rows`)."""
    if not rows:
        return [], 0.0
    start = time.perf_counter()
    if len(rows) == 1:
        trees = [rows[0].drafter.propose(rows[0].context, max_nodes)]
    else:
        drafters = [row.drafter for row in rows]
        if len({type(d) for d in drafters}) == 1 and len({id(d) for d in drafters}) == len(rows):
            trees = drafters[0].propose_rows(drafters, [row.context for row in rows], max_nodes)
        else:
            trees = [d.propose(row.context, max_nodes) for d, row in zip(drafters, rows)]
    seconds = (time.perf_counter() - start) / len(rows)
    for i, tree in enumerate(trees):
        if tree is None:
            trees[i] = tree = DraftTree([], [], source="none")
        tree.validate(max_nodes, 1 << 62)
        if tree.probs is not None:
            raise UserError(f"{rows[0].drafter.name} drafts with probabilities: its acceptance needs the target's law")
    return trees, seconds


# ---------------------------------------------------------------------------------------------- the report

def load_profile(path: str | None, config: dict):
    from model.engine.profile import ForwardCostProfile
    data = config.get("cost_profile")
    if path is not None:
        path, _, shape = path.partition(":")   # gpu_check.json:qwen3-8b picks one measured shape
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read --cost-profile {path}: {exc}") from None
        if isinstance(data, dict) and isinstance(data.get("measurements"), dict):   # scripts/gpu_check.py's report
            shapes = data["measurements"]
            if not shape and len(shapes) == 1:
                shape = next(iter(shapes))
            if shape not in shapes:
                raise UserError(f"--cost-profile {path}: name one of its shapes as {path}:SHAPE "
                                f"({', '.join(shapes) or 'none measured'})")
            data = shapes[shape].get("profile")
        data = data.get("cost_profile", data) if isinstance(data, dict) else None
        if not isinstance(data, dict) or "seconds" not in data:
            raise UserError(f"--cost-profile {path} holds no forward-cost profile (widths, context_lengths, seconds)")
    return ForwardCostProfile.from_dict(data) if data else None


def mat(steps: list[dict]) -> float:
    return sum(s["accepted"] for s in steps) / max(1, len(steps))


def estimated_speedup(steps: list[dict], profile) -> float:
    """AR's time over the method's for the same tokens, from the profile: AR pays t(1) per token, the method
    t(1 + verified nodes) per step plus its drafting time (an estimate: the recorded machine's profile)."""
    ar = method = 0.0
    for s in steps:
        before = s["context_length"] - s["accepted"]
        j = min(range(len(profile.context_lengths)), key=lambda i: abs(profile.context_lengths[i] - before))
        one = profile.seconds[j][0]
        ar += s["accepted"] * one
        method += profile.ratio(1 + s["draft_size"], before) * one + s["draft_seconds"]
    return ar / method if method else float("nan")


def batch_seconds(steps: list[dict], profile) -> float:
    """The time of a batched replay's steps from the profile: each batch step one forward of its rows at its width
    (t(B, width), at the context of its longest row), plus every row's drafting time."""
    forwards: dict = {}
    for s in steps:
        key = (s["batch_id"], s["batch_step"])
        width, before, seconds = forwards.get(key, (0, 0, 0.0))
        forwards[key] = (max(width, s["batch_width"]), max(before, s["context_length"] - s["accepted"]),
                         seconds + s["draft_seconds"])
    total = 0.0
    for width, before, drafting in forwards.values():
        j = min(range(len(profile.context_lengths)), key=lambda i: abs(profile.context_lengths[i] - before))
        total += profile.ratio(width, before) * profile.seconds[j][0] + drafting
    return total


def summarize(steps: list[dict], turns: list[Turn], seconds: float, profile, kind: str,
              ar_steps: list[dict] | None = None) -> dict:
    """`ar_steps`: at batch > 1, AR's replay in the same batches (the speedup is AR's batch time over this one's,
    per group only at batch 1, where a step's cost is its own)."""
    decoding = [s for s in steps if s["draft_source"] != "forced"]
    groups = {"per turn (round or sample)": lambda s: s["turn"], "per category": lambda s: s["category"] or "-",
              "per context length": lambda s: bucket(s["context_length"] - s["accepted"]),
              "per draft source": lambda s: s["draft_source"], "per phase": phase_of(turns)}
    if ar_steps is not None:
        estimate = batch_seconds(ar_steps, profile) / batch_seconds(steps, profile) if profile else None
        profile = None
    else:
        estimate = estimated_speedup(decoding, profile) if profile else None
    summary = {"trace": kind, "turns": len(turns), "retokenized_turns": sum(t.retokenized for t in turns),
               "tokens": sum(len(t.tokens) for t in turns), "steps": len(decoding), "mat": mat(decoding),
               "draft_us_per_step": 1e6 * statistics.fmean([s["draft_seconds"] for s in decoding] or [0.0]),
               "replay_seconds": seconds, "replay_tokens_per_second": sum(len(t.tokens) for t in turns) / seconds,
               "estimated_speedup": estimate}
    for name, key in groups.items():
        split: dict = {}
        for s in decoding:
            split.setdefault(key(s), []).append(s)
        summary[name] = {str(k): {"mat": mat(v), "steps": len(v), "draft_nodes": sum(s["draft_size"] for s in v),
                                  "accepted_nodes": sum(min(s["accepted"] - 1, s["draft_size"]) for s in v),
                                  "estimated_speedup": estimated_speedup(v, profile) if profile else None}
                         for k, v in sorted(split.items(), key=lambda kv: order(kv[0]))}
    return summary


def phase_of(turns: list[Turn]):
    """A step's phase: "thinking" when it starts before its output's end-of-thinking token, "answer" after it,
    "no marker" in an output without one."""
    where = {(t.question_id, t.choice, t.turn): (len(t.prompt), t.think_end) for t in turns}

    def phase(step: dict) -> str:
        prompt, end = where[step["question_id"], step["choice"], step["turn"]]
        if end is None:
            return "no marker"
        return "thinking" if step["context_length"] - step["accepted"] - prompt < end + 1 else "answer"
    return phase


def order(key) -> tuple:
    """Turns and context buckets in numeric order, categories by name."""
    head = str(key).split("-")[0].rstrip("+")
    return (0, int(head), "") if head.isdigit() else (1, 0, str(key))


def bucket(length: int) -> str:
    lower = max(b for b in BUCKETS if b <= length)
    upper = next((b for b in BUCKETS if b > length), None)
    return f"{lower}-{upper}" if upper else f"{lower}+"


def print_summary(summary: dict, method: str) -> None:
    estimate = summary["estimated_speedup"]
    print(f"{method} replayed on {summary['turns']} turns ({summary['tokens']:,} tokens, {summary['steps']:,} steps"
          f"; {summary['retokenized_turns']} turn(s) re-tokenized from text, their ids may differ from the live "
          f"run's) in {summary['replay_seconds']:.2f} s ({summary['replay_tokens_per_second']:,.0f} tokens/s)")
    if summary.get("batch_size", 1) > 1:
        print(f"batch {summary['batch_size']} ({'continuous' if summary['continuous_batching'] else 'static'} "
              f"batching, cross-sample {'on' if summary['cross_sample'] else 'off'}); speedup over AR in the same "
              "batches")
    if summary.get("verify_accepted_only"):
        print("each row verified only the draft nodes it accepted (a reference, not a method)")
    print(f"MAT (bonus token counted) {summary['mat']:.2f}; drafter {summary['draft_us_per_step']:.1f} us per step"
          + (f"; estimated speedup {estimate:.2f}x (from a forward-cost profile, not measured)" if estimate else
             "; no forward-cost profile: no speedup estimate"))
    for name in ("per turn (round or sample)", "per category", "per context length", "per draft source",
                 "per phase"):
        cells = [f"{k}: {v['mat']:.2f}" + (f" ({v['estimated_speedup']:.2f}x est.)" if v["estimated_speedup"] else "")
                 for k, v in summary[name].items()]
        print(f"  MAT {name}: " + ", ".join(cells))
    sources = {k: v for k, v in summary["per draft source"].items() if v["draft_nodes"]}
    if sources:
        print("  draft nodes accepted / verified per source: " + ", ".join(
            f"{k}: {v['accepted_nodes']:,} / {v['draft_nodes']:,}" for k, v in sources.items()))


def recorded_batching(args, trace: Trace) -> Batching:
    """The batches of the recorded run unless told otherwise (a file of generations: batch 1; Best-of-N where a
    question has several samples, else single turns)."""
    config, paradigm = trace.config, trace.paradigm
    size = args.batch_size or config.get("batch_size") or 1
    continuous = (config.get("continuous_batching", False) and size > 1) if args.batching is None else \
        args.batching == "continuous"
    if continuous and (paradigm != "best_of_n" or size < 2):
        raise UserError("--batching continuous needs a Best-of-N trace and --batch-size of at least 2")
    cross = config.get("cross_sample", True) if args.cross_sample is None else args.cross_sample == "on"
    return Batching(size, continuous, cross, paradigm, trace.num_choices)


def trace_tokenizer(args):
    """--model-path's tokenizer, else the built tokenizer of the model the traces name."""
    from model.engine.loading import load_tokenizer
    from model.vocab.locate import tokenizer_for_model
    from evaluation.run.traces import trace_models
    path = args.model_path
    if path is None:
        models = trace_models(args.answer_file) if args.trace_model is None else [args.trace_model]
        if not models:
            raise UserError("give --model-path (the traces do not name their model)")
        path = tokenizer_for_model(models[0])
    return load_tokenizer(path)


def run(argv) -> None:
    args, module = parse_args(argv)
    check_traces(args.answer_file, args.trace_model)
    tokenizer = trace_tokenizer(args)
    trace = read_traces(args.answer_file, tokenizer, args.question_file, args.prompt_format, args.trace_model)
    turns, config, kind = trace.turns, trace.config, trace.kind
    drafter = module.make_drafter(args, None, tokenizer)
    scope, max_nodes = recorded_settings(drafter, config, args.draft_state_scope, args.max_tree_nodes)
    batching = recorded_batching(args, trace)
    profile = load_profile(args.cost_profile, config)
    if profile is not None and batching.size != profile.batch_size:
        print(f"note: the forward-cost profile was measured at batch {profile.batch_size}, the replay batches "
              f"{batching.size} rows: the speedup estimate prices the widths at that batch", file=sys.stderr)
    start = time.perf_counter()
    steps = replay(turns, drafter, scope, max_nodes, batching, args.verify_accepted_only)
    seconds = time.perf_counter() - start
    ar_steps = replay(turns, Drafter(), "sequence", max_nodes, batching) if batching.size > 1 else None
    summary = summarize(steps, turns, seconds, profile, kind, ar_steps)
    summary.update(method=drafter.name, method_parameters=drafter.parameters(), draft_state_scope=scope,
                   max_tree_nodes=max_nodes, answer_file=args.answer_file, batch_size=batching.size,
                   continuous_batching=batching.continuous, cross_sample=batching.cross_sample,
                   verify_accepted_only=args.verify_accepted_only, trace_model=args.trace_model,
                   prompt_format=args.prompt_format, paradigm=batching.paradigm)
    print_summary(summary, drafter.name)
    if args.steps_out:
        with open(args.steps_out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(s) + "\n" for s in steps)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)


def main(argv=None) -> None:
    run_reporting(lambda: run(sys.argv[1:] if argv is None else argv))
