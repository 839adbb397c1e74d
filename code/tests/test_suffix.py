"""SuffixDecoding (model/suffix): the suffix tree's counts and speculation, checked against the reference itself
(arctic-inference 0.3.0's C++ tree and SuffixDecodingCache, built by `make refs`); the global tree's scopes and
feeds; losslessness (float64 greedy identity with AR, both paradigms, batches; the sampled law); replay step for
step."""
import importlib
import json
import os
import random
import sys

import pytest

from conftest import ARCHS, tiny_model, two_questions_file
from methods import assert_drafted, step_log
from model.engine import Drafter, SamplingConfig, SpeculativeEngine, StepFeedback
from model.engine.tree import DraftTree
from model.suffix.drafter import SuffixDrafter
from model.suffix.tree import SuffixTree, f32

REFERENCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "local_model",
                         "suffix_reference")


def reference():
    """arctic_inference.suffix_decoding as `make refs` builds it (scripts/build_suffix_reference.sh)."""
    if REFERENCE not in sys.path:
        sys.path.insert(0, REFERENCE)
    return pytest.importorskip("arctic_inference.suffix_decoding")


def as_tuple(draft):
    """(tokens, parents, probabilities, score, match length) of our Draft or the reference's."""
    if hasattr(draft, "token_ids"):
        return list(draft.token_ids), list(draft.parents), list(draft.probs), draft.score, draft.match_len
    return draft.tokens, draft.parents, draft.probs, draft.score, draft.match_len


# -- the tree ------------------------------------------------------------------------------------------------------

def occurrences(seqs, path, depth):
    """How often `path` occurs in the sequences (the count of its node: suffixes are cut at `depth` tokens)."""
    n = len(path)
    return 0 if n > depth else sum(s[i:i + n] == path for s in seqs for i in range(len(s) - n + 1))


def test_hand_made_draft():
    tree = SuffixTree(8)
    tree.extend(0, [1, 2, 3, 1, 2, 4, 1, 2, 3])
    # "1 2" occurs 3 times: then 3 twice (2/3), 4 once; after "1 2 3" (twice) comes "1" once (2/3 x 1/2). A match of
    # 2 tokens may draft 2 (factor 1); it beats the 1-token match ("2": one token, 2/3).
    draft = tree.speculate([5, 1, 2], 8)
    assert as_tuple(draft) == ([3, 1], [-1, 0], [f32(2 / 3), f32(1 / 3)], f32(1.0), 2)
    assert draft.probs == [pytest.approx(2 / 3), pytest.approx(1 / 3)]
    wide = tree.speculate([5, 1, 2], 8, max_spec_factor=2.0, use_tree_spec=True)
    assert (wide.tokens, wide.parents) == ([3, 4, 1, 1], [-1, -1, 0, 1])
    assert tree.speculate([5, 1, 2], 8, min_token_prob=0.5).tokens == [3]   # 1/3 < 0.5: the chain stops
    assert tree.speculate([7, 9], 8).tokens == []                           # no match


@pytest.mark.parametrize("seed", range(6))
def test_probabilities_are_count_ratios(seed):
    """Every drafted token's probability = count(path + token) / count(path) along its path, the counts those of
    the text held (each suffix cut at the tree depth), also after a sequence is removed."""
    rng = random.Random(seed)
    depth = rng.choice([3, 6, 24])
    seqs = {i: [rng.randrange(4) for _ in range(rng.randint(5, 40))] for i in range(4)}
    tree = SuffixTree(depth)
    for i, s in seqs.items():
        tree.extend(i, s[:len(s) // 2])
    for i, s in seqs.items():
        tree.extend(i, s[len(s) // 2:])
    tree.remove(1)
    del seqs[1]
    checked = 0
    for _ in range(30):
        context = [rng.randrange(4) for _ in range(6)]
        draft = tree.speculate(context, 24, max_spec_factor=3.0, min_token_prob=0.0, use_tree_spec=True)
        matched = context[len(context) - draft.match_len:]
        for i, token in enumerate(draft.tokens):
            path, node = [token], i
            while draft.parents[node] >= 0:
                node = draft.parents[node]
                path.insert(0, draft.tokens[node])
            expected = 1.0
            for k in range(len(path)):
                expected *= occurrences(seqs.values(), matched + path[:k + 1], depth) / \
                    occurrences(seqs.values(), matched + path[:k], depth)
            assert draft.probs[i] == pytest.approx(expected, rel=1e-5)
            checked += 1
    assert checked


def test_same_draft_as_the_reference_tree():
    """Our tree against arctic-inference's C++ SuffixTree on random streams over small vocabularies (ties
    everywhere): sequences extended in chunks, removed, extended again; every speculation (chain and tree, with
    every parameter varied) the same tokens, tree shape, float32 probabilities, score and match length."""
    ref = reference()
    compared = drafted = 0
    for trial in range(120):
        rng = random.Random(trial)
        depth, vocab = rng.choice([1, 2, 3, 5, 8, 24]), rng.choice([2, 3, 5, 20])
        ours, theirs = SuffixTree(depth), ref._C.SuffixTree(depth)
        live, fresh = [], iter(range(10 ** 6))
        for _ in range(rng.randint(5, 50)):
            if rng.random() < 0.8 or not live:
                seq = rng.choice(live + [next(fresh)])
                tokens = [rng.randrange(vocab) for _ in range(rng.randint(1, 12))]
                ours.extend(seq, tokens)
                theirs.extend(seq, tokens)
                if seq not in live:
                    live.append(seq)
            else:
                seq = live.pop(rng.randrange(len(live)))
                ours.remove(seq)
                theirs.remove(seq)
            context = [rng.randrange(vocab) for _ in range(rng.randint(1, 10))]
            args = (rng.randint(0, 16), rng.choice([0.5, 1.0, 2.0, 3.3]), rng.choice([0.0, 1.0, -0.5]),
                    rng.choice([0.0, 0.1, 0.3]), rng.random() < 0.5)
            a = as_tuple(ours.speculate(context, *args))
            assert a == as_tuple(theirs.speculate(context, *args)), (trial, context, args)
            compared += 1
            drafted += bool(a[0])
        assert theirs.check_integrity() == ""
    assert drafted > compared / 3


def run_streams(drafter_of, requests, steps, rng, chunk=3):
    """Interleaved requests (prompt, response) fed a few tokens a step; per step and request, what the drafter
    proposes on the context so far. `drafter_of(r)` gives request r's SuffixDrafter (all share one cache)."""
    out, done = [], [0] * len(requests)
    order = list(range(len(requests)))
    for r in order:
        drafter_of(r).begin_sequence(list(requests[r][0]))
    for _ in range(steps):
        for r in order:
            prompt, response = requests[r]
            if done[r] >= len(response):
                continue
            d = drafter_of(r)
            tree = d.propose(prompt + response[:done[r]], 64)
            out.append((r, done[r], as_tuple(d.last_draft), tree.source if tree else None))
            n = rng.randint(1, chunk)
            d.observe(StepFeedback(response[done[r]:done[r] + n], None, [], []))
            done[r] += n
            if done[r] >= len(response):
                d.end_sequence()
    return out


@pytest.mark.parametrize("tree_spec", [False, True], ids=["chain", "tree"])
@pytest.mark.parametrize("max_cached", [-1, 2], ids=["unbounded", "evicting"])
def test_same_drafts_as_vllm_driving_the_reference_cache(tree_spec, max_cached):
    """Live responses (vLLM's order: start_request with the prompt, add_active_response with each step's tokens,
    speculate on the last max_tree_depth tokens), several requests at once, later ones starting as earlier ones end:
    our drafter's proposal every step equals SuffixDecodingCache.speculate, FIFO eviction included."""
    ref = reference()
    rng = random.Random(7)
    requests = [([rng.randrange(6) for _ in range(rng.randint(3, 30))],
                 [rng.randrange(6) for _ in range(rng.randint(10, 60))]) for _ in range(6)]
    kw = dict(max_tree_depth=8, max_cached_requests=max_cached, use_tree_spec=tree_spec, live_responses=True,
              max_spec_factor=2.0, num_speculative_tokens=12)
    first = SuffixDrafter(**kw)
    drafters = [first] + [first.fork(share_memory=True) for _ in requests[1:]]
    ours = run_streams(lambda r: drafters[r], requests, 40, random.Random(1))

    cache = ref.SuffixDecodingCache(max_tree_depth=8, max_cached_requests=max_cached)
    theirs, rng2 = [], random.Random(1)
    done = [0] * len(requests)
    for r, (prompt, _) in enumerate(requests):
        cache.start_request(r, prompt)
    for _ in range(40):
        for r, (prompt, response) in enumerate(requests):
            if done[r] >= len(response):
                continue
            context = (prompt + response[:done[r]])[-8:]
            draft = cache.speculate(r, context, max_spec_tokens=12, max_spec_factor=2.0, min_token_prob=0.1,
                                    use_tree_spec=tree_spec)
            theirs.append((r, done[r], as_tuple(draft)))
            n = rng2.randint(1, 3)
            cache.add_active_response(r, response[done[r]:done[r] + n])
            done[r] += n
            if done[r] >= len(response):
                cache.stop_request(r)
    assert [o[:3] for o in ours] == theirs
    assert {o[3] for o in ours} >= {"suffix_local", "suffix_global"}
    assert sum(bool(o[2][0]) for o in ours) > len(ours) / 3


def test_completed_responses_equal_the_reference_trees():
    """The default feed (a response enters the global tree when it ends): each proposal equals the reference trees'
    (local: prompt + output so far; global: the completed responses, oldest evicted beyond the limit), the local
    draft winning a tie, as SuffixDecodingCache.speculate decides."""
    ref = reference()
    rng = random.Random(3)
    requests = [([rng.randrange(5) for _ in range(rng.randint(3, 20))],
                 [rng.randrange(5) for _ in range(rng.randint(10, 40))]) for _ in range(6)]
    drafter = SuffixDrafter(max_tree_depth=6, max_cached_requests=3)
    shared = ref._C.SuffixTree(6)
    cached = []
    proposals = 0
    for r, (prompt, response) in enumerate(requests):
        drafter.begin_sequence(list(prompt))
        local = ref._C.SuffixTree(6)
        local.extend(0, prompt)
        done = 0
        while done < len(response):
            context = (prompt + response[:done])[-6:]
            a = local.speculate(context, 6, 1.0, 0.0, 0.1, False)
            b = shared.speculate(context, 6, 1.0, 0.0, 0.1, False)
            drafter.propose(prompt + response[:done], 64)
            assert as_tuple(drafter.last_draft) == as_tuple(a if a.score >= b.score else b), (r, done)
            proposals += 1
            n = rng.randint(1, 3)
            drafter.observe(StepFeedback(response[done:done + n], None, [], []))
            local.extend(0, response[done:done + n])
            done += n
        drafter.end_sequence()
        shared.extend(r, response)
        cached.append(r)
        if len(cached) > 3:
            shared.remove(cached.pop(0))
    assert proposals > 50


# -- scopes and feeds ----------------------------------------------------------------------------------------------

def feed(drafter, prompt, response):
    drafter.begin_sequence(list(prompt))
    drafter.observe(StepFeedback(list(response), None, [], []))


def test_global_tree_feeds_and_scopes():
    response = [10, 11, 12, 13, 14, 15, 16, 17]
    # Completed: a finished response of another question drafts for a new one (its prompt shares nothing).
    d = SuffixDrafter()
    feed(d, [1, 2, 3], response)
    d.end_sequence()
    d.begin_sequence([4, 5, 6])
    tree = d.propose([4, 5, 6, 10, 11, 12, 13], 64)
    assert (tree.tokens, tree.source) == ([14, 15, 16, 17], "suffix_global")
    # A sibling's unfinished response: invisible by default, visible as generated with live responses.
    for live, seen in ((False, False), (True, True)):
        a = SuffixDrafter(live_responses=live)
        b = a.fork(share_memory=True)
        feed(a, [1, 2, 3], response)
        b.begin_sequence([4, 5, 6])
        tree = b.propose([4, 5, 6, 10, 11, 12, 13], 64)
        assert (tree is not None and tree.source == "suffix_global") == seen
    # No global tree at all.
    d = SuffixDrafter(max_cached_requests=0)
    feed(d, [1, 2, 3], response)
    d.end_sequence()
    d.begin_sequence([4, 5, 6])
    assert d.propose([4, 5, 6, 10, 11, 12, 13], 64) is None
    # Question scope: the loop resets at a new question, and the global tree goes; siblings of one question share
    # the first row's tree, and without cross-sample drafting (no siblings) each row keeps its own.
    d.reset()
    a = SuffixDrafter()
    b, c = a.fork(), a.fork()
    for x in (a, b, c):
        x.share_with([y for y in (a, b, c) if y is not x])
    assert a.cache is b.cache is c.cache is a.own
    feed(b, [1, 2, 3], response)
    b.end_sequence()
    c.begin_sequence([4, 5, 6])
    assert c.propose([4, 5, 6, 10, 11, 12, 13], 64).source == "suffix_global"
    c.share_with([])
    assert c.cache is c.own and len(c.own.tree) == 0
    a.reset()
    assert len(a.own.tree) == 0


def test_eviction_keeps_the_newest_responses():
    d = SuffixDrafter(max_cached_requests=2)
    for i in range(4):
        feed(d, [1], [20 + i, 30 + i, 40 + i, 50 + i])
        d.end_sequence()
    assert sorted(d.own.tree.seqs) == [2, 3]
    d.begin_sequence([1])
    assert d.propose([1, 20, 30], 64) is None
    assert d.propose([1, 23, 33], 64).tokens == [43, 53]


def test_a_fork_copies_long_trees_and_owns_its_copy():
    """A row forked from a drafter holding long responses (sibling lists deeper than Python's recursion limit) gets
    a copy that drafts the same and then learns apart (Best-of-N forks after the first responses)."""
    rng = random.Random(0)
    d = SuffixDrafter(max_cached_requests=-1)
    long = [rng.randrange(5000) for _ in range(sys.getrecursionlimit() * 3)]
    feed(d, [1], long)
    d.end_sequence()
    feed(d, [2], long[:50])
    twin = d.fork()
    assert twin.own is not d.own and twin.local is not d.local
    for start in (0, 700, 2400):
        context = [2] + long[start:start + 30]
        twin.propose(context, 64)
        d.propose(context, 64)
        assert as_tuple(twin.last_draft) == as_tuple(d.last_draft)
        drafted = twin.last_draft.tokens
        assert drafted and drafted == long[start + 30:start + 30 + len(drafted)]
    feed(twin, [3], [9001, 9002, 9003, 9004])
    twin.end_sequence()
    d.begin_sequence([3])
    assert d.propose([3, 9001, 9002], 64) is None and twin.own.tree.seqs.keys() != d.own.tree.seqs.keys()
    d.begin_sequence([3])
    twin.begin_sequence([3])
    assert twin.propose([3, 9001, 9002], 64).tokens == [9003, 9004]


def test_propose_more_follows_the_same_match_further():
    """Cost-aware verification's larger draft: the same match's continuation past what the match earned (a 2-token
    match earns 2 tokens at factor 1), starting with the draft it extends, capped by num_speculative_tokens; nothing
    for a draft the chooser changed."""
    d = SuffixDrafter(num_speculative_tokens=5)
    feed(d, [1], [10, 11, 12, 13, 14, 15, 16, 17, 18])
    d.end_sequence()
    d.begin_sequence([2])
    context = [2, 10, 11]
    tree = d.propose(context, 64)
    assert tree.tokens == [12, 13] and d.last_draft.match_len == 2
    more = d.propose_more(context, tree, 64)
    assert more.tokens == [12, 13, 14, 15, 16] and more.parents == [-1, 0, 1, 2, 3] and more.source == tree.source
    assert d.propose_more(context, tree, 3).tokens == [12, 13, 14]
    assert d.propose_more(context, DraftTree([12], [-1], source=tree.source), 64) is None   # (cut: not the draft)


def test_draft_limits():
    d = SuffixDrafter(max_tree_depth=6, num_speculative_tokens=2)
    feed(d, [], list(range(50, 70)) * 2)
    tree = d.propose(list(range(50, 70)) + [50, 51, 52], 64)
    assert tree.tokens == [53, 54]                                   # num_speculative_tokens
    assert d.propose(list(range(50, 70)) + [50, 51, 52], 1).tokens == [53]   # the engine's cap
    assert d.propose([70], 64) is None
    assert SuffixDrafter().max_draft_nodes() == 24                   # vLLM: the tree depth
    params = SuffixDrafter().parameters()
    assert (params["max_tree_depth"], params["max_cached_requests"], params["max_spec_factor"],
            params["min_token_prob"], params["num_speculative_tokens"], params["use_tree_spec"],
            params["global_tree_feed"]) == (24, 10000, 1.0, 0.1, 24, False, "completed")


BAD_FLAGS = [(["--suffix-decoding-max-tree-depth", "0"], "max_tree_depth must be at least 1"),
             (["--suffix-decoding-min-token-prob", "1.5"], "min_token_prob must lie in [0, 1]"),
             (["--suffix-decoding-max-cached-requests", "-2"], "max_cached_requests must be -1"),
             (["--num-speculative-tokens", "0"], "num_speculative_tokens must be at least 1")]


def test_bad_flags_are_one_line():
    from evaluation.inference_suffix import add_args, check_args
    from evaluation.run.args import build_parser
    from model.errors import UserError
    for flags, message in BAD_FLAGS:
        parser = build_parser("suffix")
        add_args(parser)
        with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
            check_args(parser.parse_args(["--model-path", "nowhere", *flags]))
    # and as the command runs it: one line, exit status 2, before any model is looked for
    from test_cli import run
    out = run("-m", "evaluation.inference_suffix", "--model-path", "nowhere", *BAD_FLAGS[0][0])
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {BAD_FLAGS[0][1]}, got 0"


# -- lossless ------------------------------------------------------------------------------------------------------

PROMPTS = {"random": [3, 17, 99, 250, 42, 8, 77, 301, 12, 5],
           "repeat": [5, 6, 7, 8, 9, 10, 11, 5, 6, 7, 8, 9, 10, 11, 5, 6, 7, 8]}


@pytest.mark.parametrize("arch,tree_spec", [(arch, False) for arch in ARCHS] + [("llama", True)],
                         ids=[f"{arch}-chain" for arch in ARCHS] + ["llama-tree"])
def test_greedy_token_identical_to_ar(arch, tree_spec):
    """Both prompts twice through one drafter (the second time the global tree holds the first answers)."""
    model = tiny_model(arch)
    engine = SpeculativeEngine(model, max_tree_nodes=128)
    drafter = SuffixDrafter(use_tree_spec=tree_spec)
    references = {name: engine.generate(p, Drafter(), 64, SamplingConfig()).tokens for name, p in PROMPTS.items()}
    outs = []
    for _ in range(2):
        for name, prompt in PROMPTS.items():
            outs.append(engine.generate(prompt, drafter, 64, SamplingConfig()))
            assert outs[-1].tokens == references[name]
    assert_drafted(outs, f"suffix {arch}")
    assert any(s.source == "suffix_global" and s.accepted > 1 for out in outs for s in out.steps)


def run_loop(model_dir, question_file, answer_file, *flags, tokens=40):
    """inference_suffix through the shared loop (float64, no warm-up); its step lines."""
    from evaluation.run.args import build_parser, finalize
    from evaluation.run.loop import run_eval
    module = importlib.import_module("evaluation.inference_suffix")
    method = "baseline" if "--ar" in flags else "suffix"
    flags = [f for f in flags if f != "--ar"]
    parser = build_parser(method)
    if method == "suffix":
        module.add_args(parser)
    argv = ["--model-path", model_dir, "--question-file", question_file, "--answer-file", str(answer_file),
            "--max-new-tokens", str(tokens), "--dtype", "float64", "--device", "cpu", "--warmup", "0",
            "--cost-profile-repeats", "1", "--cost-profile-contexts", "32", "--save-token-ids", *flags]
    run_eval(finalize(parser.parse_args(argv), method),
             module.make_drafter if method == "suffix" else lambda *a: Drafter())
    with open(str(answer_file)[: -len(".jsonl")] + ".steps.jsonl") as f:
        return [json.loads(line) for line in f]


def hashes(answer_file):
    with open(answer_file) as f:
        return [c["token_ids_sha1"] for line in f for c in json.loads(line)["choices"]]


BON = ["--BON", "--bon-n", "4", "--temperature", "0.3"]
RUNS = [["--think-twice"], BON, ["--think-twice", "--batch-size", "2", "--use-tree-spec"],
        BON + ["--batch-size", "2", "--continuous-batching", "--live-responses"],
        BON + ["--batch-size", "3", "--draft-state-scope", "question"]]
RUN_IDS = ["multi-round", "best-of-4-T0.3", "multi-round-b2-tree", "bon-b2-continuous-live", "bon-b3-question"]


@pytest.mark.parametrize("flags", RUNS, ids=RUN_IDS)
def test_runs_reproduce_ar_and_replay_step_for_step(tiny_model_dir, tmp_path, flags):
    """Through the loop (both paradigms, batched rows, continuous batching, both feeds, both scopes): every turn
    token-identical to AR's (sampled with the same seeds: point masses draw as AR does), drafts verified, accepted
    and rejected; then `evaluation.replay` of the run gives its steps exactly (accepted lengths, draft sizes and
    sources, batch rows and steps), with the recorded configuration."""
    from evaluation.run.replay import main as replay_main
    questions = two_questions_file(tmp_path)
    ar_flags = [f for f in flags if f not in ("--use-tree-spec", "--live-responses")]
    if "--draft-state-scope" in ar_flags:
        i = ar_flags.index("--draft-state-scope")
        ar_flags = ar_flags[:i] + ar_flags[i + 2:]
    run_loop(tiny_model_dir, questions, tmp_path / "ar.jsonl", "--ar", *ar_flags, tokens=48)
    answer = tmp_path / "suffix.jsonl"
    live = run_loop(tiny_model_dir, questions, answer, *flags, tokens=48)
    assert hashes(answer) == hashes(tmp_path / "ar.jsonl")
    assert_drafted(step_log(answer), "suffix")
    from evaluation.run.replay import read_config
    recorded = read_config(str(answer))["method_parameters"]
    assert (recorded["max_tree_depth"], recorded["max_cached_requests"], recorded["max_spec_factor"],
            recorded["min_token_prob"], recorded["num_speculative_tokens"]) == (24, 10000, 1.0, 0.1, 24)
    out, summary = tmp_path / "replay.steps.jsonl", tmp_path / "replay.json"
    extra = [f for f in flags if f in ("--use-tree-spec", "--live-responses")]
    replay_main(["--answer-file", str(answer), "--model-path", tiny_model_dir, "--method", "suffix",
                 "--steps-out", str(out), "--json-out", str(summary), *extra])
    with open(out) as f:
        steps = [json.loads(line) for line in f]
    key = ("question_id", "choice", "turn", "step", "accepted", "draft_size", "draft_source")
    if "--batch-size" in flags:
        key += ("batch_row", "batch_step", "batch_rows", "batch_width")
    assert [tuple(s[k] for k in key) for s in steps] == [tuple(s[k] for k in key) for s in live]
    assert any(s["draft_source"] == "suffix_global" and s["accepted"] > 1 for s in live) or \
        "--draft-state-scope" in flags
    with open(summary) as f:
        summary = json.load(f)
    assert summary["method_parameters"]["use_tree_spec"] == ("--use-tree-spec" in flags)
    assert summary["method_parameters"]["global_tree_feed"] == ("live" if "--live-responses" in flags else
                                                                "completed")
    assert summary["draft_state_scope"] == ("question" if "--draft-state-scope" in flags else "global")
