"""One table for several methods against one baseline: overall and per-turn speedup (with its 95% interval), MAT,
drafting share.

    python evaluation/compare.py --base-path AR.jsonl --file-path PLD.jsonl SAM.jsonl ... [--markdown-out F]
        [--json-out F]

Runs at --batch-size B > 1 (every file at the same B, else one `error: compare at the same --batch-size: ...` line):
tok/s is batch throughput (each batch's wall time counted once), the speedup is the ratio of batch throughputs with its
interval over units of questions that shared a batch (reports/batch.py), and a column gives the per-sequence latency.

Greedy runs: each turn that differs from the baseline's is classified by its first differing token (near-tie,
inherited, unexplained: reports/divergence.py), and the speedup is also given over the identical-or-near-tie turns.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from evaluation.reports import batch, divergence, speed


def method_name(path: str) -> str:
    config = speed.load_config(path) or {}
    name = config.get("method") or os.path.basename(path)
    fallback = (config.get("method_parameters") or {}).get("fallback")   # SAM[Token Recycling], SAM[EAGLE-3]
    return f"{name}[{fallback['name']}]" if fallback else name


def summaries(base_path: str, paths: list[str]) -> list[dict]:
    """One speed.summarize per method file, against the same baseline; SpeedError on bad input or when the files were
    run at different batch sizes."""
    base = speed.load_answers(base_path)
    base_config = speed._config(base_path)
    base_size = (base_path, batch.run_batch_size(base_path, base, base_config))
    out = []
    for path in paths:
        rows = speed.load_answers(path)
        size = batch.check_same_batch_size((path, batch.run_batch_size(path, rows, speed._config(path))), base_size)
        summary = speed.summarize(rows, base)
        out.append({"name": method_name(path), "path": path, "overall": summary["overall"],
                    "per_turn": summary["per_turn"], "warnings": summary["warnings"],
                    "divergence": divergence.classify(rows, base, speed._config(path), base_config)})
        if summary.get("batched"):
            out[-1]["batch_size"] = size
    names = [row["name"] for row in out]
    for row in out:   # variants of one method (interleaved NAME=MODULE runs): tell them apart by their file
        if names.count(row["name"]) > 1:
            row["name"] += f" ({os.path.splitext(os.path.basename(row['path']))[0]})"
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
    if any("batch_size" in r for r in rows):
        return batched_table(base_path, rows)
    turns = max((len(r["per_turn"]) for r in rows), default=0)
    header = ["Method", "tok/s", "Speedup [95% CI]"] + [f"Speedup turn {t + 1}" for t in range(turns)] + \
             ["MAT"] + [f"MAT turn {t + 1}" for t in range(turns)] + \
             ["Drafting share", "Accuracy"] + DIVERGENCE_HEADER
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
        cells += [speed._pct(o["drafting_share"]), speed._pct(o["accuracy"])] + divergence_cells(r)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "MAT = mean accepted tokens per target decoding step, bonus token counted (AR = 1.00). "
              "Speedup intervals: 95% paired bootstrap over questions."]
    noisy = speed.noisy_baseline(base_overall) if base_overall else None
    if noisy:
        lines.append(f"Warning: {noisy}.")
    return "\n".join(lines + divergence_notes(rows)) + "\n"


DIVERGENCE_HEADER = ["Identical / near-tie / inherited / unexplained turns", "Speedup (identical or near-tie turns)"]


def divergence_cells(row: dict) -> list[str]:
    d = row["divergence"]
    return [divergence.counts_cell(d), divergence.speedup_cell(d)]


def divergence_notes(rows: list[dict]) -> list[str]:
    """What the divergence columns count, then each unexplained turn (where to look for a bug)."""
    if not rows:
        return []
    notes = [divergence.rule_note(rows[0]["divergence"])]
    return notes + [line for r in rows for line in divergence.unexplained_lines(r["name"], r["divergence"])]


def batched_table(base_path: str, rows: list[dict]) -> str:
    """table() for runs at --batch-size > 1: batch throughput, its speedup (interval over units), per-sequence
    latency."""
    turns = max((len(r["per_turn"]) for r in rows), default=0)
    header = ["Method", "tok/s (batch)", "Throughput speedup [95% CI]"] + \
             [f"Speedup turn {t + 1}" for t in range(turns)] + ["Latency s/turn", "Seq. tok/s", "MAT"] + \
             [f"MAT turn {t + 1}" for t in range(turns)] + ["Drafting share", "Accuracy"] + DIVERGENCE_HEADER
    base = rows[0]["overall"]
    size = rows[0]["batch_size"]
    lines = [f"Baseline: {base_path} ({speed._num(base['base_tokens_per_s'])} tok/s batch throughput, "
             f"{speed._num(base['base_latency'])} s/turn latency, {speed._num(base['base_sequence_tokens_per_s'])} "
             "seq. tok/s)", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        o, per_turn = r["overall"], r["per_turn"]
        cells = [r["name"], speed._num(o["tokens_per_s"]), speed.speedup_cell(o)]
        cells += [speed.speedup_cell(per_turn[t]) if t < len(per_turn) else "" for t in range(turns)]
        cells += [speed._num(o.get("latency")), speed._num(o.get("sequence_tokens_per_s")), speed._num(o["mat"])]
        cells += [speed._num(per_turn[t]["mat"]) if t < len(per_turn) else "" for t in range(turns)]
        cells += [speed._pct(o["drafting_share"]), speed._pct(o["accuracy"])] + divergence_cells(r)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", speed.batch_note({"batch_size": size}),
              "MAT = mean accepted tokens per target decoding step, bonus token counted (AR = 1.00). "
              f"Speedup intervals: {batch.INTERVAL}."]
    noisy = speed.noisy_baseline(base)
    if noisy:
        lines.append(f"Warning: {noisy}.")
    return "\n".join(lines + divergence_notes(rows)) + "\n"


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
            data = {"baseline": args.base_path, "methods": rows, "mat_counts_bonus_token": True,
                    "speedup_interval": "95% paired bootstrap over questions"}
            if any("batch_size" in r for r in rows):
                data.update(batch_size=rows[0]["batch_size"], throughput=batch.THROUGHPUT,
                            speedup_interval=batch.INTERVAL)
            speed._write(args.json_out, json.dumps(data, indent=2) + "\n")
    except speed.SpeedError as exc:
        print("error: " + " ".join(str(exc).split("\n")), file=sys.stderr)
        return 2
    return 0
