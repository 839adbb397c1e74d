"""User-facing commands: bad input is one line and a non-zero exit; the embedded model runs end to end.

Commands run in this process (`run`), as `python -m MODULE` or `python SCRIPT` would run them, so that each costs
its own work and not a fresh interpreter's imports (~4 s); an exception escaping the command (a traceback for the
user) fails the test. Two tests start real processes (`run_process`): the message a user sees on the console, and
the embedded model end to end.
"""
import contextlib
import io
import json
import os
import runpy
import subprocess
import sys
from dataclasses import dataclass

import pytest

CODE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBEDDED = os.path.join(CODE, "local_model", "SmolLM2-135M-Instruct")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run(*argv) -> Result:
    """`python -m MODULE ARGS` or `python SCRIPT ARGS`, in this process, from code/: its exit code and output."""
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    code = 0
    try:
        os.chdir(CODE)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if argv[0] == "-m":
                sys.argv = [argv[1], *argv[2:]]
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = list(argv)
                runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            err.write(f"{exc.code}\n")
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    return Result(code, out.getvalue(), err.getvalue())


def run_process(*argv):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    return subprocess.run([sys.executable, *argv], cwd=CODE, capture_output=True, text=True, env=env, timeout=300)


def assert_one_line_error(result, fragment):
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert fragment in lines[0], lines[0]


@pytest.fixture
def questions(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question_id": 1, "category": "math500", "turns": ["1+1?"], "answer": "2"}) + "\n")
    return str(path)


def baseline(*argv):
    return run("-m", "evaluation.inference_baseline", *argv)


def test_missing_model_path(questions, tmp_path):
    """In a real process: the console shows the one line, no traceback, and the exit code is not 0."""
    result = run_process("-m", "evaluation.inference_baseline", "--model-path", str(tmp_path / "nope"),
                         "--question-file", questions)
    assert_one_line_error(result, f"--model-path {tmp_path / 'nope'}: no such directory (and not a hub id of the form "
                          "owner/name)")


def test_directory_that_is_not_a_model(questions, tmp_path):
    assert_one_line_error(baseline("--model-path", str(tmp_path), "--question-file", questions),
                          "not a model directory")


@pytest.mark.parametrize("model_type, arch, fragment", [("t5", "T5ForConditionalGeneration", "encoder-decoder"),
                                                        ("bert", "BertForMaskedLM", "not a causal language model")])
def test_models_the_engine_cannot_serve(questions, tmp_path, model_type, arch, fragment):
    from transformers import AutoConfig
    config = AutoConfig.for_model(model_type, architectures=[arch])
    config.save_pretrained(tmp_path)
    assert_one_line_error(baseline("--model-path", str(tmp_path), "--question-file", questions), fragment)


@pytest.mark.parametrize("flag", ["--drafter-path", "--ea-model-path"])
def test_a_missing_drafter_directory_is_named_as_such(tiny_model_dir, questions, tmp_path, flag):
    module = "evaluation.inference_sps" if flag == "--drafter-path" else "evaluation.inference_eagle3"
    result = run("-m", module, "--model-path", tiny_model_dir, "--question-file", questions, "--answer-file",
                 str(tmp_path / "a.jsonl"), "--device", "cpu", "--warmup", "0", flag, "/nonexistent/draft")
    assert_one_line_error(result, f"{flag} /nonexistent/draft: no such directory (and not a hub id")


def test_missing_question_file(tiny_model_dir, tmp_path):
    assert_one_line_error(baseline("--model-path", tiny_model_dir, "--question-file", str(tmp_path / "q.jsonl")),
                          "does not exist")


def test_malformed_question_line_names_file_and_line(tiny_model_dir, tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 1, "turns": ["ok"]}\n{"question_id": 2, "turns": [\n')
    assert_one_line_error(baseline("--model-path", tiny_model_dir, "--question-file", str(path)), f"{path}:2")


@pytest.mark.parametrize("flags, fragment", [(["--dtype", "float8"], "invalid choice"),
                                             (["--max-new-tokens", "0"], "--max-new-tokens must be a positive"),
                                             (["--think-twice", "--BON"], "choose one"),
                                             (["--temperature", "-1"], "--temperature")])
def test_bad_flag_values(tiny_model_dir, questions, flags, fragment):
    assert_one_line_error(baseline("--model-path", tiny_model_dir, "--question-file", questions, *flags), fragment)


@pytest.mark.parametrize("flags, fragment", [(["--max-nodes", "0"], "--max-nodes must be a positive integer"),
                                             (["--ngram-orders", "0", "2"], "--ngram-orders must be positive"),
                                             (["--max-nodes", "500"], "over --max-tree-nodes 128")])
def test_bad_stand_flags(tiny_model_dir, questions, flags, fragment):
    result = run("-m", "evaluation.inference_stand", "--model-path", tiny_model_dir, "--question-file", questions,
                 *flags)
    assert_one_line_error(result, fragment)


def test_auxiliary_drafter_not_built_yet(tiny_model_dir, questions):
    result = run("-m", "evaluation.inference_samd", "--model-path", tiny_model_dir, "--question-file", questions,
                 "--tree_method", "eagle2")
    assert_one_line_error(result, "not built yet")


def test_resume_into_another_configuration_keeps_the_file(tiny_model_dir, questions, tmp_path):
    answers = tmp_path / "a.jsonl"
    common = ["--model-path", tiny_model_dir, "--question-file", questions, "--answer-file", str(answers),
              "--max-new-tokens", "4", "--warmup", "0", "--device", "cpu", "--dtype", "float32",
              "--cost-profile-contexts", "16", "--cost-profile-repeats", "1"]
    assert baseline(*common).returncode == 0
    before = answers.read_bytes()
    result = run("-m", "evaluation.inference_pld", *common)
    assert_one_line_error(result, "another configuration (method")
    assert answers.read_bytes() == before


def test_embedded_model_end_to_end(tmp_path):
    """The real default model through two methods, then the speed report on their answer files. Trees of at most 15
    nodes: both runs then record the forward-cost profile of widths 1..16, which the second takes from the cache the
    first filled (one measurement, across processes)."""
    if not os.path.exists(os.path.join(EMBEDDED, "config.json")):
        pytest.fail("the embedded model is not installed: run `make setup` at the repository root")
    common = ["--model-path", EMBEDDED, "--question-file", "data/demo/question.jsonl", "--question-end", "1",
              "--max-new-tokens", "12", "--warmup", "0", "--device", "cpu", "--dtype", "float32", "--think-twice",
              "--cost-profile-contexts", "16", "--cost-profile-repeats", "1", "--max-tree-nodes", "15"]
    for method in ("baseline", "samd"):
        result = run_process("-m", f"evaluation.inference_{method}", *common, "--answer-file",
                             str(tmp_path / f"{method}.jsonl"))
        assert result.returncode == 0, result.stderr
    answer = json.loads((tmp_path / "samd.jsonl").read_text())
    assert answer["choices"][0]["new_tokens"] == [12, 12]
    profiles = [json.loads((tmp_path / f"{m}.config.json").read_text())["cost_profile"] for m in ("baseline", "samd")]
    assert profiles[1]["origin"]["source"] == "cache"
    assert profiles[0]["seconds"] == profiles[1]["seconds"]
    report = run_process("evaluation/speed.py", "--file-path", str(tmp_path / "samd.jsonl"),
                         "--base-path", str(tmp_path / "baseline.jsonl"))
    assert report.returncode == 0, report.stderr
    assert "Identical turns" in report.stdout and "| 2/2 |" in report.stdout
