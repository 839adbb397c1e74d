"""The shared loop: paradigms, thinking budget, answer/step files, resume after a crash."""
import json
import platform

import pytest

from evaluation.run import paradigms, records
from evaluation.run.args import build_parser, finalize
from evaluation.run.loop import Runner, run_eval
from model.engine import Drafter
from model.errors import UserError

QUESTIONS = [
    {"question_id": 1, "category": "math500", "turns": ["What is 2 + 3?"], "answer": "5"},
    {"question_id": 2, "category": "gpqa", "turns": ["Which letter? (A) x (B) y"], "answer": "B"},
    {"question_id": 3, "category": "aime24", "turns": ["What is the sum of two and three?"], "answer": "5"},
]
TURN_FIELDS = ("turns", "new_tokens", "decoding_steps", "wall_time", "accept_lengths_per_turn", "draft_seconds",
               "verify_seconds", "forced_tokens", "prompt_tokens", "stopped", "extracted", "reference", "correct",
               "grade_error", "token_ids_sha1")
STEP_FIELDS = {"question_id", "choice", "turn", "step", "draft_size", "proposed_size", "accepted", "draft_source", "draft_seconds",
               "verify_seconds", "context_length"}


@pytest.fixture
def question_file(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return str(path)


def make_args(model_dir, question_file, answer_file, *extra):
    argv = ["--model-path", model_dir, "--question-file", question_file, "--answer-file", str(answer_file),
            "--max-new-tokens", "12", "--dtype", "float32", "--device", "cpu", "--warmup", "1",
            "--warmup-tokens", "4", "--cost-profile-contexts", "16", "--cost-profile-repeats", "1", *extra]
    return finalize(build_parser("baseline").parse_args(argv), "baseline")


def ar(args, model, tokenizer):
    return Drafter()


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_multi_round_writes_answers_steps_and_config(tiny_model_dir, question_file, tmp_path):
    answer_file = tmp_path / "out" / "ar.jsonl"
    run_eval(make_args(tiny_model_dir, question_file, answer_file, "--think-twice"), ar)
    answers = read_jsonl(answer_file)
    assert [a["question_id"] for a in answers] == [1, 2, 3]
    for a in answers:
        assert a["paradigm"] == "multi_round" and a["method"] == "ar" and a["category"]
        choice = a["choices"][0]
        for field in TURN_FIELDS:
            assert len(choice[field]) == 2, field
        per_turn = choice["accept_lengths_per_turn"]
        assert per_turn[0] == [1] * choice["decoding_steps"][0]  # AR: MAT 1.00 by construction
        assert choice["accept_lengths"] == per_turn[0] + per_turn[1]  # flat over the choice, as the field reads it
        assert sum(choice["new_tokens"]) == sum(choice["accept_lengths"])
        # Round 2 quotes round 1's answer, so its prompt is longer.
        assert choice["prompt_tokens"][1] > choice["prompt_tokens"][0]
    steps = read_jsonl(str(answer_file).replace(".jsonl", ".steps.jsonl"))
    assert all(set(s) == STEP_FIELDS for s in steps)
    assert len(steps) == sum(sum(a["choices"][0]["decoding_steps"]) for a in answers)
    config = json.load(open(str(answer_file).replace(".jsonl", ".config.json")))
    assert config["method"] == "ar" and config["paradigm"] == "multi_round" and config["turns_per_question"] == 2
    assert {"torch", "transformers"} <= set(config["versions"])
    assert config["attention"] == "sdpa_grouped"   # load_model's grouped-query SDPA (model/engine/attention.py)
    # A CPU run keeps its freed memory in the heap on glibc (model/engine/allocator.py), and says so.
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert config["cpu_allocator"] == {"malloc": "glibc", "mmap_threshold": 32 << 20, "trim_threshold": 1 << 30}


def test_best_of_n_samples_the_same_prompt_with_distinct_seeds(tiny_model_dir, question_file, tmp_path):
    answer_file = tmp_path / "bon.jsonl"
    run_eval(make_args(tiny_model_dir, question_file, answer_file, "--BON", "--bon-n", "3",
                       "--temperature", "1.0", "--question-end", "1"), ar)
    choice = read_jsonl(answer_file)[0]["choices"][0]
    assert len(choice["turns"]) == 3
    assert len(set(choice["prompt_tokens"])) == 1
    assert len(set(choice["token_ids_sha1"])) > 1


def test_round_two_prompt_quotes_the_final_answer():
    q = QUESTIONS[0]
    assert paradigms.turn_messages(q, "best_of_n", 2, "whatever")[0]["content"] == q["turns"][0]
    second = paradigms.turn_messages(q, "multi_round", 1, "thinking...</think> The answer is 5")[0]["content"]
    assert second.startswith(q["turns"][0]) and "<answer> The answer is 5 </answer>" in second
    assert "<answer> all of it </answer>" in paradigms.turn_messages(q, "multi_round", 1, "all of it")[0]["content"]


def test_thinking_budget_forces_the_phrase_for_thinking_models(thinking_model_dir, tiny_model_dir):
    from model.engine.loading import load_tokenizer
    thinker = load_tokenizer(thinking_model_dir)
    budget = paradigms.thinking_budget(thinker, 100)
    assert budget.trigger_at == 80 and budget.end_token == thinker.convert_tokens_to_ids("</think>")
    assert thinker.decode(budget.phrase) == paradigms.BUDGET_PHRASE
    assert paradigms.thinking_budget(load_tokenizer(tiny_model_dir), 100) is None  # no markers, no forcing


def test_thinking_budget_in_a_generation(thinking_model_dir, question_file, tmp_path):
    answer_file = tmp_path / "think.jsonl"
    # 80% of 400 = 320 tokens of thinking, then the whole phrase fits in the remaining 80.
    args = make_args(thinking_model_dir, question_file, answer_file, "--question-end", "1",
                     "--max-new-tokens", "400")
    run_eval(args, ar)
    choice = read_jsonl(answer_file)[0]["choices"][0]
    steps = read_jsonl(str(answer_file).replace(".jsonl", ".steps.jsonl"))
    forced = [s for s in steps if s["draft_source"] == "forced"]
    assert len(forced) == 1 and forced[0]["context_length"] - choice["prompt_tokens"][0] == 320 + forced[0]["accepted"]
    assert choice["forced_tokens"] == [forced[0]["accepted"]] and forced[0]["accepted"] > 60
    assert "Considering the limited time by the user" in choice["turns"][0]
    assert choice["accept_lengths"] == [1] * len(choice["accept_lengths"])  # forced step not in MAT


def test_resume_after_a_crash_mid_question_loses_nothing(tiny_model_dir, question_file, tmp_path, monkeypatch):
    answer_file = tmp_path / "resume.jsonl"
    args = make_args(tiny_model_dir, question_file, answer_file, "--think-twice")
    real_answer = Runner.answer_group

    def crash_on_third(self, questions):
        if any(question["question_id"] == 3 for question in questions):
            raise RuntimeError("injected crash")
        return real_answer(self, questions)

    monkeypatch.setattr(Runner, "answer_group", crash_on_third)
    with pytest.raises(RuntimeError):
        run_eval(args, ar)
    assert [a["question_id"] for a in read_jsonl(answer_file)] == [1, 2]
    # A kill in the middle of writing: steps of question 3 written, its answer line torn.
    steps_file = str(answer_file).replace(".jsonl", ".steps.jsonl")
    with open(steps_file, "a") as f:
        f.write(json.dumps({"question_id": 3, "turn": 0, "step": 0}) + "\n")
    with open(answer_file, "a") as f:
        f.write('{"question_id": 3, "choi')
    monkeypatch.setattr(Runner, "answer_group", real_answer)
    run_eval(make_args(tiny_model_dir, question_file, answer_file, "--think-twice"), ar)
    answers = read_jsonl(answer_file)
    assert [a["question_id"] for a in answers] == [1, 2, 3]
    steps = read_jsonl(steps_file)
    assert len(steps) == sum(sum(a["choices"][0]["decoding_steps"]) for a in answers)


def test_resume_under_another_configuration_is_refused(tiny_model_dir, question_file, tmp_path):
    answer_file = tmp_path / "a.jsonl"
    run_eval(make_args(tiny_model_dir, question_file, answer_file, "--question-end", "1"), ar)
    before = answer_file.read_bytes()
    with pytest.raises(UserError, match="max_new_tokens"):
        run_eval(make_args(tiny_model_dir, question_file, answer_file, "--max-new-tokens", "13"), ar)
    assert answer_file.read_bytes() == before


def test_answer_file_without_config_is_not_appended_to(tmp_path):
    answer_file = tmp_path / "foreign.jsonl"
    answer_file.write_text('{"question_id": 1}\n')
    with pytest.raises(UserError, match="without"):
        records.AnswerStore(str(answer_file), {"method": "ar"})


def test_another_question_file_is_another_run(tiny_model_dir, question_file, tmp_path):
    answer_file = tmp_path / "q.jsonl"
    run_eval(make_args(tiny_model_dir, question_file, answer_file, "--question-end", "1"), ar)
    other = tmp_path / "other.jsonl"
    other.write_text(open(question_file).read())
    with pytest.raises(UserError, match="question_file"):
        run_eval(make_args(tiny_model_dir, str(other), answer_file), ar)


def test_a_range_that_selects_nothing_is_an_error(tiny_model_dir, question_file, tmp_path):
    with pytest.raises(UserError, match="select none"):
        run_eval(make_args(tiny_model_dir, question_file, tmp_path / "a.jsonl", "--question-begin", "7"), ar)


def test_answer_file_that_is_a_directory(tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        records.AnswerStore(str(tmp_path), {"method": "ar"})


def test_foreign_step_log_is_not_rewritten(tmp_path):
    answer_file = tmp_path / "a.jsonl"
    steps = tmp_path / "a.steps.jsonl"
    steps.write_text("not json\n")
    with pytest.raises(UserError, match="a.steps.jsonl:1"):
        records.AnswerStore(str(answer_file), {"method": "ar"})
    assert steps.read_text() == "not json\n"
