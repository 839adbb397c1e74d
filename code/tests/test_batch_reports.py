"""Tests for evaluation/reports/batch.py and how speed.py, compare.py and plot.py report runs at --batch-size > 1:
hand-built answer files, no model."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.reports import batch, compare, plot, speed

from test_speed import base_rows as b1_base_rows, method_rows as b1_method_rows

CODE_DIR = Path(__file__).resolve().parents[1]

approx = lambda x: pytest.approx(x, rel=1e-12)  # noqa: E731


def turn(tokens, wall, batch_id=None, rows=None, batch_wall=None):
    """One turn: (new_tokens, wall_time[, batch_id, batch rows, batch wall time])."""
    return (tokens, wall, batch_id, rows, batch_wall)


def line(qid, category, turns, paradigm="multi_round"):
    """An answer line of one choice whose turns are turn(...) tuples; batch fields when the first turn has a batch."""
    choice = {"index": 0, "turns": [f"q{qid} turn {k}" for k in range(len(turns))],
              "new_tokens": [t[0] for t in turns], "wall_time": [t[1] for t in turns],
              "accept_lengths_per_turn": [[2] * (t[0] // 2) for t in turns]}
    choice["accept_lengths"] = [a for per_turn in choice["accept_lengths_per_turn"] for a in per_turn]
    if turns[0][2] is not None:
        choice["batch_id"] = [t[2] for t in turns]
        choice["batch_size"] = [t[3] for t in turns]
        choice["batch_wall_time"] = [t[4] for t in turns]
    return {"question_id": qid, "category": category, "paradigm": paradigm, "choices": [choice]}


def write(folder, stem, rows, method, batch_size, extra_config=None):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if batch_size is not None:
        config = {"method": method, "paradigm": "multi_round", "model_path": "local_model/Tiny",
                  "batch_size": batch_size, "cross_sample": True, **(extra_config or {})}
        (folder / f"{stem}.config.json").write_text(json.dumps(config))
    return str(path)


# The hand-computable example: B = 2, four one-turn questions, two batches per file.
#   method: m1 = {q1: 100 tok, q2: 60 tok} in 2.0 s; m2 = {q3: 80, q4: 80} in 1.0 s   -> 320 / 3 tok/s
#   AR:     b1 = {q1, q2} in 4.0 s;                  b2 = {q3, q4} in 4.0 s           -> 320 / 8 = 40 tok/s
# Per unit: {q1, q2} 80 vs 40 tok/s (2x), {q3, q4} 160 vs 40 (4x); overall 8/3 x. Resampling two units: [2, 4].
def method_b2():
    return [line(1, "math", [turn(100, 2.0, "m1", 2, 2.0)]), line(2, "code", [turn(60, 1.5, "m1", 2, 2.0)]),
            line(3, "math", [turn(80, 1.0, "m2", 2, 1.0)]), line(4, "code", [turn(80, 0.8, "m2", 2, 1.0)])]


def ar_b2():
    return [line(1, "math", [turn(100, 4.0, "b1", 2, 4.0)]), line(2, "code", [turn(60, 3.0, "b1", 2, 4.0)]),
            line(3, "math", [turn(80, 4.0, "b2", 2, 4.0)]), line(4, "code", [turn(80, 3.5, "b2", 2, 4.0)])]


@pytest.fixture
def b2_files(tmp_path):
    return (write(tmp_path, "p-pld", method_b2(), "pld", 2), write(tmp_path, "p-ar", ar_b2(), "ar", 2))


# ---------------------------------------------------------------------------
# batch.py arithmetic
# ---------------------------------------------------------------------------

def test_throughput_counts_a_batch_time_once(b2_files):
    method, ar = batch.load_run(b2_files[0]), batch.load_run(b2_files[1])
    assert (method.batch_size, ar.batch_size) == (2, 2) and method.cross_sample
    assert batch.throughput(method) == approx(320 / 3.0)          # not 320 / 5.3, the sum of the latencies
    assert batch.throughput(ar) == approx(40.0)
    assert batch.latency(method) == approx(5.3 / 4)
    assert batch.sequence_tokens_per_s(method) == approx(320 / 5.3)
    assert batch.mat(method) == 2
    # a restriction takes its tokens' share of each batch it cuts: q1 100/160 of 2 s, q3 80/160 of 1 s
    assert batch.throughput(method, category="math") == approx(180 / (2.0 * 100 / 160 + 1.0 * 80 / 160))
    assert batch.throughput(b2_files[0]) == batch.throughput(method_b2())   # a path or answer lines will do


def test_speedup_at_the_same_batch_size_and_its_interval(b2_files):
    figures = batch.compare(batch.load_run(b2_files[0]), batch.load_run(b2_files[1]))
    assert figures["tokens_per_s"] == approx(320 / 3.0) and figures["base_tokens_per_s"] == approx(40.0)
    assert figures["speedup"] == approx(8 / 3)
    assert figures["speedup_ci"] == [approx(2.0), approx(4.0)]
    assert (figures["n_units"], figures["n_questions"], figures["n_turns"]) == (2, 4, 4)
    assert (figures["seconds"], figures["base_seconds"]) == (approx(3.0), approx(8.0))
    assert figures["latency"] == approx(1.325) and figures["base_latency"] == approx(14.5 / 4)
    units = batch.units(b2_files[0], b2_files[1])
    assert [(u["questions"], u["tokens"], u["seconds"], u["base_seconds"]) for u in units] == \
        [([1, 2], 160, approx(2.0), approx(4.0)), ([3, 4], 160, approx(1.0), approx(4.0))]


def test_units_join_questions_that_share_a_batch():
    # round 1: {q1, q2}, {q3}, {q4}; round 2: {q2, q3}, {q1}, {q4} -> units {q1, q2, q3} and {q4}
    rows = [line(1, "a", [turn(10, 1.0, "r1a", 2, 1.0), turn(10, 0.5, "r2b", 1, 0.5)]),
            line(2, "a", [turn(30, 0.9, "r1a", 2, 1.0), turn(20, 2.0, "r2a", 2, 2.0)]),
            line(3, "a", [turn(10, 1.0, "r1c", 1, 1.0), turn(20, 1.5, "r2a", 2, 2.0)]),
            line(4, "a", [turn(10, 1.0, "r1d", 1, 1.0), turn(10, 1.0, "r2d", 1, 1.0)])]
    units = batch.units(rows)
    assert [u["questions"] for u in units] == [[1, 2, 3], [4]]
    # each batch's wall time once: r1a 1.0 + r2b 0.5 + r2a 2.0 + r1c 1.0
    assert (units[0]["tokens"], units[0]["seconds"]) == (100, approx(4.5))
    assert batch.throughput(rows) == approx(120 / 6.5)
    # one round on its own: round 1 links only q1 and q2
    assert [u["questions"] for u in batch.units(rows, turn=0)] == [[1, 2], [3], [4]]
    # against a baseline, a link in either file joins: its {q3, q4}
    base = [line(q, "a", [turn(10, 1.0, f"x{q > 2}", 2, 1.0), turn(10, 1.0, f"y{q}", 1, 1.0)]) for q in (1, 2, 3, 4)]
    assert [u["questions"] for u in batch.units(rows, base)] == [[1, 2, 3, 4]]


def test_best_of_n_and_batch_size_one_give_one_unit_per_question():
    # Best-of-N at B = 2: four samples of a question, two batches; questions never share one
    bon = [line(q, "a", [turn(10, 1.0, f"q{q}s{k // 2}", 2, 1.2) for k in range(4)], paradigm="best_of_n")
           for q in (1, 2, 3)]
    assert [u["questions"] for u in batch.units(bon)] == [[1], [2], [3]]
    assert batch.throughput(bon) == approx(120 / (6 * 1.2))
    assert batch.throughput(bon, turn=2) == approx(1 / 0.06)   # its 10 of the batch's 20 tokens: half of 1.2 s
    # at batch size 1 the batch arithmetic is speed.py's: same speedup, same interval
    method, base = b1_method_rows(), b1_base_rows()
    ours = speed.summarize(method, base)["overall"]
    figures = batch.compare(method, base)
    assert [u["questions"] for u in batch.units(method, base)] == [[1], [2]]
    assert figures["speedup"] == approx(ours["speedup"]) == approx(2.6)
    assert figures["speedup_ci"] == ours["speedup_ci"] == [approx(2.5), approx(8 / 3)]
    assert batch.throughput(method) == approx((160 + 140 + 10) / 6.0)


def test_batch_size_of_a_file(tmp_path):
    rows = method_b2()
    assert batch.run_batch_size(write(tmp_path / "a", "x", rows, "pld", 4)) == 4      # the config's word
    assert batch.run_batch_size(write(tmp_path / "b", "x", rows, "pld", None)) == 2   # no config: most rows
    assert batch.run_batch_size(write(tmp_path / "c", "x", b1_method_rows(), "pld", None)) == 1
    old = write(tmp_path / "d", "x", b1_method_rows(), "pld", 1)
    config = json.loads(Path(old[:-6] + ".config.json").read_text())
    del config["batch_size"]                                                            # written before batching
    Path(old[:-6] + ".config.json").write_text(json.dumps(config))
    assert batch.run_batch_size(old) == 1


def test_bad_batch_fields(tmp_path):
    rows = method_b2()
    rows[1]["choices"][0]["batch_wall_time"] = [2.5]                   # q2 disagrees with q1 on batch m1
    with pytest.raises(speed.SpeedError, match="batch 'm1'.*disagree"):
        batch.load_run(write(tmp_path, "x", rows, "pld", 2))
    rows = method_b2()
    del rows[0]["choices"][0]["batch_wall_time"]
    with pytest.raises(speed.SpeedError, match=r"x\.jsonl:1: .*batch_id.*batch_wall_time"):
        speed.load_answers(write(tmp_path, "x", rows, "pld", 2))
    rows = method_b2()
    rows[0]["choices"][0]["batch_size"] = [0]
    with pytest.raises(speed.SpeedError, match="positive integer"):
        speed.load_answers(write(tmp_path, "x", rows, "pld", 2))


def test_every_choice_counts(tmp_path):
    # two choices of one question in one batch: 40 + 60 tokens in its 2 s
    rows = [line(1, "a", [turn(40, 1.5, "m", 2, 2.0)])]
    rows[0]["choices"].append({**line(1, "a", [turn(60, 2.0, "m", 2, 2.0)])["choices"][0], "index": 1})
    run = batch.load_run(write(tmp_path, "x", rows, "pld", 2))
    assert batch.throughput(run) == approx(50.0) and len(run.turns) == 2


# ---------------------------------------------------------------------------
# speed.py and compare.py
# ---------------------------------------------------------------------------

def run_script(script, *args):
    return subprocess.run([sys.executable, f"evaluation/{script}", *map(str, args)], cwd=CODE_DIR,
                          capture_output=True, text=True, timeout=120)


def test_speed_reports_batch_throughput(b2_files, tmp_path, capsys):
    json_out = tmp_path / "s.json"
    assert speed.main(["--file-path", b2_files[0], "--base-path", b2_files[1], "--json-out", str(json_out)]) == 0
    out = capsys.readouterr().out
    assert "Batch size 2: tok/s is batch throughput" in out
    assert "| Method tok/s (batch) | Baseline tok/s (batch) | Throughput speedup [95% CI] |" in out
    assert "| **overall** | 4 | 4 | 106.67 | 40.00 | 2.67x [2.00, 4.00] | 1.32 / 3.62 | 60.38 / 22.07 |" in out
    assert "bootstrap over units" in out
    summary = json.loads(json_out.read_text())
    assert summary["batch_size"] == 2 and summary["batched"] is True
    overall = summary["overall"]
    assert overall["speedup"] == approx(8 / 3) and overall["speedup_ci"] == [approx(2.0), approx(4.0)]
    assert overall["n_units"] == 2 and overall["wall_time"] == approx(3.0)
    math_ = summary["per_category"]["math"]
    assert math_["tokens_per_s"] == approx(180 / 1.75) and math_["base_tokens_per_s"] == approx(180 / 4.5)


def test_speed_and_compare_refuse_different_batch_sizes(tmp_path):
    m = write(tmp_path, "m", method_b2(), "pld", 4)
    b = write(tmp_path, "b", b1_base_rows(), "ar", 1)
    for script, args in (("speed.py", ("--file-path", m, "--base-path", b)),
                         ("compare.py", ("--base-path", b, "--file-path", m))):
        proc = run_script(script, *args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr == f"error: compare at the same --batch-size: {m} has 4, {b} has 1\n"
    with pytest.raises(speed.SpeedError, match="compare at the same --batch-size"):
        batch.check_same_batch_size(m, b)


def test_compare_table_at_batch_size_two(b2_files, tmp_path, capsys):
    other = write(tmp_path / "o", "p-samd", method_b2(), "samd", 2)
    assert compare.main(["--base-path", b2_files[1], "--file-path", b2_files[0], other]) == 0
    out = capsys.readouterr().out
    assert "(40.00 tok/s batch throughput" in out and "Batch size 2" in out
    rows = [l for l in out.splitlines() if l.startswith("| pld") or l.startswith("| samd")]
    assert len(rows) == 2 and all("| 106.67 | 2.67x [2.00, 4.00] |" in r for r in rows)


# ---------------------------------------------------------------------------
# plot.py: the sweep figure, and sweep() for benchmark scripts
# ---------------------------------------------------------------------------

def sweep_files(root):
    """AR and PLD at B = 1, 2, 4 (eight one-turn questions of 64 tokens, so two units at B = 4): AR's batch of B rows
    takes (1 + 0.25 (B - 1)) s, PLD's half as long, so PLD is 2x at every B."""
    files = {}
    for size in (1, 2, 4):
        for name, speed_up in (("ar", 1.0), ("pld", 2.0)):
            rows = []
            for q in range(8):
                wall = (1 + 0.25 * (size - 1)) / speed_up
                if size == 1:
                    rows.append(line(q, "a", [turn(64, wall)]))
                else:
                    rows.append(line(q, "a", [turn(64, wall, f"{name}{size}-{q // size}", size, wall)]))
            files[(size, name)] = write(root / f"b{size}", f"p-{name}", rows, name, size)
    return files


def test_sweep_figure_from_batch_sizes_one_two_four(tmp_path, capsys):
    files = sweep_files(tmp_path)
    out = tmp_path / "fig"
    args = ["--base-path", *(files[(b, "ar")] for b in (1, 2, 4)),
            "--file-path", *(files[(b, "pld")] for b in (1, 2, 4)), "--out-dir", str(out), "--prefix", "s-"]
    assert plot.main(args) == 0
    written = capsys.readouterr().out.split()
    assert written == [str(out / "s-batch_sweep.png"), str(out / "s-batch_sweep.svg")]
    assert (out / "s-batch_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (out / "s-batch_sweep.svg").read_text()
    assert "Speedup at the same batch size" in svg and "ar (baseline)" in svg and "pld" in svg
    assert "1.60x" in svg and "2.29x" in svg     # AR's batching gain: 2 / 1.25 and 4 / 1.75 over B = 1

    summary = batch.sweep_table(files)
    ar = [r for r in summary["rows"] if r["method"] == "ar"]
    pld = [r for r in summary["rows"] if r["method"] == "pld"]
    assert [r["batch_size"] for r in pld] == [1, 2, 4] and summary["gain_over"] == 1
    assert [r["gain"] for r in ar] == [approx(1.0), approx(1.6), approx(4 / 1.75)]
    assert [r["speedup"] for r in pld] == [approx(2.0)] * 3
    assert [r["speedup_ci"] for r in pld] == [[approx(2.0), approx(2.0)]] * 3
    assert "| 4 | pld | 292.57 | 2.29x | 2.00x [2.00, 2.00] | 2.00 |" in summary["markdown"]


def test_sweep_names_and_errors(tmp_path, capsys):
    files = sweep_files(tmp_path)
    # SAM without cross-sample drafting: config method "samd" too, told apart by file name
    for size in (1, 2):
        rows = [json.loads(l) for l in Path(files[(size, "pld")]).read_text().splitlines()]
        for stem in ("p-samd", "p-samd-solo"):
            write(tmp_path / f"b{size}", stem, rows, "samd", size)
    bases = [files[(b, "ar")] for b in (1, 2)]
    methods = [str(tmp_path / f"b{b}" / f"{stem}.jsonl") for b in (1, 2) for stem in ("p-samd", "p-samd-solo")]
    runs = [plot.Run(p) for p in methods]
    _, groups = plot.sweep_groups([plot.Run(p) for p in bases], runs, print)
    assert sorted(groups) == ["samd (p-samd)", "samd (p-samd-solo)"] and all(len(g) == 2 for g in groups.values())
    # the same method twice at one batch size, or two baselines at one: one line
    assert plot.main(["--base-path", *bases, files[(1, "ar")], "--file-path", methods[0],
                      "--out-dir", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: two baseline files at batch size 1") and err.count("\n") == 1
    # several baselines at one batch size without a sweep
    assert plot.main(["--base-path", files[(1, "ar")], files[(1, "pld")], "--file-path", files[(1, "pld")],
                      "--out-dir", str(tmp_path / "f")]) == 2
    assert "give one --base-path" in capsys.readouterr().err
    # --batch-sweep at one batch size: the sweep figure only
    assert plot.main(["--base-path", files[(2, "ar")], "--file-path", files[(2, "pld")], "--out-dir",
                      str(tmp_path / "g"), "--batch-sweep"]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "g" / "batch_sweep.png"),
                                               str(tmp_path / "g" / "batch_sweep.svg")]


def test_plot_figures_at_one_batch_size_use_batch_throughput(b2_files):
    method, base = plot.Run(b2_files[0]), plot.Run(b2_files[1])
    assert plot._speedup(plot._paired(method, base)) == approx(8 / 3)
    assert plot._speedup(plot._paired(method, base, category="math")) == approx((180 / 1.75) / (180 / 4.5))


def test_sweep_runs_ar_again_last_and_plain_as_the_timing_noise_floor():
    import importlib.util
    spec = importlib.util.spec_from_file_location("batch_sweep", Path(__file__).parent.parent / "scripts" / "batch_sweep.py")
    batch_sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(batch_sweep)
    assert batch_sweep.specs(["ar", "pld", "ar-again"], {}, "both") == [
        "ar=baseline", "pld", "pld+ca=pld --cost-aware", "ar-again=baseline"]
    assert batch_sweep.specs(["ar", "ar-again", "samd-solo"], {}, "on") == [
        "ar=baseline", "ar-again=baseline", "samd-solo+ca=samd --no-cross-sample --cost-aware"]
