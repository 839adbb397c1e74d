"""Reading and validating answer files (FastChat-style JSONL) and their sidecar configurations.

The one place that decides what a usable answer line is: speed.py, batch.py, compare.py and plot.py all read answer
files through here, so a malformed file gets the same one-line error from every report. Standard library only.
"""
import json
import math

# Per-turn lists every answer line must carry.
REQUIRED_TURN_FIELDS = ("new_tokens", "wall_time")
# Per-turn lists of runs at --batch-size > 1 (all three or none; reports/batch.py).
BATCH_FIELDS = ("batch_id", "batch_size", "batch_wall_time")
# Per-turn lists that may be absent (older files, or the baseline).
OPTIONAL_TURN_FIELDS = (
    "decoding_steps", "accept_lengths_per_turn", "draft_seconds", "verify_seconds",
    "extracted", "correct", "grade_error", "token_ids_sha1",
) + BATCH_FIELDS


class SpeedError(Exception):
    """Bad input; main() prints it as a single 'error: ...' line and exits 2."""


# ---------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------

def _is_number(x):
    # bool is an int subclass but never a valid count or duration; NaN/inf
    # (which json.loads accepts) would poison every sum.
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _non_negative(x):
    return _is_number(x) and x >= 0


def _is_lengths(v):
    return isinstance(v, list) and all(_non_negative(a) for a in v)


def _is_per_turn(value, n):
    """The old layout: accept_lengths holds one list per turn."""
    return isinstance(value, list) and len(value) == n and all(isinstance(v, list) for v in value)


def turn_accept_lengths(choice):
    """Accepted lengths of each turn of a (validated) choice, in either layout: accept_lengths_per_turn (new), a
    list-of-lists accept_lengths (old), or the flat list of a one-turn choice. None when unknown (no field, or a
    flat list over several turns, as Spec-Bench itself writes)."""
    per_turn = choice.get("accept_lengths_per_turn")
    if per_turn is not None:
        return per_turn
    value, n = choice.get("accept_lengths"), len(choice["turns"])
    if value is None:
        return None
    if _is_per_turn(value, n):
        return value
    return [value] if n == 1 else None


def flat_accept_lengths(choice):
    """Accepted lengths of the whole choice, in either layout; None when absent."""
    per_turn = turn_accept_lengths(choice)
    if per_turn is not None:
        return [a for turn in per_turn for a in turn]
    return choice.get("accept_lengths")


def _check_accept_lengths(choice, n):
    """Why choices[0].accept_lengths is unusable, or None (per_turn itself is checked with the per-turn fields)."""
    value = choice.get("accept_lengths")
    if value is None:
        return None
    if "accept_lengths_per_turn" not in choice and _is_per_turn(value, n):
        bad = [i for i, v in enumerate(value) if not _is_lengths(v)]
        return f"'choices[0].accept_lengths[{bad[0]}]' must be a list of non-negative numbers" if bad else None
    if not _is_lengths(value):
        return ("'choices[0].accept_lengths' must be a flat list of non-negative numbers "
                f"(or, in older files, one such list per turn: {n})")
    per_turn = choice.get("accept_lengths_per_turn")
    if per_turn is not None and value != [a for turn in per_turn for a in turn]:
        return "'choices[0].accept_lengths' must be the turns of 'accept_lengths_per_turn' joined in order"
    return None


# field -> (check for one per-turn entry, what the entry should be)
_ENTRY_CHECKS = {
    "new_tokens": (_non_negative, "a non-negative number"),
    "wall_time": (_non_negative, "a non-negative number"),
    "decoding_steps": (_non_negative, "a non-negative number"),
    "draft_seconds": (_non_negative, "a non-negative number"),
    "verify_seconds": (_non_negative, "a non-negative number"),
    "accept_lengths_per_turn": (_is_lengths, "a list of non-negative numbers"),
    "correct": (lambda v: v is None or isinstance(v, bool), "true, false or null"),
    "grade_error": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "token_ids_sha1": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "extracted": (lambda v: True, "anything"),
    "batch_id": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "batch_size": (lambda v: _is_number(v) and v == int(v) and v >= 1, "a positive integer"),
    "batch_wall_time": (_non_negative, "a non-negative number"),
}


def _check_record(rec):
    """Return None when rec is a usable answer line, else the reason it is not."""
    if not isinstance(rec, dict):
        return "expected a JSON object"
    if "question_id" not in rec:
        return "missing 'question_id'"
    qid = rec["question_id"]
    if isinstance(qid, bool) or not isinstance(qid, (int, str)):
        return "'question_id' must be an integer or a string"
    if rec.get("category") is not None and not isinstance(rec["category"], str):
        return "'category' must be a string"
    choices = rec.get("choices")
    if not isinstance(choices, list) or not choices:
        return "missing or empty 'choices'"
    choice = choices[0]
    if not isinstance(choice, dict):
        return "'choices[0]' must be an object"
    turns = choice.get("turns")
    if not isinstance(turns, list) or not turns:
        return "missing or empty 'choices[0].turns'"
    if not all(isinstance(t, str) for t in turns):
        return "'choices[0].turns' entries must be strings"
    for name in REQUIRED_TURN_FIELDS:
        if choice.get(name) is None:
            return f"missing 'choices[0].{name}'"
    for name in REQUIRED_TURN_FIELDS + OPTIONAL_TURN_FIELDS:
        values = choice.get(name)
        if values is None:
            continue
        if not isinstance(values, list) or len(values) != len(turns):
            return f"'choices[0].{name}' must be a list with one entry per turn ({len(turns)})"
        check, expected = _ENTRY_CHECKS[name]
        for i, v in enumerate(values):
            if not check(v):
                return f"'choices[0].{name}[{i}]' must be {expected}"
    present = [name for name in BATCH_FIELDS if choice.get(name) is not None]
    if present and len(present) < len(BATCH_FIELDS):
        missing = next(name for name in BATCH_FIELDS if name not in present)
        return f"'choices[0].{present[0]}' without 'choices[0].{missing}' (a batched run writes all three)"
    return _check_accept_lengths(choice, len(turns))


def _read_lines(path, missing):
    """The file's lines as bytes; SpeedError "<path>: <missing>" when it is absent, naming the OS error otherwise."""
    try:
        with open(path, "rb") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        raise SpeedError(f"{path}: {missing}") from None
    except OSError as e:
        raise SpeedError(f"{path}: cannot read ({e.strerror or e})") from None


def load_answers(path):
    """Read and validate a JSONL answer file; raise SpeedError naming file:line."""
    raw_lines = _read_lines(path, "no such file")
    rows, first_seen = [], {}
    for lineno, raw in enumerate(raw_lines, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SpeedError(f"{path}:{lineno}: not valid UTF-8") from None
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            reason = getattr(e, "msg", "nested too deeply")
            raise SpeedError(f"{path}:{lineno}: invalid JSON ({reason})") from None
        reason = _check_record(rec)
        if reason:
            raise SpeedError(f"{path}:{lineno}: {reason}")
        qid = rec["question_id"]
        # A duplicate would silently double-count or shadow a question.
        if qid in first_seen:
            raise SpeedError(f"{path}:{lineno}: duplicate question_id {qid!r} "
                             f"(first on line {first_seen[qid]})")
        first_seen[qid] = lineno
        rows.append(rec)
    if not rows:
        raise SpeedError(f"{path}: no answers in file")
    return rows


def config_path(answer_path):
    """Sidecar config path: <answer file without .jsonl>.config.json."""
    stem = answer_path[:-len(".jsonl")] if answer_path.endswith(".jsonl") else answer_path
    return stem + ".config.json"


def load_config(answer_path):
    """Sidecar config dict, or None when absent; SpeedError when unreadable."""
    path = config_path(answer_path)
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SpeedError(f"{path}: unreadable config ({e})") from None
    if not isinstance(cfg, dict):
        raise SpeedError(f"{path}: config must be a JSON object")
    return cfg


def _speedup(x):
    return "n/a" if x is None else f"{x:.2f}x"


def speedup_cell(stats):
    """'1.52x [1.31, 1.80]': the speedup and its 95% interval (left out below 2 questions)."""
    ci = stats.get("speedup_ci")
    text = _speedup(stats["speedup"])
    return text if ci is None or stats["speedup"] is None else f"{text} [{ci[0]:.2f}, {ci[1]:.2f}]"
