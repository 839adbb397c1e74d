"""Several methods in one process, interleaved per question: each writes the file its own CLI would."""
import json

import pytest

from conftest import two_questions_file
from evaluation.interleaved import main


def questions_file(tmp_path):
    return two_questions_file(tmp_path)


def common(model_dir, tmp_path):
    return ["--model-path", model_dir, "--question-file", questions_file(tmp_path), "--max-new-tokens", "24",
            "--dtype", "float64", "--device", "cpu", "--warmup", "1", "--warmup-tokens", "4", "--think-twice",
            "--cost-profile-contexts", "16", "--cost-profile-repeats", "1", "--bench-name", str(tmp_path)]


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_interleaved_methods_write_their_own_files_and_resume(tiny_model_dir, tmp_path, capsys):
    argv = common(tiny_model_dir, tmp_path) + ["--model-id-prefix", "t", "--method", "baseline",
                                               "--method", "pld --cost-aware", "--method", "fixed=pld"]
    main(argv)
    folder = tmp_path / "model_answer"
    files = {name: read(folder / f"t-{name}.jsonl") for name in ("baseline", "pld", "fixed")}
    hashes = {name: [c["token_ids_sha1"] for row in rows for c in row["choices"]] for name, rows in files.items()}
    assert len(hashes["baseline"]) == 2 and hashes["pld"] == hashes["baseline"] == hashes["fixed"]
    configs = {name: json.loads((folder / f"t-{name}.config.json").read_text()) for name in files}
    assert [configs[n]["method"] for n in ("baseline", "pld", "fixed")] == ["ar", "pld", "pld"]
    assert configs["pld"]["cost_aware"] and not configs["fixed"]["cost_aware"]
    # one profile, measured once, recorded by every method
    assert configs["baseline"]["cost_profile"] == configs["pld"]["cost_profile"]
    main(argv)   # everything is answered: nothing is redone or duplicated
    assert "already answered by every method" in capsys.readouterr().out
    assert len(read(folder / "t-pld.jsonl")) == 2


@pytest.mark.parametrize("extra, message", [
    (["--method", "baseline", "--method", "baseline"], "share a name"),
    (["--method", "baseline", "--method", "pld --dtype float32"], "sets --dtype differently"),
    (["--method", "nosuch"], "no method 'nosuch'"),
])
def test_interleaved_refuses_bad_method_lists(tiny_model_dir, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        main(common(tiny_model_dir, tmp_path) + ["--model-id-prefix", "t"] + extra)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
