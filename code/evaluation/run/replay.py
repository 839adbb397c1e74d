"""Replay recorded traces through a model-free drafter: the accepted lengths a live run would get, without the model.

For a drafter whose proposals depend only on the tokens (PLD, SAM, PIA, REST), what the engine accepts on a recorded
trace is known without the target: each step follows the draft's children that hold the recorded next tokens (the
target's argmax in a greedy trace; at temperature > 0, the draw the point-mass rule follows, which is the recorded
token), and the next recorded token is the bonus. Replaying a trace step by step (propose, accept, observe, in the
order the live run saw the turns, with its drafter-state scope and thinking budget) therefore gives the live run's
accepted lengths exactly; a test checks it step for step against live runs.

    python -m evaluation.replay --answer-file A.jsonl --model-path TOKENIZER --method pld [method flags]
        [--question-file Q.jsonl] [--cost-profile FILE] [--json-out F] [--steps-out F]

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
from dataclasses import dataclass

from evaluation.run import paradigms, replicas
from evaluation.run.args import SCOPES, Parser
from evaluation.run.cli import run_reporting
from evaluation.run.records import stem
from model.engine.drafter import StepFeedback
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


def replay_turn(drafter, turn: Turn, max_nodes: int) -> list[dict]:
    """The live engine's steps on this turn: propose, accept what the trace continues with, observe."""
    context = list(turn.prompt)
    tokens, steps, done = turn.tokens, [], 0
    drafter.begin_sequence(list(turn.prompt))
    while done < len(tokens):
        if turn.forced_at is not None and done == turn.forced_at:
            phrase = tokens[done: done + turn.forced]
            context.extend(phrase)
            done += len(phrase)
            drafter.observe(StepFeedback(list(phrase), None, [], [], None))
            steps.append({"draft_size": 0, "proposed_size": 0, "accepted": len(phrase), "draft_source": "forced",
                          "draft_seconds": 0.0, "context_length": len(context)})
            continue
        start = time.perf_counter()
        tree = drafter.propose(context, max_nodes)
        if tree is None:
            tree = DraftTree([], [], source="none")
        tree.validate(max_nodes, 1 << 62)
        proposing = time.perf_counter() - start
        if tree.probs is not None:
            raise UserError(f"{drafter.name} drafts with probabilities: its acceptance needs the target's law")
        # The engine never steps past the budget's trigger or the end of the trace.
        limit = (turn.forced_at if turn.forced_at is not None and done < turn.forced_at else len(tokens)) - done
        path, bonus = greedy_path(tree, tokens[done: done + limit])
        emitted = ([tree.tokens[i] for i in path] + [bonus])[:limit]
        path = path[: len(emitted)]
        context.extend(emitted)
        done += len(emitted)
        start = time.perf_counter()
        drafter.observe(StepFeedback(emitted, tree, path, [context[-len(emitted) - 1]] + tree.tokens, None))
        # Drafting time as the live log counts it: propose + observe (the acceptance above is the target's part).
        steps.append({"draft_size": tree.size, "proposed_size": tree.size, "accepted": len(emitted),
                      "draft_source": tree.source, "draft_seconds": proposing + time.perf_counter() - start,
                      "context_length": len(context)})
    return steps


def recorded_settings(drafter, config: dict, scope: str | None = None, max_nodes: int | None = None):
    """(state scope, tree cap) as the recorded run had them: the run's scope when it ran this method, else the
    method's own; the run's cap, else the CLI default. Explicit values win."""
    if scope is None:
        scope = config.get("draft_state_scope") if config.get("method") == drafter.name else None
    return scope or drafter.default_scope, max_nodes or config.get("max_tree_nodes") or 128


def replay(turns: list[Turn], drafter, scope: str, max_nodes: int) -> list[dict]:
    """Every turn in order, the drafter reset at the boundaries of its scope (as the live loop does)."""
    out = []
    drafter.reset()
    for turn in turns:
        if scope == "sequence" or (scope == "question" and turn.turn == 0):
            drafter.reset()
        for i, step in enumerate(replay_turn(drafter, turn, max_nodes)):
            out.append({"question_id": turn.question_id, "category": turn.category, "choice": turn.choice,
                        "turn": turn.turn, "step": i, **step, "verify_seconds": None})
    return out


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


def summarize(steps: list[dict], turns: list[Turn], seconds: float, profile, kind: str) -> dict:
    decoding = [s for s in steps if s["draft_source"] != "forced"]
    groups = {"per turn (round or sample)": lambda s: s["turn"], "per category": lambda s: s["category"] or "-",
              "per context length": lambda s: bucket(s["context_length"] - s["accepted"])}
    summary = {"trace": kind, "turns": len(turns), "retokenized_turns": sum(t.retokenized for t in turns),
               "tokens": sum(len(t.tokens) for t in turns), "steps": len(decoding), "mat": mat(decoding),
               "draft_us_per_step": 1e6 * statistics.fmean([s["draft_seconds"] for s in decoding] or [0.0]),
               "replay_seconds": seconds, "replay_tokens_per_second": sum(len(t.tokens) for t in turns) / seconds,
               "estimated_speedup": estimated_speedup(decoding, profile) if profile else None}
    for name, key in groups.items():
        split: dict = {}
        for s in decoding:
            split.setdefault(key(s), []).append(s)
        summary[name] = {str(k): {"mat": mat(v), "steps": len(v),
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
    print(f"MAT (bonus token counted) {summary['mat']:.2f}; drafter {summary['draft_us_per_step']:.1f} us per step"
          + (f"; estimated speedup {estimate:.2f}x (from a forward-cost profile, not measured)" if estimate else
             "; no forward-cost profile: no speedup estimate"))
    for name in ("per turn (round or sample)", "per category", "per context length"):
        cells = [f"{k}: {v['mat']:.2f}" + (f" ({v['estimated_speedup']:.2f}x est.)" if v["estimated_speedup"] else "")
                 for k, v in summary[name].items()]
        print(f"  MAT {name}: " + ", ".join(cells))


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
        if config.get("batch_size", 1) > 1:
            print(f"note: the run decoded {config['batch_size']} sequences per batch; replay drafts each alone, as at "
                  "batch 1 (the tokens are the same: batching is lossless; drafts from concurrent samples are not "
                  "replayed)", file=sys.stderr)
        turns = answer_turns(lines, config, args.question_file, tokenizer)
    else:
        config, kind = {}, "prompt/response pairs"
        turns = pair_turns(lines, tokenizer)
    drafter = module.make_drafter(args, None, tokenizer)
    scope, max_nodes = recorded_settings(drafter, config, args.draft_state_scope, args.max_tree_nodes)
    profile = load_profile(args.cost_profile, config)
    start = time.perf_counter()
    steps = replay(turns, drafter, scope, max_nodes)
    summary = summarize(steps, turns, time.perf_counter() - start, profile, kind)
    summary.update(method=drafter.name, method_parameters=drafter.parameters(), draft_state_scope=scope,
                   max_tree_nodes=max_nodes, answer_file=args.answer_file)
    print_summary(summary, drafter.name)
    if args.steps_out:
        with open(args.steps_out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(s) + "\n" for s in steps)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)


def main(argv=None) -> None:
    run_reporting(lambda: run(sys.argv[1:] if argv is None else argv))
