"""Our answer files are read by the field's own report scripts, and ours read both accept_lengths layouts.

The two external scripts are not vendored: their reading logic is re-written below, a few lines each, with the lines
they mirror. Both average ONE flat `accept_lengths` list per choice (list.extend then np.mean), which a list per turn
breaks; the new layout keeps the per-turn lists in `accept_lengths_per_turn`.
"""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from evaluation.reports import compare, speed

from test_methods_lossless import run_paradigm

CODE_DIR = Path(__file__).resolve().parents[1]

QUESTIONS = [(1, "math500", "What is 2 + 3?"), (2, "aime24", "The answer is 5. The answer is"),
             (3, "math500", "What is the sum of two and three?")]
MT_BENCH = ["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"]


def read_selected(path, task, mt_bench=False):
    # Both scripts' file filter: every line for "overall", else lines whose "category" is the task
    # (SpecTTS-Bench code/evaluation/speed_cot.py lines 11-18 and 30-37; Spec-Bench evaluation/speed.py lines 12-22
    # and 34-44, which also know the "mt_bench" group).
    data = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            if task == "overall" or (mt_bench and task == "mt_bench" and obj["category"] in MT_BENCH) \
                    or obj["category"] == task:
                data.append(obj)
    return data


def method_side(data):
    # speed_cot.py lines 20-26 = Spec-Bench speed.py lines 24-30: per-question tokens/s from summed new_tokens and
    # wall_time; accept_lengths of every question extended into one list.
    speeds, accept_lengths_list = [], []
    for datapoint in data:
        tokens = sum(datapoint["choices"][0]["new_tokens"])
        times = sum(datapoint["choices"][0]["wall_time"])
        accept_lengths_list.extend(datapoint["choices"][0]["accept_lengths"])
        speeds.append(tokens / times)
    return speeds, accept_lengths_list


def baseline_side(data, tokenizer):
    # speed_cot.py lines 39-50 = Spec-Bench speed.py lines 46-57: the baseline's tokens are the turns' TEXT
    # re-tokenized, minus one per turn (a BOS token, for the Llama tokenizers they were written for).
    speeds0 = []
    for datapoint in data:
        tokens = sum(len(tokenizer(text).input_ids) - 1 for text in datapoint["choices"][0]["turns"])
        speeds0.append(tokens / sum(datapoint["choices"][0]["wall_time"]))
    return speeds0


def seed_speed_cot(method_file, base_file, tokenizer, task):
    """SpecTTS-Bench code/evaluation/speed_cot.py speed(), lines 7-58: (MAT, speedup) it prints."""
    speeds, accept_lengths_list = method_side(read_selected(method_file, task))
    speeds0 = baseline_side(read_selected(base_file, task), tokenizer)
    # lines 54 and 58
    return np.mean(accept_lengths_list), np.array(speeds).mean() / np.array(speeds0).mean()


def spec_bench_speed(method_file, base_file, tokenizer, task):
    """Spec-Bench evaluation/speed.py speed(), lines 7-65: (MAT, speedup) it prints."""
    speeds, accept_lengths_list = method_side(read_selected(method_file, task, mt_bench=True))
    speeds0 = baseline_side(read_selected(base_file, task, mt_bench=True), tokenizer)
    # lines 61 and 65
    return np.mean(accept_lengths_list), np.array(speeds).mean() / np.array(speeds0).mean()


@pytest.fixture(scope="module")
def run_files(tiny_model_dir, tmp_path_factory):
    """AR and Token Recycling answer files from the real loop, two rounds of multi-round thinking."""
    path = tmp_path_factory.mktemp("compat")
    questions = path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question_id": q, "category": c, "turns": [text]}) + "\n"
                                 for q, c, text in QUESTIONS))
    for method in ("ar", "recycling"):
        run_paradigm(tiny_model_dir, str(questions), path / f"{method}.jsonl", method, "--think-twice")
    return path / "recycling.jsonl", path / "ar.jsonl"


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def write_layout(src, dst, layout):
    """A copy of an answer file in an older layout: 'old' (accept_lengths per turn) or 'flat' (flat list only,
    as Spec-Bench itself writes)."""
    rows = read_jsonl(src)
    for row in rows:
        for choice in row["choices"]:
            per_turn = choice.pop("accept_lengths_per_turn")
            if layout == "old":
                choice["accept_lengths"] = per_turn
    dst.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dst


def test_writer_gives_a_flat_list_and_the_turns(run_files):
    for path in run_files:
        for row in read_jsonl(path):
            choice = row["choices"][0]
            per_turn = choice["accept_lengths_per_turn"]
            assert len(per_turn) == len(choice["turns"]) == len(choice["new_tokens"]) == len(choice["wall_time"]) == 2
            assert choice["accept_lengths"] == [a for turn in per_turn for a in turn]
            assert all(isinstance(a, int) for a in choice["accept_lengths"])
            # no forced steps here: every generated token is in some step's accepted length
            assert [sum(turn) for turn in per_turn] == choice["new_tokens"]
            assert isinstance(row["category"], str)


@pytest.mark.parametrize("script", [seed_speed_cot, spec_bench_speed])
def test_external_scripts_read_our_files_and_agree_on_mat(run_files, tiny_model_dir, script):
    from transformers import AutoTokenizer
    method_file, base_file = run_files
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)  # both scripts' line 8
    summary = speed.summarize(speed.load_answers(method_file), speed.load_answers(base_file))
    for task in ("overall", "math500", "aime24"):
        mat, speedup = script(method_file, base_file, tokenizer, task)
        ours = summary["overall"] if task == "overall" else summary["per_category"][task]
        assert mat == pytest.approx(ours["mat"], rel=1e-12)
        assert np.isfinite(speedup) and speedup > 0  # their own definition (mean of per-question rates), not ours
        base_mat, _ = script(base_file, base_file, tokenizer, task)
        assert base_mat == 1.0 == ours["base_mat"]  # AR: the bonus token only


@pytest.mark.parametrize("layout", ["old", "flat"])
def test_speed_and_compare_read_older_layouts(run_files, tmp_path, layout):
    method_file, base_file = run_files
    older = write_layout(method_file, tmp_path / f"{layout}.jsonl", layout)
    older_base = write_layout(base_file, tmp_path / f"{layout}-base.jsonl", layout)
    new = speed.summarize(speed.load_answers(method_file), speed.load_answers(base_file))
    old = speed.summarize(speed.load_answers(older), speed.load_answers(older_base))
    assert old["overall"] == new["overall"] and old["per_category"] == new["per_category"]
    if layout == "old":
        assert old["per_turn"] == new["per_turn"]
    else:  # a flat list over two turns cannot be split: per-turn MAT unknown, everything else the same
        for o, n in zip(old["per_turn"], new["per_turn"]):
            assert o["mat"] is None and n["mat"] is not None
            assert {k: v for k, v in o.items() if "mat" not in k} == {k: v for k, v in n.items() if "mat" not in k}
    rows = compare.summaries(str(older_base), [str(older)])
    expected = compare.summaries(str(base_file), [str(method_file)])
    assert rows[0]["overall"] == expected[0]["overall"]
    assert [t["mat"] for t in rows[0]["per_turn"]] == \
        ([t["mat"] for t in expected[0]["per_turn"]] if layout == "old" else [None, None])


def test_turn_accept_lengths_in_each_layout():
    per_turn = [[2, 1], [3]]
    new = {"turns": ["a", "b"], "accept_lengths": [2, 1, 3], "accept_lengths_per_turn": per_turn}
    old = {"turns": ["a", "b"], "accept_lengths": per_turn}
    assert speed.turn_accept_lengths(new) == speed.turn_accept_lengths(old) == per_turn
    assert speed.flat_accept_lengths(new) == speed.flat_accept_lengths(old) == [2, 1, 3]
    assert speed.turn_accept_lengths({"turns": ["a"], "accept_lengths": [2, 1]}) == [[2, 1]]
    assert speed.turn_accept_lengths({"turns": ["a", "b"], "accept_lengths": [2, 1, 3]}) is None
    assert speed.turn_accept_lengths({"turns": ["a"]}) is None


def test_speed_script_runs_on_both_layouts(run_files, tmp_path, capsys):
    method_file, base_file = run_files
    older = write_layout(method_file, tmp_path / "old.jsonl", "old")
    assert speed.main(["--file-path", str(method_file), "--base-path", str(base_file)]) == 0
    new_out = capsys.readouterr().out
    assert speed.main(["--file-path", str(older), "--base-path", str(base_file)]) == 0
    old_out = capsys.readouterr().out
    # identical tables; only the source line differs (the copy has no sidecar config)
    assert new_out.split("\n\n", 1)[1] == old_out.split("\n\n", 1)[1]


def test_compare_tells_two_runs_of_one_method_apart_by_their_files(run_files, tmp_path):
    import shutil
    method_file, base_file = run_files
    for name in ("rec-small", "rec-large"):   # two variants of one method, as interleaved NAME=MODULE writes them
        shutil.copy(method_file, tmp_path / f"{name}.jsonl")
        shutil.copy(speed.config_path(str(method_file)), speed.config_path(str(tmp_path / f"{name}.jsonl")))
    rows = compare.summaries(str(base_file), [str(tmp_path / "rec-small.jsonl"), str(tmp_path / "rec-large.jsonl"),
                                              str(method_file)])
    assert [r["name"] for r in rows] == ["recycling (rec-small)", "recycling (rec-large)", "recycling (recycling)"]
    assert compare.summaries(str(base_file), [str(method_file)])[0]["name"] == "recycling"   # alone: unchanged


def test_compare_classifies_divergences_in_files_written_before_the_divergence_fields(run_files, tmp_path):
    """Without token ids, prompt hashes or recorded near-ties (older files), a differing turn is `unclassified`
    (never `unexplained`) and a later round of the same choice `inherited`; the speedup over identical-or-near-tie
    turns leaves both out."""
    method_file, base_file = run_files
    rows, base_rows = read_jsonl(method_file), read_jsonl(base_file)
    for row in rows + base_rows:
        for choice in row["choices"]:
            for key in ("token_ids", "prompt_sha1", "near_ties"):
                choice.pop(key, None)
    first = rows[0]["choices"][0]
    for t in (0, 1):   # both rounds differ: the first (no ids: unclassified), so the second's prompt
        first["token_ids_sha1"][t], first["turns"][t] = "0" * 40, first["turns"][t] + " (another text)"
    for path, lines in ((tmp_path / "m.jsonl", rows), (tmp_path / "b.jsonl", base_rows)):
        path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    result = compare.summaries(str(tmp_path / "b.jsonl"), [str(tmp_path / "m.jsonl")])[0]["divergence"]
    assert result["counts"] == {"identical": 4, "near_tie": 0, "inherited": 1, "unexplained": 0, "unclassified": 1}
    assert result["speedup_identical_or_near_tie"]["n_turns"] == 4


def test_greedy_runs_keep_token_ids_and_the_baseline_its_near_ties(run_files):
    method_file, base_file = run_files
    for path in run_files:
        for row in read_jsonl(path):
            choice = row["choices"][0]
            assert [len(ids) for ids in choice["token_ids"]] == choice["new_tokens"]
            assert len(choice["prompt_sha1"]) == 2 and choice["prompt_sha1"][0] != choice["prompt_sha1"][1]
            assert ("near_ties" in choice) == (path == base_file)
    rows = compare.summaries(str(base_file), [str(method_file)])
    assert rows[0]["divergence"]["counts"]["identical"] == rows[0]["divergence"]["n_turns"] == 6   # float64
    # (then the speedup over those turns, whatever the timing gave)
    assert re.search(r"\| 6 / 0 / 0 / 0 \| \d+\.\d\dx", compare.table(str(base_file), rows))
