"""Replicas on a local Ray cluster (CPU): the merged answer file is token-identical to one process's, a killed
replica is resumed by re-running the command with nothing lost or duplicated, bad flag combinations are one line."""
import glob
import json
import os
import subprocess
import sys

import pytest

from evaluation import inference_pld
from evaluation.run import replicas
from evaluation.run.args import build_parser, finalize
from evaluation.run.cli import evaluate
from model.errors import UserError

TEXTS = ["What is 2 + 3?", "The answer is 5. The answer is", "What is the sum of two and three?",
         "Previously I tried to solve the problem.", "Please reason step by step."]
STEP_KEYS = ("question_id", "choice", "turn", "step", "draft_size", "accepted", "draft_source", "context_length")


def make_args(model_dir, question_file, answer_file, *extra):
    argv = ["--model-path", model_dir, "--question-file", question_file, "--answer-file", str(answer_file),
            "--max-new-tokens", "24", "--dtype", "float32", "--device", "cpu", "--think-twice", "--warmup", "1",
            "--warmup-tokens", "4", "--cost-profile-contexts", "16", "--cost-profile-repeats", "1", *extra]
    parser = build_parser("pld")
    inference_pld.add_args(parser)
    return finalize(parser.parse_args(argv), "pld")


def lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def hashes(answers):
    return [(a["question_id"], [c["token_ids_sha1"] for c in a["choices"]]) for a in answers]


def steps(path):
    return [tuple(s[k] for k in STEP_KEYS) for s in lines(path)]


def crashing_pld(args, model, tokenizer):
    """PLD whose replica 1 dies (the whole worker process, as a kill would) when its second question starts, once."""
    drafter = inference_pld.make_drafter(args, model, tokenizer)
    if args.replica["index"] == 1 and not os.path.exists(args.crash_marker):
        calls, original = [], drafter.begin_sequence

        def begin_sequence(prompt):
            calls.append(prompt)
            if len(calls) == args.warmup + args.num_rounds + 1:
                open(args.crash_marker, "w").close()
                os._exit(1)
            original(prompt)
        drafter.begin_sequence = begin_sequence
    return drafter


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 << 20)  # one for the whole module
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, tmp_path_factory):
    """The reference: the same questions answered by one process."""
    folder = tmp_path_factory.mktemp("replicas")
    questions = folder / "q.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "category": "math500", "turns": [text]}) + "\n"
                                 for i, text in enumerate(TEXTS)))
    answer = folder / "one.jsonl"
    evaluate(make_args(tiny_model_dir, str(questions), answer), inference_pld.make_drafter)
    return str(questions), answer


def test_round_robin_split():
    questions = [{"question_id": f"q{i}"} for i in range(5)]
    assert replicas.assign(questions, 2) == [["q0", "q2", "q4"], ["q1", "q3"]]
    assert replicas.assign(questions[:1], 3) == [["q0"], [], []]


def test_two_replicas_answer_as_one_process(ray_cluster, tiny_model_dir, one_process, tmp_path, capsys):
    questions, reference = one_process
    answer = tmp_path / "two.jsonl"
    evaluate(make_args(tiny_model_dir, questions, answer, "--num-replicas", "2"), inference_pld.make_drafter)
    merged = lines(answer)
    assert hashes(merged) == hashes(lines(reference))  # per question, per turn, in question order
    for mine, theirs in zip(merged, lines(reference)):
        assert [c["turns"] for c in mine["choices"]] == [c["turns"] for c in theirs["choices"]]
        assert [c["accept_lengths"] for c in mine["choices"]] == [c["accept_lengths"] for c in theirs["choices"]]
    assert steps(str(answer).replace(".jsonl", ".steps.jsonl")) == \
        steps(str(reference).replace(".jsonl", ".steps.jsonl"))
    with open(tmp_path / "two.config.json") as f:
        config = json.load(f)
    assert config["replicas"] == 2 and config["method"] == "pld"
    assert [d["replica"] for d in config["replica_devices"]] == [0, 1]
    assert all(d["device_name"] == config["device_name"] and d["threads"] == 1 for d in config["replica_devices"])
    assert sorted(s["replica"] for s in config["sessions"]) == [0, 1]  # each replica warmed up and profiled
    assert "cost_profile" in config
    assert glob.glob(str(tmp_path / "two.shard-*")) == []  # merged shards are removed
    capsys.readouterr()
    evaluate(make_args(tiny_model_dir, questions, answer, "--num-replicas", "2"), inference_pld.make_drafter)
    assert "all 5 questions already answered" in capsys.readouterr().out
    assert hashes(lines(answer)) == hashes(merged)


def test_a_killed_replica_is_resumed_by_the_same_command(ray_cluster, tiny_model_dir, one_process, tmp_path):
    questions, reference = one_process
    answer = tmp_path / "kill.jsonl"
    ref = lines(reference)
    # Question 0 is already in the answer file (an earlier run): nobody answers it again.
    answer.write_text(json.dumps(ref[0]) + "\n")
    (tmp_path / "kill.steps.jsonl").write_text("".join(
        json.dumps(s) + "\n" for s in lines(str(reference).replace(".jsonl", ".steps.jsonl"))
        if s["question_id"] == 0))
    (tmp_path / "kill.config.json").write_text(open(str(reference).replace(".jsonl", ".config.json")).read())
    args = make_args(tiny_model_dir, questions, answer, "--num-replicas", "2")
    args.crash_marker = str(tmp_path / "crashed")
    with pytest.raises(UserError) as failure:
        evaluate(args, crashing_pld)  # replica 1 (questions 1, 3) dies when question 3 starts
    assert "replica 1" in str(failure.value) and "run the same command again" in str(failure.value)
    assert "\n" not in str(failure.value)
    assert [a["question_id"] for a in lines(answer)] == [0]  # nothing merged before every replica has finished
    shard0, shard1 = (str(tmp_path / f"kill.shard-{k}-of-2.jsonl") for k in (0, 1))
    assert [a["question_id"] for a in lines(shard0)] == [2, 4]
    assert [a["question_id"] for a in lines(shard1)] == [1]
    with open(shard1, "a") as f:
        f.write('{"question_id": 3, "choi')  # and a kill in the middle of writing a line
    kept = {a["question_id"]: a["answer_id"] for path in (answer, shard0, shard1) for a in lines_ok(path)}

    args = make_args(tiny_model_dir, questions, answer, "--num-replicas", "2")
    args.crash_marker = str(tmp_path / "crashed")
    evaluate(args, crashing_pld)
    merged = lines(answer)
    assert hashes(merged) == hashes(ref)  # every question once, in question order, token-identical
    assert {a["question_id"]: a["answer_id"] for a in merged if a["question_id"] in kept} == kept  # none redone
    assert steps(str(answer).replace(".jsonl", ".steps.jsonl")) == \
        steps(str(reference).replace(".jsonl", ".steps.jsonl"))
    assert glob.glob(str(tmp_path / "kill.shard-*")) == []


def lines_ok(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def test_shards_of_another_replica_count_are_not_mixed_in(tiny_model_dir, one_process, tmp_path):
    questions, reference = one_process
    answer = tmp_path / "a.jsonl"
    (tmp_path / "a.shard-1-of-3.jsonl").write_text(json.dumps(lines(reference)[1]) + "\n")
    with pytest.raises(UserError, match="unfinished 3-replica run: re-run with 3 replicas"):
        evaluate(make_args(tiny_model_dir, questions, answer, "--num-replicas", "2"), inference_pld.make_drafter)


def test_missing_ray_is_one_line(tiny_model_dir, one_process, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as when it is not installed
    with pytest.raises(UserError, match=r"not installed: pip install 'ray==\d"):
        evaluate(make_args(tiny_model_dir, one_process[0], tmp_path / "a.jsonl", "--num-replicas", "2"),
                 inference_pld.make_drafter)


@pytest.mark.parametrize("flags, message", [
    (["--num-replicas", "2", "--device", "auto"], "--num-replicas runs CPU replicas: add --device cpu"),
    (["--num-replicas", "2", "--num-gpus-total", "2"], "both ask for replicas"),
    (["--num-gpus-total", "2", "--device", "cpu"], "use --num-replicas K for CPU replicas"),
    (["--num-gpus-total", "3", "--num-gpus-per-model", "2", "--device", "cuda"], "must be a multiple"),
    (["--ray-address", "auto", "--device", "cpu"], "--ray-address is used only with several replicas"),
    (["--num-replicas", "0", "--device", "cpu"], "--num-replicas must be a positive integer"),
    (["--num-replicas", "2", "--device", "cpu", "--answer-file", "x.shard-0-of-2.jsonl"], "kept for the replicas"),
])
def test_bad_flag_combinations(flags, message):
    argv = ["--model-path", "m", "--question-file", "q.jsonl", *flags]
    with pytest.raises(UserError) as failure:
        finalize(build_parser("baseline").parse_args(argv), "baseline")
    assert message in str(failure.value) and "\n" not in str(failure.value)


def test_cli_reports_a_bad_combination_as_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "evaluation.inference_baseline", "--model-path", "m",
                             "--num-replicas", "2"], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == \
        ["error: --num-replicas runs CPU replicas: add --device cpu (GPU replicas: --num-gpus-total N "
         "--num-gpus-per-model M)"]


@pytest.fixture
def ray_user(tmp_path, monkeypatch):
    """A user with a home of their own and no Ray authentication settings."""
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_the_token_goes_where_the_user_named_one_or_to_this_machine(ray_user, monkeypatch):
    remote, here = "10.255.255.1:6379", "127.0.0.1:6379"
    assert not replicas.send_token(here)  # no token anywhere: nothing to send
    (ray_user / ".ray").mkdir()
    (ray_user / ".ray" / "auth_token").write_text("t" * 64)  # what `ray start` / ray.init() leave behind
    assert replicas.send_token(here) and replicas.send_token("auto") and replicas.send_token("localhost:6379")
    assert not replicas.send_token(remote)  # a local token is not sent to another machine unasked
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(ray_user / ".ray" / "auth_token"))
    assert replicas.send_token(remote)  # ... unless the user named it
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert not replicas.send_token(here)  # RAY_AUTH_MODE, when set, decides


def test_an_unreadable_token_path_is_one_line(ray_user, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(ray_user / "missing"))
    with pytest.raises(UserError, match="RAY_AUTH_TOKEN_PATH=.*missing: cannot read the Ray token"):
        replicas.check_token_path()
    (ray_user / "empty").write_text("\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(ray_user / "empty"))
    with pytest.raises(UserError, match="is empty"):
        replicas.check_token_path()


@pytest.fixture
def fake_gpus(monkeypatch):
    """CUDA as this process would see `count` GPUs (free memory 1000, 2000, ... bytes), and from_pretrained that
    records its placement arguments and loads on the CPU, reporting the device map it is told to."""
    import torch
    from transformers import AutoModelForCausalLM
    state = {"count": 0, "calls": [], "device_map": None}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: state["count"] > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: state["count"])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (1000 * (i + 1), 10 ** 6))
    real = AutoModelForCausalLM.from_pretrained

    def from_pretrained(path, **kwargs):
        state["calls"].append(kwargs)
        model = real(path, dtype=kwargs["dtype"])
        model.hf_device_map = state["device_map"] or {"model.embed_tokens": 0, "lm_head": 1}
        return model
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_pretrained)
    return state


@pytest.mark.parametrize("visible", [2, 4])
def test_num_gpus_per_model_places_the_model_on_exactly_that_many_gpus(tiny_model_dir, fake_gpus, visible):
    from model.engine.loading import load_model
    fake_gpus["count"] = visible
    _, _, device = load_model(tiny_model_dir, "float32", "cuda", num_gpus=2)
    (kwargs,) = fake_gpus["calls"]
    assert kwargs["device_map"] == "auto"
    assert kwargs["max_memory"] == {0: 900, 1: 1800}  # GPUs 0 and 1 alone, 90% of their free memory
    assert device.type == "cuda"


@pytest.mark.parametrize("visible, device, message", [
    (1, "cuda", "--num-gpus-per-model 2 asks for 2 GPUs, but this process sees 1 (CUDA_VISIBLE_DEVICES=5)"),
    (0, "cpu", "--num-gpus-per-model 2 spreads the model over 2 GPUs, but this run's device is cpu"),
])
def test_more_gpus_per_model_than_visible_is_one_line(tiny_model_dir, fake_gpus, monkeypatch, visible, device,
                                                       message):
    from model.engine.loading import load_model
    fake_gpus["count"] = visible
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    with pytest.raises(UserError) as failure:
        load_model(tiny_model_dir, "float32", device, num_gpus=2)
    assert str(failure.value) == message
    assert fake_gpus["calls"] == []  # refused before any weight is read


def test_a_model_too_big_for_its_gpus_is_one_line(tiny_model_dir, fake_gpus):
    from model.engine.loading import load_model
    fake_gpus["count"], fake_gpus["device_map"] = 2, {"model.embed_tokens": 0, "model.layers.1": "cpu"}
    with pytest.raises(UserError, match="does not fit in the free memory of --num-gpus-per-model 2 GPUs"):
        load_model(tiny_model_dir, "float32", "cuda", num_gpus=2)


def test_ray_address_in_the_environment_is_joined_not_replaced(tiny_model_dir, one_process, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # as `ray job submit` sets it for its driver
    seen = []

    def start_ray(ray, address, gpus=0):
        seen.append(address)
        raise UserError("stopped before joining")
    monkeypatch.setattr(replicas, "start_ray", start_ray)
    with pytest.raises(UserError, match="stopped before joining"):
        evaluate(make_args(tiny_model_dir, one_process[0], tmp_path / "a.jsonl", "--num-replicas", "2"),
                 inference_pld.make_drafter)
    assert seen == ["auto"]
