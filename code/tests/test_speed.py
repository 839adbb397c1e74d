"""Tests for evaluation/speed.py: arithmetic on hand-built answer files and error paths."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.reports import speed

CODE_DIR = Path(__file__).resolve().parents[1]

approx = lambda x: pytest.approx(x, rel=1e-12)  # noqa: E731


def row(qid, category, new_tokens, wall_time, texts=None, accept=None, draft=None,
        verify=None, correct=None, sha1=None, paradigm="multi_round"):
    n = len(new_tokens)
    choice = {"index": 0, "turns": texts or [f"q{qid} turn {i}" for i in range(n)],
              "new_tokens": new_tokens, "decoding_steps": [len(a) for a in accept] if accept else None,
              "wall_time": wall_time}
    for key, value in (("accept_lengths", accept), ("draft_seconds", draft),
                       ("verify_seconds", verify), ("correct", correct),
                       ("token_ids_sha1", sha1)):
        if value is not None:
            choice[key] = value
    return {"question_id": qid, "category": category, "answer_id": f"a{qid}",
            "model_id": "m", "tstamp": 1.7e9, "paradigm": paradigm, "choices": [choice]}


def ar_row(qid, category, new_tokens, wall_time, **kw):
    # Autoregressive baseline: one token per step, no drafting.
    n = len(new_tokens)
    return row(qid, category, new_tokens, wall_time, accept=[[1] * t for t in new_tokens],
               draft=[0.0] * n, verify=list(wall_time), **kw)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def method_rows():
    return [
        row(1, "math", [100, 60], [2.0, 1.0], accept=[[2, 2, 1], [3, 3]],
            draft=[0.5, 0.25], verify=[1.5, 0.75], correct=[False, True], sha1=["a", "b"]),
        # no hashes: identity falls back to the text
        row(2, "code", [40, 100], [1.0, 1.0], texts=["same", "method text"],
            accept=[[1, 3], [4]], draft=[0.25, 0.25], verify=[0.75, 0.75],
            correct=[True, True]),
        row(3, "math", [10], [1.0], accept=[[1]]),  # only in method
    ]


def base_rows():
    return [
        ar_row(1, "math", [100, 60], [4.0, 4.0], correct=[False, False], sha1=["a", "x"]),
        ar_row(2, "code", [40, 100], [2.0, 3.0], texts=["same", "baseline text"],
               correct=[True, False]),
        ar_row(4, "code", [10], [1.0]),  # only in baseline
    ]


@pytest.fixture
def files(tmp_path):
    m = write_jsonl(tmp_path / "method.jsonl", method_rows())
    b = write_jsonl(tmp_path / "base.jsonl", base_rows())
    return m, b


def run_script(*args):
    return subprocess.run([sys.executable, "evaluation/speed.py", *map(str, args)],
                          cwd=CODE_DIR, capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------------------
# Arithmetic
# ---------------------------------------------------------------------------

def test_overall_figures(files):
    s = speed.summarize(speed.load_answers(files[0]), speed.load_answers(files[1]))
    o = s["overall"]
    assert s["n_questions"] == 2 and o["n_turns"] == 4
    assert o["tokens_per_s"] == approx(300 / 5.0)
    assert o["base_tokens_per_s"] == approx(300 / 13.0)
    assert o["speedup"] == approx(2.6)
    assert o["mat"] == approx(19 / 8)  # 2+2+1+3+3+1+3+4 over 8 steps
    assert o["base_mat"] == approx(1.0)
    assert o["drafting_share"] == approx(1.25 / 5.0)
    assert o["accuracy"] == approx(0.75) and o["base_accuracy"] == approx(0.25)
    assert o["final_accuracy"] == approx(1.0) and o["base_final_accuracy"] == approx(0.0)
    assert s["mat_counts_bonus_token"] is True


def test_identical_turns_hash_then_text(files):
    s = speed.summarize(speed.load_answers(files[0]), speed.load_answers(files[1]))
    # q1: hashes a==a, b!=x; q2: texts "same"=="same", differ on turn 2
    assert s["identical_turns"] == {"identical": 2, "total": 4, "compared_by_hash": 2}


def test_hash_wins_over_text():
    m = row(1, "c", [5], [1.0], texts=["same text"], sha1=["h1"])
    b = row(1, "c", [5], [1.0], texts=["same text"], sha1=["h2"])
    assert speed.summarize([m], [b])["identical_turns"]["identical"] == 0


def test_per_category(files):
    s = speed.summarize(speed.load_answers(files[0]), speed.load_answers(files[1]))
    assert list(s["per_category"]) == ["code", "math"]
    math_, code = s["per_category"]["math"], s["per_category"]["code"]
    assert math_["n_questions"] == 1
    assert math_["tokens_per_s"] == approx(160 / 3.0)
    assert math_["base_tokens_per_s"] == approx(20.0)
    assert math_["speedup"] == approx((160 / 3.0) / 20.0)
    assert math_["mat"] == approx(11 / 5)
    assert code["tokens_per_s"] == approx(70.0) and code["base_tokens_per_s"] == approx(28.0)
    assert code["speedup"] == approx(2.5)
    assert code["mat"] == approx(8 / 3)
    assert code["drafting_share"] == approx(0.25)


def test_per_turn(files):
    s = speed.summarize(speed.load_answers(files[0]), speed.load_answers(files[1]))
    t1, t2 = s["per_turn"]
    assert (t1["turn"], t2["turn"]) == (1, 2)
    assert t1["tokens_per_s"] == approx(140 / 3.0) and t1["base_tokens_per_s"] == approx(140 / 6.0)
    assert t1["speedup"] == approx(2.0)
    assert t1["mat"] == approx(9 / 5)
    assert t2["tokens_per_s"] == approx(80.0) and t2["base_tokens_per_s"] == approx(160 / 7.0)
    assert t2["speedup"] == approx(3.5)
    assert t2["mat"] == approx(10 / 3)
    assert t2["accuracy"] == approx(1.0) and t2["base_accuracy"] == approx(0.0)


def test_unmatched_ids_are_warned(files):
    s = speed.summarize(speed.load_answers(files[0]), speed.load_answers(files[1]))
    assert s["only_in_method"] == [3] and s["only_in_baseline"] == [4]
    assert any("only in the method file" in w and "3" in w for w in s["warnings"])
    assert any("only in the baseline file" in w and "4" in w for w in s["warnings"])


def test_ar_against_itself_gives_mat_one_and_no_speedup():
    rows = [ar_row(1, "a", [7, 3], [1.0, 0.5]), ar_row(2, "b", [5], [2.0])]
    s = speed.summarize(rows, rows)
    assert s["overall"]["mat"] == 1.0
    assert s["overall"]["speedup"] == approx(1.0)
    assert s["overall"]["drafting_share"] == 0.0
    assert s["identical_turns"]["identical"] == 3
    md = speed.render_markdown(s)
    overall_line = [l for l in md.splitlines() if l.startswith("| **overall**")][0]
    assert "| 1.00 |" in overall_line and "1.00x [1.00, 1.00]" in overall_line


def test_turn_count_mismatch_compares_shared_turns_only():
    m = row(1, "c", [10, 10, 10], [1.0, 1.0, 1.0], correct=[False, False, True])
    b = row(1, "c", [10, 10], [2.0, 2.0], correct=[False, False])
    s = speed.summarize([m], [b])
    assert s["overall"]["n_turns"] == 2
    assert s["overall"]["speedup"] == approx(2.0)
    assert len(s["per_turn"]) == 2
    assert s["overall"]["final_accuracy"] == 1.0  # the method's own last turn
    assert s["turn_count_mismatch"] == [1]


def test_missing_optional_fields_give_none():
    m = row(1, "c", [10], [1.0])
    s = speed.summarize([m], [m])
    for key in ("mat", "accuracy", "drafting_share", "final_accuracy"):
        assert s["overall"][key] is None
    assert "n/a" in speed.render_markdown(s)


def test_no_match_raises():
    with pytest.raises(speed.SpeedError, match="no question_id"):
        speed.summarize([row(1, "c", [1], [1.0])], [row(2, "c", [1], [1.0])])


# ---------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------

def test_markdown_layout(files):
    s = speed.summarize(speed.load_answers(files[0]), speed.load_answers(files[1]))
    lines = speed.render_markdown(s).splitlines()
    main_rows = []
    for line in lines:  # rows of the first table only
        if line.startswith("|"):
            main_rows.append(line)
        elif main_rows:
            break
    assert main_rows[0].startswith("| Category")
    # q1 gives 2.67x, q2 2.50x: resampling those two questions bounds the interval
    assert main_rows[-1].startswith("| **overall** | 2 | 4 | 60.00 | 23.08 | 2.60x [2.50, 2.67] | 2.38 |")
    assert any("MAT" in l and "bonus token" in l for l in lines)
    assert any(l.startswith("| Turn |") for l in lines)
    assert any(l.startswith("| 2 | 2 | 80.00 | 22.86 | 3.50x [3.00, 4.00] | 3.33 |") for l in lines)  # 4x and 3x


def test_single_turn_has_no_per_turn_table():
    rows = [ar_row(1, "a", [7], [1.0])]
    md = speed.render_markdown(speed.summarize(rows, rows))
    assert "| Turn |" not in md and "Per turn" not in md


# ---------------------------------------------------------------------------
# Loading errors (in-process)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("line, reason", [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "JSON object"),
    (json.dumps({"choices": []}), "question_id"),
    (json.dumps({k: v for k, v in row(9, "c", [1], [1.0]).items() if k != "choices"}), "choices"),
])
def test_load_reports_file_and_line(tmp_path, line, reason):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(row(1, "c", [1], [1.0])) + "\n\n" + line + "\n")
    with pytest.raises(speed.SpeedError) as exc:
        speed.load_answers(str(path))
    assert f"{path}:3:" in str(exc.value) and reason in str(exc.value)


@pytest.mark.parametrize("mutate, reason", [
    (lambda c: c.pop("wall_time"), "wall_time"),
    (lambda c: c.update(new_tokens=[1, 2]), "one entry per turn"),
    (lambda c: c.update(wall_time=[-1.0]), "non-negative"),
    (lambda c: c.update(wall_time=[float("nan")]), "non-negative"),
    (lambda c: c.update(accept_lengths=[-3]), "accept_lengths"),
    (lambda c: c.update(accept_lengths=[[1], 2]), "accept_lengths"),
    (lambda c: c.update(accept_lengths=[2], accept_lengths_per_turn=[[1]]), "joined in order"),
    (lambda c: c.update(accept_lengths_per_turn=[[1], [2]]), "one entry per turn"),
    (lambda c: c.update(correct=["yes"]), "correct"),
])
def test_load_rejects_bad_fields(tmp_path, mutate, reason):
    rec = row(1, "c", [1], [1.0])
    mutate(rec["choices"][0])
    path = write_jsonl(tmp_path / "a.jsonl", [rec])
    with pytest.raises(speed.SpeedError, match=reason):
        speed.load_answers(str(path))


def test_load_rejects_duplicates_and_empty(tmp_path):
    dup = write_jsonl(tmp_path / "d.jsonl", [row(1, "c", [1], [1.0])] * 2)
    with pytest.raises(speed.SpeedError, match=r"d\.jsonl:2: duplicate question_id 1"):
        speed.load_answers(str(dup))
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(speed.SpeedError, match="no answers"):
        speed.load_answers(str(empty))


# ---------------------------------------------------------------------------
# Script: error paths and outputs (subprocess, from code/)
# ---------------------------------------------------------------------------

def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_script_missing_file(files, tmp_path):
    missing = tmp_path / "nope.jsonl"
    proc = run_script("--file-path", missing, "--base-path", files[1])
    assert_one_line_error(proc, str(missing))


def test_script_malformed_line(files, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(method_rows()[0]) + "\n{oops\n")
    proc = run_script("--file-path", bad, "--base-path", files[1])
    assert_one_line_error(proc, f"{bad}:2:")


def test_script_missing_required_field(files, tmp_path):
    rec = method_rows()[0]
    del rec["choices"][0]["new_tokens"]
    bad = write_jsonl(tmp_path / "bad.jsonl", [rec])
    proc = run_script("--file-path", files[0], "--base-path", bad)
    assert_one_line_error(proc, f"{bad}:1:", "new_tokens")


def test_script_no_matching_ids(tmp_path):
    m = write_jsonl(tmp_path / "m.jsonl", [row(1, "c", [1], [1.0])])
    b = write_jsonl(tmp_path / "b.jsonl", [row(2, "c", [1], [1.0])])
    assert_one_line_error(run_script("--file-path", m, "--base-path", b), "no question_id")


def test_script_usage_error():
    assert_one_line_error(run_script("--file-path", "x.jsonl"), "--base-path")


def test_script_outputs(files, tmp_path):
    m, b = files
    (tmp_path / "method.config.json").write_text(
        json.dumps({"method": "eagle3", "model_id": "tiny-target"}))
    json_out, md_out = tmp_path / "summary.json", tmp_path / "table.md"
    proc = run_script("--file-path", m, "--base-path", b,
                      "--json-out", json_out, "--markdown-out", md_out)
    assert proc.returncode == 0, proc.stderr
    assert "method=eagle3" in proc.stdout and "model=tiny-target" in proc.stdout
    assert "| **overall** | 2 | 4 | 60.00 | 23.08 | 2.60x [2.50, 2.67] |" in proc.stdout
    assert md_out.read_text() == proc.stdout
    assert proc.stderr.count("warning:") == 2  # id 3 only in method, id 4 only in baseline

    summary = json.loads(json_out.read_text())
    assert {"overall", "per_category", "per_turn", "identical_turns",
            "n_questions", "mat_counts_bonus_token"} <= summary.keys()
    assert summary["mat_counts_bonus_token"] is True
    assert summary["n_questions"] == 2
    assert summary["overall"]["speedup"] == approx(2.6)
    assert summary["overall"]["speedup_ci"] == [approx(2.5), approx(8 / 3)]
    assert summary["identical_turns"] == {"identical": 2, "total": 4, "compared_by_hash": 2}
    assert [t["turn"] for t in summary["per_turn"]] == [1, 2]
    assert summary["per_category"]["code"]["speedup"] == approx(2.5)


# ---------------------------------------------------------------------------
# Grades: correct / wrong / unknown
# ---------------------------------------------------------------------------

def graded_rows(correct, grade_error=None):
    rec = row(1, "math", [10] * len(correct), [1.0] * len(correct), correct=correct)
    if grade_error is not None:
        rec["choices"][0]["grade_error"] = grade_error
    return [rec]


def test_unknown_grades_are_counted_apart_and_left_out_of_accuracy(tmp_path, capsys):
    method = graded_rows([True, None, False, None], [None, "timeout", None, "parse_error"])
    base = graded_rows([True, True, False, None])   # written before grade_error: the reason is not recorded
    s = speed.summarize(method, base)["overall"]
    assert s["accuracy"] == 0.5 and s["base_accuracy"] == pytest.approx(2 / 3)
    assert s["grading"] == {"correct": 1, "wrong": 1, "unknown": 2,
                            "unknown_reasons": {"parse_error": 1, "timeout": 1}}
    assert s["base_grading"] == {"correct": 2, "wrong": 1, "unknown": 1, "unknown_reasons": {"not recorded": 1}}
    m, b = write_jsonl(tmp_path / "m.jsonl", method), write_jsonl(tmp_path / "b.jsonl", base)
    assert speed.main(["--file-path", str(m), "--base-path", str(b)]) == 0
    out = capsys.readouterr().out
    assert "| 50.0% / 66.7% |" in out
    assert ("Grading: method 1 correct / 1 wrong / 2 unknown (parse_error 1, timeout 1); baseline 2 correct / 1 wrong "
            "/ 1 unknown (not recorded 1). Accuracy = correct / (correct + wrong)") in out


def test_no_grading_line_without_unknown_grades(files):
    s = speed.summarize(speed.load_answers(files[0]), speed.load_answers(files[1]))
    assert s["overall"]["grading"]["unknown"] == 0 and s["overall"]["base_grading"]["unknown"] == 0
    assert "Grading:" not in speed.render_markdown(s)
    # a file never graded (no "correct" list) counts nothing at all
    ungraded = speed.summarize([row(1, "c", [5], [1.0])], [row(1, "c", [5], [1.0])])["overall"]
    assert ungraded["grading"] == {"correct": 0, "wrong": 0, "unknown": 0, "unknown_reasons": {}}


def test_load_rejects_a_bad_grade_error(tmp_path):
    rec = graded_rows([None], [7])[0]
    with pytest.raises(speed.SpeedError, match=r"grade_error\[0\]' must be a string or null"):
        speed.load_answers(str(write_jsonl(tmp_path / "a.jsonl", [rec])))


# ---------------------------------------------------------------------------
# By context length (per-step logs)
# ---------------------------------------------------------------------------

def step(qid, turn, accepted, context, draft=0.001, verify=0.009, **extra):
    return {"question_id": qid, "choice": 0, "turn": turn, "step": 0, "draft_size": accepted - 1,
            "accepted": accepted, "draft_source": "x", "draft_seconds": draft, "verify_seconds": verify,
            "context_length": context, **extra}


def ar_step(qid, turn, context, seconds, **extra):
    return step(qid, turn, 1, context, draft=0.0, verify=seconds, draft_source="none", **extra)


# Method: 10 ms per step everywhere; MAT 3.5 under 1k, 2 in 1k-2k, 1 beyond: acceptance collapsing along the trace.
METHOD_STEPS = [step(1, 0, 4, 100), step(1, 0, 2, 1100), step(1, 1, 1, 2100), step(1, 1, 1, 9000),
                step(2, 0, 3, 500),
                step(1, 0, 5, 1200, draft_source="forced"),   # forced budget steps: left out, as from MAT
                step(1, 0, 9, 100, choice=1),                  # choices[0] only
                step(3, 0, 9, 100)]                            # a question the baseline does not have
# Baseline: 5 ms per token under 1k, 6 in 1k-2k, 8 in 2k-4k, 10 beyond 8k.
BASE_STEPS = [ar_step(1, 0, 100 + i, 0.005) for i in range(7)] + \
             [ar_step(1, 0, 1100, 0.006), ar_step(2, 0, 1500, 0.006), ar_step(1, 1, 2100, 0.008),
              ar_step(1, 1, 9000, 0.010)]


@pytest.fixture
def context_files(tmp_path):
    m = write_jsonl(tmp_path / "method.jsonl", [
        row(1, "math", [6, 2], [1.0, 1.0], accept=[[4, 2], [1, 1]]), row(2, "math", [3], [1.0], accept=[[3]]),
        row(3, "math", [9], [1.0], accept=[[9]])])
    b = write_jsonl(tmp_path / "base.jsonl", [ar_row(1, "math", [9, 2], [1.0, 1.0]), ar_row(2, "math", [1], [1.0])])
    write_jsonl(tmp_path / "method.steps.jsonl", METHOD_STEPS)
    write_jsonl(tmp_path / "base.steps.jsonl", BASE_STEPS)
    return m, b


def test_context_edges():
    assert speed.parse_context_edges(speed.DEFAULT_CONTEXT_EDGES) == [1024, 2048, 4096, 8192]
    assert speed.parse_context_edges(" 1000, 3K ") == [1000, 3072]
    assert speed.bucket_labels([1024, 2048, 8192]) == ["0-1k", "1k-2k", "2k-8k", "8k+"]
    assert speed.bucket_labels([1000]) == ["0-1000", "1000+"]
    for bad in ("2k,1k", "1k,1k", "0", "-5", "1.5k", "", "1k,,2k", "abc"):
        with pytest.raises(speed.SpeedError, match="--context-buckets"):
            speed.parse_context_edges(bad)


def test_by_context_mat_and_step_time_speedup(context_files):
    m, b = context_files
    section = speed.by_context(str(m), str(b), speed.load_answers(m), speed.load_answers(b),
                               speed.parse_context_edges("1k,2k,4k,8k"))
    rows = {r["context"]: r for r in section["buckets"]}
    assert list(rows) == ["0-1k", "1k-2k", "2k-4k", "8k+"]            # 4k-8k: no step on either side
    assert [rows[k]["mat"] for k in rows] == [3.5, 2.0, 1.0, 1.0]
    assert [(rows[k]["steps"], rows[k]["base_steps"]) for k in rows] == [(2, 7), (1, 2), (1, 1), (1, 1)]
    # baseline s/token / method s/token in the bucket: 5/(20/7), 6/5, 8/10, 10/10 ms
    assert [rows[k]["speedup"] for k in rows] == [approx(1.75), approx(1.2), approx(0.8), approx(1.0)]
    every = section["all"]
    # over all buckets, MAT is the answer file's (11 tokens in 5 steps of the compared turns)
    assert every["mat"] == approx(2.2) == speed.summarize(speed.load_answers(m), speed.load_answers(b))["overall"]["mat"]
    assert every["speedup"] == approx(0.065 / 0.05)
    assert section["step_count_mismatches"] == 0


def test_by_context_table_only_when_asked(context_files, tmp_path, capsys):
    m, b = context_files
    assert speed.main(["--file-path", str(m), "--base-path", str(b)]) == 0
    plain = capsys.readouterr().out
    assert "By context length" not in plain and "| Context" not in plain
    json_out = tmp_path / "s.json"
    assert speed.main(["--file-path", str(m), "--base-path", str(b), "--by-context", "--json-out", str(json_out)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(plain)                         # the usual tables first, unchanged
    for line in ("| Context (tokens) | Steps (method / base) | MAT | Method ms/token | Baseline ms/token | "
                 "Step-time speedup |",
                 "| 0-1k | 2 / 7 | 3.50 | 2.86 | 5.00 | 1.75x |",
                 "| 1k-2k | 1 / 2 | 2.00 | 5.00 | 6.00 | 1.20x |",
                 "| 2k-4k | 1 / 1 | 1.00 | 10.00 | 8.00 | 0.80x |",
                 "| 8k+ | 1 / 1 | 1.00 | 10.00 | 10.00 | 1.00x |",
                 "| **all** | 5 / 11 | 2.20 | 4.55 | 5.91 | 1.30x |"):
        assert line in out.splitlines()
    assert "bonus token" in out and "step-time speedup = baseline seconds per token / method seconds per token" in out
    section = json.loads(json_out.read_text())["by_context"]
    assert section["edges"] == [1024, 2048, 4096, 8192] and section["mat_counts_bonus_token"] is True
    # custom edges imply the section
    assert speed.main(["--file-path", str(m), "--base-path", str(b), "--context-buckets", "2000"]) == 0
    out = capsys.readouterr().out
    assert "| 0-2000 | 3 / 9 | 3.00 |" in out and "| 2000+ | 2 / 2 | 1.00 |" in out


def test_batched_step_shares_its_forward_among_rows(tmp_path):
    write_jsonl(tmp_path / "m.steps.jsonl", [step(1, 0, 2, 10, draft=0.001, verify=0.04, batch_rows=4)])
    write_jsonl(tmp_path / "b.steps.jsonl", [ar_step(1, 0, 10, 0.012, batch_rows=4), ar_step(1, 0, 11, 0.012)])
    rows = [row(1, "c", [2], [1.0], accept=[[2]])]
    section = speed.by_context(str(tmp_path / "m.jsonl"), str(tmp_path / "b.jsonl"), rows, rows, [1024])
    assert section["all"]["seconds_per_token"] == approx(0.011 / 2)         # 1 ms drafting + 40 ms / 4 rows
    assert section["all"]["base_seconds_per_token"] == approx(0.015 / 2)    # 12 / 4 + 12 ms


def test_by_context_skipped_in_one_line_without_context_length(context_files, capsys):
    m, b = context_files
    old = [{k: v for k, v in s.items() if k != "context_length"} for s in METHOD_STEPS]
    write_jsonl(m.parent / "method.steps.jsonl", METHOD_STEPS[:2] + old)
    assert speed.main(["--file-path", str(m), "--base-path", str(b), "--by-context"]) == 0
    out, err = capsys.readouterr()
    skipped = [line for line in out.splitlines() if "By context length" in line]
    assert skipped == [f"By context length: skipped ({m.parent / 'method.steps.jsonl'}:3: no 'context_length' "
                       "(step logs written before it was recorded lack it))."]
    assert "| Context" not in out and "**overall**" in out and "context" not in err
    (m.parent / "method.steps.jsonl").unlink()
    assert speed.main(["--file-path", str(m), "--base-path", str(b), "--by-context"]) == 0
    assert "By context length: skipped (" in capsys.readouterr().out


def test_by_context_without_a_baseline_log_and_with_a_torn_or_doubled_one(context_files, capsys):
    m, b = context_files
    (b.parent / "base.steps.jsonl").unlink()
    steps = m.parent / "method.steps.jsonl"
    steps.write_text(steps.read_text() + json.dumps(METHOD_STEPS[0]) + "\n" + '{"question_id": 1, "tu')
    assert speed.main(["--file-path", str(m), "--base-path", str(b), "--by-context"]) == 0
    out = capsys.readouterr().out
    assert "| 0-1k | 3 / n/a | 3.67 | 2.73 | n/a | n/a |" in out       # the torn last line is dropped
    assert f"Baseline columns n/a: {b.parent / 'base.steps.jsonl'}: no step log." in out
    assert "Warning: 1 turn(s) have another number of steps in the method's step log" in out


def test_bad_context_buckets_are_one_line_errors(context_files, capsys):
    m, b = context_files
    assert speed.main(["--file-path", str(m), "--base-path", str(b), "--context-buckets", "4k,2k"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --context-buckets: the edges must increase") and err.count("\n") == 1


@pytest.mark.parametrize("bad, reason", [
    ({"question_id": [1]}, "'question_id' must be an integer or a string"),
    ({"turn": "0"}, "'turn' must be an integer"),
    ({"accepted": -1}, "'accepted' must be a non-negative number"),
    ({"context_length": None}, "'context_length' must be a non-negative number"),
])
def test_bad_step_lines_skip_the_section_naming_the_line(tmp_path, bad, reason):
    write_jsonl(tmp_path / "m.steps.jsonl", [step(1, 0, 2, 10), {**step(1, 0, 2, 11), **bad}, step(1, 0, 2, 12)])
    rows = [row(1, "c", [2], [1.0], accept=[[2]])]
    section = speed.by_context(str(tmp_path / "m.jsonl"), str(tmp_path / "b.jsonl"), rows, rows, [1024])
    assert section["skipped"] == f"{tmp_path / 'm.steps.jsonl'}:2: {reason}"
