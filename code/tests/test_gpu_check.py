"""scripts/gpu_check.py on CPU with tiny stand-ins: every method identical to AR, and every measurement present."""
import importlib.util
import json
import os

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "gpu_check.py")


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_cpu_run_is_lossless_and_measures_everything(gpu_check, tmp_path, capsys):
    out = tmp_path / "check.json"
    rc = gpu_check.main(["--device", "cpu", "--tiny", "--check-tokens", "16", "--prompt-len", "24",
                         "--new-tokens", "16", "--max-width", "20", "--contexts", "16", "48", "--repeats", "1",
                         "--batch-sizes", "2", "--half-dtypes", "bfloat16",
                         "--json-out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    report = json.loads(out.read_text())
    assert report["not_identical"] == []
    shapes = list(gpu_check.SHAPES)
    assert set(report["correctness"]) == set(report["measurements"]) == set(shapes)

    for shape in shapes:
        check = report["correctness"][shape]
        assert set(check["rows"]) == set(gpu_check.METHODS)
        for method, row in check["rows"].items():
            assert row["identical"], (shape, method, row)
            assert row["mat"] >= 1.0
        assert check["transformers"]["identical"] or check["transformers"]["near_tie_only"]
        # The checks exercised acceptance: drafts were accepted somewhere.
        assert sum(row["steps_with_accepted_draft"] for row in check["rows"].values()) > 0

        m = report["measurements"][shape]
        assert m["ar"]["tokens_per_s"] > 0 and m["hf"]["tokens_per_s"] > 0
        assert m["ar"]["tokens"] == m["hf"]["tokens"] == 16
        assert not m["ar"]["output"]["degenerate"]
        profile = m["profile"]
        assert profile["widths"] == list(range(1, 17)) + [20]
        assert profile["context_lengths"] == [16, 48]
        for seconds, ratios in zip(profile["seconds"], profile["ratio"]):
            assert len(seconds) == len(ratios) == len(profile["widths"])
            assert all(t > 0 for t in seconds) and all(r > 0 for r in ratios) and ratios[0] == 1.0
        assert set(m["methods"]) == set(gpu_check.METHODS)
        for row in m["methods"].values():
            assert row["mat"] >= 1.0 and row["tokens"] == 16
            assert 0 < row["drafting_share"] < 1 and row["tokens_per_s"] > 0
        sweep = m["batch_sweep"]
        assert list(sweep) == ["2"] and set(sweep["2"]) == {"ar", *gpu_check.METHODS}
        for size, entry in sweep.items():
            assert entry["ar"]["tokens_per_s"] > 0 and entry["ar"]["batching_gain"] > 0
            first, last = entry["ar"]["runs_tokens_per_s"]   # AR timed before and after the methods
            assert entry["ar"]["tokens_per_s"] == (first + last) / 2
            assert entry["ar"]["ar_spread"] == abs(first - last) / entry["ar"]["tokens_per_s"]
            assert all(0 <= row["rows_identical_to_ar"] <= int(size) and row["mat"] >= 1.0 for row in entry.values())
        assert sweep["2"]["ar"]["batching_gain"] == 1.0   # (relative to the smallest batch swept: this one)

    # (c) bfloat16: every method's differing turns are near-ties or inherited, never unexplained.
    assert report["half_precision_unexplained"] == []
    assert set(report["half_precision"]) == {f"{shape}/bfloat16" for shape in shapes}
    for check in report["half_precision"].values():
        assert set(check["rows"]) == set(gpu_check.METHODS)
        for method, row in check["rows"].items():
            assert row["n_turns"] == 4 and sum(row["counts"].values()) == 4, (method, row)
            assert row["counts"]["unexplained"] == row["counts"]["unclassified"] == 0, (method, row)
    assert printed.count("## (c) Half precision") == 1

    # The markdown tables: one row per method saying "yes" for both families, profile rows, tok/s rows.
    for method in gpu_check.METHODS:
        assert f"| {method} | yes | yes |" in printed
    assert printed.count("| ours, AR (base Drafter) |") == len(shapes)
    assert printed.count("| transformers generate |") == len(shapes)
    assert "| 20 |" in printed
    assert printed.count("Batch sweep:") == len(shapes)
    assert "Every method is token-identical to AR." in printed


def test_a_method_differing_from_ar_fails_the_run(gpu_check, monkeypatch, capsys):
    def fake(shape, device, dtype, new_tokens, seed, mode="eager"):
        rows = {m: {"identical": m != "pia", "mat": 1.5, "tokens": 10, "steps": 7, "steps_with_accepted_draft": 2,
                    "divergences": [] if m != "pia" else [{"prompt": "random", "position": 3,
                                                           "ar_logit_margin": 0.5}]}
                for m in gpu_check.METHODS}
        hf = {"identical": True, "near_tie_only": True, "divergences": [], "mat": 1.0}
        return {"family": "qwen3", "config": {}, "rows": rows, "transformers": hf}

    monkeypatch.setattr(gpu_check, "check_correctness", fake)
    assert gpu_check.main(["--device", "cpu", "--tiny", "--shapes", "qwen3-8b", "--skip-measure", "--half-dtypes"]) == 1
    printed = capsys.readouterr().out
    assert "| pia | NO (random prompt at token 3, AR logit margin 5.00e-01) |" in printed
    assert "NOT identical to AR: qwen3-8b/pia" in printed


def test_an_unexplained_half_precision_divergence_fails_the_run(gpu_check, monkeypatch, capsys):
    def fake(shape, device, dtype_name, new_tokens, seed, tiny=False):
        counts = {"identical": 2, "near_tie": 1, "inherited": 1, "unexplained": 0, "unclassified": 0}
        rows = {m: {"counts": dict(counts), "n_turns": 4, "unexplained": []} for m in gpu_check.METHODS}
        rows["pld"]["counts"].update(near_tie=0, unexplained=1)
        rows["pld"]["unexplained"] = ["pld: question 0 turn 1, token 5: unexplained (baseline margin 40 x eps)"]
        return {"family": "qwen3", "dtype": dtype_name, "factor": 4.0, "rows": rows,
                "config": {"hidden_size": 64, "num_hidden_layers": 4, "vocab_size": 512}}

    monkeypatch.setattr(gpu_check, "check_half_precision", fake)
    assert gpu_check.main(["--device", "cpu", "--tiny", "--shapes", "qwen3-8b", "--skip-measure",
                           "--check-tokens", "8", "--half-dtypes", "float16"]) == 1
    printed = capsys.readouterr().out
    assert "| pld | 2 / 0 / 1 / 1 |" in printed and "| samd | 2 / 1 / 1 / 0 |" in printed
    assert "- qwen3 float16: pld: question 0 turn 1, token 5: unexplained" in printed
    assert "Unexplained half-precision divergences: qwen3-8b/float16/pld" in printed


def test_the_engine_modes_command_runs_through(gpu_check, tmp_path, capsys):
    """`--engine-mode both` (the prepared device command, on tiny stand-ins and the CPU): (a) in both modes, and (d)
    eager against static: AR rates against the bound, a profile file per mode that replay reads, model-free methods
    identical to AR in both modes, the Best-of-16 arena."""
    out, profiles = tmp_path / "modes.json", tmp_path / "profiles"
    rc = gpu_check.main(["--device", "cpu", "--tiny", "--engine-mode", "both", "--shapes", "qwen3-8b",
                         "--half-dtypes", "--skip-measure", "--check-tokens", "24", "--prompt-len", "24",
                         "--new-tokens", "24", "--max-width", "8", "--contexts", "32", "--repeats", "1",
                         "--skip-hf-static", "--profile-dir", str(profiles), "--json-out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    report = json.loads(out.read_text())
    assert set(report["correctness"]) == {"qwen3-8b", "qwen3-8b/static"} and report["not_identical"] == []
    modes = report["engine_modes"]["qwen3-8b"]["modes"]
    assert set(modes) == {"eager", "static"}
    for mode, row in modes.items():
        assert all(row["ar"][b]["tokens_per_s"] > 0 and row["ar"][b]["bound_tokens_per_s"] > 0 for b in ("1", "8"))
        assert set(row["methods"]) == set(gpu_check.MODEL_FREE)
        assert all(m["identical_to_ar"] and 0 < m["drafting_share"] < 1 for m in row["methods"].values()), mode
        with open(row["profile_file"]) as f:
            assert json.load(f)["qwen3-8b"]["widths"] == list(range(1, 9))
    assert modes["static"]["engine"]["engine_mode"] == "static" and modes["static"]["engine"]["static_shapes"] > 0
    memory = report["engine_modes"]["qwen3-8b"]["memory"]
    assert memory["arena_gib"]["16"] == 16 * memory["arena_gib"]["1"]
    assert "## Engine modes, qwen3-8b" in printed and "| static | 1 |" in printed
