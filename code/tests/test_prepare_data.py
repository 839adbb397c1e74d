"""Tests for evaluation/data/prepare.py (offline, hub loader replaced by inline rows)
and for the shipped demo question file."""
import json
import random
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from evaluation.data import prepare as prepare_data
from evaluation.data.grading import grade, reference_answer

CODE_DIR = Path(__file__).resolve().parents[1]
DEMO_FILE = CODE_DIR / "data" / "demo" / "question.jsonl"


def _math500_rows(n):
    return [{"problem": f"What is ${i} + {i}$?", "solution": f"Add: $\\boxed{{{2 * i}}}$.",
             "answer": str(2 * i), "subject": "Algebra", "level": 1 + i % 5} for i in range(n)]


def _aime24_rows(n):
    return [{"id": i, "problem": f"Find ${i} \\times 3$.", "solution": f"It is {3 * i}.",
             "answer": str(3 * i)} for i in range(n)]


def _aime25_rows(n):
    # a different upload style: "question" and an integer answer
    return [{"question": f"Find ${i}^2$.", "answer": i * i} for i in range(n)]


def _gpqa_rows(n):
    return [{"Question": f"Which element has atomic number {i + 1}? ",
             "Correct Answer": f"right-{i}", "Incorrect Answer 1": f"wrong-{i}-1\n",
             "Incorrect Answer 2": f"wrong-{i}-2", "Incorrect Answer 3": f"wrong-{i}-3",
             "High-level domain": "Chemistry"} for i in range(n)]


FIXTURES = {"math500": _math500_rows(12), "aime24": _aime24_rows(10),
            "aime25": _aime25_rows(8), "gpqa": _gpqa_rows(9)}


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace the hub loader with the inline fixtures and record which sources were loaded."""
    loaded = []

    def load_rows(category):
        loaded.append(category)
        return [dict(row) for row in FIXTURES[category]]

    monkeypatch.setattr(prepare_data, "load_rows", load_rows)
    return loaded


def _read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _options(text):
    """{letter: option text} from the "(A) ..." lines of a multiple-choice question."""
    return dict(re.findall(r"^\(([A-D])\) (.*)$", text, flags=re.M))


# ---- pure conversions -------------------------------------------------------

def test_convert_math500():
    row = prepare_data.convert_math500(FIXTURES["math500"][3])
    assert row["answer"] == "6"
    assert row["solution"] == "\\boxed{6}"
    assert row["turns"][0].startswith("What is $3 + 3$?")
    assert row["turns"][0].endswith("\\boxed{}.")
    assert (row["subject"], row["level"]) == ("Algebra", 4)


@pytest.mark.parametrize("source, expected", [
    ({"problem": "P?", "answer": "204"}, "204"),
    ({"question": "P?", "answer": 33}, "33"),
    ({"Problem": "P?", "Answer": "070"}, "070"),
    ({"problem": "P?", "solution": "work ... \\boxed{113}"}, "113"),
    ({"question": "P?", "solution": "  25 "}, "25"),
])
def test_convert_aime_field_variants(source, expected):
    row = prepare_data.convert_aime(source)
    assert row["answer"] == expected
    assert row["solution"] == f"\\boxed{{{expected}}}"
    assert row["turns"][0].startswith("P?\n\n")


def test_convert_aime_rejects_unknown_format():
    with pytest.raises(prepare_data.UserError, match="unexpected AIME row format"):
        prepare_data.convert_aime({"text": "P?", "label": 3})


def test_convert_gpqa_letter_points_at_correct_option():
    letters = set()
    for seed in range(40):
        source = FIXTURES["gpqa"][seed % 9]
        row = prepare_data.convert_gpqa(source, random.Random(seed))
        options = _options(row["turns"][0])
        assert sorted(options) == ["A", "B", "C", "D"]
        assert options[row["answer"]] == source["Correct Answer"]
        assert sorted(options.values()) == sorted(
            [source["Correct Answer"]] + [source[f"Incorrect Answer {i}"].strip() for i in (1, 2, 3)])
        assert row["solution"] == f"\\boxed{{{row['answer']}}}"
        letters.add(row["answer"])
    # the shuffle really moves the correct option around
    assert letters == {"A", "B", "C", "D"}


def test_convert_gpqa_is_deterministic():
    source = FIXTURES["gpqa"][0]
    first = prepare_data.convert_gpqa(source, random.Random("0:5"))
    again = prepare_data.convert_gpqa(source, random.Random("0:5"))
    assert first == again
    assert first["turns"][0].startswith("Which element has atomic number 1?\n\n(A) ")
    assert "letter" in first["turns"][0] and first["turns"][0].endswith("\\boxed{}.")
    assert first["domain"] == "Chemistry"


def test_sample_indices():
    picked = prepare_data.sample_indices(50, 7, seed=3)
    assert picked == sorted(random.Random(3).sample(range(50), 7))
    assert picked == prepare_data.sample_indices(50, 7, seed=3)
    assert picked != prepare_data.sample_indices(50, 7, seed=4)
    assert prepare_data.sample_indices(5, None, seed=0) == [0, 1, 2, 3, 4]
    assert prepare_data.sample_indices(5, 9, seed=0) == [0, 1, 2, 3, 4]


# ---- the command line -------------------------------------------------------

def test_main_writes_fastchat_rows(fake_hub, tmp_path, capsys):
    out = tmp_path / "sub" / "question_cot.jsonl"
    assert prepare_data.main(["--output", str(out), "--per-category", "3", "--seed", "1"]) == 0
    rows = _read(out)
    assert [r["question_id"] for r in rows] == list(range(1, 13))
    assert [r["category"] for r in rows] == ["aime24"] * 3 + ["aime25"] * 3 + ["math500"] * 3 + ["gpqa"] * 3
    assert fake_hub == ["aime24", "aime25", "math500", "gpqa"]
    for r in rows:
        assert isinstance(r["turns"], list) and len(r["turns"]) == 1
        assert r["solution"] == f"\\boxed{{{r['answer']}}}"
        assert grade(reference_answer(r), r["answer"], r["category"])
    # the sampled rows are the seeded sample, in original order
    aime25 = [r for r in rows if r["category"] == "aime25"]
    expected = prepare_data.sample_indices(8, 3, seed=1)
    assert [r["answer"] for r in aime25] == [str(i * i) for i in expected]
    assert list(tmp_path.joinpath("sub").iterdir()) == [out]  # no temp file left behind
    assert "wrote 12 questions" in capsys.readouterr().out


def test_main_same_seed_same_file_other_seed_other_sample(fake_hub, tmp_path):
    paths = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 5)):
        paths[name] = tmp_path / f"{name}.jsonl"
        prepare_data.main(["--output", str(paths[name]), "--per-category", "4", "--seed", str(seed)])
    assert paths["a"].read_bytes() == paths["b"].read_bytes()
    assert paths["a"].read_bytes() != paths["c"].read_bytes()


def test_main_all_and_category_subset(fake_hub, tmp_path):
    out = tmp_path / "q.jsonl"
    prepare_data.main(["--output", str(out), "--all", "--categories", "gpqa", "math500"])
    rows = _read(out)
    assert [r["category"] for r in rows] == ["gpqa"] * 9 + ["math500"] * 12
    assert [r["answer"] for r in rows[9:]] == [str(2 * i) for i in range(12)]
    assert fake_hub == ["gpqa", "math500"]


def test_main_refuses_to_overwrite(fake_hub, tmp_path, capsys):
    out = tmp_path / "q.jsonl"
    out.write_text("keep me\n")
    with pytest.raises(SystemExit) as exit_info:
        prepare_data.main(["--output", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err and err.count("\n") == 1
    assert out.read_text() == "keep me\n"
    assert fake_hub == []  # refused before downloading anything

    prepare_data.main(["--output", str(out), "--force", "--per-category", "2"])
    assert len(_read(out)) == 8


@pytest.mark.parametrize("argv, message", [
    (["--categories", "math500", "aime26"], "unknown category 'aime26'"),
    (["--categories", "gpqa", "gpqa"], "listed twice"),
    (["--per-category", "0"], "--per-category"),
])
def test_main_user_errors(fake_hub, tmp_path, capsys, argv, message):
    out = tmp_path / "q.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        prepare_data.main(["--output", str(out), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()
    assert fake_hub == []


def test_load_failure_is_one_line_error(monkeypatch, tmp_path, capsys):
    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'HuggingFaceH4/MATH-500' on the Hub\nmore detail")

    # a stand-in `datasets` module, so the real hub is never contacted
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=unreachable))
    out = tmp_path / "q.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        prepare_data.main(["--output", str(out), "--categories", "math500"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == ("error: could not load HuggingFaceH4/MATH-500 from the Hugging Face hub: "
                   "Couldn't reach 'HuggingFaceH4/MATH-500' on the Hub\n")
    assert list(tmp_path.iterdir()) == []


def test_load_rows_passes_config_and_split(monkeypatch):
    calls = []

    def load_dataset(path, config, split):
        calls.append((path, config, split))
        return [{"Question": "q"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert prepare_data.load_rows("gpqa") == [{"Question": "q"}]
    assert calls == [("Idavidrein/gpqa", "gpqa_diamond", "train")]


def test_cli_unknown_category_exits_2_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "evaluation.prepare_data", "--output", str(tmp_path / "q.jsonl"),
         "--categories", "nonsense"],
        cwd=CODE_DIR, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown category 'nonsense'; choose from: aime24, aime25, math500, gpqa"]


# ---- the shipped demo questions --------------------------------------------

def test_demo_question_file():
    rows = [json.loads(line) for line in DEMO_FILE.read_text().splitlines()]
    assert len(rows) >= 16
    ids = [r["question_id"] for r in rows]
    assert len(set(ids)) == len(ids) and all(isinstance(i, int) for i in ids)
    assert {r["category"] for r in rows} == {"math500", "aime24", "aime25", "gpqa"}
    for r in rows:
        text = r["turns"][0]
        assert len(r["turns"]) == 1 and len(text) < 400, r["question_id"]
        assert text.endswith("\\boxed{}."), r["question_id"]
        reference = reference_answer(r)
        assert reference, r["question_id"]
        assert grade(reference, reference, r["category"]), r["question_id"]
        assert grade(r["solution"].removeprefix("\\boxed{").removesuffix("}"), reference, r["category"])
        if r["category"] == "gpqa":
            assert sorted(_options(text)) == ["A", "B", "C", "D"], r["question_id"]
            assert reference in "ABCD"
            assert not grade("E", reference, r["category"])
        else:
            assert re.fullmatch(r"-?\d+|\\frac\{\d+\}\{\d+\}", reference), r["question_id"]
            assert not grade("123456", reference, r["category"]), r["question_id"]
