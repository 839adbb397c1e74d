"""The static engine mode (--engine-mode static) is the same loop in fixed shapes, and as lossless: every method
token-identical to eager AR in float64 (batch 1, multi-round, Best-of-N rows at T > 0, ragged batched rows, with the
prompts prefilled in chunks), the sampled law kept, cost-aware verification on a static profile, torch.compile of the
static forward; the KV arena is allocated once at its exact size and reused; an eager profile is never a static
one's."""
import json

import pytest
import torch

from conftest import VOCAB, tiny_model
from methods import METHODS, SAMPLED_DRAFTS, assert_drafted, assert_logged_rows_drafted, assert_rows_drafted
from model.engine import SamplingConfig, SpeculativeEngine, ThinkingBudget
from model.engine import decoder
from model.engine.static_cache import StaticKVCache
from model.engine.static_forward import bucket, width_buckets
from model.errors import UserError
from references import ar
from stats import chi_square_pvalue
from test_batch import corpus_of
from test_batch_rows import four_prompts, steps_of
from test_sampling import ALPHA, SMALL_VOCAB, exact_two_token_law, sample_pairs

PROMPT = [5, 6, 7, 8, 9, 10, 11, 5, 6, 7, 8, 9, 10, 11, 5, 6, 7, 8]
NEW = 40
SEEDS = [21, 22, 23]
ROWS_SAMPLING = SamplingConfig(0.3, top_p=0.95)
DRAFTING = sorted(set(METHODS) - {"ar"})


@pytest.fixture
def small_chunks(monkeypatch):
    """Prefill in chunks of 7 tokens, so that every prompt here is prefilled in several (ragged rows included)."""
    monkeypatch.setattr(decoder, "PREFILL_CHUNK", 7)


def static_engine(model, **kwargs) -> SpeculativeEngine:
    return SpeculativeEngine(model, mode="static", kv_bucket=16, **kwargs)


def seeded(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("method", DRAFTING)
def test_every_method_in_static_mode_is_eager_ar_token_for_token(method, small_chunks):
    """Greedy at batch 1 and in a second round on top of the first (the drafter keeps what it learned): eager AR's
    tokens in float64. Four ragged batched rows and Best-of-3 rows at T > 0: eager mode's tokens and steps. Drafts
    were verified, accepted and rejected, in every row."""
    model = tiny_model("llama")
    engine = static_engine(model)
    first = ar("llama", PROMPT, NEW).tokens
    second_prompt = PROMPT + first + PROMPT[:6]
    corpus = corpus_of(first)   # (REST's datastore: pieces of the answer, never the answer whole)
    drafter = METHODS[method](model, corpus)
    rounds = [engine.generate(PROMPT, drafter, NEW, SamplingConfig()),
              engine.generate(second_prompt, drafter, NEW, SamplingConfig())]
    assert [r.tokens for r in rounds] == [first, ar("llama", second_prompt, NEW).tokens]
    assert_drafted(rounds, method)

    # Four ragged rows of Qwen3 (one of a single token) meeting the thinking budget, sampled with each row's seed
    # (greedy where drafts carry probabilities): each row as eager mode decodes it alone, step for step (tree drafts
    # at T > 0 take draws AR does not: equal to AR in law, to eager mode in every token).
    qwen3 = tiny_model("qwen3")
    prompts = four_prompts("qwen3")
    rows_corpus = corpus_of([t for p, s in zip(prompts, (21, 22, 23, 24))
                             for t in p + ar("qwen3", p, 32, ROWS_SAMPLING, seed=s).tokens])
    budget = ThinkingBudget(trigger_at=20, phrase=[1, 2, 3], end_token=VOCAB - 1)
    sampling = SamplingConfig() if method in SAMPLED_DRAFTS else ROWS_SAMPLING
    seeds = (11, 12, 13, 14)
    alone = [SpeculativeEngine(qwen3).generate(p, METHODS[method](qwen3, rows_corpus), 32, sampling,
                                               seeded([s])[0], budget=budget) for p, s in zip(prompts, seeds)]
    rows = static_engine(qwen3).generate_batch(prompts, [METHODS[method](qwen3, rows_corpus).fork() for _ in prompts],
                                               32, sampling, seeded(seeds), budget=budget)
    for got, want in zip(rows, alone):
        assert got.tokens == want.tokens and steps_of(got) == steps_of(want)
    # (greedy, the one-token row of STAND and SpS finds nothing to draft from in 32 tokens)
    (assert_drafted if method in SAMPLED_DRAFTS else assert_rows_drafted)(rows, method)

    if method not in SAMPLED_DRAFTS:   # Best-of-3 rows of one prompt (the prefilled row repeated in the arena)
        samples = engine.generate_batch([PROMPT] * 3, [METHODS[method](model, corpus) for _ in SEEDS], NEW,
                                        ROWS_SAMPLING, seeded(SEEDS))
        reference = SpeculativeEngine(model).generate_batch([PROMPT] * 3, [METHODS[method](model, corpus)
                                                                           for _ in SEEDS], NEW, ROWS_SAMPLING,
                                                            seeded(SEEDS))
        assert [s.tokens for s in samples] == [r.tokens for r in reference]
        assert [steps_of(s) for s in samples] == [steps_of(r) for r in reference]


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_other_architectures_and_continuous_batching(arch, small_chunks):
    """Qwen2 and Qwen3 in static mode, Best-of-5 on 2 rows that finished samples hand on (continuous batching: rows
    copied from the prefilled prompts into the arena), with PLD and SAM."""
    model = tiny_model(arch)
    engine = static_engine(model)
    sampling = SamplingConfig(0.3)
    seeds = [31, 32, 33, 34, 35]
    expected = [ar(arch, PROMPT, NEW, sampling, seed).tokens for seed in seeds]
    for method in ("pld", "samd"):
        out = engine.generate_batch([PROMPT] * 5, [METHODS[method](model, []) for _ in range(2)], NEW, sampling,
                                    seeded(seeds))
        assert [o.tokens for o in out] == expected, method
        assert_rows_drafted(out, method, min_tokens=8)


@pytest.mark.parametrize("method", ["stand", "sps", "pld"])
def test_static_mode_keeps_the_sampled_law(method):
    """Drafts with probabilities (STAND, SpS) and a point-mass one (PLD) at T = 1: the first two tokens of 1,500
    static-mode samples (a continuous batch of 16 rows) follow the exact law (a chi-square test a wrong acceptance
    rule fails)."""
    model = tiny_model("qwen2", vocab=SMALL_VOCAB, seed=3)
    cfg = SamplingConfig(1.0)
    corpus = [[(7 * i + j * j) % SMALL_VOCAB for j in range(12)] for i in range(40)]
    runs = []
    counts = sample_pairs(model, METHODS[method](model, corpus), cfg, 1500, engine=static_engine(model), runs=runs,
                          fresh=method == "pld", rows=16)
    assert chi_square_pvalue(counts, exact_two_token_law(model, cfg), 1500) > ALPHA
    assert_drafted(runs, method)
    assert_rows_drafted(runs, method, min_tokens=2)


def test_cost_aware_verification_in_static_mode():
    """Cost-aware verification with a static-mode profile (a step function of the width buckets) on a clock that
    profile drives: the chosen drafts are still verified losslessly."""
    from test_cost_aware import cost_aware_engine, jagged_profile
    model = tiny_model("llama")
    engine = cost_aware_engine(model, jagged_profile(), mode="static", kv_bucket=16)
    outs = [engine.generate(PROMPT, METHODS[m](model, []), NEW, SamplingConfig()) for m in ("pld", "suffix")]
    assert all(o.tokens == ar("llama", PROMPT, NEW).tokens for o in outs)
    assert_drafted(outs, "cost-aware static")


def test_the_arena_is_allocated_once_at_its_exact_size():
    """Each row: prompt + max new tokens + the widest padded forward; the same buffers for every later sequence
    that fits (no doubling), and a row that would overflow is an error, never a silent reallocation."""
    model = tiny_model("llama")
    engine = static_engine(model, max_tree_nodes=20)
    assert engine.static.buckets == [1, 2, 4, 8, 16, 21] == width_buckets(21)
    engine.generate_batch([PROMPT] * 2, [METHODS["pld"](model, []) for _ in range(2)], NEW, SamplingConfig())
    first = engine.describe()
    assert (first["kv_arena_rows"], first["kv_arena_capacity"]) == (2, len(PROMPT) + NEW + 21)
    # 2 layers x (keys + values) x 2 key/value heads x 16 dims x 8 bytes
    assert first["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 8
    buffers = {i: k.data_ptr() for i, (k, _) in engine.arena.buffers.items()}
    buffers_id = engine.arena.buffers_id
    engine.generate(PROMPT[:9], METHODS["pld"](model, []), NEW, SamplingConfig())
    assert engine.arena.buffers_id == buffers_id
    assert {i: k.data_ptr() for i, (k, _) in engine.arena.buffers.items()} == buffers
    cache = StaticKVCache(8, 1)
    engine._append(cache, [3, 4, 5, 6, 7])
    with pytest.raises(RuntimeError, match="static KV cache holds 8 entries"):
        engine._forward(cache, [[1, 2, 3, 4]], [torch.ones(4, 4, dtype=torch.bool).tril()], [list(range(4))])
    assert bucket(3, [1, 2, 4]) == 4
    with pytest.raises(UserError, match="unknown engine mode"):
        SpeculativeEngine(model, mode="graphs")


def test_full_and_bucketed_key_lengths_agree():
    """Attending the whole arena under the mask (--kv-bucket 0) or up to a bucket gives the same tokens."""
    model = tiny_model("qwen3")
    outs = [SpeculativeEngine(model, mode="static", kv_bucket=k).generate(PROMPT, METHODS["pld"](model, []), NEW,
                                                                          SamplingConfig()) for k in (0, 8)]
    assert outs[0].tokens == outs[1].tokens == ar("qwen3", PROMPT, NEW).tokens
    assert_drafted(outs, "pld")


def test_a_compiled_static_forward_is_lossless():
    """torch.compile of the static forward (each shape compiled once; recorded as warm-up, not step time)."""
    model = tiny_model("llama")
    # (widths 1, 2, 4 at one key length: three shapes compiled)
    engine = SpeculativeEngine(model, mode="static", kv_bucket=64, compile=True, max_tree_nodes=3)
    out = engine.generate(PROMPT, METHODS["pld"](model, []), 24, SamplingConfig())
    assert out.tokens == ar("llama", PROMPT, 24).tokens
    assert_drafted([out], "pld compiled")
    described = engine.describe()
    assert described["torch_compile"] is True and described["capture_seconds"] > 0


def test_the_profile_key_tells_the_modes_apart(tiny_model_dir):
    """A forward-cost profile measured in eager mode is never reused in static mode, nor one of another static
    shape set (kv bucket)."""
    from model.engine.profile import profile_key
    model = tiny_model("llama")
    keys = [profile_key(model, tiny_model_dir, torch.device("cpu"), 8, [16], 1, 0, 1, engine.describe_mode())
            for engine in (SpeculativeEngine(model), static_engine(model),
                           SpeculativeEngine(model, mode="static", kv_bucket=0))]
    assert keys[0] != keys[1] != keys[2] != keys[0]
    assert "engine" not in keys[0]   # eager keys as before: profiles cached by earlier versions still match


@pytest.mark.parametrize("paradigm", [["--think-twice"], ["--BON", "--bon-n", "3", "--temperature", "0.3",
                                                          "--batch-size", "2", "--continuous-batching"]],
                         ids=["multi-round", "best-of-3-continuous"])
def test_runs_in_static_mode_reproduce_eager_ar(tiny_model_dir, tmp_path, paradigm):
    """Through the shared loop: a static-mode run of PLD and SuffixDecoding gives eager AR's token ids turn by turn,
    records its mode, and a resumed run in the other mode is refused in one line."""
    from test_methods_lossless import run_answers, run_paradigm
    from conftest import two_questions_file
    from evaluation.run.args import build_parser, finalize
    from evaluation.run.loop import run_eval
    questions = two_questions_file(tmp_path)
    reference = [c["token_ids_sha1"] for line in run_answers(tiny_model_dir, questions, tmp_path / "ar.jsonl", "ar",
                                                             *paradigm, "--save-token-ids") for c in line["choices"]]
    for method in ("pld", "suffix"):
        answer_file = tmp_path / f"{method}.jsonl"
        assert run_paradigm(tiny_model_dir, questions, answer_file, method, *paradigm, "--engine-mode", "static",
                            "--kv-bucket", "32") == reference, method
    with open(tmp_path / "pld.config.json") as f:
        config = json.load(f)
    assert config["engine_mode"] == "static" and config["static_engine"] == {"kv_bucket": 32, "torch_compile": False}
    engine = config["sessions"][-1]["engine"]   # what the session allocated and captured, recorded at its end
    assert engine["engine_mode"] == "static" and engine["kv_arena_bytes"] > 0 and engine["static_shapes"] > 0
    assert_logged_rows_drafted(tmp_path / "pld.jsonl", "pld static", min_rows=1)
    args = finalize(build_parser("pld").parse_args([
        "--model-path", tiny_model_dir, "--question-file", questions, "--answer-file", str(tmp_path / "pld.jsonl"),
        "--max-new-tokens", "40", "--dtype", "float64", "--device", "cpu", "--warmup", "0", *paradigm]), "pld")
    with pytest.raises(UserError, match="engine_mode"):
        run_eval(args, lambda a, m, t: METHODS["pld"](m, []))


class ReplayedForward:
    """A stand-in for CUDA-graph capture on the CPU, with its semantics where they can bite: capture runs the step
    once and puts the lengths back (as the warm-up before a real capture does), and each replay reruns it and writes
    its results into the tensors capture returned (a graph refills its outputs in place; nothing else is new)."""

    def __init__(self):
        self.captured = self.replayed = 0

    def __call__(self, step, cache):
        self.captured += 1
        lengths = cache.device_lengths.clone()
        logits, states = step()
        cache.device_lengths.copy_(lengths)
        outputs = (logits.clone(), {i: s.clone() for i, s in states.items()})

        def replay():
            self.replayed += 1
            new_logits, new_states = step()
            outputs[0].copy_(new_logits)
            for i, s in new_states.items():
                outputs[1][i].copy_(s)
        return replay, outputs


@pytest.mark.parametrize("method", ["pld", "eagle3", "samd"])
def test_graph_replays_give_eager_tokens(method, small_chunks):
    """The captured-graph path (on the CPU, with a stand-in for capture): every decode shape captured once per arena
    and replayed after, the lengths advanced once a forward, EAGLE-3's hidden states read from the capture's
    outputs; batch 1, a second sequence on the same arena, and ragged batched rows give eager mode's tokens."""
    model = tiny_model("llama")
    engine = static_engine(model)
    fake = ReplayedForward()
    engine.static.graphs, engine.static._capture = True, fake
    first = ar("llama", PROMPT, NEW).tokens
    corpus = corpus_of(first)
    single = engine.generate(PROMPT, METHODS[method](model, corpus), NEW, SamplingConfig())
    assert single.tokens == first
    assert 0 < fake.captured < fake.replayed   # each shape captured once, then replayed
    prompts = four_prompts("llama")
    alone = [SpeculativeEngine(model).generate(p, METHODS[method](model, corpus), 24, SamplingConfig())
             for p in prompts]
    rows = engine.generate_batch(prompts, [METHODS[method](model, corpus) for _ in prompts], 24, SamplingConfig())
    assert [r.tokens for r in rows] == [a.tokens for a in alone]
    captured = fake.captured
    again = engine.generate(PROMPT, METHODS[method](model, corpus), NEW, SamplingConfig())
    assert again.tokens == first and fake.captured - captured < len(again.steps)
    assert_drafted([single, again] + rows, method)


def test_sps_runs_its_draft_model_in_static_mode_too():
    """In static mode SpS's draft model decodes through its own static forward: a static cache of fixed size, one
    token a row a captured step (the CUDA-graph path, on the CPU through the capture stand-in), and still AR's tokens
    in float64; in eager mode it keeps the growing cache."""
    from model.engine.drafter import StaticSettings
    model = tiny_model("llama")
    drafter = METHODS["sps"](model, [])
    drafter.use_engine(StaticSettings(capacity=1, kv_bucket=16))   # (the forward is made now, to put the stand-in in)
    fake = ReplayedForward()
    forward = drafter.static_forward()
    forward.graphs, forward._capture = True, fake
    out = static_engine(model).generate(PROMPT, drafter, NEW, SamplingConfig())
    assert out.tokens == ar("llama", PROMPT, NEW).tokens
    assert isinstance(drafter.batch.cache, StaticKVCache) and 0 < fake.captured < fake.replayed
    assert {width for _, width, _ in forward.shapes} >= {1} and drafter.batch.cache.capacity >= len(PROMPT) + NEW
    assert_drafted([out], "sps static")
    eager = METHODS["sps"](model, [])
    assert SpeculativeEngine(model).generate(PROMPT, eager, NEW, SamplingConfig()).tokens == out.tokens
    assert not isinstance(eager.batch.cache, StaticKVCache)


@pytest.mark.parametrize("flags, message", [(["--compile"], "settings of --engine-mode static"),
                                            (["--engine-mode", "static", "--kv-bucket", "-1"], "--kv-bucket must be"),
                                            (["--engine-mode", "graphs"], "invalid choice")])
def test_bad_engine_mode_flags_are_one_line(tmp_path, flags, message, capsys):
    from evaluation.run.args import build_parser, finalize
    argv = ["--model-path", "m", "--question-file", "q.jsonl", "--answer-file", str(tmp_path / "a.jsonl"), *flags]
    with pytest.raises((UserError, SystemExit)) as raised:
        finalize(build_parser("pld").parse_args(argv), "pld")
    said = str(raised.value) if raised.type is UserError else capsys.readouterr().err
    assert message in said and "Traceback" not in said
