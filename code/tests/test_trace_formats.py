"""The trace formats replay reads (evaluation/run/traces.py), each from a line shaped as its tool writes it, holding
real reasoning text (the shared R1-Distill traces), tokenized with the real tokenizers (`make tokenizers`)."""
import functools
import json
import os

import pytest

import model.engine.loading as loading
from evaluation.run.replay import main as replay_main
from evaluation.run.traces import read_traces
from model.errors import UserError
from model.vocab.locate import TRACES, has_tokenizer, tokenizer_dir

LLAMA, QWEN = "deepseek-r1-distill-llama-8b", "deepseek-r1-distill-qwen-14b"
load_once = functools.lru_cache(maxsize=None)(loading.load_tokenizer)


@pytest.fixture(autouse=True)
def load_each_tokenizer_once(monkeypatch):
    """replay's CLI loads its tokenizer on every call: here each real tokenizer is loaded once (seconds each)."""
    monkeypatch.setattr(loading, "load_tokenizer", load_once)


def tokenizer(family: str):
    assert has_tokenizer(family), f"{tokenizer_dir(family)} is missing: run `make tokenizers`"
    return load_once(tokenizer_dir(family))


@pytest.fixture(scope="module")
def real():
    """The shared traces of one problem: two samples per model."""
    assert os.path.isfile(TRACES), f"the shared real traces are missing: {os.path.abspath(TRACES)}"
    with open(TRACES, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return [line for line in lines if line["problem_id"] == 330]


def write(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def summary_of(tmp_path, traces, *flags):
    out = tmp_path / "summary.json"
    replay_main(["--traces", traces, "--method", "samd", "--json-out", str(out), *flags])
    return json.loads(out.read_text())


def test_the_shared_traces_as_pairs_replay_as_best_of_2(real, tmp_path, capsys):
    """{prompt, response} lines with problem_id and sample (the shared file's own fields): each problem's two samples
    are one question's Best-of-2; its tokenizer found from the `model` field; raw prompts end in `<think>`."""
    path = write(tmp_path / "pairs.jsonl", real)
    with pytest.raises(SystemExit):
        replay_main(["--traces", path, "--method", "pld"])   # two models in one file: pick one
    assert "pick one with --trace-model" in capsys.readouterr().err
    tok = tokenizer("deepseek-r1-distill-llama")
    trace = read_traces(path, tok, prompt_format="raw", model=LLAMA)
    assert trace.kind == "prompt/response pairs" and trace.paradigm == "best_of_n"
    assert [(t.question_id, t.choice, t.turn) for t in trace.turns] == [(330, 0, 0), (330, 0, 1)]
    first = trace.turns[0]
    assert first.prompt == tok(real[0]["prompt"])["input_ids"]
    assert first.prompt[0] == 128000 and first.prompt[-2:] == [128013, 198]   # bos ... <think>\n
    assert first.tokens[first.think_end] == 128014                             # </think>
    chat = read_traces(path, tok, prompt_format="chat", model=LLAMA).turns[0].prompt
    assert chat[1] == 128011 and chat != first.prompt                          # <｜User｜>: the template's
    runs = {cross: summary_of(tmp_path, path, "--trace-model", LLAMA, "--prompt-format", "raw", "--batch-size", "2",
                              "--cross-sample", cross) for cross in ("on", "off")}
    for s in runs.values():
        assert s["paradigm"] == "best_of_n" and s["turns"] == 2 and s["batch_size"] == 2
        assert set(s["per phase"]) == {"thinking", "answer"}
    assert "sam_sibling" in runs["on"]["per draft source"] and "sam_sibling" not in runs["off"]["per draft source"]


def test_samples_given_out_of_order_and_twice(real, tmp_path):
    tok = tokenizer("deepseek-r1-distill-llama")
    lines = [dict(line, question_id="q") for line in real if line["model"] == LLAMA][::-1]
    trace = read_traces(write(tmp_path / "a.jsonl", lines), tok, model=LLAMA)
    assert [t.tokens for t in trace.turns] == [tok(line["response"], add_special_tokens=False)["input_ids"]
                                               for line in lines[::-1]]   # in sample order
    lines[1]["sample"] = lines[0]["sample"]
    with pytest.raises(UserError, match="line 2: question 'q' has sample 1 twice"):
        read_traces(write(tmp_path / "b.jsonl", lines), tok, model=LLAMA)


def test_vllm_request_outputs(real, tmp_path):
    """vLLM's RequestOutput as users dump it: a prompt, its n outputs; with their token ids, those are used."""
    tok = tokenizer("deepseek-r1-distill-qwen")
    samples = [line for line in real if line["model"] == QWEN]
    prompt_ids = tok(samples[0]["prompt"])["input_ids"]
    outputs = [{"index": k, "text": s["response"], "token_ids": tok(s["response"], add_special_tokens=False)
                ["input_ids"], "cumulative_logprob": None, "logprobs": None, "finish_reason": "stop",
                "stop_reason": None} for k, s in enumerate(samples)]
    line = {"request_id": "0", "prompt": samples[0]["prompt"], "prompt_token_ids": prompt_ids, "encoder_prompt": None,
            "encoder_prompt_token_ids": None, "prompt_logprobs": None, "outputs": outputs, "finished": True}
    trace = read_traces(write(tmp_path / "vllm.jsonl", [line]), tok)
    assert trace.kind == "vLLM outputs" and trace.paradigm == "best_of_n"
    assert [t.retokenized for t in trace.turns] == [False, False]
    assert trace.turns[1].tokens == outputs[1]["token_ids"] and trace.turns[0].prompt == prompt_ids
    for output in outputs:    # text only: re-tokenized, the prompt raw by default (the text vLLM was given)
        del output["token_ids"]
    again = read_traces(write(tmp_path / "vllm-text.jsonl", [line]), tok)
    assert [t.tokens for t in again.turns] == [t.tokens for t in trace.turns]
    assert again.turns[0].prompt == prompt_ids and all(t.retokenized for t in again.turns)
    summary = summary_of(tmp_path, str(tmp_path / "vllm.jsonl"), "--model-path", tokenizer_dir("deepseek-r1-distill-qwen"))
    assert summary["trace"] == "vLLM outputs" and summary["retokenized_turns"] == 0 and summary["mat"] > 1


def test_openai_completions_and_chat_completions(real, tmp_path):
    """The OpenAI API's completion objects (n choices) with the prompt the client sent beside them; the `model` field
    picks the tokenizer."""
    samples = [line for line in real if line["model"] == QWEN]
    completion = {"id": "cmpl-1", "object": "text_completion", "created": 1733600000, "model": "Qwen/Qwen3-8B",
                  "prompt": samples[0]["prompt"],
                  "choices": [{"text": s["response"], "index": k, "logprobs": None, "finish_reason": "stop"}
                              for k, s in enumerate(samples)],
                  "usage": {"prompt_tokens": 60, "completion_tokens": 5000, "total_tokens": 5060}}
    tok = tokenizer("qwen3")
    trace = read_traces(write(tmp_path / "cmpl.jsonl", [completion]), tok)
    assert trace.kind == "OpenAI-style choices" and len(trace.turns) == 2
    assert trace.turns[0].prompt == tok(samples[0]["prompt"])["input_ids"]          # raw
    assert trace.turns[0].tokens[trace.turns[0].think_end] == 151668
    summary = summary_of(tmp_path, str(tmp_path / "cmpl.jsonl"))                     # tokenizer from "model"
    assert summary["trace"] == "OpenAI-style choices" and summary["tokens"] == sum(len(t.tokens) for t in trace.turns)
    question = samples[0]["prompt"].split("Problem: ")[1].split(" Solution:")[0]
    chat = {"id": "chatcmpl-1", "object": "chat.completion", "model": "Qwen/Qwen3-8B",
            "messages": [{"role": "user", "content": question}],
            "choices": [{"index": k, "message": {"role": "assistant", "content": s["response"]},
                         "finish_reason": "stop"} for k, s in enumerate(samples)]}
    turns = read_traces(write(tmp_path / "chat.jsonl", [chat]), tok).turns
    assert turns[0].prompt == tok.apply_chat_template(chat["messages"], add_generation_prompt=True,
                                                      tokenize=True, return_dict=True)["input_ids"]
    with pytest.raises(UserError, match="line 1: the prompt is a list of chat messages"):
        read_traces(str(tmp_path / "chat.jsonl"), tok, prompt_format="raw")


def test_lm_eval_log_samples(real, tmp_path):
    """lm-evaluation-harness --log_samples: one line per document and filter; `resps[0]` the document's repeats."""
    samples = [line for line in real if line["model"] == LLAMA]
    doc = {"problem": samples[0]["prompt"], "level": "Level 5", "type": "Algebra", "solution": "..."}
    line = {"doc_id": 0, "doc": doc, "target": samples[0]["gt_answer"],
            "arguments": {"gen_args_0": {"arg_0": samples[0]["prompt"],
                                         "arg_1": {"until": [], "do_sample": True, "temperature": 0.6,
                                                   "max_gen_toks": 32768}}},
            "resps": [[s["response"] for s in samples]], "filtered_resps": [samples[0]["answer"]],
            "filter": "none", "metrics": ["exact_match"], "doc_hash": "a1", "prompt_hash": "b2", "target_hash": "c3",
            "exact_match": 1.0}
    other_filter = dict(line, filter="flexible-extract", filtered_resps=["3"])
    tok = tokenizer("deepseek-r1-distill-llama")
    trace = read_traces(write(tmp_path / "samples_math.jsonl", [line, other_filter]), tok)
    assert trace.kind == "lm-eval samples" and trace.paradigm == "best_of_n"
    assert [(t.question_id, t.turn) for t in trace.turns] == [(0, 0), (0, 1)]    # the second filter's line: once
    assert trace.turns[1].tokens == tok(samples[1]["response"], add_special_tokens=False)["input_ids"]
    assert trace.turns[0].prompt == tok(samples[0]["prompt"])["input_ids"]
    # Older lm-eval versions logged the arguments as a list of [context, kwargs].
    older = dict(line, arguments=[[samples[0]["prompt"], {"until": []}]])
    assert [t.prompt for t in read_traces(write(tmp_path / "old.jsonl", [older]), tok).turns] == \
        [t.prompt for t in trace.turns]
    # A chat model's context: a one-item list holding the JSON messages (lm-eval 0.4.x API models).
    chat = dict(line, arguments={"gen_args_0": {"arg_0": [json.dumps([{"role": "user", "content": "Hi"}])],
                                                "arg_1": {}}})
    turns = read_traces(write(tmp_path / "chat.jsonl", [chat]), tok).turns
    assert turns[0].prompt == tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                                      tokenize=True, return_dict=True)["input_ids"]


def test_unreadable_lines_are_one_line_errors(real, tmp_path, capsys):
    pair = {"prompt": "p", "response": "r"}
    model = ["--model-path", tokenizer_dir("qwen3")]
    cases = [([pair, pair, {"text": "x"}], "error: line 3: neither an answer line of this harness, a {prompt, "
                                           "response} pair, vLLM {prompt, outputs}"),
             ([pair, {"prompt": "p", "outputs": [{"text": "o"}]}], "error: line 2: a line of vLLM outputs in a file "
                                                                    "of prompt/response pairs"),
             ([{"prompt": "p", "outputs": ["o"]}], "error: line 1: outputs[0] is not an object with a text"),
             ([{"arguments": {"gen_args_0": {}}, "resps": [["r"]]}], "error: line 1: lm-eval arguments without a "
                                                                      "context"),
             ([dict(pair, question_id=1, sample=0), dict(pair, question_id=1)], "question 1: some lines give their "
                                                                                 "sample, some do not")]
    for lines, message in cases:
        with pytest.raises(SystemExit) as exc:
            replay_main(["--traces", write(tmp_path / "bad.jsonl", lines), "--method", "pld", *model])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    with pytest.raises(SystemExit):
        replay_main(["--traces", write(tmp_path / "x.jsonl", [pair]), "--method", "pld", "--trace-model", "nope",
                     *model])
    assert "--trace-model nope: no line of the trace file has that model" in capsys.readouterr().err
