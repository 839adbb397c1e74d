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

Traces: an answer file of this harness (with `--save-token-ids` its turns' exact ids; else the text is
re-tokenized, and replay says so), or a plain JSONL of {"prompt", "response"} pairs (each a one-turn question whose
prompt goes through the chat template).
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

from evaluation.run import paradigms, replicas
from evaluation.run.args import SCOPES, Parser
from evaluation.run.cli import run_reporting
from evaluation.run.loop import batch_schedule, group_size, ready_drafter, tell_siblings
from evaluation.run.records import stem
from model.engine.cost import cut
from model.engine.drafter import Drafter, StepFeedback
from model.engine.sampling import accept_greedy
from model.engine.tree import DraftTree
from model.errors import UserError

REPLAYABLE = ("pld", "samd", "pia", "rest")
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


@dataclass
class Turn:
    question_id: object
    category: str
    choice: int
    turn: int
    prompt: list[int]
    tokens: list[int]
    forced_at: int | None      # where the thinking budget's phrase starts, if it was forced
    forced: int                # its length
    retokenized: bool


def parse_args(argv):
    p = Parser(prog="python -m evaluation.replay", conflict_handler="resolve",
               description=__doc__.splitlines()[0])
    p.add_argument("--answer-file", required=True, help="an answer file of this harness, or JSONL prompt/response")
    p.add_argument("--model-path", "--tokenizer-path", dest="model_path", required=True,
                   help="the target model (only its tokenizer is loaded)")
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


# ---------------------------------------------------------------------------------------------- reading traces

def read_jsonl(path: str) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    out = []
    for lineno, line in enumerate(lines, start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{path}:{lineno}: not a JSON line") from None
    if not out:
        raise UserError(f"{path} holds no trace")
    return out


def read_config(answer_file: str) -> dict:
    return replicas.read_config(stem(answer_file) + ".config.json") or {}


def encode_text(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def answer_turns(lines: list[dict], config: dict, question_file: str | None, tokenizer) -> list[Turn]:
    """The turns of an answer file in the order the live run generated them, with the prompts it built."""
    from evaluation.data.questions import load_questions
    question_file = question_file or config.get("question_file")
    if not question_file:
        raise UserError("the answer file has no configuration naming its question file: give --question-file")
    questions = {q["question_id"]: q for q in load_questions(question_file)}
    paradigm = config.get("paradigm", lines[0].get("paradigm", "single"))
    budget = config.get("thinking_budget") or {}
    turns = []
    for line in lines:
        try:
            question = questions[line["question_id"]]
            choices = line["choices"]
        except KeyError:
            raise UserError(f"question {line.get('question_id')!r} of the answer file is not in {question_file} "
                            "(give the --question-file it was answered from)") from None
        for choice in choices:
            previous, ids = None, choice.get("token_ids")
            for t, text in enumerate(choice["turns"]):
                prompt = paradigms.encode_prompt(tokenizer, paradigms.turn_messages(question, paradigm, t, previous))
                forced = (choice.get("forced_tokens") or [0] * len(choice["turns"]))[t]
                if forced and "trigger_at" not in budget:
                    raise UserError(f"question {line['question_id']!r}: a turn ends in the thinking budget's phrase, "
                                    "but no run configuration says where it was forced (keep <stem>.config.json "
                                    "beside the answer file)")
                if ids is not None:
                    tokens, retokenized = list(ids[t]), False
                else:
                    tokens, retokenized = encode_text(tokenizer, text), True
                turns.append(Turn(line["question_id"], line.get("category", ""), choice.get("index", 0), t, prompt,
                                  tokens, budget.get("trigger_at") if forced else None, forced, retokenized))
                previous = text
    return turns


def pair_turns(lines: list[dict], tokenizer) -> list[Turn]:
    turns = []
    for i, line in enumerate(lines):
        if not isinstance(line.get("prompt"), str) or not isinstance(line.get("response"), str):
            raise UserError(f"line {i + 1}: neither an answer line of this harness nor a {{prompt, response}} pair")
        prompt = paradigms.encode_prompt(tokenizer, [{"role": "user", "content": line["prompt"]}])
        turns.append(Turn(line.get("question_id", i), line.get("category", ""), 0, 0, prompt,
                          encode_text(tokenizer, line["response"]), None, 0, True))
    return turns


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
    from model.engine.cost import ForwardCostProfile
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
              "per draft source": lambda s: s["draft_source"]}
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
    for name in ("per turn (round or sample)", "per category", "per context length", "per draft source"):
        cells = [f"{k}: {v['mat']:.2f}" + (f" ({v['estimated_speedup']:.2f}x est.)" if v["estimated_speedup"] else "")
                 for k, v in summary[name].items()]
        print(f"  MAT {name}: " + ", ".join(cells))
    sources = {k: v for k, v in summary["per draft source"].items() if v["draft_nodes"]}
    if sources:
        print("  draft nodes accepted / verified per source: " + ", ".join(
            f"{k}: {v['accepted_nodes']:,} / {v['draft_nodes']:,}" for k, v in sources.items()))


def recorded_batching(args, config: dict, lines: list[dict]) -> Batching:
    """The batches of the recorded run unless told otherwise (a prompt/response file: batch 1, single turns)."""
    paradigm = config.get("paradigm", lines[0].get("paradigm", "single"))
    size = args.batch_size or config.get("batch_size") or 1
    continuous = (config.get("continuous_batching", False) and size > 1) if args.batching is None else \
        args.batching == "continuous"
    if continuous and (paradigm != "best_of_n" or size < 2):
        raise UserError("--batching continuous needs a Best-of-N trace and --batch-size of at least 2")
    cross = config.get("cross_sample", True) if args.cross_sample is None else args.cross_sample == "on"
    return Batching(size, continuous, cross, paradigm, max(len(line.get("choices", [None])) for line in lines))


def run(argv) -> None:
    args, module = parse_args(argv)
    from model.engine.loading import load_tokenizer
    tokenizer = load_tokenizer(args.model_path)
    lines = read_jsonl(args.answer_file)
    if "choices" in lines[0]:
        config = read_config(args.answer_file)
        kind = "answer file"
        if config.get("temperature", 0) > 0 and config.get("method") == "sps":
            raise UserError("this trace was sampled at temperature > 0 with residual resampling (SpS): its tokens are "
                            "not the ones a point-mass drafter's live run would draw, so replay would not be exact")
        turns = answer_turns(lines, config, args.question_file, tokenizer)
    else:
        config, kind = {}, "prompt/response pairs"
        turns = pair_turns(lines, tokenizer)
    drafter = module.make_drafter(args, None, tokenizer)
    scope, max_nodes = recorded_settings(drafter, config, args.draft_state_scope, args.max_tree_nodes)
    batching = recorded_batching(args, config, lines)
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
                   verify_accepted_only=args.verify_accepted_only)
    print_summary(summary, drafter.name)
    if args.steps_out:
        with open(args.steps_out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(s) + "\n" for s in steps)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)


def main(argv=None) -> None:
    run_reporting(lambda: run(sys.argv[1:] if argv is None else argv))
