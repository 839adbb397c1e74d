#!/usr/bin/env python
"""Figures of several methods against one baseline, as the paper shows them.

Run from code/:
    python evaluation/plot.py --base-path AR.jsonl --file-path A.jsonl B.jsonl ... --out-dir DIR [--prefix P] \
        [--context-buckets 1k,2k,4k,8k]
    python evaluation/plot.py --base-path OUT/b*/P-ar.jsonl --file-path OUT/b*/P-pld.jsonl OUT/b*/P-samd.jsonl \
        --out-dir DIR [--prefix P] [--batch-sweep]

Writes, each as PNG and SVG, into DIR (names start with P, default none):
    category_radar      speedup and MAT per category, one line per method (radar; bars when < 3 categories)
    progressive         speedup and MAT per turn (round of multi-round thinking, sample of Best-of-N)
    speedup_vs_mat      one point per method under the bound speedup <= MAT / (t(n)/t(1)) of the target's
                        measured forward cost (the run's `cost_profile`; speedup = MAT when none was measured)
    time_and_acceptance where the time goes (drafting / verifying / other) and the step-CDF of accepted lengths
    acceptance_by_context  MAT (left) and step-time speedup (right) against the context length, one line per method,
                        from the per-step logs (<stem>.steps.jsonl; written when a method has one with context_length):
                        bins of --context-buckets edges, else 8 equal widths over the context lengths logged; each
                        point at the mean context of its steps. Step-time speedup as speed.py --by-context: baseline
                        seconds per token / method seconds per token over the steps in the bin

Batch-size sweep: when the files span more than one --batch-size (config "batch_size"; absent: 1), or with
--batch-sweep, --base-path takes one baseline file per batch size and only this figure is written (the four above
compare runs at one batch size: plot each b<B>/ folder on its own for them):
    batch_sweep         left: throughput (tokens / wall time of each batch counted once) against B, log2 axis, one
                        line per method and the baseline's own curve (its batching gain over the smallest B, marked);
                        right: speedup over the baseline at the same B, with its 95% interval (paired bootstrap over
                        units of questions that shared a batch, reports/batch.py)
Files of different batch sizes of one method (config "method", as labelled below) form one line; files that share a
method name at one batch size (e.g. SAM with and without cross-sample drafting) are told apart by file name, which
the benchmark keeps the same in every b<B>/ folder (<prefix>-<method>.jsonl).

At --batch-size > 1 the speedups of the four figures are ratios of batch throughputs (each batch's time counted
once); at batch size 1 that is the definition below.

Throughput is sum(new_tokens) / sum(wall_time) over the turns both files have; speedup = method throughput /
baseline throughput over the same questions and turns. MAT = mean accepted tokens per target decoding step,
bonus token counted (AR = 1.00). Bad input: one `error: ...` line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys

from evaluation.reports import batch, speed
from evaluation.reports.compare import method_name

FIGURES = ("category_radar", "progressive", "speedup_vs_mat", "time_and_acceptance")
CONTEXT_FIGURE = "acceptance_by_context"   # written after FIGURES when a method's step log has context lengths
AUTO_CONTEXT_BINS = 8
SWEEP_FIGURE = "batch_sweep"
DPI = 100
SINGLE = (8.0, 5.0)      # inches: 800 x 500 px at DPI
DOUBLE = (10.0, 5.0)     # two panels side by side
BOUND_WIDTHS = (2, 4, 8, 16, 32, 64, 128, 256)   # draft widths n whose bound curves are drawn, when measured
MAX_BOUND_CURVES = 5
MAT_NOTE = "MAT: mean accepted tokens per step, bonus token included (AR = 1.00)"
TURN_WORD = {"multi_round": "round", "best_of_n": "sample"}


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------

def _questions(rows: list[dict], charged: dict | None = None) -> dict:
    """charged: (question_id, turn) -> the seconds choices[0]'s turn is charged (batch.turns: its wall_time at batch
    size 1, its share of its batch's wall time in a batch); wall_time when not given."""
    out = {}
    for row in rows:
        choice = row["choices"][0]
        n = len(choice["turns"])

        def column(name):
            values = choice.get(name)
            return values if isinstance(values, list) and len(values) == n else [None] * n

        accepts = speed.turn_accept_lengths(choice) or [None] * n
        draft, verify = column("draft_seconds"), column("verify_seconds")
        out[row["question_id"]] = {
            "category": row.get("category") or "uncategorized",
            "paradigm": row.get("paradigm"),
            "flat": speed.flat_accept_lengths(choice),
            "turns": [{"new_tokens": choice["new_tokens"][i], "wall_time": choice["wall_time"][i],
                       "seconds": (charged or {}).get((row["question_id"], i), choice["wall_time"][i]),
                       "accepts": accepts[i], "draft": draft[i], "verify": verify[i]} for i in range(n)],
        }
    return out


class Run:
    def __init__(self, path: str, label: str | None = None):
        self.path = path
        rows = speed.load_answers(path)
        self.config = speed.load_config(path) or {}
        self.batch = batch.from_rows(rows, path, self.config)   # the batch arithmetic's view (every choice)
        self.batch_size = self.batch.batch_size
        charged = {(t["question_id"], t["turn"]): t["seconds"] for t in self.batch.turns if t["choice"] == 0}
        self.questions = _questions(rows, charged)
        self.name = label or method_name(path)


# ---------------------------------------------------------------------------
# Arithmetic (over the questions and turns both files have)
# ---------------------------------------------------------------------------

def _ratio(num, den):
    return num / den if den else None


def _paired(run: Run, base: Run, category=None, turn=None):
    """[(method question, baseline question, [turn indices])] for matching question ids."""
    out = []
    for qid, q in run.questions.items():
        b = base.questions.get(qid)
        if b is None or (category is not None and q["category"] != category):
            continue
        depth = min(len(q["turns"]), len(b["turns"]))
        turns = list(range(depth)) if turn is None else ([turn] if turn < depth else [])
        if turns:
            out.append((q, b, turns))
    return out


def _speedup(paired) -> float | None:
    def tps(side):   # seconds: wall_time at batch size 1; in a batch, the turn's share of the batch's wall time
        turns = [p[side]["turns"][k] for p in paired for k in p[2]]
        return _ratio(sum(t["new_tokens"] for t in turns), sum(t["seconds"] for t in turns))
    method, base = tps(0), tps(1)
    return _ratio(method, base) if method is not None and base else None


def _accepts(q: dict, turns: list[int]) -> list | None:
    per_turn = [q["turns"][k]["accepts"] for k in turns]
    if all(a is not None for a in per_turn):
        return [a for turn in per_turn for a in turn]
    if len(turns) == len(q["turns"]):           # whole choice: the flat list will do
        return q["flat"]
    return None


def _mat(paired) -> float | None:
    lengths = []
    for q, _, turns in paired:
        a = _accepts(q, turns)
        if a is not None:
            lengths += a
    return _ratio(sum(lengths), len(lengths))


def _times(paired) -> dict | None:
    turns = [p[0]["turns"][k] for p in paired for k in p[2]]
    timed = [t for t in turns if t["draft"] is not None and t["verify"] is not None]
    if not timed:
        return None
    draft = sum(t["draft"] for t in timed)
    verify = sum(t["verify"] for t in timed)
    wall = max(sum(t["wall_time"] for t in timed), draft + verify)
    if not wall:
        return None
    return {"drafting": draft / wall, "verifying": verify / wall, "other": (wall - draft - verify) / wall}


def _depth(run: Run, base: Run) -> int:
    return max((len(p[2]) for p in _paired(run, base)), default=0)


def _categories(runs, base) -> list[str]:
    return sorted({p[0]["category"] for run in runs for p in _paired(run, base)})


# ---------------------------------------------------------------------------
# Cost profile and the bound speedup <= MAT / (t(n)/t(1))
# ---------------------------------------------------------------------------

def _valid_profile(p) -> bool:
    try:
        widths, lengths, ratio = p["widths"], p["context_lengths"], p["ratio"]
        return (len(widths) > 0 and len(ratio) == len(lengths) > 0
                and all(len(row) == len(widths) for row in ratio)
                and all(speed._is_number(x) and x > 0 for row in ratio for x in row)
                and all(speed._is_number(x) for x in list(widths) + list(lengths)))
    except (KeyError, TypeError):
        return False


def cost_profile(base: Run, runs: list[Run], warn):
    """The baseline's cost_profile, else the first method's; None when no run measured one."""
    for run in [base] + runs:
        profile = run.config.get("cost_profile")
        if profile is None:
            continue
        if _valid_profile(profile):
            return profile, run
        warn(f"{speed.config_path(run.path)}: malformed cost_profile, ignored")
    return None, None


def profile_ratio(profile: dict, width: float, context_length: float | None = None) -> float:
    """t(width)/t(1), as model.engine.profile.ForwardCostProfile.ratio: an unmeasured width costs what the next
    measured one costs, beyond the grid it grows linearly; linear between context lengths; the mean over the
    measured context lengths when context_length is None."""
    widths, lengths, table = profile["widths"], profile["context_lengths"], profile["ratio"]
    j = next((i for i, w in enumerate(widths) if w >= width), None)
    at = [row[-1] * width / widths[-1] for row in table] if j is None else [row[j] for row in table]
    if context_length is None:
        return statistics.fmean(at)
    if context_length <= lengths[0]:
        return at[0]
    if context_length >= lengths[-1]:
        return at[-1]
    i = next(i for i, n in enumerate(lengths) if n > context_length)
    share = (context_length - lengths[i - 1]) / (lengths[i] - lengths[i - 1])
    return at[i - 1] + share * (at[i] - at[i - 1])


def step_cost(run: Run, profile: dict) -> float | None:
    """Mean t(n)/t(1) over the run's own verification forwards (n = draft size + 1, at the step's context length),
    from the per-step log beside the answer file; None without one."""
    path = speed.config_path(run.path)[: -len(".config.json")] + ".steps.jsonl"
    total = count = 0
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    step = json.loads(line)
                    width = step["draft_size"] + 1
                    context = step.get("context_length")
                    if not speed._is_number(width) or width < 1:
                        continue
                except (ValueError, KeyError, TypeError):
                    continue
                total += profile_ratio(profile, width, context if speed._is_number(context) else None)
                count += 1
    except (OSError, UnicodeDecodeError):
        return None
    return _ratio(total, count)


def _bound_widths(profile: dict) -> list[int]:
    widths = [w for w in BOUND_WIDTHS if w <= max(profile["widths"])]
    if len(widths) > MAX_BOUND_CURVES:
        step = (len(widths) - 1) / (MAX_BOUND_CURVES - 1)
        widths = [widths[round(i * step)] for i in range(MAX_BOUND_CURVES)]
    return widths


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------

def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise speed.SpeedError("matplotlib is not installed (pip install -r requirements-cpu.txt)") from None
    matplotlib.use("Agg")
    matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "spectts-bench",
                                "font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8})
    import matplotlib.pyplot as plt
    return plt


def _colors(plt, runs):
    cycle = plt.get_cmap("tab10").colors
    return {run.name: cycle[i % len(cycle)] for i, run in enumerate(runs)}


def _subtitle(base: Run) -> str:
    c = base.config
    parts = [os.path.basename(str(c["model_path"]).rstrip("/")) if c.get("model_path") else None,
             c.get("paradigm"),
             f"T={c['temperature']}" if c.get("temperature") is not None else None,
             c.get("device_name") or c.get("device"),
             f"baseline {base.name}"]
    return ", ".join(str(p) for p in parts if p)


def _save(plt, fig, out_dir: str, name: str) -> list[str]:
    paths = []
    for ext, metadata in (("png", {"Software": None}), ("svg", {"Date": None})):
        path = os.path.join(out_dir, f"{name}.{ext}")
        try:
            fig.savefig(path, dpi=DPI, metadata=metadata)
        except OSError as exc:
            plt.close(fig)
            raise speed.SpeedError(f"{path}: cannot write ({exc.strerror or exc})") from None
        paths.append(path)
    plt.close(fig)
    return paths


def _nan(x):
    return math.nan if x is None else x


def _radar(ax, categories, series, colors, reference_label):
    import numpy as np
    from matplotlib.ticker import MaxNLocator
    angles = np.linspace(0, 2 * np.pi, len(categories), endpoint=False)
    closed = np.append(angles, angles[0])
    ax.set_xticks(angles)
    ax.set_xticklabels(categories)
    ax.set_theta_offset(np.pi / 2)
    ax.set_theta_direction(-1)
    circle = np.linspace(0, 2 * np.pi, 200)
    ax.plot(circle, np.ones_like(circle), color="black", linestyle="--", linewidth=1, label=reference_label)
    top = 1.0
    for name, values in series:
        v = np.array([_nan(x) for x in values], dtype=float)
        if np.isfinite(v).any():
            top = max(top, float(np.nanmax(v)))
        ax.plot(closed, np.append(v, v[0]), color=colors[name], marker="o", markersize=3, linewidth=1.4,
                label=name)
        ax.fill(closed, np.nan_to_num(np.append(v, v[0])), color=colors[name], alpha=0.06)
    ax.set_ylim(0, top * 1.1)
    ax.yaxis.set_major_locator(MaxNLocator(4))
    ax.set_rlabel_position(180 / len(categories))
    ax.tick_params(axis="y", labelsize=7)


def _bars(ax, categories, series, colors, reference_label):
    import numpy as np
    x = np.arange(len(categories))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, [_nan(v) for v in values], width, color=colors[name],
               label=name)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label=reference_label)
    ax.set_xticks(x)
    ax.set_xticklabels(categories)


def figure_category_radar(plt, runs, base, out_dir, prefix):
    """1. Per-category speedup and MAT, one line per method (radar; grouped bars under 3 categories)."""
    categories = _categories(runs, base)
    colors = _colors(plt, runs)
    polar = len(categories) >= 3
    fig, axes = plt.subplots(1, 2, figsize=DOUBLE, subplot_kw={"projection": "polar"} if polar else {})
    panels = (("Speedup over AR (x)", _speedup, "AR = 1.00x"),
              ("MAT (accepted tokens / step, bonus incl.)", _mat, "AR = 1.00"))
    for ax, (title, stat, ref) in zip(axes, panels):
        series = [(run.name, [stat(_paired(run, base, category=c)) for c in categories]) for run in runs]
        (_radar if polar else _bars)(ax, categories, series, colors, ref)
        ax.set_title(title, pad=18 if polar else 6)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.04), ncol=min(len(labels), 6),
               frameon=False)
    fig.suptitle(f"Per category: speedup and MAT  ({_subtitle(base)})", fontsize=10)
    fig.text(0.5, 0.01, MAT_NOTE, fontsize=7, color="dimgray", ha="center")
    fig.subplots_adjust(left=0.06, right=0.96, top=0.80, bottom=0.22, wspace=0.35)
    return _save(plt, fig, out_dir, prefix + "category_radar")


def _turn_word(runs, base) -> str:
    for run in [base] + runs:
        paradigm = run.config.get("paradigm") or next(
            (q["paradigm"] for q in run.questions.values() if q.get("paradigm")), None)
        if paradigm:
            return TURN_WORD.get(paradigm, "turn")
    return "turn"


def figure_progressive(plt, runs, base, out_dir, prefix):
    """2. Progressive acceleration: speedup and MAT per round (multi-round) or sample (Best-of-N)."""
    from matplotlib.ticker import MaxNLocator
    word = _turn_word(runs, base)
    colors = _colors(plt, runs)
    fig, (ax_s, ax_m) = plt.subplots(1, 2, figsize=DOUBLE)
    for run in runs:
        turns = list(range(_depth(run, base)))
        x = [k + 1 for k in turns]
        ax_s.plot(x, [_nan(_speedup(_paired(run, base, turn=k))) for k in turns], marker="o",
                  color=colors[run.name], label=run.name)
        ax_m.plot(x, [_nan(_mat(_paired(run, base, turn=k))) for k in turns], marker="o",
                  color=colors[run.name], label=run.name)
    for ax, ylabel, ref in ((ax_s, "Speedup over AR (x)", "AR = 1.00x"),
                            (ax_m, "MAT (accepted tokens / step, bonus token incl.)", "AR = 1.00")):
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label=ref)
        ax.set_xlabel(f"{word} (1 = first)")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    ax_s.set_title(f"Speedup per {word}")
    ax_m.set_title(f"MAT per {word}")
    ax_m.legend(loc="best")
    fig.suptitle(f"Progressive acceleration across {word}s  ({_subtitle(base)})", fontsize=10)
    fig.tight_layout()
    return _save(plt, fig, out_dir, prefix + "progressive")


def figure_speedup_vs_mat(plt, runs, base, out_dir, prefix, warn):
    """3. Speedup against MAT, one point per method, under speedup <= MAT / (t(n)/t(1))."""
    import numpy as np
    profile, source = cost_profile(base, runs, warn)
    colors = _colors(plt, runs)
    points = [(run, _mat(_paired(run, base)), _speedup(_paired(run, base))) for run in runs]
    known = [(r, m, s) for r, m, s in points if m is not None and s is not None]
    for run, m, s in points:
        if (m, s) != (None, None) and (m is None or s is None):
            warn(f"{run.path}: no {'MAT' if m is None else 'speedup'}; left out of speedup_vs_mat")
    top_x = max([m for _, m, _ in known] + [2.0]) * 1.15
    fig, ax = plt.subplots(figsize=SINGLE)
    x = np.linspace(0, top_x, 100)
    ideal = "ideal bound: speedup = MAT (free drafting and verification)"
    if profile is None:
        ideal = "ideal bound: speedup = MAT (no cost profile measured)"
    ax.plot(x, x, color="black", linestyle="--", linewidth=1, label=ideal)
    if profile is not None:
        greys = plt.get_cmap("Greys")
        widths = _bound_widths(profile)
        for i, n in enumerate(widths):
            r = profile_ratio(profile, n)
            ax.plot(x, x / r, color=greys(0.35 + 0.6 * i / max(len(widths) - 1, 1)), linewidth=1,
                    label=f"n = {n}: speedup <= MAT / {r:.2f}")
    ceilings = []
    for run, m, s in known:
        ax.scatter([m], [s], color=colors[run.name], s=40, zorder=3)
        ax.annotate(run.name, (m, s), textcoords="offset points", xytext=(5, 4), fontsize=7)
        r = step_cost(run, profile) if profile is not None else None
        if r:
            ax.plot([m, m], [s, m / r], color=colors[run.name], linestyle=":", linewidth=1)
            ax.scatter([m], [m / r], color=colors[run.name], marker="_", s=160, linewidths=2, zorder=3,
                       label=None if ceilings else "its own bound: MAT / mean t(n)/t(1) over its steps")
            ceilings.append(m / r)
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.axvline(1.0, color="gray", linewidth=0.8)
    ax.scatter([1.0], [1.0], color="black", s=25, zorder=3)
    ax.annotate(f"{base.name} (baseline)", (1.0, 1.0), textcoords="offset points", xytext=(-5, 4), ha="right",
                fontsize=7)
    top_y = max([s for _, _, s in known] + ceilings + [1.5])
    ax.set_xlim(0, top_x)
    ax.set_ylim(0, top_y * 1.15)
    ax.set_xlabel("MAT (mean accepted tokens per step, bonus token included; AR = 1.00)")
    ax.set_ylabel("Speedup over AR (x)")
    where = ""
    if profile is not None:
        where = (f"; t(n)/t(1): target forward of n tokens, {source.name}'s cost profile, "
                 f"mean over context lengths {min(profile['context_lengths'])}-{max(profile['context_lengths'])}")
    ax.set_title("Speedup against MAT" + where, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=7, frameon=False)
    fig.suptitle(_subtitle(base), fontsize=9)
    fig.tight_layout()
    return _save(plt, fig, out_dir, prefix + "speedup_vs_mat")


def figure_time_and_acceptance(plt, runs, base, out_dir, prefix):
    """4. Where the time goes (drafting / verifying / other, share of wall time) and the step-CDF of accepted
    lengths per method."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator
    colors = _colors(plt, runs)
    fig, (ax_t, ax_a) = plt.subplots(1, 2, figsize=DOUBLE, gridspec_kw={"width_ratios": [1, 1.15]})
    rows = [(f"{base.name} (baseline)", _times(_paired(base, base)))] + \
           [(run.name, _times(_paired(run, base))) for run in runs]
    y = np.arange(len(rows))[::-1]
    parts = (("drafting", "tab:orange"), ("verifying", "tab:blue"), ("other", "lightgray"))
    left = np.zeros(len(rows))
    for part, color in parts:
        share = np.array([100 * t[part] if t else 0.0 for _, t in rows])
        ax_t.barh(y, share, left=left, color=color, label=part)
        left += share
    for yi, (_, t) in zip(y, rows):
        ax_t.text(1, yi, f"{100 * t['drafting']:.0f}% drafting" if t else "no timings", va="center",
                  fontsize=7, color="white" if t else "black")
    ax_t.set_yticks(y)
    ax_t.set_yticklabels([name for name, _ in rows])
    ax_t.set_xlim(0, 100)
    ax_t.set_xlabel("share of wall time (%)")
    ax_t.set_title("Where the time goes")
    ax_t.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, frameon=False)

    longest = 1
    for run in runs:
        lengths = []
        for q, _, turns in _paired(run, base):
            lengths += _accepts(q, turns) or []
        if not lengths:
            continue
        values, counts = np.unique(np.asarray(lengths, dtype=float), return_counts=True)
        cdf = np.cumsum(counts) / counts.sum()
        longest = max(longest, float(values[-1]))
        ax_a.step(np.concatenate([[0], values]), np.concatenate([[0], cdf]), where="post",
                  color=colors[run.name], label=f"{run.name} (MAT {np.mean(lengths):.2f})")
    ax_a.axvline(1.0, color="black", linestyle="--", linewidth=1, label="AR: always 1")
    ax_a.set_xlim(0, longest + 1)
    ax_a.set_ylim(0, 1.02)
    ax_a.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_a.set_xlabel("accepted tokens per step (bonus token included)")
    ax_a.set_ylabel("share of steps accepting <= x")
    ax_a.set_title("Accepted length per step (CDF)")
    ax_a.grid(alpha=0.3)
    ax_a.legend(loc="lower right", fontsize=7)
    fig.suptitle(f"Time and acceptance  ({_subtitle(base)})", fontsize=10)
    fig.tight_layout()
    return _save(plt, fig, out_dir, prefix + "time_and_acceptance")


def _steps(run: Run, warn, consequence: str):
    """The run's per-step log (speed.load_steps); None, with a warning ending in consequence, when it cannot be used."""
    try:
        return speed.load_steps(speed.steps_path(run.path))
    except speed.SpeedError as exc:
        warn(f"{exc}; {consequence}")
        return None


def _compared(run: Run, base: Run) -> set:
    """{(question_id, turn)} both files have (speed.compared_turns on the loaded runs)."""
    return {(qid, k) for qid, q in run.questions.items() if qid in base.questions
            for k in range(min(len(q["turns"]), len(base.questions[qid]["turns"])))}


def auto_context_edges(contexts: list) -> list[int]:
    """Edges of AUTO_CONTEXT_BINS equal-width bins from the shortest to the longest context logged."""
    low, high = min(contexts), max(contexts)
    width = (high - low) / AUTO_CONTEXT_BINS
    return sorted({math.ceil(low + width * i) for i in range(1, AUTO_CONTEXT_BINS)} - {0})


def figure_acceptance_by_context(plt, runs, base, out_dir, prefix, edges, warn):
    """6. MAT and step-time speedup against the context length (the position in the trace), one line per method, from
    the per-step logs. edges None: AUTO_CONTEXT_BINS equal-width bins over the context lengths logged."""
    logged = []
    for run in runs:
        steps = _steps(run, warn, f"{run.name} left out of {CONTEXT_FIGURE}")
        keep = _compared(run, base)
        if steps is not None and any((s[0], s[1]) in keep for s in steps):
            logged.append((run, steps, keep))
    if not logged:
        warn(f"no method has a step log with context lengths for the compared turns: {CONTEXT_FIGURE} not written")
        return []
    base_steps = _steps(base, warn, f"no step-time speedup in {CONTEXT_FIGURE}")
    if edges is None:
        edges = auto_context_edges([s[3] for _, steps, keep in logged for s in steps if (s[0], s[1]) in keep])
    colors = _colors(plt, runs)
    fig, (ax_m, ax_s) = plt.subplots(1, 2, figsize=DOUBLE)
    for run, steps, keep in logged:
        ours = speed.bucket_totals(steps, keep, edges)
        theirs = speed.bucket_totals(base_steps, keep, edges) if base_steps is not None else None
        used = [i for i, b in enumerate(ours) if b["steps"]]
        x = [ours[i]["context"] / ours[i]["steps"] for i in used]
        ax_m.plot(x, [ours[i]["tokens"] / ours[i]["steps"] for i in used], marker="o", markersize=4,
                  color=colors[run.name], label=run.name)
        if theirs is not None:
            ax_s.plot(x, [_nan(speed.step_speedup(ours[i], theirs[i])) for i in used], marker="o", markersize=4,
                      color=colors[run.name], label=run.name)
    if base_steps is None:
        ax_s.text(0.5, 0.5, f"no step log of {base.name}", transform=ax_s.transAxes, ha="center", color="dimgray")
    for ax, ylabel, ref in ((ax_m, "MAT (accepted tokens / step, bonus token incl.)", "AR = 1.00"),
                            (ax_s, f"step-time speedup over {base.name} (x)", "AR = 1.00x")):
        for edge in edges:
            ax.axvline(edge, color="lightgray", linewidth=0.8)
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label=ref)
        ax.set_xlabel("context length (prompt + output tokens)")
        ax.set_ylabel(ylabel)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)   # (vertical lines are the bin edges)
        ax.legend(loc="best", fontsize=7)
    ax_m.set_title("MAT along the trace")
    ax_s.set_title("Step-time speedup along the trace")
    fig.suptitle(f"Acceptance by context length  ({_subtitle(base)})", fontsize=10)
    fig.text(0.5, 0.01, "each point: the steps of one context bin (grey lines: bin edges), at their mean context; "
             "speedup = baseline s/token / method s/token in the bin (drafting + verifying seconds, prefill not "
             "counted)", fontsize=7, color="dimgray", ha="center")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(plt, fig, out_dir, prefix + CONTEXT_FIGURE)


def _stem(path: str) -> str:
    return os.path.basename(speed.config_path(path))[: -len(".config.json")]


def sweep_groups(bases: list[Run], runs: list[Run], warn) -> tuple[dict, dict]:
    """({batch size: baseline Run}, {method name: {batch size: Run}}) of a sweep. A method whose name (config
    "method") two files share at one batch size (SAM with and without cross-sample drafting, a method with and
    without --cost-aware) is told apart by file name, as <prefix>-<method> stays the same across the b<B>/ folders:
    "samd (p-samd-solo)". SpeedError on two baseline files, or two files of one name, at one batch size."""
    by_size, methods = {}, {}
    for run in bases:
        if run.batch_size in by_size:
            raise speed.SpeedError(f"two baseline files at batch size {run.batch_size}: "
                                   f"{by_size[run.batch_size].path} and {run.path}")
        by_size[run.batch_size] = run
    by_name = {}
    for run in runs:
        by_name.setdefault(run.name, []).append(run)
    for name, same in by_name.items():
        if len({run.batch_size for run in same}) < len(same):
            for run in same:
                run.name = f"{name} ({_stem(run.path)})"
    for run in runs:
        same = methods.setdefault(run.name, {})
        if run.batch_size in same:
            raise speed.SpeedError(f"two files of method {run.name} at batch size {run.batch_size}: "
                                   f"{same[run.batch_size].path} and {run.path}")
        same[run.batch_size] = run
    for name, same in methods.items():
        missing = sorted(set(same) - set(by_size))
        if missing:
            warn(f"{name}: no baseline file at batch size {', '.join(map(str, missing))}; "
                 "its speedup is left out there")
    return by_size, methods


def figure_batch_sweep(plt, bases: dict, methods: dict, out_dir, prefix, warn):
    """5. Batch-size sweep: throughput against B (each method, and the baseline's own batching gain), and the speedup
    over the baseline at the same B with its 95% interval."""
    import numpy as np
    from matplotlib.ticker import FixedLocator, NullLocator
    sizes = sorted(set(bases) | {b for same in methods.values() for b in same})
    base = bases[min(bases)] if bases else None
    base_name = base.name if base else "baseline"
    cycle = plt.get_cmap("tab10").colors
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=DOUBLE)
    if bases:
        xs = sorted(bases)
        ys = [batch.throughput(bases[b].batch) for b in xs]
        ax_t.plot(xs, [_nan(y) for y in ys], color="black", linestyle="--", marker="s", markersize=4,
                  label=f"{base_name} (baseline)")
        first = ys[0]
        for x, y in zip(xs[1:], ys[1:]):
            if first and y is not None:
                ax_t.annotate(f"{y / first:.2f}x", (x, y), textcoords="offset points", xytext=(0, -12), ha="center",
                              fontsize=7)
    top = 0.0
    spread = 0.06 * (len(methods) - 1) / 2
    for i, (name, same) in enumerate(methods.items()):
        color = cycle[i % len(cycle)]
        xs = sorted(same)
        ax_t.plot(xs, [_nan(batch.throughput(same[b].batch)) for b in xs], color=color, marker="o", markersize=4,
                  label=name)
        points = []
        for b in xs:
            if b not in bases:
                continue
            figures = batch.compare(same[b].batch, bases[b].batch)
            if figures["speedup"] is None:
                warn(f"{same[b].path}: no question and turn in common with {bases[b].path}; left out of {SWEEP_FIGURE}")
                continue
            points.append((b, figures["speedup"], figures["speedup_ci"] or [figures["speedup"]] * 2))
        if not points:
            continue
        offset = 2 ** (0.06 * i - spread)     # side by side, so the interval bars do not hide each other
        x = [b * offset for b, _, _ in points]
        y = np.array([p[1] for p in points])
        low, high = np.array([p[2][0] for p in points]), np.array([p[2][1] for p in points])
        ax_s.errorbar(x, y, yerr=[np.maximum(y - low, 0), np.maximum(high - y, 0)], color=color, marker="o",
                      markersize=4, capsize=3, label=name)
        top = max(top, float(high.max()), float(y.max()))
    ax_s.axhline(1.0, color="black", linestyle="--", linewidth=1, label=f"{base_name} = 1.00x")
    for ax in (ax_t, ax_s):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(sizes))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(b) for b in sizes])
        if sizes:
            ax.set_xlim(sizes[0] / 1.4, sizes[-1] * 1.4)
        ax.set_xlabel("batch size B (rows decoded together, log2 scale)")
        ax.grid(alpha=0.3)
    ax_t.set_ylim(bottom=0)
    ax_s.set_ylim(0, max(top, 1.5) * 1.1)
    ax_t.set_ylabel("throughput (tok/s; each batch's wall time counted once)")
    ax_s.set_ylabel(f"speedup over {base_name} at the same B (x)")
    gain = f"{base_name}: its batching gain over B={min(bases)} marked" if len(bases) > 1 else base_name
    ax_t.set_title(f"Throughput against batch size ({gain})")
    ax_s.set_title("Speedup at the same batch size [95% CI]")
    ax_t.legend(loc="best", fontsize=7)
    ax_s.legend(loc="best", fontsize=7)
    fig.suptitle(f"Batch-size sweep  ({_subtitle(base) if base else 'no baseline'})", fontsize=10)
    fig.text(0.5, 0.01, "speedup = method throughput / baseline throughput at the same B; bars: " + batch.INTERVAL,
             fontsize=7, color="dimgray", ha="center")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(plt, fig, out_dir, prefix + SWEEP_FIGURE)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise speed.SpeedError(message)


def _labelled(paths: list[str]) -> list[Run]:
    return _label([Run(p) for p in paths])


def _label(runs: list[Run]) -> list[Run]:
    names = [r.name for r in runs]
    for run in runs:                      # the same method twice: tell the files apart
        if names.count(run.name) > 1:
            run.name = f"{run.name} ({_stem(run.path)})"
    return runs


def _make_dir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise speed.SpeedError(f"{path}: cannot create directory ({exc.strerror or exc})") from None


def main(argv=None) -> int:
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-path", required=True, nargs="+",
                        help="baseline (autoregressive) answer file; in a batch-size sweep, one per batch size")
    parser.add_argument("--file-path", nargs="+", required=True, help="method answer files")
    parser.add_argument("--out-dir", required=True, help="folder for the PNG and SVG files (created)")
    parser.add_argument("--prefix", default="", help="prefix of every file name")
    parser.add_argument("--batch-sweep", action="store_true",
                        help=f"write only the {SWEEP_FIGURE} figure (throughput and speedup at the same batch size "
                             "against --batch-size; files of one method at several batch sizes form one line); "
                             "implied when the files span more than one batch size")
    parser.add_argument("--context-buckets", metavar="EDGES",
                        help=f"context-length bin edges of {CONTEXT_FIGURE} in tokens, as speed.py's (e.g. "
                             "1k,2k,4k,8k; k = 1024); default: 8 equal-width bins over the context lengths logged")

    def warn(msg):
        print(f"warning: {msg}", file=sys.stderr)

    try:
        args = parser.parse_args(argv)
        edges = speed.parse_context_edges(args.context_buckets) if args.context_buckets else None
        bases = [Run(path, label=None) for path in args.base_path]
        runs = [Run(path) for path in args.file_path]
        if args.batch_sweep or len({run.batch_size for run in bases + runs}) > 1:
            by_size, methods = sweep_groups(bases, runs, warn)
            _make_dir(args.out_dir)
            written = figure_batch_sweep(_pyplot(), by_size, methods, args.out_dir, args.prefix, warn)
            for path in written:
                print(path)
            return 0
        if len(bases) > 1:
            raise speed.SpeedError("give one --base-path (several only for a batch-size sweep: one per batch size)")
        base, runs = bases[0], _label(runs)
        for run in runs:
            if not _paired(run, base):
                raise speed.SpeedError(f"{run.path}: no question_id is present in both it and {base.path}")
            missing = len(run.questions.keys() - base.questions.keys())
            if missing:
                warn(f"{run.path}: {missing} question_id(s) not in the baseline file, ignored")
        _make_dir(args.out_dir)
        plt = _pyplot()
        written = []
        written += figure_category_radar(plt, runs, base, args.out_dir, args.prefix)
        written += figure_progressive(plt, runs, base, args.out_dir, args.prefix)
        written += figure_speedup_vs_mat(plt, runs, base, args.out_dir, args.prefix, warn)
        written += figure_time_and_acceptance(plt, runs, base, args.out_dir, args.prefix)
        written += figure_acceptance_by_context(plt, runs, base, args.out_dir, args.prefix, edges, warn)
    except speed.SpeedError as exc:
        print("error: " + " ".join(str(exc).split("\n")), file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0
