#!/usr/bin/env python
"""Does the test suite still bite? Plant subtle bugs one at a time in a copy of code/ and run the suite on each.

    python scripts/plant_bugs.py [--bugs NAME ...] [--code DIR] [--full]

Each bug is a one-place edit of the engine, a drafter, the loop or replay, of the kind a refactor could slip in. For
each, the copy is patched (the edit must apply exactly once, or the script stops: the code moved and the bug list
needs updating), then the test files most likely to catch it run in full; if none of their tests fails, the whole
suite runs, stopping at the first failure. The table names, per bug, the tests that failed. A bug no test catches is
a hole in the suite; the script exits 1.

`--code DIR` plants into another checkout's code/ (e.g. an older commit's, to compare the suites); `--full` runs the
whole suite on every bug without stopping at the first failure (slow: a suite run per bug). Not part of the suite:
each bug costs one or more pytest runs. Run from code/.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

CODE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Bug:
    name: str
    what: str
    path: str          # relative to code/
    old: str
    new: str
    tests: list[str]   # the files to run first (all their tests)


BUGS = [
    Bug("kv-row-length", "a row's new KV entries written at the next row's length",
        "model/engine/kv_cache.py",
        "    slots = torch.tensor(lengths, device=device)[:, None] + torch.arange(n, device=device)",
        "    slots = torch.tensor(lengths[1:] + lengths[:1], device=device)[:, None] + torch.arange(n, device=device)",
        ["tests/test_batch.py", "tests/test_batch_rows.py"]),
    Bug("rollback-depth-2", "the rollback keeps the entry one before the accepted node at depth 2",
        "model/engine/kv_cache.py",
        "            src = [[start + o for o in offs] + [start + j for j in range(len(offs), width)]",
        "            src = [[start + (o - 1 if j == 2 else o) for j, o in enumerate(offs)] + "
        "[start + j for j in range(len(offs), width)]",
        ["tests/test_batch.py", "tests/test_methods_lossless.py"]),
    Bug("residual-unnormalised", "the residual after a rejected child is not renormalised",
        "model/engine/sampling.py",
        "                residual = residual / total if total > 0 else p[pos]",
        "                residual = residual if total > 0 else p[pos]",
        ["tests/test_sampling_oracles.py", "tests/test_stand.py", "tests/test_sampling.py"]),
    Bug("siblings-when-off", "a sibling's text reaches a row with cross-sample drafting off",
        "evaluation/run/loop.py",
        "        drafter.share_with([d for d, q in zip(drafters, questions) if share and q == question_id "
        "and d is not drafter])",
        "        drafter.share_with([d for d, q in zip(drafters, questions) if q == question_id and d is not drafter])",
        ["tests/test_continuous_batching.py", "tests/test_replay.py"]),
    Bug("budget-one-late", "the thinking budget forces its phrase one token late",
        "model/engine/decoder.py",
        "        if row.thinking_done or len(row.result.tokens) < budget.trigger_at:",
        "        if row.thinking_done or len(row.result.tokens) < budget.trigger_at + 1:",
        ["tests/test_thinking_budget.py", "tests/test_methods_lossless.py"]),
    Bug("chooser-orphan", "the cost-aware chooser keeps a node whose parent it cut",
        "model/engine/cost.py",
        "    return sorted(order[:best_m])",
        "    keep = sorted(order[:best_m])\n    return keep[:-2] + keep[-1:] if len(keep) > 2 else keep",
        ["tests/test_cost_aware.py"]),
    Bug("replay-token-order", "replay lets a row's drafter observe the step's tokens in reverse order",
        "evaluation/run/replay.py",
        "                row.drafter.observe(StepFeedback(emitted, tree, path, [row.context[-len(emitted) - 1]] + tree.tokens,",
        "                row.drafter.observe(StepFeedback(emitted[::-1], tree, path, [row.context[-len(emitted) - 1]] + "
        "tree.tokens,",
        ["tests/test_replay.py"]),
    Bug("static-mask-last-past", "static mode's mask hides each row's last cached entry",
        "model/engine/static_forward.py",
        "        mask = torch.where(inside[:, None, :], tree, (offsets < 0)[:, None, :]).unsqueeze(1)",
        "        mask = torch.where(inside[:, None, :], tree, (offsets < -1)[:, None, :]).unsqueeze(1)",
        ["tests/test_static_engine.py"]),
    Bug("static-stale-lengths", "static mode's rollback moves the kept entries but leaves the device lengths",
        "model/engine/static_cache.py",
        "            self.device_lengths.copy_(packed[2 * rows * width:])",
        "            pass",
        ["tests/test_static_engine.py"]),
    Bug("draft-join-stale-row", "a sequence joining a draft model's batch starts on a copy of another row's cache",
        "model/engine/draft_batch.py",
        "        self.cache.set_lengths(self.cache.lengths[:n] + [0] * len(drafters))",
        "        pass",
        ["tests/test_continuous_batching.py"]),
]

FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)


def copy_code(source: str) -> str:
    """code/ copied to a temporary folder (the embedded model linked, not copied)."""
    target = os.path.join(tempfile.mkdtemp(prefix="planted-"), "code")
    shutil.copytree(source, target, symlinks=True,
                    ignore=shutil.ignore_patterns("local_model", "bench_out", "__pycache__", "model_answer*"))
    if os.path.isdir(os.path.join(source, "local_model")):
        os.symlink(os.path.join(source, "local_model"), os.path.join(target, "local_model"))
    return target


def plant(code: str, bug: Bug) -> None:
    path = os.path.join(code, bug.path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.count(bug.old) != 1:
        sys.exit(f"error: {bug.name}: the line to change is not in {bug.path} exactly once "
                 f"({text.count(bug.old)} times): update the bug list")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(bug.old, bug.new))


def pytest(code: str, args: list[str]) -> tuple[list[str], float]:
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=code,
                         capture_output=True, text=True)
    return FAILED.findall(run.stdout), time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bugs", nargs="+", choices=[b.name for b in BUGS], default=None)
    parser.add_argument("--code", default=CODE, help="the code/ folder to plant into (default: this one)")
    parser.add_argument("--full", action="store_true", help="the whole suite on every bug, every failure listed")
    args = parser.parse_args(argv)
    bugs = [b for b in BUGS if args.bugs is None or b.name in args.bugs]
    missed = 0
    print("| bug | what | tests that failed | seconds |\n|---|---|---|---|")
    for bug in bugs:
        code = copy_code(os.path.abspath(args.code))
        try:
            plant(code, bug)
            if args.full:
                failed, seconds = pytest(code, ["-n", "2", "tests"])
            else:
                failed, seconds = pytest(code, bug.tests)
                if not failed:
                    failed, more = pytest(code, ["-x", "tests"])
                    seconds += more
        finally:
            shutil.rmtree(os.path.dirname(code), ignore_errors=True)
        missed += not failed
        shown = ", ".join(f"`{f}`" for f in failed[:6]) + (f" and {len(failed) - 6} more" if len(failed) > 6 else "")
        print(f"| {bug.name} | {bug.what} | {shown or '**none: not caught**'} | {seconds:.0f} |", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
