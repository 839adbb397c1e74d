#!/usr/bin/env python
"""Speed and acceptance summary of a speculative-decoding answer file against a baseline.

Run from code/:
    python evaluation/speed.py --file-path METHOD.jsonl --base-path BASELINE.jsonl \
        [--json-out summary.json] [--markdown-out table.md] [--by-context] [--context-buckets 1k,2k,4k,8k]

Both files are FastChat-style JSONL answer files (one question per line); only
choices[0] is read. A "turn" is a round (multi-round thinking) or a sample
(Best-of-N). Throughput is always sum(new_tokens) / sum(wall_time) as recorded
by the engine, for both sides, so the two are counted the same way; text is
never re-tokenized. Each speedup comes with its 95% interval (paired bootstrap
over questions, uncertainty.py beside this file).

Runs at --batch-size B > 1 (config "batch_size"; both files must have the same B, else one `error: compare at the
same --batch-size: ...` line): tok/s is batch throughput (tokens of all rows / wall time of each batch counted once),
the speedup is the ratio of batch throughputs with its interval over units of questions that shared a batch, and the
table adds per-sequence latency and tokens/s (reports/batch.py). At B = 1 nothing changes.

Accuracy = correct / (correct + wrong): a turn whose grade is unknown ("correct": null, "grade_error" says why: a
math_verify timeout or parse failure, no reference) is left out, and a line counts correct / wrong / unknown when
there are any.

--by-context adds MAT and the step-time speedup by context-length bucket (default 0-1k, 1k-2k, 2k-4k, 4k-8k, 8k+
tokens; --context-buckets sets the edges) from the two files' per-step logs (<stem>.steps.jsonl); STEP_SPEEDUP below
defines that speedup. Without the flag the output is as before.

accept_lengths is read in both layouts: one flat list per choice plus
accept_lengths_per_turn (files written now; what the seed's and Spec-Bench's
report scripts read), or one list per turn (older files).

Needs only the standard library and numpy (evaluation/speed.py is the script
users run; it puts code/ on sys.path and calls main here).
"""
import argparse
import bisect
import json
import sys

from evaluation.reports import batch, divergence, uncertainty
from evaluation.reports.answers import (
    SpeedError, _is_number, _non_negative, _read_lines, _speedup, config_path,
    flat_accept_lengths, load_answers, load_config, speedup_cell, turn_accept_lengths)

# ---------------------------------------------------------------------------
# Arithmetic
# ---------------------------------------------------------------------------

def _turns(row):
    """Per-turn dicts of choices[0]; absent optional fields become None."""
    choice = row["choices"][0]
    n = len(choice["turns"])

    def column(name):
        values = choice.get(name)
        return values if values is not None else [None] * n

    draft, verify = column("draft_seconds"), column("verify_seconds")
    accept = turn_accept_lengths(choice) or [None] * n
    correct, sha1, grade_error = column("correct"), column("token_ids_sha1"), column("grade_error")
    graded = choice.get("correct") is not None   # a file without grades has no "correct" list at all
    return [{
        "text": choice["turns"][i],
        "new_tokens": choice["new_tokens"][i],
        "wall_time": choice["wall_time"][i],
        "accept_lengths": accept[i],
        "draft": draft[i],
        "verify": verify[i],
        "correct": correct[i],
        "graded": graded,
        "grade_error": grade_error[i],
        "sha1": sha1[i],
    } for i in range(n)]


def _id_key(qid):
    # ids may mix ints and strings; keep each kind in natural order
    return (isinstance(qid, str), qid)


def _ratio(num, den):
    return num / den if den else None


def _mat(turns):
    """Mean accepted tokens per decoding step (bonus token included)."""
    lengths = [a for t in turns if t["accept_lengths"] is not None for a in t["accept_lengths"]]
    return _ratio(sum(lengths), len(lengths))


def _accuracy(turns):
    """correct / (correct + wrong): turns whose grade is unknown (correct null) are left out."""
    marks = [t["correct"] for t in turns if t["correct"] is not None]
    return _ratio(sum(marks), len(marks))


def _grading(turns):
    """Graded turns counted apart: correct, wrong, unknown (correct null) and why unknown (grade_error; files written
    before it was recorded say "not recorded")."""
    graded = [t for t in turns if t["graded"]]
    reasons = {}
    for t in graded:
        if t["correct"] is None:
            reason = t["grade_error"] or "not recorded"
            reasons[reason] = reasons.get(reason, 0) + 1
    return {"correct": sum(1 for t in graded if t["correct"] is True),
            "wrong": sum(1 for t in graded if t["correct"] is False),
            "unknown": sum(reasons.values()),
            "unknown_reasons": dict(sorted(reasons.items()))}


def _drafting_share(turns):
    timed = [t for t in turns if t["draft"] is not None and t["verify"] is not None]
    draft = sum(t["draft"] for t in timed)
    return _ratio(draft, draft + sum(t["verify"] for t in timed))


def _same_output(m, b):
    """(identical?, compared by hash?) -- hashes are exact, text is the fallback."""
    if m["sha1"] and b["sha1"]:
        return m["sha1"] == b["sha1"], True
    return m["text"] == b["text"], False


def _question_sums(groups, side):
    """Per-question (tokens, seconds) of one side (0 method, 1 baseline): what the bootstrap resamples."""
    tokens = [sum(pair[side]["new_tokens"] for pair in g) for g in groups]
    seconds = [sum(pair[side]["wall_time"] for pair in g) for g in groups]
    return tokens, seconds


def _interval(groups):
    """(95% interval of the speedup or None, coefficient of variation of the baseline's per-question tokens/s)."""
    tokens, seconds = _question_sums(groups, 0)
    base_tokens, base_seconds = _question_sums(groups, 1)
    ci = uncertainty.speedup_interval(tokens, seconds, base_tokens, base_seconds)
    return (list(ci) if ci else None), uncertainty.variation(base_tokens, base_seconds)


def _pair_stats(groups):
    """Figures over (method turn, baseline turn) pairs, grouped by question (one list of pairs per question)."""
    pairs = [pair for g in groups for pair in g]
    method = [m for m, _ in pairs]
    base = [b for _, b in pairs]
    tokens = sum(t["new_tokens"] for t in method)
    seconds = sum(t["wall_time"] for t in method)
    base_tokens = sum(t["new_tokens"] for t in base)
    base_seconds = sum(t["wall_time"] for t in base)
    tps = _ratio(tokens, seconds)
    base_tps = _ratio(base_tokens, base_seconds)
    same = [_same_output(m, b) for m, b in pairs]
    ci, base_cv = _interval(groups)
    return {
        "n_turns": len(pairs),
        "new_tokens": tokens,
        "wall_time": seconds,
        "base_new_tokens": base_tokens,
        "base_wall_time": base_seconds,
        "tokens_per_s": tps,
        "base_tokens_per_s": base_tps,
        "speedup": _ratio(tps, base_tps) if tps is not None else None,
        "speedup_ci": ci,
        "base_cv": base_cv,
        "mat": _mat(method),
        "base_mat": _mat(base),
        "accuracy": _accuracy(method),
        "base_accuracy": _accuracy(base),
        "grading": _grading(method),
        "base_grading": _grading(base),
        "drafting_share": _drafting_share(method),
        "identical_turns": sum(1 for ok, _ in same if ok),
        "compared_by_hash": sum(1 for _, by_hash in same if by_hash),
    }


def _question_accepts(turns, flat, n):
    """Accepted lengths of a question's first n turns. A file with only a flat list over several turns (Spec-Bench's
    own layout) cannot be split, so it counts only when all its turns are compared."""
    if all(t["accept_lengths"] is not None for t in turns[:n]):
        return [a for t in turns[:n] for a in t["accept_lengths"]]
    return flat if flat is not None and n == len(turns) else []


def _group_mat(questions, side):
    lengths = []
    for q in questions:
        n = min(len(q["method"]), len(q["base"]))
        lengths += _question_accepts(q[side], q[side + "_flat"], n)
    return _ratio(sum(lengths), len(lengths))


def _group_stats(questions):
    stats = _pair_stats([list(zip(q["method"], q["base"])) for q in questions])
    stats["n_questions"] = len(questions)
    stats["mat"], stats["base_mat"] = _group_mat(questions, "method"), _group_mat(questions, "base")
    # Final answer of each side's own run, even if the other side has more turns.
    stats["final_accuracy"] = _accuracy([q["method"][-1] for q in questions])
    stats["base_final_accuracy"] = _accuracy([q["base"][-1] for q in questions])
    return stats


def _per_turn(questions):
    """Figures by turn index (1-based): progressive acceleration across rounds/samples."""
    depth = max(min(len(q["method"]), len(q["base"])) for q in questions)
    out = []
    for k in range(depth):
        groups = [[(q["method"][k], q["base"][k])] for q in questions
                  if k < len(q["method"]) and k < len(q["base"])]
        stats = _pair_stats(groups)
        stats["turn"] = k + 1
        stats["n_questions"] = len(groups)
        out.append(stats)
    return out


def noisy_baseline(stats):
    """The warning when the baseline's per-question tokens/s varies too much to trust a speedup, else None."""
    cv = stats.get("base_cv")
    if cv is None or cv <= uncertainty.NOISY_BASELINE_CV:
        return None
    return (f"baseline tokens/s varies across questions (coefficient of variation {cv:.2f} > "
            f"{uncertainty.NOISY_BASELINE_CV:.2f}): the speedups may not be trustworthy (a busy machine?)")


def _preview(ids, limit=10):
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f", ... (+{len(ids) - limit} more)" if len(ids) > limit else "")


def summarize(method_rows, base_rows):
    """Match questions by question_id and compute every figure; SpeedError if none match."""
    base_by_id = {r["question_id"]: r for r in base_rows}
    method_ids = {r["question_id"] for r in method_rows}
    questions = []
    for row in method_rows:
        base = base_by_id.get(row["question_id"])
        if base is None:
            continue
        questions.append({
            "question_id": row["question_id"],
            "category": row.get("category") or base.get("category") or "uncategorized",
            "paradigms": (row.get("paradigm"), base.get("paradigm")),
            "method": _turns(row),
            "base": _turns(base),
            "method_flat": flat_accept_lengths(row["choices"][0]),
            "base_flat": flat_accept_lengths(base["choices"][0]),
        })
    if not questions:
        raise SpeedError("no question_id is present in both the method and the baseline file")

    only_method = sorted(method_ids - base_by_id.keys(), key=_id_key)
    only_base = sorted(base_by_id.keys() - method_ids, key=_id_key)
    mismatched = [q["question_id"] for q in questions if len(q["method"]) != len(q["base"])]
    paradigm_diff = [q["question_id"] for q in questions
                     if None not in q["paradigms"] and q["paradigms"][0] != q["paradigms"][1]]
    warnings = []
    if only_method:
        warnings.append(f"{len(only_method)} question_id(s) only in the method file, "
                        f"ignored: {_preview(only_method)}")
    if only_base:
        warnings.append(f"{len(only_base)} question_id(s) only in the baseline file, "
                        f"ignored: {_preview(only_base)}")
    if mismatched:
        warnings.append(f"{len(mismatched)} question(s) have a different number of turns; "
                        f"only turns present in both are compared: {_preview(mismatched)}")
    if paradigm_diff:
        warnings.append(f"{len(paradigm_diff)} question(s) use a different paradigm "
                        f"in the two files: {_preview(paradigm_diff)}")

    overall = _group_stats(questions)
    categories = sorted({q["category"] for q in questions})
    per_category = {c: _group_stats([q for q in questions if q["category"] == c]) for c in categories}
    per_turn = _per_turn(questions)
    batched = batch.has_batch_fields(method_rows) or batch.has_batch_fields(base_rows)
    if batched:
        _batch_figures(method_rows, base_rows, overall, per_category, per_turn)
    noisy = noisy_baseline(overall)
    if noisy:
        warnings.append(noisy)
    summary = {
        "n_questions": len(questions),
        "overall": overall,
        "per_category": per_category,
        "per_turn": per_turn,
        "identical_turns": {
            "identical": overall["identical_turns"],
            "total": overall["n_turns"],
            "compared_by_hash": overall["compared_by_hash"],
        },
        "mat_counts_bonus_token": True,
        "speedup_interval": "95% paired bootstrap over questions",
        "noisy_baseline": bool(noisy),
        "only_in_method": only_method,
        "only_in_baseline": only_base,
        "turn_count_mismatch": mismatched,
        "warnings": warnings,
    }
    if batched:   # (main puts the configs' batch size here; this is the most rows a batch had)
        summary.update(batched=True, throughput=batch.THROUGHPUT, speedup_interval=batch.INTERVAL,
                       batch_size=max(batch.run_batch_size(rows=method_rows), batch.run_batch_size(rows=base_rows)))
    return summary


# Figures that batch.compare gives in place of (or beside) _pair_stats' at --batch-size > 1: summary key -> its key.
# wall_time / base_wall_time then hold the seconds charged (each batch's wall time once), not summed latencies.
BATCH_STATS = {"new_tokens": "new_tokens", "wall_time": "seconds", "base_new_tokens": "base_new_tokens",
               "base_wall_time": "base_seconds", "tokens_per_s": "tokens_per_s",
               "base_tokens_per_s": "base_tokens_per_s", "speedup": "speedup", "speedup_ci": "speedup_ci",
               "base_cv": "base_cv", "latency": "latency", "base_latency": "base_latency",
               "sequence_tokens_per_s": "sequence_tokens_per_s",
               "base_sequence_tokens_per_s": "base_sequence_tokens_per_s", "n_units": "n_units"}


def _batch_figures(method_rows, base_rows, overall, per_category, per_turn):
    """Batched runs: throughput, speedup and its interval from reports/batch.py (each batch's wall time counted once,
    every choice's rows, bootstrap over units of questions that shared a batch), per-sequence latency beside them.
    MAT, accuracy, drafting share and identical turns stay those of choices[0] (as at batch size 1)."""
    method, base = batch.from_rows(method_rows), batch.from_rows(base_rows)

    def put(stats, **where):
        figures = batch.compare(method, base, **where)
        stats.update({key: figures[name] for key, name in BATCH_STATS.items()})

    put(overall)
    for category, stats in per_category.items():
        put(stats, category=category)
    for stats in per_turn:
        put(stats, turn=stats["turn"] - 1)


# ---------------------------------------------------------------------------
# Acceptance and speed along the trace (the per-step logs, by context length)
# ---------------------------------------------------------------------------

DEFAULT_CONTEXT_EDGES = "1k,2k,4k,8k"   # buckets 0-1k, 1k-2k, 2k-4k, 4k-8k, 8k+ (k = 1024 tokens)
STEP_FIELDS = ("question_id", "turn", "accepted", "context_length")   # what every step line must carry here
# The speedup of a context bucket, as printed under the table and written in the JSON summary.
STEP_SPEEDUP = ("step-time speedup = baseline seconds per token / method seconds per token, each side over its own "
                "steps whose context length falls in the bucket; a step's seconds are its drafting + verifying seconds "
                "(in a batch, the verifying forward shared equally among its rows); prefill and work between steps are "
                "not counted, so the all-contexts figure can differ from the wall-time speedup")


def parse_context_edges(text):
    """'1k,2k,4k,8k' or '1000,2000' -> the bucket edges in tokens (k = 1024); SpeedError unless they are positive
    whole numbers that increase."""
    edges = []
    for part in text.split(","):
        part = part.strip().lower()
        digits, scale = (part[:-1], 1024) if part.endswith("k") else (part, 1)
        if not digits.isdigit() or int(digits) == 0:
            raise SpeedError(f"--context-buckets: {part!r} is not a positive token count "
                             "(give increasing edges, e.g. 1k,2k,4k,8k or 1000,2000)")
        edges.append(int(digits) * scale)
    if any(b <= a for a, b in zip(edges, edges[1:])):
        raise SpeedError(f"--context-buckets: the edges must increase ({text})")
    return edges


def _tokens_label(n):
    return f"{n // 1024}k" if n and n % 1024 == 0 else str(n)


def bucket_labels(edges):
    """'0-1k', '1k-2k', ..., '8k+': one label per bucket (len(edges) + 1)."""
    bounds = [0] + list(edges)
    return [f"{_tokens_label(lo)}-{_tokens_label(hi)}" for lo, hi in zip(bounds, edges)] + \
        [f"{_tokens_label(edges[-1])}+"]


def steps_path(answer_path):
    """The per-step log beside an answer file: <stem>.steps.jsonl."""
    return config_path(answer_path)[: -len(".config.json")] + ".steps.jsonl"


def _check_step(step):
    """Why a step line cannot be used here, or None."""
    if not isinstance(step, dict):
        return "expected a JSON object"
    for name in STEP_FIELDS:
        if name not in step:
            hint = " (step logs written before it was recorded lack it)" if name == "context_length" else ""
            return f"no '{name}'{hint}"
    if isinstance(step["question_id"], bool) or not isinstance(step["question_id"], (int, str)):
        return "'question_id' must be an integer or a string"
    if isinstance(step["turn"], bool) or not isinstance(step["turn"], int):
        return "'turn' must be an integer"
    for name in ("accepted", "context_length"):
        if not _non_negative(step[name]):
            return f"'{name}' must be a non-negative number"
    return None


def _step_seconds(step):
    """Seconds charged to one step: its drafting plus its verifying forward, that forward shared equally among the rows
    of a batch (each row's line records the whole forward); None when the line has no timings."""
    draft, verify = step.get("draft_seconds"), step.get("verify_seconds")
    if not (_non_negative(draft) and _non_negative(verify)):
        return None
    rows = step.get("batch_rows", 1)
    return draft + verify / (rows if _is_number(rows) and rows >= 1 else 1)


def load_steps(path):
    """The decoding steps of choices[0] in a per-step log: (question_id, turn, accepted, context_length, seconds or
    None) each; forced thinking-budget steps are left out, as from MAT. SpeedError naming file:line when the log is
    absent or a line lacks what this needs (context_length: logs written before it was recorded)."""
    raw_lines = _read_lines(path, "no step log")
    steps = []
    for lineno, raw in enumerate(raw_lines, 1):
        if not raw.strip():
            continue
        try:
            step = json.loads(raw)
        except (ValueError, RecursionError):   # (UnicodeDecodeError is a ValueError)
            if lineno == len(raw_lines):
                break   # a torn last line: the run was stopped while writing it
            raise SpeedError(f"{path}:{lineno}: invalid JSON") from None
        reason = _check_step(step)
        if reason:
            raise SpeedError(f"{path}:{lineno}: {reason}")
        if step.get("choice", 0) != 0 or step.get("draft_source") == "forced":
            continue
        steps.append((step["question_id"], step["turn"], step["accepted"], step["context_length"],
                      _step_seconds(step)))
    return steps


def compared_turns(method_rows, base_rows):
    """{(question_id, turn)} of the choices[0] turns both files have: what the figures compare."""
    depth = {r["question_id"]: len(r["choices"][0]["turns"]) for r in base_rows}
    return {(r["question_id"], k) for r in method_rows if r["question_id"] in depth
            for k in range(min(len(r["choices"][0]["turns"]), depth[r["question_id"]]))}


def bucket_totals(steps, keep, edges):
    """Per context bucket (len(edges) + 1 of them; a step of context c falls where edges[i-1] <= c < edges[i]), over
    the steps of the turns in keep: steps, tokens (accepted, bonus included), seconds (None once a step lacks
    timings) and the sum of their context lengths."""
    totals = [{"steps": 0, "tokens": 0, "seconds": 0.0, "context": 0} for _ in range(len(edges) + 1)]
    for qid, turn, accepted, context, seconds in steps:
        if (qid, turn) not in keep:
            continue
        bucket = totals[bisect.bisect_right(edges, context)]
        bucket["steps"] += 1
        bucket["tokens"] += accepted
        bucket["context"] += context
        bucket["seconds"] = None if seconds is None or bucket["seconds"] is None else bucket["seconds"] + seconds
    return totals


def merged_totals(buckets):
    """The totals of several buckets as one."""
    seconds = [b["seconds"] for b in buckets]
    return {"steps": sum(b["steps"] for b in buckets), "tokens": sum(b["tokens"] for b in buckets),
            "seconds": None if None in seconds else sum(seconds), "context": sum(b["context"] for b in buckets)}


def seconds_per_token(totals):
    return _ratio(totals["seconds"], totals["tokens"]) if totals and totals["seconds"] is not None else None


def step_speedup(method, base):
    """Baseline seconds per token / method seconds per token (STEP_SPEEDUP); None when either is unknown."""
    ours, theirs = seconds_per_token(method), seconds_per_token(base)
    return _ratio(theirs, ours) if theirs is not None and ours is not None else None


def _context_row(label, method, base):
    return {"context": label, "steps": method["steps"], "base_steps": base["steps"] if base else None,
            "mat": _ratio(method["tokens"], method["steps"]), "seconds_per_token": seconds_per_token(method),
            "base_seconds_per_token": seconds_per_token(base), "speedup": step_speedup(method, base)}


def _step_count_mismatches(steps, keep, method_rows):
    """How many compared turns have another number of step lines than accepted lengths in the answer file (a step log
    from another run, or appended to twice), counting only turns whose accepted lengths are known."""
    counts = {}
    for qid, turn, *_ in steps:
        counts[(qid, turn)] = counts.get((qid, turn), 0) + 1
    mismatched = 0
    for row in method_rows:
        per_turn = turn_accept_lengths(row["choices"][0]) or []
        for k, lengths in enumerate(per_turn):
            if (row["question_id"], k) in keep and counts.get((row["question_id"], k), 0) != len(lengths):
                mismatched += 1
    return mismatched


def by_context(method_path, base_path, method_rows, base_rows, edges):
    """MAT and step-time speedup by context-length bucket from the two files' per-step logs. {"skipped": why} when
    the method's log is absent or lacks context_length; the baseline's columns are None (and "baseline_note" says
    why) when only its log is."""
    section = {"edges": list(edges), "mat_counts_bonus_token": True, "speedup_definition": STEP_SPEEDUP}
    keep = compared_turns(method_rows, base_rows)
    try:
        steps = load_steps(steps_path(method_path))
    except SpeedError as e:
        return {**section, "skipped": str(e)}
    method = bucket_totals(steps, keep, edges)
    if not any(b["steps"] for b in method):
        return {**section, "skipped": f"{steps_path(method_path)}: no step of a question and turn both files have"}
    try:
        base = bucket_totals(load_steps(steps_path(base_path)), keep, edges)
    except SpeedError as e:
        base, section["baseline_note"] = None, str(e)
    rows = []
    for i, label in enumerate(bucket_labels(edges)):
        if method[i]["steps"] or (base and base[i]["steps"]):
            rows.append(_context_row(label, method[i], base[i] if base else None))
    section["buckets"] = rows
    section["all"] = _context_row("all", merged_totals(method), merged_totals(base) if base else None)
    section["step_count_mismatches"] = _step_count_mismatches(steps, keep, method_rows)
    return section


def _ms(seconds):
    return _num(None if seconds is None else 1000 * seconds)


def render_by_context(section):
    """The by-context table and its notes (or the one line saying why it is skipped)."""
    if "skipped" in section:
        return ["", f"By context length: skipped ({section['skipped']})."]
    lines = ["", "By context length (prompt + output tokens at each step, from the per-step logs):", ""]
    header = ["Context (tokens)", "Steps (method / base)", "MAT", "Method ms/token", "Baseline ms/token",
              "Step-time speedup"]

    def cells(row, name):
        base_steps = "n/a" if row["base_steps"] is None else str(row["base_steps"])
        return [name, f"{row['steps']} / {base_steps}", _num(row["mat"]), _ms(row["seconds_per_token"]),
                _ms(row["base_seconds_per_token"]), _speedup(row["speedup"])]

    lines += _table(header, [cells(r, r["context"]) for r in section["buckets"]] +
                    [cells(section["all"], "**all**")])
    lines += ["", "Note: MAT counts the bonus token (AR 1.00); " + STEP_SPEEDUP + "."]
    if section.get("baseline_note"):
        lines.append(f"Baseline columns n/a: {section['baseline_note']}.")
    if section.get("step_count_mismatches"):
        lines.append(f"Warning: {section['step_count_mismatches']} turn(s) have another number of steps in the method's "
                     "step log than in its answer file (a log from another run?).")
    return lines


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------

def _num(x, digits=2):
    return "n/a" if x is None else f"{x:.{digits}f}"


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _source_line(label, source):
    parts = [f"{label}: {source.get('path', '?')}"]
    if source.get("method"):
        parts.append(f"method={source['method']}")
    if source.get("model_id"):
        parts.append(f"model={source['model_id']}")
    return " | ".join(parts)


def _source_lines(summary):
    lines = []
    sources = summary.get("sources") or {}
    for key, label in (("method", "Method"), ("baseline", "Baseline")):
        if key in sources:
            lines.append(_source_line(label, sources[key]))
    if lines:
        lines.append("")
    return lines


def render_markdown(summary):
    """Main table (categories, overall last), MAT note and, if turns > 1, the per-turn table. Batched runs
    (--batch-size > 1): tok/s is batch throughput, the speedup its ratio at the same batch size, and per-sequence
    latency and tokens/s are added."""
    batched = bool(summary.get("batched"))
    tag = " (batch)" if batched else ""
    speedup_label = "Throughput speedup [95% CI]" if batched else "Speedup [95% CI]"
    lines = _source_lines(summary)
    if batched:
        lines += [batch_note(summary), ""]

    def rates(s):
        cells = [_num(s["tokens_per_s"]), _num(s["base_tokens_per_s"]), speedup_cell(s)]
        return cells + ([pair_cell(s, "latency")] if batched else [])

    def row(name, s):
        return [name, str(s["n_questions"]), str(s["n_turns"]), *rates(s)] + \
            ([pair_cell(s, "sequence_tokens_per_s")] if batched else []) + \
            [_num(s["mat"]),
             f"{_pct(s['accuracy'])} / {_pct(s['base_accuracy'])}",
             f"{_pct(s['final_accuracy'])} / {_pct(s['base_final_accuracy'])}",
             _pct(s["drafting_share"]),
             f"{s['identical_turns']}/{s['n_turns']}"]

    latency = ["Latency s/turn (method / base)"] if batched else []
    header = ["Category", "Questions", "Turns", f"Method tok/s{tag}", f"Baseline tok/s{tag}", speedup_label,
              *latency] + (["Seq. tok/s (method / base)"] if batched else []) + \
        ["MAT", "Accuracy (method / base)", "Final-turn acc. (method / base)", "Drafting share", "Identical turns"]
    rows = [row(c, s) for c, s in summary["per_category"].items()]
    rows.append(row("**overall**", summary["overall"]))
    lines += _table(header, rows)
    lines.append("")
    interval = f"{summary.get('speedup_interval', 'bootstrap')}." if batched else "95% paired bootstrap over questions."
    lines.append("Note: MAT = mean accepted tokens per target decoding step, counting the "
                 f"bonus token (autoregressive decoding gives 1.00). Speedup intervals: {interval}")
    grading = grading_note(summary["overall"])
    if grading:
        lines.append(grading)
    noisy = noisy_baseline(summary["overall"])
    if noisy:
        lines.append(f"Warning: {noisy}.")

    if summary.get("divergence"):
        name = ((summary.get("sources") or {}).get("method") or {}).get("method") or "method"
        lines += [""] + divergence.markdown_lines(summary["divergence"], name)

    per_turn = summary.get("per_turn") or []
    if len(per_turn) > 1:
        lines += ["", "Per turn (round / sample index):", ""]
        header = ["Turn", "Questions", f"Method tok/s{tag}", f"Baseline tok/s{tag}", speedup_label, *latency,
                  "MAT", "Accuracy (method / base)", "Identical turns"]
        lines += _table(header, [
            [str(s["turn"]), str(s["n_questions"]), *rates(s), _num(s["mat"]),
             f"{_pct(s['accuracy'])} / {_pct(s['base_accuracy'])}",
             f"{s['identical_turns']}/{s['n_turns']}"]
            for s in per_turn])
    if "by_context" in summary:
        lines += render_by_context(summary["by_context"])
    return "\n".join(lines) + "\n"


def _grading_counts(counts):
    reasons = ", ".join(f"{reason} {n}" for reason, n in counts["unknown_reasons"].items())
    return (f"{counts['correct']} correct / {counts['wrong']} wrong / {counts['unknown']} unknown"
            + (f" ({reasons})" if reasons else ""))


def grading_note(stats):
    """The line counting correct / wrong / unknown turns on each side, or None when no grade is unknown (the tables of
    files without unknown grades stay as they were)."""
    method, base = stats.get("grading"), stats.get("base_grading")
    if not method or not base or not (method["unknown"] or base["unknown"]):
        return None
    return (f"Grading: method {_grading_counts(method)}; baseline {_grading_counts(base)}. Accuracy = correct / "
            "(correct + wrong): turns whose grade is unknown (grading timed out, could not parse an answer, or had no "
            "reference) are left out.")


def pair_cell(stats, key, digits=2):
    """'method / base' of a figure and its base_ counterpart."""
    return f"{_num(stats.get(key), digits)} / {_num(stats.get('base_' + key), digits)}"


def batch_note(summary):
    """The sentence saying what a batched table's figures are."""
    return (f"Batch size {summary.get('batch_size', '?')}: tok/s is batch throughput (tokens of all rows / wall time "
            "of each batch, counted once); speedup = method batch throughput / baseline batch throughput at the same "
            "batch size; latency = mean wall time of one sequence's turn (batch start to its last token); seq. "
            "tok/s = tokens / latency of a sequence.")


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    # Usage mistakes become the same one-line error as bad input.
    def error(self, message):
        raise SpeedError(message)


def _source(path, warn):
    source = {"path": path}
    try:
        cfg = load_config(path)
    except SpeedError as e:
        warn(f"ignoring sidecar config: {e}")
        cfg = None
    if cfg:
        source["method"] = cfg.get("method")
        source["model_id"] = cfg.get("model_id")
    return source


def _config(path):
    """The sidecar config, {} when absent or unreadable (_source warns about the latter)."""
    try:
        return load_config(path) or {}
    except SpeedError:
        return {}


def _write(path, text):
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise SpeedError(f"{path}: cannot write ({e.strerror or e})") from None


def main(argv=None):
    parser = _Parser(description="Speedup, MAT and accuracy of a method's answer file "
                                 "against a baseline answer file.")
    parser.add_argument("--file-path", required=True, help="method answer file (JSONL)")
    parser.add_argument("--base-path", required=True, help="baseline answer file (JSONL)")
    parser.add_argument("--json-out", help="write the summary as JSON here")
    parser.add_argument("--markdown-out", help="write the markdown tables here")
    parser.add_argument("--by-context", action="store_true",
                        help="add MAT and step-time speedup by context length, from the two files' per-step logs "
                             "(<stem>.steps.jsonl)")
    parser.add_argument("--context-buckets", metavar="EDGES",
                        help=f"bucket edges in tokens for --by-context (implies it), k = 1024; default "
                             f"{DEFAULT_CONTEXT_EDGES}: buckets 0-1k, 1k-2k, 2k-4k, 4k-8k, 8k+")

    def warn(msg):
        print(f"warning: {msg}", file=sys.stderr)

    try:
        args = parser.parse_args(argv)
        edges = parse_context_edges(args.context_buckets or DEFAULT_CONTEXT_EDGES)
        method_rows, base_rows = load_answers(args.file_path), load_answers(args.base_path)
        size = batch.check_same_batch_size(
            (args.file_path, batch.run_batch_size(args.file_path, method_rows, _config(args.file_path))),
            (args.base_path, batch.run_batch_size(args.base_path, base_rows, _config(args.base_path))))
        summary = summarize(method_rows, base_rows)
        if summary.get("batched"):
            summary["batch_size"] = size
        summary["divergence"] = divergence.classify(method_rows, base_rows, _config(args.file_path),
                                                    _config(args.base_path))
        for msg in summary["warnings"]:
            warn(msg)
        summary["sources"] = {"method": _source(args.file_path, warn),
                              "baseline": _source(args.base_path, warn)}
        if args.by_context or args.context_buckets:
            summary["by_context"] = by_context(args.file_path, args.base_path, method_rows, base_rows, edges)
        text = render_markdown(summary)
        sys.stdout.write(text)
        if args.markdown_out:
            _write(args.markdown_out, text)
        if args.json_out:
            _write(args.json_out, json.dumps(summary, indent=2) + "\n")
    except SpeedError as e:
        print("error: " + " ".join(str(e).split("\n")), file=sys.stderr)
        return 2
    return 0
