"""One table for several methods against one baseline: overall and per-turn speedup (with its 95% interval), MAT,
drafting share.

    python evaluation/compare.py --base-path AR.jsonl --file-path PLD.jsonl SAM.jsonl ... [--markdown-out F]
        [--json-out F]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from evaluation.reports import speed


def method_name(path: str) -> str:
    config = speed.load_config(path) or {}
    name = config.get("method") or os.path.basename(path)
    fallback = (config.get("method_parameters") or {}).get("fallback")   # SAM[Token Recycling], SAM[EAGLE-3]
    return f"{name}[{fallback['name']}]" if fallback else name


def summaries(base_path: str, paths: list[str]) -> list[dict]:
    """One speed.summarize per method file, against the same baseline; SpeedError on bad input."""
    base = speed.load_answers(base_path)
    out = []
    for path in paths:
        summary = speed.summarize(speed.load_answers(path), base)
        out.append({"name": method_name(path), "path": path, "overall": summary["overall"],
                    "per_turn": summary["per_turn"], "warnings": summary["warnings"]})
    return out


def unique_warnings(rows: list[dict]) -> list[str]:
    """Each summary's warnings once; the noisy-baseline one is about the shared baseline, so not per method."""
    seen = []
    for row in rows:
        noisy = speed.noisy_baseline(row["overall"])
        for msg in row["warnings"]:
            text = msg if msg == noisy else f"{row['name']}: {msg}"
            if text not in seen:
                seen.append(text)
    return seen


def render(base_path: str, paths: list[str]) -> str:
    """The markdown table of the method files against the baseline file."""
    return table(base_path, summaries(base_path, paths))


def table(base_path: str, rows: list[dict]) -> str:
    turns = max((len(r["per_turn"]) for r in rows), default=0)
    header = ["Method", "tok/s", "Speedup [95% CI]"] + [f"Speedup turn {t + 1}" for t in range(turns)] + \
             ["MAT"] + [f"MAT turn {t + 1}" for t in range(turns)] + \
             ["Drafting share", "Accuracy", "Identical turns"]
    base_overall = rows[0]["overall"] if rows else None
    lines = [f"Baseline: {base_path}"
             + (f" ({speed._num(base_overall['base_tokens_per_s'])} tok/s)" if base_overall else ""), "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        o, per_turn = r["overall"], r["per_turn"]
        cells = [r["name"], speed._num(o["tokens_per_s"]), speed.speedup_cell(o)]
        cells += [speed.speedup_cell(per_turn[t]) if t < len(per_turn) else "" for t in range(turns)]
        cells += [speed._num(o["mat"])]
        cells += [speed._num(per_turn[t]["mat"]) if t < len(per_turn) else "" for t in range(turns)]
        cells += [speed._pct(o["drafting_share"]), speed._pct(o["accuracy"]), f"{o['identical_turns']}/{o['n_turns']}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "MAT = mean accepted tokens per target decoding step, bonus token counted (AR = 1.00). "
              "Speedup intervals: 95% paired bootstrap over questions."]
    noisy = speed.noisy_baseline(base_overall) if base_overall else None
    if noisy:
        lines.append(f"Warning: {noisy}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-path", required=True)
    parser.add_argument("--file-path", nargs="+", required=True)
    parser.add_argument("--markdown-out")
    parser.add_argument("--json-out", help="write every method's overall and per-turn figures as JSON here")
    args = parser.parse_args(argv)
    try:
        rows = summaries(args.base_path, args.file_path)
        text = table(args.base_path, rows)
        for msg in unique_warnings(rows):
            print(f"warning: {msg}", file=sys.stderr)
        sys.stdout.write(text)
        if args.markdown_out:
            speed._write(args.markdown_out, text)
        if args.json_out:
            speed._write(args.json_out, json.dumps({"baseline": args.base_path, "methods": rows,
                                                    "mat_counts_bonus_token": True,
                                                    "speedup_interval": "95% paired bootstrap over questions"},
                                                   indent=2) + "\n")
    except speed.SpeedError as exc:
        print("error: " + " ".join(str(exc).split("\n")), file=sys.stderr)
        return 2
    return 0
