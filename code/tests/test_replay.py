"""Replay (evaluation/run/replay.py): a recorded trace replayed through a model-free drafter gives, step for step,
the accepted lengths of the live run that wrote it."""
import importlib
import json

import pytest

from conftest import two_questions_file
from evaluation.run.args import build_parser, finalize
from evaluation.run.loop import run_eval
from evaluation.run.replay import main as replay_main
from model.errors import UserError
from model.rest.datastore import Datastore
from model.samd.static_sam import StaticSam, join_documents, tokenizer_identity

PARADIGMS = [["--think-twice"], ["--BON", "--bon-n", "3", "--temperature", "0.3"]]
CORPUS_TEXT = "The answer is 5. The answer is 5 because 2 + 3 = 5. What is 2 + 3? It is 5."


def live(model_dir, question_file, answer_file, method, *flags, tokens=40):
    module = importlib.import_module(f"evaluation.inference_{method}")
    parser = build_parser(method)
    if hasattr(module, "add_args"):
        module.add_args(parser)
    argv = ["--model-path", model_dir, "--question-file", question_file, "--answer-file", str(answer_file),
            "--max-new-tokens", str(tokens), "--dtype", "float64", "--device", "cpu", "--warmup", "0",
            "--cost-profile-repeats", "1", "--cost-profile-contexts", "32", "--save-token-ids", *flags]
    run_eval(finalize(parser.parse_args(argv), method), module.make_drafter)
    with open(str(answer_file)[: -len(".jsonl")] + ".steps.jsonl") as f:
        return [json.loads(line) for line in f]


def replayed(model_dir, answer_file, method, tmp_path, *flags):
    out = tmp_path / f"replay-{method}.steps.jsonl"
    summary = tmp_path / f"replay-{method}.json"
    replay_main(["--answer-file", str(answer_file), "--model-path", model_dir, "--method", method,
                 "--steps-out", str(out), "--json-out", str(summary), *flags])
    with open(out) as f:
        steps = [json.loads(line) for line in f]
    with open(summary) as f:
        return steps, json.load(f)


def key(step):
    return (step["question_id"], step["choice"], step["turn"], step["step"])


def assert_same_steps(live_steps, replay_steps):
    assert [key(s) for s in replay_steps] == [key(s) for s in live_steps]
    for a, b in zip(live_steps, replay_steps):
        assert (b["accepted"], b["draft_size"], b["draft_source"]) == \
            (a["accepted"], a["draft_size"], a["draft_source"]), key(a)
    assert any(s["accepted"] > 1 for s in live_steps)   # drafts were accepted: the comparison is not vacuous


@pytest.fixture(scope="module")
def stores(tiny_model_dir, tmp_path_factory):
    """REST's datastore over pieces of the model's own AR answers in both paradigms (as a real corpus would hold
    text like the answers), and a static SAM over a small text, both with the tiny model's tokenizer."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    folder = tmp_path_factory.mktemp("stores")
    answers = []
    for i, paradigm in enumerate(PARADIGMS):
        answer = folder / f"ar{i}.jsonl"
        live(tiny_model_dir, two_questions_file(folder), answer, "baseline", *paradigm)
        answers += [ids for line in answer.read_text().splitlines() for c in json.loads(line)["choices"]
                    for ids in c["token_ids"]]
    pieces = [ids[i:i + 8] for ids in answers for i in range(0, len(ids), 5)]
    rest = Datastore.build(join_documents(pieces, tokenizer.eos_token_id), tokenizer.eos_token_id,
                           *tokenizer_identity(tokenizer))
    rest.save(str(folder / "x.idx"))
    text = [tokenizer(CORPUS_TEXT, add_special_tokens=False)["input_ids"]] * 3
    StaticSam.build(join_documents(text, tokenizer.eos_token_id), tokenizer).save(str(folder / "x.sam"))
    return {"rest": ["--datastore-path", str(folder / "x.idx")], "static": ["--static_sam_path", str(folder / "x.sam")]}


CASES = [("pld", []), ("samd", []), ("samd", ["static"]), ("pia", []), ("rest", ["rest"])]


@pytest.mark.parametrize("method,store", CASES, ids=["pld", "samd", "samd-static", "pia", "rest"])
@pytest.mark.parametrize("paradigm", PARADIGMS, ids=["multi-round-T0", "best-of-3-T0.3"])
def test_replay_equals_the_live_run_step_for_step(tiny_model_dir, stores, tmp_path, method, store, paradigm):
    flags = [f for name in store for f in stores[name]]
    answer = tmp_path / "a.jsonl"
    live_steps = live(tiny_model_dir, two_questions_file(tmp_path), answer, method, *paradigm, *flags)
    steps, summary = replayed(tiny_model_dir, answer, method, tmp_path, *flags)
    assert_same_steps(live_steps, steps)
    assert summary["retokenized_turns"] == 0
    with open(answer) as f:
        decoding = [a for line in f for c in json.loads(line)["choices"] for a in c["accept_lengths"]]
    assert summary["mat"] == pytest.approx(sum(decoding) / len(decoding))
    assert summary["estimated_speedup"] is not None   # from the recorded run's forward-cost profile


BON5 = ["--BON", "--bon-n", "5", "--temperature", "0.1", "--batch-size", "2"]
BATCHED = [("samd", BON5 + ["--continuous-batching"]), ("samd", BON5), ("samd", BON5 + ["--continuous-batching",
           "--no-cross-sample"]), ("pia", BON5 + ["--continuous-batching"]), ("pld", ["--think-twice", "--batch-size",
           "3", "--num-choices", "2"]), ("rest", ["--think-twice", "--batch-size", "2"])]


@pytest.mark.parametrize("method,flags", BATCHED, ids=["samd-continuous", "samd-static", "samd-continuous-solo",
                                                       "pia-continuous", "pld-multi-round-b3", "rest-multi-round"])
def test_batched_replay_equals_the_live_batched_run_step_for_step(tiny_model_dir, stores, tmp_path, method, flags):
    """The live run's batches, rows, batch steps and widths, and (cross-sample drafting included) its drafts."""
    extra = stores["rest"] if method == "rest" else []
    answer = tmp_path / "a.jsonl"
    live_steps = live(tiny_model_dir, two_questions_file(tmp_path), answer, method, *flags, *extra, tokens=60)
    steps, summary = replayed(tiny_model_dir, answer, method, tmp_path, *extra)
    assert_same_steps(live_steps, steps)
    if method == "samd" and "--continuous-batching" in flags:   # drafts from the siblings' text are replayed too
        assert any(s["draft_source"] == "sam_sibling" for s in live_steps) == ("--no-cross-sample" not in flags)
    for a, b in zip(live_steps, steps):
        assert (b["batch_row"], b["batch_step"], b["batch_rows"], b["batch_width"]) == \
            (a["batch_row"], a["batch_step"], a["batch_rows"], a["batch_width"]), key(a)
    batches = {s["batch_id"] for s in live_steps}
    assert len({s["batch_id"] for s in steps}) == len(batches) > 1
    assert summary["batch_size"] == int(flags[flags.index("--batch-size") + 1])
    assert summary["continuous_batching"] == ("--continuous-batching" in flags)
    assert summary["estimated_speedup"] is not None


def test_replay_can_batch_otherwise_than_the_recorded_run(tiny_model_dir, tmp_path):
    """A batch-1 trace replayed in continuous batches, with and without cross-sample drafting: the same tokens,
    other drafts; and verifying only what is accepted keeps every accepted node and verifies nothing else. (The
    samples are made to share text, as a real model's do: the tiny model's seldom share five tokens.)"""
    answer = tmp_path / "a.jsonl"
    live(tiny_model_dir, two_questions_file(tmp_path), answer, "samd", *BON5[:5])
    lines = [json.loads(line) for line in answer.read_text().splitlines()]
    for line in lines:
        base = line["choices"][0]["token_ids"][0]
        line["choices"][0]["token_ids"] = [[t if i % 9 != k else t + 1 for i, t in enumerate(base)] for k in range(5)]
    answer.write_text("".join(json.dumps(line) + "\n" for line in lines))
    runs = {}
    for name, flags in {"cross": [], "solo": ["--cross-sample", "off"],
                        "ideal": ["--verify-accepted-only"]}.items():
        runs[name] = replayed(tiny_model_dir, answer, "samd", tmp_path, "--batch-size", "2", "--batching",
                              "continuous", *flags)
    for steps, summary in runs.values():
        assert summary["batch_size"] == 2 and summary["tokens"] == runs["cross"][1]["tokens"]
        assert {s["batch_row"] for s in steps} == {0, 1}
    assert any(s["draft_source"] == "sam_sibling" for s in runs["cross"][0])
    assert not any(s["draft_source"] == "sam_sibling" for s in runs["solo"][0])
    (cross, c), (ideal, i) = runs["cross"], runs["ideal"]
    assert [s["accepted"] for s in ideal] == [s["accepted"] for s in cross]
    last = {(s["question_id"], s["turn"]): s["step"] for s in ideal}
    for s in ideal:   # the accepted nodes, and the bonus token unless the trace ended on a draft node
        ends = s["step"] == last[s["question_id"], s["turn"]]
        assert s["draft_size"] == s["accepted"] - 1 or (ends and s["draft_size"] == s["accepted"]), s
    assert sum(s["draft_size"] for s in cross) > sum(s["draft_size"] for s in ideal)

    def forward_tokens(steps):   # each batch step is one forward of its rows at its width
        return sum({(s["batch_id"], s["batch_step"]): s["batch_width"] for s in steps}.values())
    assert forward_tokens(ideal) < forward_tokens(cross)


def test_continuous_replay_of_a_multi_round_trace_is_a_one_line_error(tiny_model_dir, tmp_path, capsys):
    answer = tmp_path / "a.jsonl"
    live(tiny_model_dir, two_questions_file(tmp_path), answer, "pld", "--think-twice")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        replay_main(["--answer-file", str(answer), "--model-path", tiny_model_dir, "--method", "pld",
                     "--batch-size", "2", "--batching", "continuous"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--batching continuous needs a Best-of-N trace" in err and "\n" not in err


def test_replay_forces_the_thinking_budget_where_the_live_run_did(thinking_model_dir, tmp_path):
    """Past 80% of the tokens the live run forces the budget's phrase: replay forces it at the same place."""
    answer = tmp_path / "a.jsonl"
    live_steps = live(thinking_model_dir, two_questions_file(tmp_path), answer, "samd", "--think-twice", tokens=30)
    assert any(s["draft_source"] == "forced" for s in live_steps)
    steps, _ = replayed(thinking_model_dir, answer, "samd", tmp_path)
    assert_same_steps(live_steps, steps)


def test_a_trace_without_ids_is_retokenized_and_flagged(tiny_model_dir, tmp_path, capsys):
    answer = tmp_path / "a.jsonl"
    live(tiny_model_dir, two_questions_file(tmp_path), answer, "pld", "--think-twice")
    lines = [json.loads(line) for line in answer.read_text().splitlines()]
    for line in lines:
        for choice in line["choices"]:
            del choice["token_ids"]
    answer.write_text("".join(json.dumps(line) + "\n" for line in lines))
    _, summary = replayed(tiny_model_dir, answer, "pld", tmp_path)
    assert summary["retokenized_turns"] == 4
    assert "4 turn(s) re-tokenized" in capsys.readouterr().out


def test_prompt_response_pairs(tiny_model_dir, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": "Say it twice.", "response": CORPUS_TEXT * 2}) + "\n"
                             for _ in range(2)))
    _, summary = replayed(tiny_model_dir, pairs, "pld", tmp_path)
    assert summary["trace"] == "prompt/response pairs" and summary["turns"] == 2
    assert summary["mat"] > 1.5            # the second half copies the first: PLD drafts it
    assert summary["estimated_speedup"] is None


@pytest.mark.parametrize("argv,message", [
    (["--method", "recycling"], "cannot be replayed: Token Recycling drafts from the target's top-k"),
    (["--method", "eagle3"], "cannot be replayed: EAGLE-3 drafts from the target's hidden states"),
    (["--method", "pld", "--cost-aware"], "--cost-aware cannot be replayed"),
    (["--method", "samd", "--tree_method", "token_recycle"], "--tree_method token_recycle cannot be replayed"),
    (["--method", "nope"], "replay knows pld, samd, pia, rest"),
])
def test_refusals_are_one_line(tiny_model_dir, tmp_path, capsys, argv, message):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    with pytest.raises(SystemExit) as exc:
        replay_main(["--answer-file", str(pairs), "--model-path", tiny_model_dir, *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_bad_trace_files(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    for text, message in [("{not json\n", "not a JSON line"), (json.dumps({"x": 1}) + "\n", "neither an answer line"),
                          ("", "holds no trace")]:
        bad.write_text(text)
        with pytest.raises(SystemExit):
            replay_main(["--answer-file", str(bad), "--model-path", tiny_model_dir, "--method", "pld"])
        assert message in capsys.readouterr().err


def test_cost_profile_from_elsewhere(tiny_model_dir, tmp_path):
    """--cost-profile takes a run configuration, a bare profile, or gpu_check's report (one shape named)."""
    from evaluation.run.replay import load_profile
    profile = {"widths": [1, 2, 4], "context_lengths": [64], "repeats": 1, "seconds": [[0.01, 0.01, 0.02]]}
    for name, data, arg in [("config", {"cost_profile": profile}, ""), ("bare", profile, ""),
                            ("gpu", {"measurements": {"qwen3-8b": {"profile": profile}, "x": {}}}, ":qwen3-8b")]:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        loaded = load_profile(f"{path}{arg}", {})
        assert loaded.ratio(4, 64) == pytest.approx(2.0)
    with pytest.raises(UserError, match="name one of its shapes"):
        load_profile(str(tmp_path / "gpu.json"), {})
    (tmp_path / "none.json").write_text("{}")
    with pytest.raises(UserError, match="holds no forward-cost profile"):
        load_profile(str(tmp_path / "none.json"), {})
