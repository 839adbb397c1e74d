"""A kill loses at most one turn: completed rounds / samples are checkpointed in `<stem>.partial.jsonl` and a resumed
run continues the question from its next turn, token-identical to an uninterrupted run."""
import json
import os

import pytest

from evaluation.run import records
from evaluation.run.args import build_parser, finalize
from evaluation.run.loop import run_eval
from model.engine import SpeculativeEngine
from methods import METHODS
from model.errors import UserError

QUESTIONS = ["What is 2 + 3?", "The answer is 5. The answer is"]
MULTI_ROUND = ("--think-twice",)


@pytest.fixture
def question_file(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"question_id": i, "category": "math500", "turns": [text]}) + "\n"
                            for i, text in enumerate(QUESTIONS)))
    return str(path)


def run(model_dir, question_file, answer_file, method, *flags):
    argv = ["--model-path", model_dir, "--question-file", question_file, "--answer-file", str(answer_file),
            "--max-new-tokens", "40", "--dtype", "float64", "--device", "cpu", "--warmup", "0",
            "--cost-profile-repeats", "1", "--cost-profile-contexts", "16", *flags]
    run_eval(finalize(build_parser(method).parse_args(argv), method),
             lambda args, model, tokenizer: METHODS[method](model, [list(range(5, 60))]))
    return read(answer_file)


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def killed_at(monkeypatch, model_dir, question_file, answer_file, method, flags, call):
    """Run until the `call`-th generation (1-based, over the whole run) starts, and interrupt it there."""
    real = SpeculativeEngine.generate_batch
    calls = []

    def generate_batch(self, prompts, *args, **kwargs):
        calls.append(len(prompts))
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(self, prompts, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(SpeculativeEngine, "generate_batch", generate_batch)
        with pytest.raises(KeyboardInterrupt):
            run(model_dir, question_file, answer_file, method, *flags)


def partial_lines(answer_file):
    path = records.stem(str(answer_file)) + ".partial.jsonl"
    return read(path) if os.path.exists(path) else None


def drafts(answer_file):
    """What was drafted and accepted at every step: the same when the drafter had the same state."""
    return [(s["question_id"], s["choice"], s["turn"], s["step"], s["draft_source"], s["proposed_size"],
             s["accepted"]) for s in read(records.stem(str(answer_file)) + ".steps.jsonl")]


def hashes(answers):
    return [(a["question_id"], c["index"], tuple(c["token_ids_sha1"])) for a in answers for c in a["choices"]]


@pytest.mark.parametrize("method,restore", [("ar", "not needed"), ("pld", "not needed"), ("samd", "replayed")])
def test_multi_round_resumes_from_the_next_round(tiny_model_dir, question_file, tmp_path, monkeypatch, method,
                                                 restore):
    reference = run(tiny_model_dir, question_file, tmp_path / "ref.jsonl", method, *MULTI_ROUND)
    answer_file = tmp_path / "killed.jsonl"
    # Killed as question 1's second round starts: question 0 answered, question 1's first round checkpointed.
    killed_at(monkeypatch, tiny_model_dir, question_file, answer_file, method, MULTI_ROUND, call=4)
    assert [a["question_id"] for a in read(answer_file)] == [0]
    saved = partial_lines(answer_file)
    assert [(e["question_id"], e["choice"], e["turn"]) for e in saved] == [(1, 0, 0)]  # question 0's were dropped
    assert len(saved[0]["tokens"]) == saved[0]["record"]["new_tokens"]

    answers = run(tiny_model_dir, question_file, answer_file, method, *MULTI_ROUND)
    assert [a["question_id"] for a in answers] == [0, 1]   # each question exactly once
    assert hashes(answers) == hashes(reference)
    assert partial_lines(answer_file) is None              # dropped once the answer line is written
    first, resumed = answers
    assert first["drafter_restore"] is None and first["choices"][0]["resumed_turns"] == []
    assert resumed["drafter_restore"] == restore and resumed["choices"][0]["resumed_turns"] == [0]
    # The resumed round keeps what was measured when it ran; the step log holds both rounds once.
    assert resumed["choices"][0]["wall_time"][0] == saved[0]["record"]["wall_time"]
    steps = read(records.stem(str(answer_file)) + ".steps.jsonl")
    assert len(steps) == sum(sum(a["choices"][0]["decoding_steps"]) for a in answers)
    assert [(s["turn"], s["step"]) for s in steps if s["question_id"] == 1] == \
        [(t, i) for t in range(2) for i in range(resumed["choices"][0]["decoding_steps"][t])]
    # The drafter has the state it had uninterrupted (SAM: replayed), so it drafts the same at every step.
    assert drafts(answer_file) == drafts(tmp_path / "ref.jsonl")
    # The resumed session reused the first session's forward-cost profile instead of measuring it again.
    with open(records.stem(str(answer_file)) + ".config.json") as f:
        sessions = json.load(f)["sessions"]
    assert "cost_profile" in sessions[0] and sessions[1] == {"started": sessions[1]["started"],
                                                             "cost_profile_reused": True}


def test_a_drafter_on_hidden_states_restarts_cold(tiny_model_dir, question_file, tmp_path, monkeypatch):
    flags = (*MULTI_ROUND, "--draft-state-scope", "question")
    reference = run(tiny_model_dir, question_file, tmp_path / "ref.jsonl", "eagle3", *flags)
    answer_file = tmp_path / "killed.jsonl"
    killed_at(monkeypatch, tiny_model_dir, question_file, answer_file, "eagle3", flags, call=4)
    answers = run(tiny_model_dir, question_file, answer_file, "eagle3", *flags)
    assert hashes(answers) == hashes(reference)
    assert answers[1]["drafter_restore"] == "cold" and answers[1]["choices"][0]["resumed_turns"] == [0]


@pytest.mark.parametrize("method,flags,call,resumed,restore", [
    # Best-of-3 at T=0.8, SAM's state kept across the samples of a question: killed at question 0's third sample.
    ("samd", ("--BON", "--bon-n", "3", "--temperature", "0.8"), 3, [[0, 1]], "replayed"),
    # Two choices of two rounds: killed at choice 1's second round; choice 0 comes back whole.
    ("pld", (*MULTI_ROUND, "--num-choices", "2", "--temperature", "0.8"), 4, [[0, 1], [0]], "not needed"),
    # Token Recycling keeps its matrix across everything: it cannot be rebuilt from tokens.
    ("recycling", ("--BON", "--bon-n", "3", "--temperature", "0.8"), 2, [[0]], "cold"),
])
def test_sampled_turns_resume_identically(tiny_model_dir, question_file, tmp_path, monkeypatch, method, flags, call,
                                          resumed, restore):
    """One uniform per emitted token from a generator seeded per turn: with point-mass drafts a resumed sample is
    token-identical to the uninterrupted one."""
    reference = run(tiny_model_dir, question_file, tmp_path / "ref.jsonl", method, *flags)
    assert len({h for a in reference for c in a["choices"] for h in c["token_ids_sha1"]}) > 2  # samples differ
    answer_file = tmp_path / "killed.jsonl"
    killed_at(monkeypatch, tiny_model_dir, question_file, answer_file, method, flags, call=call)
    assert not os.path.exists(answer_file) or read(answer_file) == []
    answers = run(tiny_model_dir, question_file, answer_file, method, *flags)
    assert hashes(answers) == hashes(reference)
    assert [c["resumed_turns"] for c in answers[0]["choices"]] == resumed + [[]] * (len(answers[0]["choices"])
                                                                                   - len(resumed))
    assert answers[0]["drafter_restore"] == restore and answers[1]["drafter_restore"] is None
    if restore != "cold":
        assert drafts(answer_file) == drafts(tmp_path / "ref.jsonl")


def open_store(answer_file):
    with open(records.stem(str(answer_file)) + ".config.json") as f:
        return records.AnswerStore(str(answer_file), json.load(f))


def test_a_torn_checkpoint_line_is_repaired(tiny_model_dir, question_file, tmp_path, monkeypatch):
    reference = run(tiny_model_dir, question_file, tmp_path / "ref.jsonl", "ar", *MULTI_ROUND)
    answer_file = tmp_path / "torn.jsonl"
    killed_at(monkeypatch, tiny_model_dir, question_file, answer_file, "ar", MULTI_ROUND, call=4)
    partial = records.stem(str(answer_file)) + ".partial.jsonl"
    good = open(partial).read()
    with open(partial, "a") as f:   # killed while appending question 1's second round
        f.write('{"question_id": 1, "choice": 0, "turn": 1, "record": {"tur')
    store = open_store(answer_file)
    try:
        assert open(partial).read() == good
        assert [(e["choice"], e["turn"]) for e in store.completed_turns(1, 2)] == [(0, 0)]
    finally:
        store.close()
    answers = run(tiny_model_dir, question_file, answer_file, "ar", *MULTI_ROUND)
    assert hashes(answers) == hashes(reference)
    assert answers[1]["choices"][0]["resumed_turns"] == [0]


def test_stale_checkpoint_lines_are_ignored(tiny_model_dir, question_file, tmp_path, monkeypatch):
    """Killed between a question's answer line and the rewrite that drops its checkpoint lines: they are dropped at
    the next resume, never used."""
    reference = run(tiny_model_dir, question_file, tmp_path / "ref.jsonl", "ar", *MULTI_ROUND)
    answer_file = tmp_path / "stale.jsonl"
    killed_at(monkeypatch, tiny_model_dir, question_file, answer_file, "ar", MULTI_ROUND, call=4)
    partial = records.stem(str(answer_file)) + ".partial.jsonl"
    live = open(partial).read()
    stale = json.loads(live)
    stale.update(question_id=0, record={**stale["record"], "turns": "STALE", "token_ids_sha1": "stale"})
    with open(partial, "w") as f:
        f.write(json.dumps(stale) + "\n" + live)
    store = open_store(answer_file)
    try:
        assert store.completed_turns(0, 2) == []
        assert open(partial).read() == live   # rewritten without the answered question's line
    finally:
        store.close()
    with open(partial, "a") as f:   # again, and now every question gets answered
        f.write(json.dumps(stale) + "\n")
    answers = run(tiny_model_dir, question_file, answer_file, "ar", *MULTI_ROUND)
    assert [a["question_id"] for a in answers] == [0, 1]
    assert hashes(answers) == hashes(reference)
    assert "STALE" not in open(answer_file).read()
    assert not os.path.exists(partial)


def test_out_of_order_lines_are_not_taken(tmp_path):
    store = records.AnswerStore(str(tmp_path / "a.jsonl"), {"method": "ar"})
    try:
        for choice, turn in ((0, 0), (0, 2), (0, 0), (0, 1), (1, 1)):
            store.checkpoint(7, {"choice": choice, "turn": turn, "record": {"n": turn}, "tokens": [], "steps": []})
        assert [(e["choice"], e["turn"]) for e in store.completed_turns(7, 3)] == [(0, 0), (0, 1)]
        assert [(e["choice"], e["turn"]) for e in store.completed_turns(7, 2)] == [(0, 0), (0, 1)]
    finally:
        store.close()


def test_foreign_checkpoint_file_is_not_rewritten(tmp_path):
    answer_file = tmp_path / "a.jsonl"
    records.AnswerStore(str(answer_file), {"method": "ar"}).close()
    partial = tmp_path / "a.partial.jsonl"
    partial.write_text("not json\n")
    with pytest.raises(UserError, match="a.partial.jsonl:1"):
        records.AnswerStore(str(answer_file), {"method": "ar"})
    assert partial.read_text() == "not json\n"
