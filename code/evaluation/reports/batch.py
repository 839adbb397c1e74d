"""Batched runs (--batch-size B): throughput, per-sequence latency, and the speedup over AR at the same B.

Used by speed.py, compare.py and plot.py beside this file, and by benchmark scripts:

    from evaluation.reports import batch
    method, ar = batch.load_run("out/b4/p-pld.jsonl"), batch.load_run("out/b4/p-ar.jsonl")
    batch.check_same_batch_size(method, ar)          # SpeedError: "compare at the same --batch-size: ..."
    batch.throughput(method)                          # tok/s of the run, each batch's time counted once
    figures = batch.compare(method, ar)               # ["speedup"], ["speedup_ci"], ["latency"], ...
    batch.sweep_table({(1, "ar"): "out/b1/p-ar.jsonl", (1, "pld"): "out/b1/p-pld.jsonl", (4, "ar"): ...},
                      print_table=True)               # every method at every B against AR at the same B

What the answer files hold. With B > 1 (config "batch_size"; absent from older configs: 1) every choice has, per turn,
"batch_id" (the batch the turn was decoded in), "batch_size" (rows in that batch) and "batch_wall_time" (the wall time
of the whole batch, the same on each of its rows); "wall_time" is then that sequence's latency (batch start to its last
token). At B = 1 there are no batch fields and every turn is its own batch of time wall_time.

Definitions (every choice of a question is read, not only choices[0]: a batch's rows may be several choices):
- Charged seconds of a turn: at B = 1 its wall_time; in a batch, the batch's batch_wall_time times the turn's share of
  the tokens of that batch's rows in the file (an equal share per row if they produced none). The charged seconds of a
  batch's rows add up to its wall time, so a batch's time counts once.
- Throughput of some turns = their new_tokens / their charged seconds. Over a whole file: tokens of all turns / wall
  time of all batches, each counted once (B = 1: sum of wall_time). A selection that takes only part of a batch (one
  category, one turn index, the questions the other file also has) is charged the part of the batch's time its tokens
  took, i.e. it runs at that batch's throughput.
- Per-sequence latency: mean wall_time per turn. Per-sequence tokens/s: new_tokens / wall_time summed over the turns
  (the rate one sequence sees; at B = 1 it is the throughput).
- Units: the questions that shared a batch (in either file, for a comparison) form one unit, the connected components
  of "decoded in the same batch"; at B = 1, and for Best-of-N (a batch holds samples of one question), each question
  is its own unit. A unit's (tokens, seconds) are the sums over its turns; the speedup's 95% interval is the paired
  bootstrap of uncertainty.py over units, which pairs naturally: both sides' units are the same sets of questions.
- Speedup = method throughput / baseline throughput over the turns both files have, at the same batch size.

Restrictions: `category` (the question's category, "uncategorized" when it has none) and `turn` (0-based turn index:
round of multi-round thinking, sample of Best-of-N) keep only those turns, as speed.py's per-category and per-turn
tables do. Bad input raises answers.SpeedError (the reports print it as one `error: ...` line).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from evaluation.reports import answers, uncertainty

BATCH_FIELDS = answers.BATCH_FIELDS     # ("batch_id", "batch_size", "batch_wall_time")
UNCATEGORIZED = "uncategorized"
INTERVAL = "95% paired bootstrap over units (questions that shared a batch are resampled together)"
THROUGHPUT = "batch throughput: tokens of all rows / wall time of each batch counted once"


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------

@dataclass
class BatchRun:
    """One answer file read for batch arithmetic. turns: one dict per (question, choice, turn), in file order, with
    question_id, category, choice, turn (0-based), new_tokens, wall_time, batch_id (None at B = 1), batch_rows,
    batch_wall_time, seconds (the charged seconds, see the module docstring) and accept_lengths (the turn's accepted
    length per step, None when the file does not split them by turn)."""
    path: str | None
    batch_size: int
    turns: list[dict]
    config: dict = field(default_factory=dict)
    name: str | None = None     # free for callers (plot.py puts the method's label here)

    @property
    def cross_sample(self) -> bool:
        """Whether question-scope drafters drafted from their concurrent siblings (config; absent: True)."""
        return bool(self.config.get("cross_sample", True))


def has_batch_fields(rows: list[dict]) -> bool:
    """Whether any choice of these answer lines carries the batch fields (a run at --batch-size > 1)."""
    return any("batch_id" in choice for row in rows for choice in row.get("choices") or [] if isinstance(choice, dict))


def run_batch_size(path: str | None = None, rows: list[dict] | None = None, config: dict | None = None) -> int:
    """The --batch-size a file was run at: its config's "batch_size" (a config without the key predates batching: 1);
    with no readable config, the most rows any of its batches had (1 without batch fields). The config and rows are
    read from path when not given."""
    if config is None and path is not None:
        try:
            config = answers.load_config(path)
        except answers.SpeedError:
            config = None
    if config:
        value = config.get("batch_size", 1)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        where = answers.config_path(path) if path else "config"
        raise answers.SpeedError(f"{where}: 'batch_size' must be a positive integer, got {value!r}")
    if rows is None:
        rows = answers.load_answers(path)
    sizes = [n for row in rows for choice in row["choices"] if isinstance(choice, dict)
             for n in choice.get("batch_size") or []]
    return max(sizes, default=1)


def check_same_batch_size(method, base) -> int:
    """The common batch size of two runs, each a BatchRun, an answer-file path or a (path, batch size) pair; SpeedError
    "compare at the same --batch-size: X has 4, Y has 1" (X the method's path, Y the baseline's) when they differ."""
    def size_and_name(run):
        if isinstance(run, BatchRun):
            return run.batch_size, run.path or "?"
        if isinstance(run, tuple):
            return run[1], run[0]
        return run_batch_size(run), run
    (size, name), (base_size, base_name) = size_and_name(method), size_and_name(base)
    if size != base_size:
        raise answers.SpeedError(f"compare at the same --batch-size: {name} has {size}, {base_name} has {base_size}")
    return size


def _check_choice(row: dict, index: int, where: str) -> None:
    # answers.load_answers checked choices[0]; the same checks for the others.
    if index == 0:
        return
    choice = row["choices"][index]
    reason = answers._check_record({**row, "choices": [choice]}) if isinstance(choice, dict) else \
        "'choices[0]' must be an object"
    if reason:
        raise answers.SpeedError(f"{where}question {row['question_id']!r}: "
                               + reason.replace("choices[0]", f"choices[{index}]"))


def turns(rows: list[dict], path: str | None = None) -> list[dict]:
    """Every turn of every choice of these (answers.load_answers-validated) answer lines, with its charged seconds (see
    BatchRun.turns). SpeedError when a batch's rows disagree on its wall time."""
    where = f"{path}: " if path else ""
    out, batches = [], {}
    for row in rows:
        for c in range(len(row["choices"])):
            _check_choice(row, c, where)
            choice = row["choices"][c]
            batched = choice.get("batch_id") is not None
            accepts = answers.turn_accept_lengths(choice) or [None] * len(choice["turns"])
            for k in range(len(choice["turns"])):
                rec = {"question_id": row["question_id"], "category": row.get("category") or None, "choice": c,
                       "turn": k, "new_tokens": choice["new_tokens"][k], "wall_time": choice["wall_time"][k],
                       "batch_id": choice["batch_id"][k] if batched else None,
                       "batch_rows": choice["batch_size"][k] if batched else 1,
                       "batch_wall_time": choice["batch_wall_time"][k] if batched else choice["wall_time"][k],
                       "accept_lengths": accepts[k]}
                out.append(rec)
                if batched:
                    batches.setdefault(rec["batch_id"], []).append(rec)
    for batch_id, members in batches.items():
        wall = members[0]["batch_wall_time"]
        if any(not math.isclose(m["batch_wall_time"], wall, rel_tol=1e-9, abs_tol=1e-12) for m in members):
            raise answers.SpeedError(f"{where}batch {batch_id!r}: its rows disagree on batch_wall_time")
        tokens = sum(m["new_tokens"] for m in members)
        for m in members:
            m["seconds"] = wall * m["new_tokens"] / tokens if tokens else wall / len(members)
    for rec in out:
        if rec["batch_id"] is None:
            rec["seconds"] = rec["wall_time"]
    return out


def from_rows(rows: list[dict], path: str | None = None, config: dict | None = None) -> BatchRun:
    """A BatchRun of answer lines already read and validated (answers.load_answers); the config is read from path when
    not given."""
    if config is None and path is not None:
        config = answers.load_config(path)
    return BatchRun(path, run_batch_size(path, rows, config or {}), turns(rows, path), config or {})


def load_run(path: str) -> BatchRun:
    """Read and validate an answer file and its sidecar config (answers.load_answers / load_config)."""
    return from_rows(answers.load_answers(path), path)


def _turns_of(run) -> list[dict]:
    if isinstance(run, BatchRun):
        return run.turns
    if isinstance(run, (str, os.PathLike)):
        return load_run(os.fspath(run)).turns
    return turns(run)   # answer lines


def _select(recs, category=None, turn=None):
    return [r for r in recs if (category is None or (r["category"] or UNCATEGORIZED) == category)
            and (turn is None or r["turn"] == turn)]


# ---------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------

def _ratio(num, den):
    return num / den if den else None


def throughput(run, category: str | None = None, turn: int | None = None) -> float | None:
    """Tokens / seconds of the run's batches, each batch's wall time counted once (B = 1: sum(new_tokens) /
    sum(wall_time)); None with no time. run (here and below): a BatchRun, an answer-file path, or answer lines."""
    recs = _select(_turns_of(run), category, turn)
    return _ratio(sum(r["new_tokens"] for r in recs), sum(r["seconds"] for r in recs))


def latency(run, category: str | None = None, turn: int | None = None) -> float | None:
    """Per-sequence latency: mean wall_time per turn, in seconds (None with no turns)."""
    recs = _select(_turns_of(run), category, turn)
    return _ratio(sum(r["wall_time"] for r in recs), len(recs))


def sequence_tokens_per_s(run, category: str | None = None, turn: int | None = None) -> float | None:
    """Per-sequence tokens/s: sum(new_tokens) / sum(wall_time) over the turns (what one sequence sees)."""
    recs = _select(_turns_of(run), category, turn)
    return _ratio(sum(r["new_tokens"] for r in recs), sum(r["wall_time"] for r in recs))


def mat(run, category: str | None = None, turn: int | None = None) -> float | None:
    """Mean accepted tokens per decoding step, bonus token counted (AR: 1.00), over the turns whose accepted lengths
    are known; None when none are."""
    recs = [r for r in _select(_turns_of(run), category, turn) if r["accept_lengths"] is not None]
    return _ratio(sum(a for r in recs for a in r["accept_lengths"]), sum(len(r["accept_lengths"]) for r in recs))


# ---------------------------------------------------------------------------
# Against a baseline
# ---------------------------------------------------------------------------

def _matched(method_recs, base_recs, category=None, turn=None):
    """(method turns, baseline turns): the (question, choice, turn) both files have, restricted."""
    index = {(r["question_id"], r["choice"], r["turn"]): r for r in base_recs}
    base_cats = {r["question_id"]: r["category"] for r in base_recs}
    method_out, base_out = [], []
    for r in method_recs:
        b = index.get((r["question_id"], r["choice"], r["turn"]))
        if b is None:
            continue
        cat = r["category"] or base_cats.get(r["question_id"]) or UNCATEGORIZED
        if (category is not None and cat != category) or (turn is not None and r["turn"] != turn):
            continue
        method_out.append(r)
        base_out.append(b)
    return method_out, base_out


def _components(sides) -> list[list]:
    """Question ids linked by a shared batch on any side, as connected components in order of first appearance."""
    parent = {}

    def find(q):
        while parent[q] != q:
            parent[q] = parent[parent[q]]
            q = parent[q]
        return q

    order = []
    for recs in sides:
        for r in recs:
            if r["question_id"] not in parent:
                parent[r["question_id"]] = r["question_id"]
                order.append(r["question_id"])
    for recs in sides:
        first = {}
        for r in recs:
            if r["batch_id"] is None:
                continue
            other = first.setdefault(r["batch_id"], r["question_id"])
            a, b = find(other), find(r["question_id"])
            if a != b:
                parent[b] = a
    groups = {}
    for q in order:
        groups.setdefault(find(q), []).append(q)
    return list(groups.values())


def _unit_sums(recs, members):
    unit_of = {q: i for i, unit in enumerate(members) for q in unit}
    tokens, seconds = [0] * len(members), [0.0] * len(members)
    for r in recs:
        i = unit_of[r["question_id"]]
        tokens[i] += r["new_tokens"]
        seconds[i] += r["seconds"]
    return tokens, seconds


def units(method, base=None, category: str | None = None, turn: int | None = None) -> list[dict]:
    """Bootstrap units: {"questions": [ids], "tokens", "seconds"} and, with a baseline, "base_tokens" and
    "base_seconds" (over the turns both files have). Questions decoded in a shared batch, in either file, are one unit;
    seconds count each batch's wall time once (its share when the selection takes part of a batch)."""
    method_recs = _turns_of(method)
    if base is None:
        recs, sides = _select(method_recs, category, turn), None
        members = _components([recs])
    else:
        sides = _matched(method_recs, _turns_of(base), category, turn)
        recs = sides[0]
        members = _components(sides)
    tokens, seconds = _unit_sums(recs, members)
    out = [{"questions": m, "tokens": t, "seconds": s} for m, t, s in zip(members, tokens, seconds)]
    if sides is not None:
        base_tokens, base_seconds = _unit_sums(sides[1], members)
        for u, t, s in zip(out, base_tokens, base_seconds):
            u["base_tokens"], u["base_seconds"] = t, s
    return out


def compare(method, base, category: str | None = None, turn: int | None = None) -> dict:
    """The method's batch throughput against the baseline's over the turns both have (same batch size: call
    check_same_batch_size first). Returns n_questions, n_turns, n_units, new_tokens, seconds, base_new_tokens,
    base_seconds, tokens_per_s, base_tokens_per_s (batch throughput), speedup (their ratio), speedup_ci ([low, high]
    95% paired bootstrap over units, None below 2 units), latency, base_latency (mean seconds per turn),
    sequence_tokens_per_s, base_sequence_tokens_per_s, base_cv (coefficient of variation of the baseline's tokens/s
    across units)."""
    method_recs, base_recs = _matched(_turns_of(method), _turns_of(base), category, turn)
    members = _components([method_recs, base_recs])
    tokens, seconds = _unit_sums(method_recs, members)
    base_tokens, base_seconds = _unit_sums(base_recs, members)
    tps, base_tps = _ratio(sum(tokens), sum(seconds)), _ratio(sum(base_tokens), sum(base_seconds))
    ci = uncertainty.speedup_interval(tokens, seconds, base_tokens, base_seconds)
    return {
        "n_questions": sum(len(m) for m in members),
        "n_turns": len(method_recs),
        "n_units": len(members),
        "new_tokens": sum(tokens),
        "seconds": sum(seconds),
        "base_new_tokens": sum(base_tokens),
        "base_seconds": sum(base_seconds),
        "tokens_per_s": tps,
        "base_tokens_per_s": base_tps,
        "speedup": _ratio(tps, base_tps) if tps is not None else None,
        "speedup_ci": list(ci) if ci else None,
        "latency": _ratio(sum(r["wall_time"] for r in method_recs), len(method_recs)),
        "base_latency": _ratio(sum(r["wall_time"] for r in base_recs), len(base_recs)),
        "sequence_tokens_per_s": _ratio(sum(tokens), sum(r["wall_time"] for r in method_recs)),
        "base_sequence_tokens_per_s": _ratio(sum(base_tokens), sum(r["wall_time"] for r in base_recs)),
        "base_cv": uncertainty.variation(base_tokens, base_seconds),
    }


# ---------------------------------------------------------------------------
# A batch-size sweep
# ---------------------------------------------------------------------------

def sweep(files: dict, baseline: str = "ar") -> dict:
    """Every method at every batch size against the baseline at the same batch size.

    files: {(batch size, method name): answer-file path or BatchRun}; the baseline's name is `baseline`. Returns
    {"baseline", "gain_over" (the batch size gains are measured from: 1 if swept, else the smallest), "batch_sizes",
    "throughput", "interval", "rows": [one per file, by batch size then baseline first then name: batch_size, method,
    path, tokens_per_s (batch throughput of the whole file), gain (tokens_per_s / the same method's at gain_over),
    mat, latency, sequence_tokens_per_s, and against the baseline (None for it, and where no baseline file is at that
    batch size) speedup, speedup_ci, n_units]}. SpeedError when a file's batch size is not its baseline's."""
    runs = {key: run if isinstance(run, BatchRun) else load_run(run) for key, run in files.items()}
    sizes = sorted({size for size, _ in runs})
    gain_over = 1 if 1 in sizes else sizes[0] if sizes else None
    rows = []
    for (size, name), run in sorted(runs.items(), key=lambda kv: (kv[0][0], kv[0][1] != baseline, kv[0][1])):
        tps = throughput(run)
        start = runs.get((gain_over, name))
        start_tps = throughput(start) if start is not None else None
        row = {"batch_size": size, "method": name, "path": run.path, "tokens_per_s": tps,
               "gain": _ratio(tps, start_tps) if tps is not None and start_tps else None,
               "mat": mat(run), "latency": latency(run), "sequence_tokens_per_s": sequence_tokens_per_s(run),
               "speedup": None, "speedup_ci": None, "n_units": None}
        base = runs.get((size, baseline))
        if name != baseline and base is not None:
            check_same_batch_size(run, base)
            figures = compare(run, base)
            row.update(speedup=figures["speedup"], speedup_ci=figures["speedup_ci"], n_units=figures["n_units"])
        rows.append(row)
    return {"baseline": baseline, "gain_over": gain_over, "batch_sizes": sizes, "throughput": THROUGHPUT,
            "interval": INTERVAL, "rows": rows}


def _num(x, digits=2):
    return "n/a" if x is None else f"{x:.{digits}f}"


def sweep_markdown(summary: dict) -> str:
    """The markdown table of sweep()'s summary."""
    header = ["B", "Method", "tok/s (batch)", f"Gain over B={summary['gain_over']}", "Throughput speedup [95% CI]",
              "MAT", "Latency s/turn", "Seq. tok/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in summary["rows"]:
        if r["method"] == summary["baseline"]:
            cell = "1.00x (baseline)"
        else:
            cell = answers.speedup_cell({"speedup": r["speedup"], "speedup_ci": r["speedup_ci"]})
            if r["speedup"] is None:
                cell = "n/a (no baseline at this B)"
        lines.append("| " + " | ".join([str(r["batch_size"]), r["method"], _num(r["tokens_per_s"]),
                                        "n/a" if r["gain"] is None else f"{r['gain']:.2f}x", cell, _num(r["mat"]),
                                        _num(r["latency"], 3), _num(r["sequence_tokens_per_s"])]) + " |")
    lines += ["", f"tok/s: {summary['throughput']}. Speedup: over {summary['baseline']} at the same batch size; "
              f"intervals: {summary['interval']}. Gain: a method's throughput over its own at "
              f"B={summary['gain_over']} (the baseline's is its batching gain). Latency: mean wall time of one "
              "sequence's turn. MAT: mean accepted tokens per step, bonus token counted (AR = 1.00)."]
    return "\n".join(lines) + "\n"


def sweep_table(files: dict, baseline: str = "ar", print_table: bool = False) -> dict:
    """sweep(files, baseline) with its markdown table under "markdown" (printed to stdout with print_table)."""
    summary = sweep(files, baseline)
    summary["markdown"] = sweep_markdown(summary)
    if print_table:
        print(summary["markdown"], end="")
    return summary
