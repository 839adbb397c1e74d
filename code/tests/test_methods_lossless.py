"""Every method is lossless on the one engine: float64 greedy output token-identical to AR on Llama, Qwen2 and
Qwen3, in both test-time-scaling paradigms; sampled output follows the target law."""
import json

import pytest

from conftest import ARCHS, VOCAB, tiny_model, two_questions_file
from methods import METHODS, SAMPLED_DRAFTS, assert_drafted, assert_rows_drafted, step_log
from model.engine import Drafter, SamplingConfig, SpeculativeEngine, ThinkingBudget
from references import ar
from test_sampling import SMALL_VOCAB, ALPHA, exact_two_token_law, sample_pairs
from stats import chi_square_pvalue

PROMPTS = {"random": [3, 17, 99, 250, 42, 8, 77, 301, 12, 5],
           "repeat": [5, 6, 7, 8, 9, 10, 11, 5, 6, 7, 8, 9, 10, 11, 5, 6, 7, 8]}
DRAFTING = sorted(set(METHODS) - {"ar"})


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", DRAFTING)
def test_greedy_token_identical_to_ar(arch, method):
    model = tiny_model(arch)
    engine = SpeculativeEngine(model, max_tree_nodes=128)
    outs = []
    for prompt in PROMPTS.values():
        reference = ar(arch, prompt, 64).tokens
        # REST's datastore holds text like the answer (as a real corpus would), never the answer itself whole.
        corpus = [reference[i:i + 8] for i in range(0, len(reference), 5)]
        outs.append(engine.generate(prompt, METHODS[method](model, corpus), 64, SamplingConfig()))
        assert outs[-1].tokens == reference
    assert_drafted(outs, method)   # drafts verified, some accepted and some rejected: identity was put to the test


@pytest.mark.parametrize("method", DRAFTING)
def test_thinking_budget_lands_where_ar_puts_it(method):
    # (Qwen2 on the random prompt: there every method gets drafts accepted and rejected; the tiny Qwen3 on the
    # repeating prompt rarely repeats itself, and SAM found one match there, rejected.)
    model = tiny_model("qwen2")
    budget = ThinkingBudget(trigger_at=21, phrase=[1, 2, 3, 4], end_token=VOCAB - 1)
    engine = SpeculativeEngine(model)
    prompt = PROMPTS["random"]
    reference = engine.generate(prompt, Drafter(), 48, SamplingConfig(), budget=budget).tokens
    corpus = [reference[i:i + 8] for i in range(0, len(reference), 5)]
    out = engine.generate(prompt, METHODS[method](model, corpus), 48, SamplingConfig(), budget=budget)
    assert out.tokens == reference
    assert out.forced_tokens == len(budget.phrase)
    assert_drafted([out], method)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_sampling_follows_the_target_law(method):
    model = tiny_model("qwen2", vocab=SMALL_VOCAB, seed=3)
    cfg = SamplingConfig(1.0)
    corpus = [[(7 * i + j * j) % SMALL_VOCAB for j in range(12)] for i in range(40)]
    # Adaptive PLD would learn over the samples that its one match here mostly fails, and stop drafting: it starts
    # each sample afresh, as at its sequence scope in a run. The others keep what they learn, shared by the 16 rows
    # of the continuous batch the samples run in (Lookahead drafts from the pool it builds over many samples).
    runs = []
    counts = sample_pairs(model, METHODS[method](model, corpus), cfg, 1500, runs=runs, fresh=method == "pld",
                          rows=16)
    assert chi_square_pvalue(counts, exact_two_token_law(model, cfg), 1500) > ALPHA
    if method != "ar":
        assert_drafted(runs, method)
        assert_rows_drafted(runs, method, min_tokens=2)


def run_paradigm(model_dir, question_file, answer_file, method, *flags, corpus=None):
    """Each choice's token hash, in answer-file order."""
    return [c["token_ids_sha1"] for line in run_answers(model_dir, question_file, answer_file, method, *flags,
                                                         corpus=corpus)
            for c in line["choices"]]


def run_answers(model_dir, question_file, answer_file, method, *flags, corpus=None):
    """Run one method through the shared loop (float64, 40 new tokens, no warm-up); its answer lines. `corpus`: REST's
    datastore (token lists; default: ids 5..59, which the tiny model's text never continues)."""
    from evaluation.run.args import build_parser, finalize
    from evaluation.run.loop import run_eval
    # (every run records a forward-cost profile: a small one, which these tests only need to exist)
    argv = ["--model-path", model_dir, "--question-file", question_file, "--answer-file", str(answer_file),
            "--max-new-tokens", "40", "--dtype", "float64", "--device", "cpu", "--warmup", "0",
            "--cost-profile-contexts", "16", "--cost-profile-repeats", "1", *flags]
    run_eval(finalize(build_parser(method).parse_args(argv), method),
             lambda args, model, tokenizer: METHODS[method](model, corpus or [list(range(5, 60))]))
    with open(answer_file) as f:
        return [json.loads(line) for line in f]


def corpus_of_answers(answers):
    """Text like the answers (8-token pieces every 5 tokens of each turn's ids), never an answer whole: REST's
    datastore, as a real corpus resembles what the model writes."""
    return [ids[i:i + 8] for line in answers for c in line["choices"] for ids in c["token_ids"]
            for i in range(0, len(ids), 5)]


# Best-of-N at T = 0.3: still sampled, and repetitive enough that every method gets drafts accepted (at T = 0.8 the
# tiny model's text never repeats: PLD and SAM had no draft accepted, the test saw none of their rollbacks).
PARADIGMS = [["--think-twice"], ["--BON", "--bon-n", "3", "--temperature", "0.3"]]
PARADIGM_IDS = ["multi-round-T0", "best-of-3-T0.3"]


@pytest.mark.parametrize("paradigm", PARADIGMS, ids=PARADIGM_IDS)
def test_both_paradigms_reproduce_ar_turn_by_turn(tiny_model_dir, tmp_path, paradigm):
    """Multi-round greedy, and Best-of-N sampling with the same seeds: one uniform draw per emitted token for
    point-mass drafts, so in float64 each sample is token-identical to AR's, not only equal in law (drafts with
    probabilities are equal in law: the sampling tests cover them). REST retrieves from pieces of AR's answers."""
    questions = two_questions_file(tmp_path)
    answers = run_answers(tiny_model_dir, questions, tmp_path / "ar.jsonl", "ar", *paradigm, "--save-token-ids")
    reference = [c["token_ids_sha1"] for line in answers for c in line["choices"]]
    corpus = corpus_of_answers(answers)
    sampled = "--temperature" in paradigm
    for method in DRAFTING:
        if sampled and method in SAMPLED_DRAFTS:
            continue
        answer_file = tmp_path / f"{method}.jsonl"
        assert run_paradigm(tiny_model_dir, questions, answer_file, method, *paradigm, corpus=corpus) == reference, \
            method
        assert_drafted(step_log(answer_file), method)
