"""scripts/real_text_table.py on a slice of the shared real traces: its rows are replay's own figures."""
import functools
import importlib.util
import json
import os
import sys

import pytest

import model.engine.loading as loading
from evaluation.run.replay import main as replay_main
from model.vocab.locate import TRACES

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "real_text_table.py")
load_once = functools.lru_cache(maxsize=None)(loading.load_tokenizer)


@pytest.fixture(autouse=True)
def load_each_tokenizer_once(monkeypatch):
    """The table and replay's CLI load their tokenizers on every call: here each is loaded once (seconds each)."""
    monkeypatch.setattr(loading, "load_tokenizer", load_once)


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("real_text_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["real_text_table"] = module   # (importable by name: its models are replayed in worker processes)
    spec.loader.exec_module(module)
    return module


def test_the_table_on_one_problem_of_each_model(table, tmp_path):
    assert os.path.isfile(TRACES), f"the shared real traces are missing: {os.path.abspath(TRACES)}"
    with open(TRACES, encoding="utf-8") as f:
        lines = [line for line in f if json.loads(line)["problem_id"] == 2189]
    traces = tmp_path / "slice.jsonl"
    traces.write_text("".join(lines))
    profile = tmp_path / "profile.json"   # a made-up profile: a forward of n tokens costs 1 + n/16 plain steps
    widths = list(range(1, 66))
    profile.write_text(json.dumps({"widths": widths, "context_lengths": [512], "repeats": 1,
                                   "seconds": [[0.01 * (1 + w / 16) for w in widths]]}))
    out = tmp_path / "table.json"
    table.main(["--traces", str(traces), "--methods", "pld", "samd", "--cost-profile", str(profile),
                "--markdown-out", str(tmp_path / "t.md"), "--json-out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["method"]) for r in rows] == [("deepseek-r1-distill-llama-8b", "pld"),
                                                         ("deepseek-r1-distill-llama-8b", "samd"),
                                                         ("deepseek-r1-distill-qwen-14b", "pld"),
                                                         ("deepseek-r1-distill-qwen-14b", "samd")]
    for r in rows[1::2]:   # SAM's: the same figures as replay's own command on the same lines
        summary = tmp_path / "s.json"
        replay_main(["--traces", str(traces), "--method", r["method"], "--trace-model", r["model"],
                     "--prompt-format", "raw", "--cost-profile", str(profile), "--json-out", str(summary)])
        s = json.loads(summary.read_text())
        assert (r["mat"], r["steps"], r["tokens"]) == (s["mat"], s["steps"], s["tokens"])
        assert r["estimated_speedup"] == pytest.approx(s["estimated_speedup"], rel=0.2)   # drafting times differ
    for r in rows:
        assert set(r["phases"]) == {"thinking", "answer"} and r["estimated_speedup"] > 0
        if r["method"] == "pld":   # sequence scope: a row drafts from itself alone, as at batch 1
            assert r["bon2_cross_on"] == r["bon2_cross_off"] == {"same_as_batch_1": True}
        else:
            assert r["bon2_cross_on"]["mat"] > 1 and r["bon2_cross_on"]["estimated_speedup"] is not None
    samd = rows[1]
    assert samd["bon2_cross_on"]["sibling_steps"] > 0 == samd["bon2_cross_off"]["sibling_steps"]
    markdown = (tmp_path / "t.md").read_text()
    assert "| deepseek-r1-distill-qwen-14b | samd | " in markdown and "Speedup estimate: the profile" in markdown
