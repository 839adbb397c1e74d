"""One table for several methods against one baseline: overall and per-turn speedup, MAT, drafting share.

    python evaluation/compare.py --base-path AR.jsonl --file-path PLD.jsonl SAM.jsonl ... [--markdown-out F]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import speed  # noqa: E402  (a sibling script; this file is run as a script too)


def method_name(path: str) -> str:
    config = speed.load_config(path) or {}
    name = config.get("method") or os.path.basename(path)
    fallback = (config.get("method_parameters") or {}).get("fallback")   # SAM[Token Recycling], SAM[EAGLE-3]
    return f"{name}[{fallback['name']}]" if fallback else name


def render(base_path: str, paths: list[str]) -> str:
    base = speed.load_answers(base_path)
    rows, turns = [], 0
    for path in paths:
        summary = speed.summarize(speed.load_answers(path), base)
        overall, per_turn = summary["overall"], summary["per_turn"]
        turns = max(turns, len(per_turn))
        rows.append((method_name(path), overall, per_turn))
    header = ["Method", "tok/s", "Speedup"] + [f"Speedup turn {t + 1}" for t in range(turns)] + \
             ["MAT"] + [f"MAT turn {t + 1}" for t in range(turns)] + \
             ["Drafting share", "Accuracy", "Identical turns"]
    base_overall = rows[0][1] if rows else None
    lines = [f"Baseline: {base_path}"
             + (f" ({speed._num(base_overall['base_tokens_per_s'])} tok/s)" if base_overall else ""), "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for name, o, per_turn in rows:
        cells = [name, speed._num(o["tokens_per_s"]), speed._speedup(o["speedup"])]
        cells += [speed._speedup(per_turn[t]["speedup"]) if t < len(per_turn) else "" for t in range(turns)]
        cells += [speed._num(o["mat"])]
        cells += [speed._num(per_turn[t]["mat"]) if t < len(per_turn) else "" for t in range(turns)]
        cells += [speed._pct(o["drafting_share"]), speed._pct(o["accuracy"]), f"{o['identical_turns']}/{o['n_turns']}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "MAT = mean accepted tokens per target decoding step, bonus token counted (AR = 1.00)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-path", required=True)
    parser.add_argument("--file-path", nargs="+", required=True)
    parser.add_argument("--markdown-out")
    args = parser.parse_args(argv)
    try:
        text = render(args.base_path, args.file_path)
    except speed.SpeedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    if args.markdown_out:
        with open(args.markdown_out, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
