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


def test_lockstep_runs_take_turns_step_by_step_with_the_outputs_of_runs_alone(tiny_model_dir, tmp_path, capsys):
    """--lockstep: one engine step of each run in turn (round robin), the same tokens as per-question interleaving,
    and each run's recorded times its own (its engine clock stops while it waits for its turn)."""
    import time
    from evaluation.run import lockstep as lockstep_module
    order, original = [], lockstep_module.Lockstep._turn

    def turn(self, i):
        order.append(i)
        return original(self, i)

    lockstep_module.Lockstep._turn = turn
    try:
        flags = ["--method", "baseline", "--method", "pld", "--method", "samd --cost-aware", "--batch-size", "2"]
        main(common(tiny_model_dir, tmp_path) + ["--model-id-prefix", "l", "--lockstep"] + flags)
    finally:
        lockstep_module.Lockstep._turn = original
    (tmp_path / "apart").mkdir()
    main(common(tiny_model_dir, tmp_path / "apart") + ["--model-id-prefix", "a"] + flags)
    names = ("baseline", "pld", "samd")
    together = {n: read(tmp_path / "model_answer" / f"l-{n}.jsonl") for n in names}
    apart = {n: read(tmp_path / "apart" / "model_answer" / f"a-{n}.jsonl") for n in names}
    hashes = {n: [c["token_ids_sha1"] for row in together[n] for c in row["choices"]] for n in names}
    assert hashes["pld"] == hashes["samd"] == hashes["baseline"]
    assert hashes["baseline"] == [c["token_ids_sha1"] for row in apart["baseline"] for c in row["choices"]]
    # Round robin: one step of each run in turn (every run's first generation has several steps).
    assert order[:6] == [0, 1, 2, 0, 1, 2], order[:12]
    # The engine clock does not run while the run waits for its turn.
    from model.engine.loading import load_model
    from model.engine import Drafter, SamplingConfig, SpeculativeEngine
    model, _, _ = load_model(tiny_model_dir, "float64", "cpu")
    engines = [SpeculativeEngine(model) for _ in range(2)]

    def generate(engine):
        start = engine.clock()
        engine.generate([1, 2, 3], Drafter(), 5, SamplingConfig())
        return engine.clock() - start

    both = lockstep_module.Lockstep().run([(engines[0], lambda: generate(engines[0])),
                                           (engines[1], lambda: time.sleep(0.3) or "slept")])
    # Run 0 stepped, then waited 0.3 s while run 1 held the turn: its clock left that out.
    assert both[1] == "slept" and both[0] < 0.3 and engines[0].paused >= 0.3
    assert engines[0].between_steps is None and engines[1].between_steps is None
    for n in names:
        for row in together[n]:
            for c in row["choices"]:
                assert all(t > 0 for t in c["batch_wall_time"])
    capsys.readouterr()


def test_lockstep_refuses_methods_that_hook_the_shared_model(tiny_model_dir, tmp_path, capsys):
    from model.eagle3 import save_head
    from model.engine.loading import load_model
    from methods import random_head
    from test_eagle3 import LAYERS
    target, _, _ = load_model(tiny_model_dir, "float32", "cpu")
    head = tmp_path / "head"
    save_head(random_head(target), LAYERS, str(head))
    with pytest.raises(SystemExit) as exc:
        main(common(tiny_model_dir, tmp_path) + ["--model-id-prefix", "t", "--lockstep", "--method", "baseline",
                                                 "--method", f"eagle3 --ea-model-path {head}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--lockstep" in err and "eagle3" in err and len(err.strip().splitlines()) == 1
