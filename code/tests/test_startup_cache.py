"""Start-up work survives kills: the forward-cost profile is kept in a cache keyed by what it depends on, saved as it
is measured, reused by later runs with the same key and recorded with where it came from; a run killed again
and again, during the measurement and during its turns, finishes with the output of an uninterrupted run."""
import glob
import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import tiny_model, two_questions_file
from evaluation.run.args import build_parser, finalize
from evaluation.run.loop import run_eval
from methods import METHODS
from model.engine import SpeculativeEngine
from model.engine import profile as profiling
from model.engine.profile import ProfileCache, cached_profile, profile_key
from model.errors import UserError

CODE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_FLAGS = ("--dtype", "float64", "--device", "cpu", "--warmup", "0", "--cost-aware")
SHORT = ("--question-end", "1", "--max-new-tokens", "8", "--cost-profile-contexts", "16", "--cost-profile-repeats", "1")
# Two rounds of two questions; a profile of 18 widths (PLD's: 1..16, 20, 22) x 4 context lengths x 4 repeats = 288
# timed forwards, each session saving its progress after every one of them.
KILLED = ("--think-twice", "--max-new-tokens", "24", "--cost-profile-contexts", "32", "64", "128", "256",
          "--cost-profile-repeats", "4")
PROFILE_FORWARDS = 18 * 4 * 4


def key_of(model, path="m", device=torch.device("cpu"), max_width=4, lengths=(32,), repeats=1, seed=0, batch=1):
    return profile_key(model, path, device, max_width, list(lengths), repeats, seed, batch)


def make_args(model_dir, questions, answer_file, *flags):
    argv = ["--model-path", model_dir, "--question-file", questions, "--answer-file", str(answer_file), *RUN_FLAGS,
            *flags]
    return finalize(build_parser("pld").parse_args(argv), "pld")


def pld(args, model, tokenizer):
    return METHODS["pld"](model, [])


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def run_config(answer_file) -> dict:
    with open(str(answer_file).replace(".jsonl", ".config.json")) as f:
        return json.load(f)


def outputs(answer_file):
    return [(a["question_id"], c["index"], c["turns"], c["token_ids_sha1"]) for a in read(answer_file)
            for c in a["choices"]]


# ------------------------------------------------------------------------------------------------ the key

def test_the_key_changes_with_the_model_dtype_device_and_profile_and_names_the_libraries():
    model = tiny_model("llama")
    key = key_of(model)
    assert key == key_of(model)   # nothing volatile in it
    assert key["dtype"] == "float64" and key["device_type"] == "cpu" and key["threads"] == torch.get_num_threads()
    assert {"torch", "transformers", "device_name", "model_config_sha256"} <= set(key)
    others = [key_of(tiny_model("llama", dtype=torch.float32)),   # another dtype
              key_of(tiny_model("qwen2")),                         # another model (its configuration)
              key_of(model, path="another/model"),                 # another model path
              key_of(model, max_width=8), key_of(model, lengths=(32, 64)), key_of(model, repeats=3),
              key_of(model, seed=1), key_of(model, batch=4)]
    assert all(other != key for other in others)
    cache = ProfileCache("unused")
    assert len({cache.path(k) for k in [key, *others]}) == 1 + len(others)


def test_another_dtype_or_model_misses_the_cache(tmp_path):
    cache = ProfileCache(str(tmp_path))
    model = tiny_model("llama")
    first = cached_profile(SpeculativeEngine(model), cache, key_of(model))
    assert first.origin == {"source": "measured", "file": cache.path(key_of(model)), "continued_forwards": 0}
    again = cached_profile(SpeculativeEngine(model), cache, key_of(model))
    assert again.origin["source"] == "cache" and again.seconds == first.seconds
    for other in (tiny_model("llama", dtype=torch.float32), tiny_model("qwen2")):
        assert cached_profile(SpeculativeEngine(other), cache, key_of(other)).origin["source"] == "measured"
    assert len(glob.glob(str(tmp_path / "*.json"))) == 3


def test_a_file_for_another_key_or_a_torn_one_is_not_taken(tmp_path):
    cache = ProfileCache(str(tmp_path))
    model = tiny_model("llama")
    key = key_of(model)
    cached_profile(SpeculativeEngine(model), cache, key_of(model, seed=5))
    os.replace(cache.path(key_of(model, seed=5)), cache.path(key))   # a file whose key is not this one
    assert cache.load(key) is None
    with open(cache.path(key), "w") as f:
        f.write('{"key": ')
    assert cache.load(key) is None
    assert cached_profile(SpeculativeEngine(model), cache, key).origin["source"] == "measured"


def test_an_interrupted_measurement_is_continued_not_restarted(tmp_path, monkeypatch):
    monkeypatch.setattr(profiling, "SAVE_SHARE", math.inf)   # saved after every forward
    cache = ProfileCache(str(tmp_path))
    model = tiny_model("llama")
    key = key_of(model, lengths=(16, 32), repeats=2)   # widths 1..4
    real = profiling._time_forward
    calls = []

    def killed_after(count):
        def time_forward(engine, kv, length, width, *args):
            if len(calls) == count:
                raise KeyboardInterrupt   # as a kill: nothing after this point runs
            calls.append((length, width))
            return real(engine, kv, length, width, *args)
        return time_forward

    # Killed after 10 forwards: at 16 tokens, widths 1-4 once each (after an untimed one), then widths 1-2 again.
    monkeypatch.setattr(profiling, "_time_forward", killed_after(10))
    with pytest.raises(KeyboardInterrupt):
        cached_profile(SpeculativeEngine(model), cache, key)
    saved = cache.load(key)
    assert saved["complete"] is False
    assert {n: list(map(len, rows)) for n, rows in saved["times"].items()} == {"16": [2, 2, 1, 1], "32": [0] * 4}
    calls.clear()
    monkeypatch.setattr(profiling, "_time_forward", killed_after(100))
    profile = cached_profile(SpeculativeEngine(model), cache, key)
    # Only what was missing, each width untimed once first in this process, interleaved as before.
    assert calls == [(16, 3), (16, 3), (16, 4), (16, 4), (32, 1), (32, 1), (32, 2), (32, 2), (32, 3), (32, 4),
                     (32, 1), (32, 2), (32, 3), (32, 4)]
    assert profile.origin["continued_forwards"] == 6 and cache.load(key)["complete"] is True
    assert profile.context_lengths == [16, 32] and [len(row) for row in profile.seconds] == [4, 4]


def test_an_unwritable_cache_warns_and_measures(tmp_path, capsys):
    blocked = tmp_path / "file"
    blocked.write_text("")
    model = tiny_model("llama")
    profile = cached_profile(SpeculativeEngine(model), ProfileCache(str(blocked / "cache")), key_of(model))
    assert profile.origin["file"] is None and profile.origin["source"] == "measured"
    assert "cannot write the forward-cost profile cache" in capsys.readouterr().err


def test_a_cache_path_that_is_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="is a file, not a directory"):
        make_args("m", "q.jsonl", tmp_path / "a.jsonl", "--cost-profile-cache", str(tmp_path / "f"))


# ------------------------------------------------------------------------------------ runs and their records

def test_runs_take_the_profile_from_the_cache_and_record_where_it_came_from(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(profiling.CACHE_ENV, str(tmp_path / "root"))
    questions = two_questions_file(tmp_path)
    run_eval(make_args(tiny_model_dir, questions, tmp_path / "first.jsonl", *SHORT), pld)
    first = run_config(tmp_path / "first.jsonl")["cost_profile"]
    assert first["origin"]["source"] == "measured" and first["origin"]["continued_forwards"] == 0
    cache_file = first["origin"]["file"]
    assert os.path.dirname(cache_file) == str(tmp_path / "root" / "cost-profiles")
    assert json.load(open(cache_file))["cost_profile"]["seconds"] == first["seconds"]

    run_eval(make_args(tiny_model_dir, questions, tmp_path / "second.jsonl", *SHORT), pld)
    config = run_config(tmp_path / "second.jsonl")
    second = config["cost_profile"]
    assert second["origin"] == {"source": "cache", "file": cache_file,
                                "measured": json.load(open(cache_file))["measured"]}
    assert second["seconds"] == first["seconds"] and config["sessions"][0]["cost_profile"] == second

    run_eval(make_args(tiny_model_dir, questions, tmp_path / "fresh.jsonl", *SHORT,
                       "--remeasure-cost-profile"), pld)
    fresh = run_config(tmp_path / "fresh.jsonl")["cost_profile"]
    assert fresh["origin"] == {"source": "measured", "file": cache_file, "continued_forwards": 0}
    assert json.load(open(cache_file))["cost_profile"]["seconds"] == fresh["seconds"]   # it replaced the old one

    run_eval(make_args(tiny_model_dir, questions, tmp_path / "other-dtype.jsonl", *SHORT,
                       "--dtype", "float32"), pld)
    assert run_config(tmp_path / "other-dtype.jsonl")["cost_profile"]["origin"]["source"] == "measured"
    assert len(os.listdir(tmp_path / "root" / "cost-profiles")) == 2


# ---------------------------------------------------------------------------------------- killed repeatedly

def progress(answer_file, cache_dir) -> tuple[int, int, int, bool]:
    """(timed forwards saved in the cache, checkpointed turns, answer lines, whether the cached profile is complete)."""
    forwards, complete = 0, False
    for path in glob.glob(os.path.join(cache_dir, "*.json")):
        try:
            with open(path) as f:
                entry = json.load(f)
        except (OSError, ValueError):
            continue
        forwards += sum(len(timed) for rows in entry["times"].values() for timed in rows)
        complete = complete or entry["complete"]

    def lines(path):
        if not os.path.exists(path):
            return 0
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    stem = str(answer_file)[: -len(".jsonl")]
    return forwards, lines(stem + ".partial.jsonl"), lines(answer_file), complete


def run_killed_on_progress(argv, answer_file, cache_dir, log_dir) -> list[tuple]:
    """Start the run again and again, each session that starts before the profile is complete killing itself
    (tests/killed_session.py) once it has saved half of the profile's forwards more than it started with, or
    checkpointed a turn (the second session: it completes the profile, then dies in its first turn); then let one
    session finish. Returns, per session, what was saved when it started (see `progress`)."""
    starts = []
    while len(starts) < 12:
        starts.append(progress(answer_file, cache_dir))
        kill = not starts[-1][3]
        limit = starts[-1][0] + PROFILE_FORWARDS // 2
        if limit >= PROFILE_FORWARDS:   # the session that would complete the profile does, and dies in a turn
            limit = 10 ** 9
        with open(os.path.join(log_dir, f"session{len(starts)}.err"), "w") as err:
            proc = subprocess.run([sys.executable, os.path.join("tests", "killed_session.py"), str(limit),
                                   "turn" if kill else "none", *argv], cwd=CODE, stdout=subprocess.DEVNULL,
                                  stderr=err, timeout=600)
        if proc.returncode == 0:
            return starts
        assert proc.returncode == -signal.SIGKILL, open(err.name).read()
    pytest.fail(f"the run did not finish in 12 sessions: {starts}")


def test_a_run_killed_again_and_again_finishes_with_the_uninterrupted_output(tiny_model_dir, tmp_path):
    questions = two_questions_file(tmp_path)
    cache_dir = str(tmp_path / "cache")
    killed = tmp_path / "killed.jsonl"
    argv = ["--model-path", tiny_model_dir, "--question-file", questions, "--answer-file", str(killed), *RUN_FLAGS,
            *KILLED, "--cost-profile-cache", cache_dir]
    starts = run_killed_on_progress(argv, killed, cache_dir, str(tmp_path))
    measuring = [forwards for forwards, _, _, complete in starts if not complete]
    # Killed while measuring more than once, and each session went on from the forwards the ones before it saved.
    assert len(measuring) >= 2 and measuring == sorted(set(measuring)), starts
    # ... and killed in its turns too: the last session started from the cache's profile and a checkpointed turn
    assert starts[-1][3] and starts[-1][1] > 0, starts
    profile = run_config(killed)["cost_profile"]
    # (measured by the session that timed its last forward, or taken from the cache when a kill fell in between)
    assert profile["origin"]["source"] == "cache" or profile["origin"]["continued_forwards"] > 0, profile["origin"]
    [cache_file] = glob.glob(os.path.join(cache_dir, "*.json"))
    saved = json.load(open(cache_file))
    assert saved["complete"] and saved["cost_profile"]["seconds"] == profile["seconds"]

    reference = tmp_path / "uninterrupted.jsonl"
    run_eval(make_args(tiny_model_dir, questions, reference, *KILLED, "--cost-profile-cache", cache_dir), pld)
    assert run_config(reference)["cost_profile"]["origin"]["source"] == "cache"
    assert outputs(killed) == outputs(reference) and len(outputs(killed)) == 2
    assert any(a["choices"][0]["resumed_turns"] for a in read(killed))   # a question resumed from a checkpoint
