"""Tests for evaluation/plot.py: figures from hand-built answer files (both accept_lengths layouts), error paths."""
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.reports import plot

CODE_DIR = Path(__file__).resolve().parents[1]


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CATEGORIES = ("math500", "aime24", "gpqa")
PROFILE = {"widths": [1, 2, 4, 8, 16, 32], "context_lengths": [64, 512], "repeats": 3,
           "seconds": [[0.01, 0.011, 0.012, 0.015, 0.02, 0.03], [0.012, 0.013, 0.015, 0.02, 0.03, 0.05]],
           "ratio": [[1.0, 1.1, 1.2, 1.5, 2.0, 3.0], [1.0, 1.083, 1.25, 1.667, 2.5, 4.167]]}


def answer_line(qid, category, new_tokens, wall_time, accepts, layout, draft=None, verify=None):
    """accepts: per-turn lists. layout 'old': accept_lengths per turn; 'new': flat + accept_lengths_per_turn;
    'flat': only the flat list."""
    n = len(new_tokens)
    choice = {"index": 0, "turns": [f"q{qid} turn {i}" for i in range(n)], "new_tokens": new_tokens,
              "wall_time": wall_time, "decoding_steps": [len(a) for a in accepts]}
    flat = [a for turn in accepts for a in turn]
    if layout == "old":
        choice["accept_lengths"] = accepts
    elif layout == "new":
        choice["accept_lengths"], choice["accept_lengths_per_turn"] = flat, accepts
    else:
        choice["accept_lengths"] = flat
    if draft is not None:
        choice["draft_seconds"], choice["verify_seconds"] = draft, verify
    return {"question_id": qid, "category": category, "answer_id": f"a{qid}", "model_id": "m", "tstamp": 0.0,
            "paradigm": "multi_round", "choices": [choice]}


def write_run(folder, stem, method, layout, tokens_per_turn, accept, seconds, parameters=None, profile=None,
              steps=None, qids=range(6)):
    """One answer file of 6 questions (2 per category) x 2 rounds, its config and optionally its step log.
    accept(turn) -> list of accepted lengths of that turn; seconds(turn) -> wall time of that turn."""
    path = folder / f"{stem}.jsonl"
    lines = []
    for qid in qids:
        accepts = [accept(t) for t in range(2)]
        wall = [seconds(t) for t in range(2)]
        lines.append(answer_line(qid, CATEGORIES[qid % 3], [tokens_per_turn] * 2, wall, accepts, layout,
                                 draft=[0.2 * w for w in wall], verify=[0.7 * w for w in wall]))
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    config = {"method": method, "paradigm": "multi_round", "method_parameters": parameters or {},
              "model_path": "local_model/Tiny", "temperature": 0.0, "device": "cpu"}
    if profile is not None:
        config["cost_profile"] = profile
    (folder / f"{stem}.config.json").write_text(json.dumps(config))
    if steps is not None:
        (folder / f"{stem}.steps.jsonl").write_text(
            "".join(json.dumps({"question_id": 0, "turn": 0, "step": i, "draft_size": d, "accepted": 2,
                                "context_length": 10 + i}) + "\n" for i, d in enumerate(steps)) + "torn{")
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("answers")
    base = write_run(folder, "ar", "ar", "old", 24, lambda t: [1] * 24, lambda t: 2.0, profile=PROFILE)
    # old layout, MAT 2 then 3 (24 tokens in 12 then 8 steps), 1.5x then 2x faster
    old = write_run(folder, "pld", "pld", "old", 24, lambda t: [2] * 12 if t == 0 else [3] * 8,
                    lambda t: 2.0 / (1.5 + 0.5 * t), steps=[9, 9, 4, 4])
    # new layout, SAM with an EAGLE-3 fallback
    new = write_run(folder, "samd", "samd", "new", 24, lambda t: [4] * 6 if t == 0 else [6] * 4,
                    lambda t: 1.0, parameters={"fallback": {"name": "eagle3"}})
    # only the flat list: per-turn MAT unknown, overall MAT still known
    flat = write_run(folder, "rec", "recycling", "flat", 24, lambda t: [3] * 8, lambda t: 1.6)
    return folder, base, [old, new, flat]


@pytest.fixture(scope="module")
def figures(runs, tmp_path_factory):
    _, base, paths = runs
    out = tmp_path_factory.mktemp("fig") / "nested" / "dir"
    assert plot.main(["--base-path", base, "--file-path", *paths, "--out-dir", str(out)]) == 0
    return out


def check_pair(folder, name):
    png, svg = folder / f"{name}.png", folder / f"{name}.svg"
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000, len(data)
    width, height = struct.unpack(">II", data[16:24])        # IHDR: small enough to commit
    assert 600 <= width <= 1100 and 400 <= height <= 600, (width, height)
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text and len(text) > 10_000
    return text


def test_arithmetic_both_layouts(runs):
    _, base, (old, new, flat) = runs
    b = plot.Run(base)
    r_old, r_new, r_flat = plot.Run(old), plot.Run(new), plot.Run(flat)
    assert (r_old.name, r_new.name, r_flat.name) == ("pld", "samd[eagle3]", "recycling")
    assert plot._speedup(plot._paired(r_old, b, turn=0)) == pytest.approx(1.5)
    assert plot._speedup(plot._paired(r_old, b, turn=1)) == pytest.approx(2.0)
    assert plot._speedup(plot._paired(r_old, b)) == pytest.approx(48 / (2 / 1.5 + 1) / 12)
    assert plot._speedup(plot._paired(r_new, b, category="gpqa")) == pytest.approx(2.0)
    assert [plot._mat(plot._paired(r_old, b, turn=k)) for k in (0, 1)] == [2, 3]
    assert [plot._mat(plot._paired(r_new, b, turn=k)) for k in (0, 1)] == [4, 6]
    assert plot._mat(plot._paired(r_new, b)) == pytest.approx(48 / 10)
    assert plot._mat(plot._paired(r_flat, b)) == 3
    assert plot._mat(plot._paired(r_flat, b, turn=0)) is None
    assert plot._mat(plot._paired(b, b)) == 1
    assert plot._times(plot._paired(r_old, b)) == pytest.approx({"drafting": 0.2, "verifying": 0.7, "other": 0.1})
    # t(n)/t(1) as ForwardCostProfile.ratio: next measured width, linear in context length, linear past the grid
    assert plot.profile_ratio(PROFILE, 3, 64) == 1.2
    assert plot.profile_ratio(PROFILE, 8, 288) == pytest.approx((1.5 + 1.667) / 2)
    assert plot.profile_ratio(PROFILE, 64, 1000) == pytest.approx(4.167 * 2)
    assert plot.step_cost(r_old, PROFILE) == pytest.approx((2.0 + 1.5) / 2)   # 10 and 5 tokens: widths 16, 8
    assert plot.step_cost(r_new, PROFILE) is None                                       # no step log


def test_category_radar(figures):
    text = check_pair(figures, "category_radar")
    for name in ("pld", "samd[eagle3]", "recycling", *CATEGORIES, "bonus token included"):
        assert name in text


def test_progressive(figures):
    text = check_pair(figures, "progressive")
    assert "per round" in text and "bonus token incl." in text


def test_speedup_vs_mat(figures):
    text = check_pair(figures, "speedup_vs_mat")
    assert "n = 8: speedup &lt;= MAT / 1.58" in text     # mean of 1.5 and 1.667 over the two context lengths
    assert "its own bound" in text and "free drafting and verification" in text


def test_time_and_acceptance(figures):
    text = check_pair(figures, "time_and_acceptance")
    assert "20% drafting" in text and "ar (baseline)" in text and "(MAT 4.80)" in text


def test_no_cost_profile_draws_the_ideal_bound(runs, tmp_path, capsys):
    """Also: a baseline with fewer questions (two categories: bars instead of a radar)."""
    _, _, (old, new, _) = runs
    base = write_run(tmp_path, "ar-noprofile", "ar", "old", 24, lambda t: [1] * 24, lambda t: 2.0, qids=[0, 1, 3])
    assert plot.main(["--base-path", base, "--file-path", old, new, "--out-dir", str(tmp_path),
                      "--prefix", "x-"]) == 0
    out, err = capsys.readouterr()
    written = out.split()
    assert "3 question_id(s) not in the baseline file" in err
    assert written == [str(tmp_path / f"x-{name}.{ext}") for name in plot.FIGURES + (plot.CONTEXT_FIGURE,)
                       for ext in ("png", "svg")]     # (pld has a step log)
    text = check_pair(tmp_path, "x-speedup_vs_mat")
    assert "no cost profile measured" in text and "n = 8" not in text
    text = check_pair(tmp_path, "x-category_radar")
    assert "math500" in text and "aime24" in text and "gpqa" not in text


def test_errors_are_one_line(runs, tmp_path, capsys):
    _, base, paths = runs
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert plot.main(["--base-path", base, "--file-path", paths[0], "--out-dir", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cannot create directory" in err and err.count("\n") == 1
    assert plot.main(["--base-path", base, "--file-path", str(tmp_path / "missing.jsonl"),
                      "--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no such file" in err and err.count("\n") == 1
    assert plot.main(["--base-path", base]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    # as a plain script, from code/
    proc = subprocess.run([sys.executable, "evaluation/plot.py", "--base-path", base, "--file-path",
                           str(tmp_path / "missing.jsonl"), "--out-dir", str(tmp_path / "o")],
                          cwd=CODE_DIR, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_acceptance_by_context_from_the_fixture(figures):
    text = check_pair(figures, plot.CONTEXT_FIGURE)
    assert "MAT along the trace" in text and "pld" in text and "no step log of ar" in text


def write_steps(folder, stem, steps):
    (folder / f"{stem}.steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))


def steps_at(contexts, accepted, seconds):
    """Step lines of question 0, turn 0 at these context lengths, each accepting `accepted` tokens in `seconds`."""
    return [{"question_id": 0, "choice": 0, "turn": 0, "step": i, "accepted": accepted, "draft_source": "x",
             "draft_seconds": 0.0, "verify_seconds": seconds, "context_length": c} for i, c in enumerate(contexts)]


def test_acceptance_by_context_draws_mat_and_step_time_speedup_per_bin(tmp_path, monkeypatch):
    base = write_run(tmp_path, "ar", "ar", "old", 24, lambda t: [1] * 24, lambda t: 2.0)
    pld = write_run(tmp_path, "pld", "pld", "old", 24, lambda t: [2] * 12, lambda t: 1.0)
    rec = write_run(tmp_path, "rec", "recycling", "old", 24, lambda t: [2] * 12, lambda t: 1.0)
    # MAT 3, 2, 1 in the bins 0-1k, 1k-2k, 2k+ at 10 ms a step; AR at 5, 6, 8 ms a token there
    write_steps(tmp_path, "pld", steps_at(range(100, 110), 3, 0.01) + steps_at(range(1500, 1505), 2, 0.01)
                + steps_at([3000, 3001], 1, 0.01))
    write_steps(tmp_path, "ar", steps_at(range(100, 130), 1, 0.005) + steps_at(range(1500, 1510), 1, 0.006)
                + steps_at(range(3000, 3003), 1, 0.008))
    drawn, warnings = [], []
    monkeypatch.setattr(plot, "_save", lambda plt, fig, out_dir, name: drawn.append(fig) or [name])
    runs = [plot.Run(pld), plot.Run(rec)]
    assert plot.figure_acceptance_by_context(plot._pyplot(), runs, plot.Run(base), str(tmp_path), "",
                                             [1024, 2048], warnings.append) == [plot.CONTEXT_FIGURE]
    ax_mat, ax_speedup = drawn[0].axes

    def line(ax, label):
        return next(ln for ln in ax.get_lines() if ln.get_label() == label)

    assert list(line(ax_mat, "pld").get_xdata()) == [104.5, 1502, 3000.5]     # each bin at its steps' mean context
    assert list(line(ax_mat, "pld").get_ydata()) == [3, 2, 1]
    assert list(line(ax_speedup, "pld").get_ydata()) == pytest.approx([0.005 / (0.01 / 3), 0.006 / 0.005, 0.8])
    assert [ln.get_label() for ln in ax_mat.get_lines()].count("recycling") == 0
    assert len(warnings) == 1 and "rec.steps.jsonl: no step log; recycling left out" in warnings[0]


def test_auto_context_bins():
    assert plot.auto_context_edges([100, 900]) == [200, 300, 400, 500, 600, 700, 800]
    assert plot.auto_context_edges([5, 5]) == [5]      # one context length: one bin holds every step


def test_acceptance_by_context_not_written_without_step_logs(tmp_path, capsys):
    base = write_run(tmp_path, "ar", "ar", "old", 24, lambda t: [1] * 24, lambda t: 2.0)
    rec = write_run(tmp_path, "rec", "recycling", "old", 24, lambda t: [2] * 12, lambda t: 1.0)
    write_steps(tmp_path, "rec", [{"question_id": 0, "turn": 0, "step": 0, "accepted": 2}])   # an older log
    warnings = []
    assert plot.figure_acceptance_by_context(None, [plot.Run(rec)], plot.Run(base), str(tmp_path), "", None,
                                             warnings.append) == []
    assert "rec.steps.jsonl:1: no 'context_length'" in warnings[0]
    assert warnings[1] == ("no method has a step log with context lengths for the compared turns: "
                           f"{plot.CONTEXT_FIGURE} not written")
    assert plot.main(["--base-path", base, "--file-path", rec, "--out-dir", str(tmp_path / "o"),
                      "--context-buckets", "1k,x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --context-buckets: 'x'") and err.count("\n") == 1
