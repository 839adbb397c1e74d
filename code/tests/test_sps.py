"""SpS: a separate draft model on the one engine. Identity with AR, KV bookkeeping of both models, the
schedules, lossless rejection with a real draft's probabilities, and the CLI's errors."""
import functools
import json

import pytest
import torch

from conftest import ARCHS, VOCAB, tiny_model, two_questions_file
from methods import assert_drafted, assert_rows_drafted, noisy_draft, vocab_of
from model.engine import Drafter, SamplingConfig, SpeculativeEngine, ThinkingBudget
from model.engine.sampling import draw
from model.sps import DraftModelDrafter
from stats import chi_square_pvalue
from test_cli import assert_one_line_error, run
from test_methods_lossless import PROMPTS, run_paradigm
from test_sampling import ALPHA, SMALL_VOCAB, exact_two_token_law, sample_pairs


def steps_of(gen):
    return [s for s in gen.steps if s.source != "forced"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("draft_kind", ["independent", "noisy-padded"])
def test_greedy_token_identical_to_ar(arch, draft_kind):
    """An unrelated random draft (mostly rejected) and a close one with padded embedding rows (mostly accepted)."""
    target = tiny_model(arch)
    draft = tiny_model("llama", seed=5) if draft_kind == "independent" else noisy_draft(target)
    engine = SpeculativeEngine(target)
    for prompt in PROMPTS.values():
        reference = engine.generate(prompt, Drafter(), 64, SamplingConfig()).tokens
        out = engine.generate(prompt, DraftModelDrafter(draft, VOCAB, num_tokens=5, confidence_threshold=0), 64,
                              SamplingConfig())
        assert out.tokens == reference
        lengths = out.accept_lengths
        assert any(n == 1 for n in lengths[:-1])   # rejections happened: the draft cache was rolled back
        if draft_kind == "noisy-padded":
            assert max(lengths) > 2


@pytest.mark.parametrize("sampling", [SamplingConfig(), SamplingConfig(1.0)], ids=["greedy", "T1"])
def test_a_draft_identical_to_the_target_accepts_every_token(sampling):
    """Any slip in either model's KV bookkeeping (or q attached to the wrong node) would reject some token."""
    target = tiny_model("qwen3")
    engine = SpeculativeEngine(target)
    chain = 4
    gen = engine.generate(PROMPTS["random"], DraftModelDrafter(target, VOCAB, chain, confidence_threshold=0), 61,
                          sampling, torch.Generator().manual_seed(0))
    assert len(gen.tokens) == 61
    assert gen.accept_lengths[:-1] == [chain + 1] * 12 and gen.accept_lengths[-1] == 1
    assert [s.draft_size for s in gen.steps] == [chain] * 13


def test_forced_phrase_is_fed_to_the_draft_before_the_next_draft():
    target = tiny_model("qwen3")
    budget = ThinkingBudget(trigger_at=10, phrase=[1, 2, 3, 4], end_token=VOCAB - 1)
    gen = SpeculativeEngine(target).generate(PROMPTS["random"], DraftModelDrafter(target, VOCAB, 5, 0), 40,
                                             SamplingConfig(), budget=budget)
    forced = [i for i, s in enumerate(gen.steps) if s.source == "forced"]
    assert len(forced) == 1
    # With the phrase in its cache the identical draft keeps accepting everything after it.
    after = [s.accepted for s in gen.steps[forced[0] + 1:-1]]
    assert after and all(n == 6 for n in after)


def test_heuristic_schedule_grows_on_full_acceptance_and_shrinks_otherwise():
    target = tiny_model("llama")
    engine = SpeculativeEngine(target)
    same = DraftModelDrafter(target, VOCAB, 2, confidence_threshold=0, schedule="heuristic")
    sizes = [s.draft_size for s in engine.generate(PROMPTS["random"], same, 40, SamplingConfig()).steps]
    assert sizes[:4] == [2, 4, 6, 8]
    unrelated = DraftModelDrafter(tiny_model("llama", seed=5), VOCAB, 4, confidence_threshold=0,
                                  schedule="heuristic")
    gen = engine.generate(PROMPTS["random"], unrelated, 30, SamplingConfig())
    sizes = [s.draft_size for s in gen.steps]
    expected = [4]
    for step in gen.steps[:-1]:
        expected.append(expected[-1] + 2 if step.accepted == step.draft_size + 1 else max(1, expected[-1] - 1))
    assert sizes == expected and min(sizes) == 1
    unrelated.reset()
    assert unrelated.length == 4


def follows_the_heuristic_rule(gen, start: int) -> bool:
    """Each draft size from the previous step's outcome: +2 after a fully accepted chain, -1 (down to 1) otherwise."""
    expected = [start]
    for step in gen.steps[:-1]:
        expected.append(expected[-1] + 2 if step.accepted == step.draft_size + 1 else max(1, expected[-1] - 1))
    return [s.draft_size for s in gen.steps] == expected


@functools.lru_cache(maxsize=None)
def ar_tokens(name: str, tokens: int = 16) -> list[int]:
    return SpeculativeEngine(tiny_model("llama")).generate(PROMPTS[name], Drafter(), tokens, SamplingConfig()).tokens


def adaptive_drafter(schedule: str) -> DraftModelDrafter:
    """A draft often rejected (every rejection rolls its cache back), so the length moves away from 3."""
    return DraftModelDrafter(noisy_draft(tiny_model("llama")), VOCAB, 3, confidence_threshold=0, schedule=schedule)


@pytest.mark.parametrize("schedule", ["heuristic", "heuristic_transient"])
def test_adaptive_schedules_across_sequences_are_token_identical_to_ar(schedule):
    """heuristic_transient starts every sequence at num_tokens; heuristic at the length the last one ended with."""
    engine = SpeculativeEngine(tiny_model("llama"))
    drafter = adaptive_drafter(schedule)
    starts, ends = [], []
    for name in PROMPTS:
        gen = engine.generate(PROMPTS[name], drafter, 16, SamplingConfig())
        assert gen.tokens == ar_tokens(name)
        assert follows_the_heuristic_rule(gen, gen.steps[0].draft_size)
        starts.append(gen.steps[0].draft_size)
        ends.append(drafter.length)
    assert ends[0] != 3   # so that a start at 3 after it is a reset, not a coincidence
    assert starts == ([3, ends[0]] if schedule == "heuristic" else [3, 3])
    drafter.reset()   # a scope boundary: the carried length is forgotten too
    assert engine.generate(PROMPTS["random"], drafter, 2, SamplingConfig()).steps[0].draft_size == 3


@pytest.mark.parametrize("schedule", ["heuristic", "heuristic_transient"])
def test_adaptive_schedules_in_a_batch_are_per_row_and_carried_through_shared_memory(schedule):
    """Each row runs its own length (a transformers call decodes one sequence); at global scope (the heuristic
    schedule's default) the rows share the carried length: the next sequences all start from it."""
    engine = SpeculativeEngine(tiny_model("llama"))
    first = adaptive_drafter(schedule)
    assert first.default_scope == ("global" if schedule == "heuristic" else "sequence")
    rows = [first, first.fork(share_memory=True)]
    gens = engine.generate_batch(list(PROMPTS.values()), rows, 16, SamplingConfig())
    for gen, name in zip(gens, PROMPTS):
        assert gen.tokens == ar_tokens(name)
        assert follows_the_heuristic_rule(gen, 3)
    assert [s.draft_size for s in gens[0].steps] != [s.draft_size for s in gens[1].steps]
    assert rows[1].carried is first.carried
    carried = first.carried.value
    if schedule == "heuristic":   # written by the row whose sequence ended last
        assert len(gens[0].steps) > len(gens[1].steps) and carried == first.length != 3
    again = engine.generate_batch(list(PROMPTS.values()), rows, 2, SamplingConfig())
    assert [g.steps[0].draft_size for g in again] == [carried if schedule == "heuristic" else 3] * 2


def test_unknown_schedule_is_a_one_line_error_naming_the_known_ones():
    with pytest.raises(ValueError) as error:
        DraftModelDrafter(tiny_model("llama"), VOCAB, schedule="heuristic-transient")
    message = str(error.value)
    assert "\n" not in message and "--num-assistant-tokens-schedule" in message
    assert all(name in message for name in ("constant", "heuristic", "heuristic_transient"))


def test_confidence_threshold_ends_the_chain_after_an_unsure_token():
    target = tiny_model("llama")
    engine = SpeculativeEngine(target)
    always_unsure = DraftModelDrafter(target, VOCAB, 8, confidence_threshold=1.0)
    assert {s.draft_size for s in engine.generate(PROMPTS["random"], always_unsure, 20, SamplingConfig()).steps} \
        == {1}
    never = DraftModelDrafter(target, VOCAB, 8, confidence_threshold=0.0)
    assert {s.draft_size for s in engine.generate(PROMPTS["random"], never, 20, SamplingConfig()).steps} == {8}


def test_draft_logits_are_fitted_to_the_target_vocabulary():
    target = tiny_model("llama")
    assert vocab_of(noisy_draft(target)) == VOCAB + 16
    wider = DraftModelDrafter(noisy_draft(target), VOCAB)
    assert wider._fit(torch.zeros(VOCAB + 16)).shape == (VOCAB,)
    narrower = DraftModelDrafter(tiny_model("llama", vocab=VOCAB - 8), VOCAB)
    logits = narrower._fit(torch.zeros(VOCAB - 8))
    assert logits.shape == (VOCAB,) and torch.isinf(logits[-8:]).all()
    for drafter in (wider, narrower):   # and what a proposal draws from is over the target's ids
        drafter.begin_sequence([3, 4, 5])
        assert max(drafter.propose([3, 4, 5], 4).tokens) < VOCAB


def test_sampled_drafts_carry_their_distribution():
    drafter = DraftModelDrafter(tiny_model("qwen2", vocab=SMALL_VOCAB, seed=9), SMALL_VOCAB, 3, 0)
    drafter.use_sampling(SamplingConfig(1.0), torch.Generator().manual_seed(0))
    drafter.begin_sequence([3, 4, 5])
    tree = drafter.propose([3, 4, 5], 16)
    assert tree.probs.shape == (3, SMALL_VOCAB)
    assert torch.allclose(tree.probs.sum(-1), torch.ones(3, dtype=tree.probs.dtype))


# --- Lossless sampling with a real draft model's probabilities ---------------------------------------------------

def sps_pairs(n=1500, runs=None):
    """1,500 samples in a continuous batch of 16 rows (the draft model's cache per row), and their exact law."""
    target = tiny_model("qwen2", vocab=SMALL_VOCAB, seed=3)
    draft = tiny_model("qwen2", vocab=SMALL_VOCAB, seed=9)   # unrelated: q far from p, the residual matters
    cfg = SamplingConfig(1.0)
    return sample_pairs(target, DraftModelDrafter(draft, SMALL_VOCAB, 2, 0), cfg, n, runs=runs, rows=16), \
        exact_two_token_law(target, cfg)


def test_sampling_with_draft_probabilities_follows_the_target_law():
    runs = []
    counts, law = sps_pairs(runs=runs)
    assert chi_square_pvalue(counts, law, 1500) > ALPHA
    assert_drafted(runs, "sps")
    assert_rows_drafted(runs, "sps", min_tokens=2)


def rejection_without_residual(tokens, parents, p, q, generator):
    """Wrong: a rejected draft token's replacement is drawn from p instead of norm(max(p - q, 0))."""
    path, pos = [], 0
    for node, token in enumerate(tokens):
        if torch.rand((), generator=generator, dtype=p.dtype) > p[pos, token] / q[node, token]:
            return path, draw(p[pos], generator)
        path.append(node)
        pos = node + 1
    return path, draw(p[pos], generator)


def test_chi_square_rejects_sps_without_the_residual(monkeypatch):
    import model.engine.decoder as decoder
    monkeypatch.setattr(decoder, "accept_sampled", rejection_without_residual)
    counts, law = sps_pairs()
    assert chi_square_pvalue(counts, law, 1500) < ALPHA


# --- Paradigms and the CLI -----------------------------------------------------------------------------------------

def questions_file(tmp_path):
    return two_questions_file(tmp_path)


def test_best_of_n_greedy_is_token_identical_and_sampled_runs(tiny_model_dir, tmp_path):
    questions = questions_file(tmp_path)
    greedy = ["--BON", "--bon-n", "2"]
    assert run_paradigm(tiny_model_dir, questions, tmp_path / "sps.jsonl", "sps", *greedy) == \
        run_paradigm(tiny_model_dir, questions, tmp_path / "ar.jsonl", "ar", *greedy)
    sampled = run_paradigm(tiny_model_dir, questions, tmp_path / "sps-t.jsonl", "sps", "--BON", "--bon-n", "3",
                           "--temperature", "0.8")
    samples = [sha for question in sampled for sha in question]
    assert len(samples) == 6 and len(set(samples)) == 6


def sps_cli(model_dir, questions, *flags):
    return run("-m", "evaluation.inference_sps", "--model-path", model_dir, "--question-file", questions,
               "--max-new-tokens", "6", "--warmup", "0", "--device", "cpu", "--dtype", "float32",
               "--cost-profile-contexts", "16", "--cost-profile-repeats", "1", *flags)


def test_cli_runs_and_records_the_draft(tiny_model_dir, tmp_path):
    questions = questions_file(tmp_path)
    answers = tmp_path / "a.jsonl"
    result = sps_cli(tiny_model_dir, questions, "--drafter-path", tiny_model_dir, "--answer-file", str(answers),
                     "--think-twice", "--num-assistant-tokens-schedule", "heuristic")
    assert result.returncode == 0, result.stderr
    config = json.loads(answers.with_suffix(".config.json").read_text())
    params = config["method_parameters"]
    assert config["method"] == "sps" and params["drafter_path"] == tiny_model_dir
    assert params["num_assistant_tokens"] == 20 and params["num_assistant_tokens_schedule"] == "heuristic"
    assert config["draft_state_scope"] == "global"   # heuristic carries its length across the run by default
    assert params["assistant_confidence_threshold"] == 0.4 and params["drafter_dtype"] == "torch.float32"
    steps = [json.loads(line) for line in answers.with_suffix(".steps.jsonl").read_text().splitlines()]
    assert {s["draft_source"] for s in steps} == {"sps"}
    assert all(s["draft_seconds"] > 0 for s in steps)


def test_cli_missing_drafter_path(tiny_model_dir, tmp_path):
    assert_one_line_error(sps_cli(tiny_model_dir, questions_file(tmp_path)), "--drafter-path")


def test_cli_tokenizer_mismatch_names_both(tiny_model_dir, thinking_model_dir, tmp_path):
    result = sps_cli(tiny_model_dir, questions_file(tmp_path), "--drafter-path", thinking_model_dir)
    assert_one_line_error(result, "differs from the target's")
    assert thinking_model_dir in result.stderr and tiny_model_dir in result.stderr


def test_cli_drafter_that_is_not_a_causal_lm(tiny_model_dir, tmp_path):
    from transformers import AutoConfig
    AutoConfig.for_model("bert", architectures=["BertForMaskedLM"]).save_pretrained(tmp_path / "bert")
    result = sps_cli(tiny_model_dir, questions_file(tmp_path), "--drafter-path", str(tmp_path / "bert"))
    assert_one_line_error(result, "--drafter-path")
    assert "not a causal language model" in result.stderr


@pytest.mark.parametrize("flags, fragment", [(["--num-assistant-tokens", "0"], "--num-assistant-tokens"),
                                             (["--assistant-confidence-threshold", "1.5"], "[0, 1]"),
                                             (["--num-assistant-tokens-schedule", "x"], "invalid choice")])
def test_cli_bad_sps_flags(tiny_model_dir, tmp_path, flags, fragment):
    result = sps_cli(tiny_model_dir, questions_file(tmp_path), "--drafter-path", tiny_model_dir, *flags)
    assert_one_line_error(result, fragment)

