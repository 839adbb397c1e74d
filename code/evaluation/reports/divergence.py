"""Why a greedy method's turn differs from the baseline's: rounding at a near-tie, an inherited prompt, or unexplained.

In exact arithmetic every method writes AR's tokens at temperature 0. In half precision a tree forward and an AR step
round differently, so where AR's top two logits are nearly tied the method may pick the other one, and from there it
writes another text. Each method turn that is not token-identical to the baseline's is put in one class, by its first
differing token:

- near_tie: the baseline's top-1 / top-2 logit margin there is under the near-tie threshold (rounding can flip it);
- inherited: the turn's prompt differs from the baseline's (multi-round thinking quotes the previous round's answer,
  which already differed), so its tokens are not comparable;
- unexplained: neither: a bug until shown otherwise;
- unclassified: what it needs is missing (token ids of either side, the baseline's recorded margins: older files).

The threshold is relative to the dtype's resolution: margin < NEAR_TIE_FACTOR x eps(dtype) x |top-1 logit|. The
baseline run (AR, temperature 0) records, per turn, `near_ties`: [position, margin in units of eps x |top-1 logit|]
of every emitted token whose margin is under RECORDED_UP_TO times the threshold (the rest never counts as a near-tie).
Greedy runs keep `token_ids` (exact: re-tokenising text is not). Only choices[0] is read, as in speed.py.

At temperature > 0 outputs are compared in law (the sampling tests), not token by token: nothing is classified.

Needs only the standard library and numpy (speed.py and compare.py call `classify`).
"""
from __future__ import annotations

from evaluation.reports import uncertainty

# Machine epsilon of each dtype the harness runs in (torch.finfo(dtype).eps).
EPS = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7, "float32": 2.0 ** -23, "float64": 2.0 ** -52}
# A margin under this many eps x |top-1 logit| is a near-tie. Measured on SmolLM2-135M in bfloat16 on the CPU
# (8 demo questions x 96 tokens, 7 methods, each method's logits against AR's at the 3,158 positions where the two
# still agreed): the method's top-1/top-2 margin strayed from AR's by at most 3.2 such units (99.9% under 2.1, half
# of them 0), and the 32 first flips sat at AR margins of at most 1.74. 4 covers the largest perturbation seen.
NEAR_TIE_FACTOR = 4.0
# The baseline records margins up to this many times the threshold: a flip just above it is shown, not hidden.
RECORDED_UP_TO = 1.5
CLASSES = ("identical", "near_tie", "inherited", "unexplained", "unclassified")
SAMPLED_NOTE = "temperature > 0: outputs are compared in law (the sampling tests), not token by token"


def near_tie_rule(dtype: str) -> dict:
    """What the baseline records and the reports apply, as written in its run configuration."""
    return {"rule": "top-1 minus top-2 logit < factor x eps x |top-1 logit|", "factor": NEAR_TIE_FACTOR,
            "dtype": dtype, "eps": EPS.get(dtype), "recorded_up_to": NEAR_TIE_FACTOR * RECORDED_UP_TO}


def near_ties(margins: list[float], limit: float = NEAR_TIE_FACTOR * RECORDED_UP_TO) -> list[list]:
    """[position, margin] of each emitted token whose relative margin (units of eps x |top-1 logit|) is under
    `limit`: a turn's `near_ties` field."""
    return [[i, round(m, 2)] for i, m in enumerate(margins) if m < limit]


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (the shorter length when one is a prefix of the other); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _column(choice: dict, name: str, t: int):
    values = choice.get(name)
    return values[t] if isinstance(values, list) and t < len(values) else None


def _ids(choice: dict, t: int) -> list[int] | None:
    """Turn t's token ids, None when not kept (or not a list of ids: a file this harness did not write)."""
    ids = _column(choice, "token_ids", t)
    ok = isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
    return ids if ok else None


def _ties(choice: dict, t: int) -> dict | None:
    """Turn t's recorded near-ties as {position: margin}; None when not recorded (or malformed)."""
    ties = _column(choice, "near_ties", t)
    try:
        return {int(p): float(m) for p, m in ties}
    except (TypeError, ValueError):
        return None


def _same(method: dict, base: dict, t: int) -> bool:
    """Token ids when both sides kept them, else the hashes, else the text (as speed.py's identical count)."""
    ids = _ids(method, t), _ids(base, t)
    if None not in ids:
        return ids[0] == ids[1]
    hashes = _column(method, "token_ids_sha1", t), _column(base, "token_ids_sha1", t)
    if None not in hashes:
        return hashes[0] == hashes[1]
    return method["turns"][t] == base["turns"][t]


def _prompt_differs(method: dict, base: dict, t: int, earlier_differed: bool) -> bool:
    """By the prompts' hashes when both sides recorded them; else: an earlier turn of this choice already differed."""
    hashes = _column(method, "prompt_sha1", t), _column(base, "prompt_sha1", t)
    if None not in hashes:
        return hashes[0] != hashes[1]
    return earlier_differed


def classify_turn(method: dict, base: dict, t: int, earlier_differed: bool, factor: float) -> dict:
    """Turn t of a method choice against the baseline's: {"class", and where known "position" (first differing
    token), "baseline_margin" (relative; None: at or over what the baseline recorded), "reason"}."""
    if _same(method, base, t):
        return {"class": "identical"}
    ids = _ids(method, t), _ids(base, t)
    at = first_difference(ids[0], ids[1]) if None not in ids else None
    if _prompt_differs(method, base, t, earlier_differed):
        return {"class": "inherited", "position": at}
    if at is None:
        return {"class": "unclassified", "reason": "no token ids (run at temperature 0 with this harness's loop)"}
    ties = _ties(base, t)
    if ties is None:
        return {"class": "unclassified", "position": at, "reason": "the baseline recorded no logit margins"}
    margin = ties.get(at)
    verdict = "near_tie" if margin is not None and margin < factor else "unexplained"
    out = {"class": verdict, "position": at, "baseline_margin": margin}
    if at < min(len(ids[0]), len(ids[1])):
        out.update(method_token=ids[0][at], baseline_token=ids[1][at])
    return out


def _greedy(*configs) -> bool:
    return all((c or {}).get("temperature", 0) == 0 for c in configs)


def classify(method_rows: list[dict], base_rows: list[dict], method_config: dict | None = None,
             base_config: dict | None = None) -> dict:
    """Every turn of choices[0] of the questions in both files, classified (see the module's docstring):
    {"greedy", "counts" (per class), "n_turns", "turns" (question_id, turn (1-based), class, position, ...),
    "factor", "dtype", "speedup_identical_or_near_tie" (speedup over those turns only, with its interval)}.
    At temperature > 0: {"greedy": False, "note", "counts": {"identical": ...}, "n_turns"} only."""
    rule = (base_config or {}).get("near_tie_rule") or {}
    factor = rule.get("factor", NEAR_TIE_FACTOR)
    base_by_id = {row["question_id"]: row for row in base_rows}
    turns = []
    for row in method_rows:
        base = base_by_id.get(row["question_id"])
        if base is None:
            continue
        method_choice, base_choice = row["choices"][0], base["choices"][0]
        differed = False
        for t in range(min(len(method_choice["turns"]), len(base_choice["turns"]))):
            verdict = classify_turn(method_choice, base_choice, t, differed, factor)
            differed = differed or verdict["class"] != "identical"
            turns.append({"question_id": row["question_id"], "turn": t + 1, **verdict})
    counts = {name: sum(v["class"] == name for v in turns) for name in CLASSES}
    if not _greedy(method_config, base_config):
        return {"greedy": False, "note": SAMPLED_NOTE, "counts": {"identical": counts["identical"]},
                "n_turns": len(turns)}
    kept = {(v["question_id"], v["turn"] - 1) for v in turns if v["class"] in ("identical", "near_tie")}
    return {"greedy": True, "counts": counts, "n_turns": len(turns), "turns": turns, "factor": factor,
            "recorded_up_to": rule.get("recorded_up_to", NEAR_TIE_FACTOR * RECORDED_UP_TO),
            "dtype": rule.get("dtype") or (base_config or {}).get("dtype"),
            "speedup_identical_or_near_tie": speedup_over(method_rows, base_rows, kept)}


def speedup_over(method_rows: list[dict], base_rows: list[dict], kept: set) -> dict:
    """Tokens/s over the kept (question_id, turn index) pairs only, method over baseline (each side's per-turn
    new_tokens / wall_time; at --batch-size > 1 wall_time is a turn's latency), with its 95% interval over questions."""
    base_by_id = {row["question_id"]: row for row in base_rows}
    sums = []
    for row in method_rows:
        base = base_by_id.get(row["question_id"])
        turns = sorted(t for q, t in kept if q == row["question_id"])
        if base is None or not turns:
            continue
        m, b = row["choices"][0], base["choices"][0]
        sums.append([sum(side[key][t] for t in turns) for side in (m, b) for key in ("new_tokens", "wall_time")])
    if not sums:
        return {"speedup": None, "speedup_ci": None, "n_turns": 0}
    tokens, seconds, base_tokens, base_seconds = (list(column) for column in zip(*sums))
    rate, base_rate = _ratio(sum(tokens), sum(seconds)), _ratio(sum(base_tokens), sum(base_seconds))
    ci = uncertainty.speedup_interval(tokens, seconds, base_tokens, base_seconds)
    return {"speedup": _ratio(rate, base_rate) if rate is not None else None,
            "speedup_ci": list(ci) if ci else None, "n_turns": len(kept)}


def _ratio(num, den):
    return num / den if den else None


def counts_cell(result: dict) -> str:
    """'3 / 2 / 1 / 0' (identical / near-tie / inherited / unexplained), '+N unclassified' when some are."""
    c = result["counts"]
    if not result["greedy"]:
        return f"{c['identical']}/{result['n_turns']} identical (T > 0: in law)"
    cell = f"{c['identical']} / {c['near_tie']} / {c['inherited']} / {c['unexplained']}"
    return cell + (f" (+{c['unclassified']} unclassified)" if c["unclassified"] else "")


def speedup_cell(result: dict) -> str:
    """'1.52x over 5 turns' (no interval here: the main speedup column carries one)."""
    if not result["greedy"]:
        return "n/a (T > 0)"
    s = result["speedup_identical_or_near_tie"]
    return "n/a" if s["speedup"] is None else f"{s['speedup']:.2f}x over {s['n_turns']} turns"


def rule_note(result: dict) -> str:
    """The sentence defining the classes, for under a table."""
    if not result["greedy"]:
        return f"Divergence: {SAMPLED_NOTE}."
    return ("Divergence (greedy, token by token against the baseline, first differing token of each turn): "
            f"near-tie = the baseline's top-1/top-2 logit margin there < {result['factor']:g} x eps("
            f"{result.get('dtype') or 'dtype'}) x |top-1 logit| (rounding); inherited = the turn's prompt differs "
            "(an earlier round already differed); unexplained = neither (a bug until shown otherwise).")


def unexplained_lines(name: str, result: dict, limit: int = 10) -> list[str]:
    """One line per unexplained (and unclassified) turn: where to look."""
    if not result["greedy"]:
        return []
    lines = []
    for v in result["turns"]:
        if v["class"] not in ("unexplained", "unclassified"):
            continue
        margin = v.get("baseline_margin")
        where = f"token {v['position']}" if v.get("position") is not None else "unknown token"
        why = v.get("reason") or ("baseline margin " + (f"{margin:g}" if margin is not None else
                                                         f">= {result['recorded_up_to']:g}")
                                  + " x eps x |top-1|")
        lines.append(f"{name}: question {v['question_id']} turn {v['turn']}, {where}: {v['class']} ({why})")
    return lines[:limit] + ([f"{name}: ... {len(lines) - limit} more"] if len(lines) > limit else [])


def markdown_lines(result: dict, name: str = "method") -> list[str]:
    """speed.py's paragraph: the counts, the speedup over identical-or-near-tie turns, unexplained turns."""
    if not result["greedy"]:
        return [f"Divergence: {result['counts']['identical']}/{result['n_turns']} turns identical to the baseline; "
                f"{SAMPLED_NOTE}."]
    c, s = result["counts"], result["speedup_identical_or_near_tie"]
    speedup = "n/a" if s["speedup"] is None else f"{s['speedup']:.2f}x" + (
        f" [{s['speedup_ci'][0]:.2f}, {s['speedup_ci'][1]:.2f}]" if s["speedup_ci"] else "")
    lines = [f"Divergence from the baseline: {c['identical']} identical, {c['near_tie']} near-tie, {c['inherited']} "
             f"inherited, {c['unexplained']} unexplained"
             + (f", {c['unclassified']} unclassified" if c["unclassified"] else "")
             + f" of {result['n_turns']} turns; speedup over the {s['n_turns']} identical-or-near-tie turns: "
             f"{speedup}.", rule_note(result)]
    return lines + unexplained_lines(name, result)
