"""Tests for evaluation/reports/uncertainty.py (the speedup's paired-bootstrap interval, the baseline's variation) and for
how speed.py and compare.py report them."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evaluation.reports import speed, uncertainty

CODE_DIR = Path(__file__).resolve().parents[1]

approx = lambda x: pytest.approx(x, rel=1e-12)  # noqa: E731

TOKENS = [120, 80, 300, 45, 210]
SECONDS = [3.0, 2.5, 6.0, 1.5, 5.0]


# ---------------------------------------------------------------------------
# Interval arithmetic
# ---------------------------------------------------------------------------

def test_identical_method_and_baseline_give_one():
    assert uncertainty.speedup_interval(TOKENS, SECONDS, TOKENS, SECONDS) == (approx(1.0), approx(1.0))


def test_constant_ratio_gives_that_ratio():
    # Every question 2.5x faster: every resample is 2.5x, whatever the questions drawn.
    fast = [s / 2.5 for s in SECONDS]
    assert uncertainty.speedup_interval(TOKENS, fast, TOKENS, SECONDS) == (approx(2.5), approx(2.5))


def test_interval_contains_the_point_estimate():
    rng = np.random.default_rng(7)
    tokens = rng.integers(50, 500, 30)
    base_seconds = tokens / rng.normal(20, 2, 30)
    seconds = base_seconds / rng.normal(1.8, 0.3, 30)
    low, high = uncertainty.speedup_interval(tokens, seconds, tokens, base_seconds)
    point = (tokens.sum() / seconds.sum()) / (tokens.sum() / base_seconds.sum())
    assert low < point < high
    assert 1.5 < low and high < 2.1


def test_interval_is_reproducible_and_narrows_with_more_questions():
    rng = np.random.default_rng(1)
    tokens = rng.integers(50, 500, 200)
    base = tokens / 20.0
    method = base / rng.normal(2.0, 0.4, 200)
    first = uncertainty.speedup_interval(tokens, method, tokens, base)
    assert uncertainty.speedup_interval(tokens, method, tokens, base) == first  # fixed seed
    few = uncertainty.speedup_interval(tokens[:10], method[:10], tokens[:10], base[:10])
    assert first[1] - first[0] < few[1] - few[0]


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_questions_gives_none(n):
    assert uncertainty.speedup_interval(TOKENS[:n], SECONDS[:n], TOKENS[:n], SECONDS[:n]) is None


def test_mismatched_lengths_give_none():
    assert uncertainty.speedup_interval(TOKENS, SECONDS, TOKENS[:3], SECONDS[:3]) is None


def test_variation_of_a_steady_and_a_noisy_baseline():
    steady = [t / 20.0 for t in TOKENS]  # exactly 20 tok/s on every question
    assert uncertainty.variation(TOKENS, steady) == pytest.approx(0.0, abs=1e-12)
    noisy = [t / r for t, r in zip(TOKENS, [20, 5, 35, 8, 40])]
    assert uncertainty.variation(TOKENS, noisy) > uncertainty.NOISY_BASELINE_CV
    assert uncertainty.variation(TOKENS[:1], steady[:1]) is None


# ---------------------------------------------------------------------------
# speed.py and compare.py report them
# ---------------------------------------------------------------------------

def answer(qid, new_tokens, wall_time):
    n = len(new_tokens)
    return {"question_id": qid, "category": "math500", "choices": [{
        "index": 0, "turns": [f"answer {qid}.{i}" for i in range(n)], "new_tokens": new_tokens,
        "wall_time": wall_time, "accept_lengths": [1] * sum(new_tokens),
        "accept_lengths_per_turn": [[1] * t for t in new_tokens]}]}


def write_run(path, rates, speedup):
    """Two turns per question; the baseline runs at `rates` tok/s, the method `speedup` times faster."""
    base = [answer(q, [100, 60], [100 / r, 60 / r]) for q, r in enumerate(rates)]
    method = [answer(q, [100, 60], [100 / r / speedup, 60 / r / speedup]) for q, r in enumerate(rates)]
    for name, rows in (("base", base), ("method", method)):
        (path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path / "method.jsonl", path / "base.jsonl"


STEADY = [20.0, 20.5, 19.5, 20.2]
NOISY = [20.0, 5.0, 40.0, 9.0]


def run(script, *args):
    return subprocess.run([sys.executable, f"evaluation/{script}", *map(str, args)], cwd=CODE_DIR,
                          capture_output=True, text=True, timeout=120)


def test_summary_carries_the_interval_and_the_baseline_variation(tmp_path):
    m, b = write_run(tmp_path, STEADY, 1.5)
    s = speed.summarize(speed.load_answers(m), speed.load_answers(b))
    for stats in [s["overall"], *s["per_turn"], *s["per_category"].values()]:
        assert stats["speedup"] == approx(1.5) and stats["speedup_ci"] == [approx(1.5), approx(1.5)]
        assert stats["base_cv"] < uncertainty.NOISY_BASELINE_CV
    assert not s["noisy_baseline"] and not s["warnings"]


def test_speed_script_prints_the_interval_and_no_warning_on_a_steady_baseline(tmp_path):
    m, b = write_run(tmp_path, STEADY, 1.5)
    json_out = tmp_path / "s.json"
    proc = run("speed.py", "--file-path", m, "--base-path", b, "--json-out", json_out)
    assert proc.returncode == 0, proc.stderr
    assert "| **overall** | 4 | 8 |" in proc.stdout and "1.50x [1.50, 1.50]" in proc.stdout
    assert "| 2 | 4 |" in proc.stdout  # per-turn row, its interval too
    # category, overall, turn 1, turn 2, and the speedup over identical-or-near-tie turns
    assert proc.stdout.count("1.50x [1.50, 1.50]") == 5
    assert "speedup over the 8 identical-or-near-tie turns: 1.50x [1.50, 1.50]" in proc.stdout
    assert "warning" not in proc.stderr.lower() and "Warning" not in proc.stdout
    summary = json.loads(json_out.read_text())
    assert summary["overall"]["speedup_ci"] == [approx(1.5), approx(1.5)]
    assert [t["speedup_ci"] for t in summary["per_turn"]] == [[approx(1.5), approx(1.5)]] * 2


def test_speed_script_warns_on_a_noisy_baseline(tmp_path):
    m, b = write_run(tmp_path, NOISY, 2.0)
    proc = run("speed.py", "--file-path", m, "--base-path", b)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "coefficient of variation" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: baseline tokens/s varies")
    assert "Warning: baseline tokens/s varies" in proc.stdout  # kept in the markdown too


def test_compare_script_prints_intervals_and_warns_once(tmp_path):
    m, b = write_run(tmp_path, NOISY, 2.0)
    other = tmp_path / "other.jsonl"
    other.write_text(m.read_text())
    md_out, json_out = tmp_path / "t.md", tmp_path / "t.json"
    proc = run("compare.py", "--base-path", b, "--file-path", m, other, "--markdown-out", md_out,
               "--json-out", json_out)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| method.jsonl")]
    assert len(rows) == 1 and rows[0].count("2.00x [2.00, 2.00]") == 3  # overall, turn 1, turn 2
    assert "Speedup [95% CI]" in proc.stdout and md_out.read_text() == proc.stdout
    assert proc.stderr.count("coefficient of variation") == 1  # one baseline, one warning
    data = json.loads(json_out.read_text())
    assert [r["name"] for r in data["methods"]] == ["method.jsonl", "other.jsonl"]
    assert data["methods"][0]["overall"]["speedup_ci"] == [approx(2.0), approx(2.0)]


def test_compare_script_bad_input_is_one_line(tmp_path):
    m, b = write_run(tmp_path, STEADY, 1.5)
    proc = run("compare.py", "--base-path", b, "--file-path", tmp_path / "missing.jsonl")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("error: ") and "missing.jsonl" in proc.stderr
