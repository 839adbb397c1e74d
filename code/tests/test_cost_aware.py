"""Cost-aware verification: the width chooser, the acceptance estimate, the profile, and losslessness with it on."""
import functools
import itertools
import json
import random

import pytest
import torch

from clocks import ProfileClock
from conftest import ARCHS, tiny_model, two_questions_file
from methods import METHODS, SAMPLED_DRAFTS, assert_drafted, assert_rows_drafted, step_log
from model.engine import Drafter, DraftError, DraftTree, SamplingConfig, SpeculativeEngine
from model.engine.cost import AcceptanceEstimate, CostAwareVerifier, choose_nodes, cut
from model.engine.profile import ForwardCostProfile, profile_widths
from model.pld import PromptLookupDrafter
from model.samd.drafter import SamDrafter
from stats import chi_square_pvalue
from test_methods_lossless import (DRAFTING, PARADIGM_IDS, PARADIGMS, PROMPTS, corpus_of_answers, run_answers,
                                   run_paradigm)
from test_sampling import ALPHA, SMALL_VOCAB, exact_two_token_law, sample_pairs


# A plain step's seconds in the test profiles: a power of two, so that ProfileClock's sums of such costs are exact and
# a step that costs what a plain one does is judged exactly so (no rounding on either side of a tie).
PLAIN = 2.0 ** -4


def jagged_profile(max_width: int = 129) -> ForwardCostProfile:
    """A cost that rises with width but dips at some widths (as kernel shapes make it): the chooser cuts drafts,
    extends them to a cheaper width, and sometimes verifies nothing."""
    widths = profile_widths(max_width)
    ratio = [1.0 if w == 1 else 0.9 + 0.12 * w - (0.5 if w in (5, 16, 32) else 0.0) for w in widths]
    return ForwardCostProfile(widths, [1], [[PLAIN * r for r in ratio]])


def ancestor_closed(parents, subset):
    return all(parents[i] < 0 or parents[i] in subset for i in subset)


def brute_force_best(pi, parents, fixed, cost):
    best = 1.0 / cost(1)   # a plain step: the auxiliary nodes go with the draft
    for m in range(1, len(pi) + 1):
        for subset in itertools.combinations(range(len(pi)), m):
            if ancestor_closed(parents, set(subset)):
                best = max(best, (1 + sum(pi[i] for i in subset)) / cost(1 + fixed + m))
    return best


def test_chooser_verifies_nothing_when_cost_dominates():
    assert choose_nodes([0.2, 0.1, 0.05], 0, lambda w: float(w)) == []


def test_chooser_takes_a_wider_draft_when_the_narrower_one_is_dearer():
    dear_middle = {1: 1.0, 2: 2.0, 3: 2.0, 4: 2.0, 5: 1.3}
    assert choose_nodes([0.9, 0.8, 0.7, 0.6], 0, dear_middle.__getitem__) == [0, 1, 2, 3]
    # The same draft when width grows dear: only the first node pays.
    assert choose_nodes([0.9, 0.5, 0.3, 0.2], 0, lambda w: 1.0 + 0.5 * (w - 1)) == [0]


def test_chooser_finds_the_argmax_over_every_ancestor_closed_subtree():
    rng = random.Random(0)
    for trial in range(60):
        n = rng.randint(1, 8)
        parents = [rng.randint(-1, i - 1) for i in range(n)]
        pi = []
        for p in parents:  # a child is never likelier than its parent
            pi.append(rng.random() * (1.0 if p < 0 else pi[p]))
        fixed = rng.choice([0, 3])
        table = [1.0] + [rng.uniform(1.0, 3.0) for _ in range(n + fixed)]
        cost = lambda w: table[w - 1]  # noqa: E731
        keep = choose_nodes(pi, fixed, cost)
        assert ancestor_closed(parents, set(keep))
        rate = (1 + sum(pi[i] for i in keep)) / cost(1 + fixed + len(keep) if keep else 1)
        assert rate == pytest.approx(brute_force_best(pi, parents, fixed, cost)), trial


def test_cut_renumbers_parents_and_keeps_draft_probabilities():
    tree = DraftTree([10, 11, 12, 13, 14], [-1, 0, -1, 1, 2], probs=torch.eye(5, 20))
    part = cut(tree, [0, 1, 3])
    assert (part.tokens, part.parents) == ([10, 11, 13], [-1, 0, 1])
    assert torch.equal(part.probs, torch.eye(5, 20)[[0, 1, 3]])


def test_profile_ratio_steps_up_between_widths_and_interpolates_context():
    profile = ForwardCostProfile([1, 2, 4, 8], [100, 300], [[1.0, 2.0, 1.5, 3.0], [2.0, 2.0, 6.0, 8.0]])
    assert profile.ratio(3, 100) == 1.5          # an unmeasured width costs the next measured one
    assert profile.ratio(16, 100) == 6.0         # beyond the grid: linear in width
    assert profile.ratio(2, 200) == pytest.approx(1.5)   # halfway between 2.0 and 1.0
    assert profile.ratio(4, 50) == 1.5 and profile.ratio(4, 900) == 3.0
    assert ForwardCostProfile.from_dict(profile.to_dict()).ratio(4, 300) == 3.0


def test_measured_profile_covers_the_widths_asked():
    engine = SpeculativeEngine(tiny_model("llama"))
    profile = ForwardCostProfile.measure(engine, 20, [16, 48], repeats=2)
    assert profile.widths == list(range(1, 17)) + [20]
    assert len(profile.seconds) == 2 and all(len(row) == len(profile.widths) for row in profile.seconds)
    assert all(t > 0 for row in profile.seconds for t in row)
    assert profile.to_dict()["ratio"][0][0] == 1.0


def test_estimate_moves_toward_the_observed_acceptance():
    estimate = AcceptanceEstimate()
    tree = DraftTree.chain([1, 2, 3], source="x")
    tree.validate(8, 10)
    start = estimate.conditional("x", 1, 0, size=3)
    for _ in range(200):           # depth 1 always accepted, depth 2 never (so depth 3 is never observed)
        estimate.update(tree, [0])
    assert estimate.conditional("x", 1, 0, size=3) > 0.95 > start
    assert estimate.conditional("x", 2, 0, size=3) < 0.05 < start
    # unobserved: as the deepest observed depth above; other sources and proposal sizes are kept apart
    assert estimate.conditional("x", 3, 0, size=3) == estimate.conditional("x", 2, 0, size=3)
    assert estimate.conditional("other", 1, 0, size=3) == start == estimate.conditional("x", 1, 0, size=12)
    pi = estimate.path_probs(tree)
    assert pi[0] > 0.95 and pi[1] < 0.05 and pi[2] < pi[1]
    for _ in range(200):           # and it follows a change
        estimate.update(tree, [0, 1, 2])
    assert estimate.conditional("x", 2, 0, size=3) > 0.95


def test_a_rarely_seen_node_is_judged_like_its_observed_neighbours_not_by_the_optimistic_prior():
    from model.engine.cost import PRIOR_MEAN, PRIOR_WEIGHT
    estimate = AcceptanceEstimate()
    first = DraftTree([1, 2], [-1, -1], source="t")   # two children of the root: ranks 0 and 1
    first.validate(8, 10)
    for _ in range(300):                               # the first child is right 20% of the time, the second never
        estimate.update(first, [0] if random.Random(_).random() < 0.2 else [])
    rank0, rank1 = estimate.conditional("t", 1, 0, 2), estimate.conditional("t", 1, 1, 2)
    assert 0.1 < rank0 < 0.3 and rank1 < 0.05
    # Never seen: rank 2 borrows rank 1's estimate; depth 2 below rank 0 borrows depth 1's
    assert estimate.conditional("t", 1, 2, 2) == rank1
    assert estimate.conditional("t", 2, 0, 2) == rank0
    # Seen once, accepted once: mixed with its neighbour's estimate, not with the 90% prior
    estimate.update(DraftTree([1, 5], [-1, 0], source="t"), [0, 1])
    seen_once = estimate.conditional("t", 2, 0, 2)
    assert seen_once == pytest.approx((1 + PRIOR_WEIGHT * rank0) / (1 + PRIOR_WEIGHT), rel=0.05)
    assert seen_once < (1 + PRIOR_WEIGHT * PRIOR_MEAN) / (1 + PRIOR_WEIGHT) - 0.3


def test_plan_asks_the_drafter_for_more_when_a_wider_forward_is_no_dearer():
    # Widths 1..16 cost 1 + w/10, except 16 nodes (width 17 -> measured as 20) which costs less than 11 tokens.
    widths = profile_widths(24)
    ratio = [1.0] + [1.0 + w / 10 for w in widths[1:]]
    ratio[widths.index(20)] = 1.5
    verifier = CostAwareVerifier(ForwardCostProfile(widths, [1], [ratio]))
    for _ in range(50):   # this source's chains are always accepted whole
        verifier.update(DraftTree([7] * 10, list(range(-1, 9)), source="chain"), list(range(10)))
    asked = []

    def extend(n):
        asked.append(n)
        return DraftTree.chain([7] * n, source="chain")

    tree = DraftTree.chain([7] * 10, source="chain")
    planned = verifier.plan(tree, 100, extend)
    assert asked == [19] and len(planned.tokens) == 19


def test_engine_rejects_an_extension_that_changes_the_draft():
    class Liar(Drafter):
        name = "liar"

        def propose(self, tokens, max_nodes):
            return DraftTree.chain([3, 4], source="liar")

        def propose_more(self, tokens, tree, max_nodes):
            return DraftTree.chain([5] * max_nodes, source="liar")

    widths = profile_widths(16)
    engine = SpeculativeEngine(tiny_model("llama"),
                               cost_aware=CostAwareVerifier(ForwardCostProfile(widths, [1], [[1.0] * len(widths)])))
    with pytest.raises(DraftError, match="propose_more"):
        engine.generate(PROMPTS["random"], Liar(), 4, SamplingConfig())


def test_pld_and_sam_extend_their_match():
    tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3]
    for drafter in (PromptLookupDrafter(adaptive=False, num_pred_tokens=3), SamDrafter(n_predicts=4, len_threshold=2,
                                                                                        alpha=1e9)):
        drafter.begin_sequence(tokens)
        tree = drafter.propose(tokens, 128)
        assert tree.tokens == [4, 5, 6]
        assert drafter.propose_more(tokens, tree, 6).tokens == [4, 5, 6, 7, 8, 9]


def cost_aware_engine(model, profile, drafting: float = 0.125, **kwargs) -> SpeculativeEngine:
    """An engine verifying with `profile`, on a clock that the profile drives (`drafting`: plain steps a proposal
    costs): the chooser and the gate decide from the profile's costs alone, never from how loaded this machine is."""
    engine = SpeculativeEngine(model, cost_aware=CostAwareVerifier(profile), **kwargs)
    return ProfileClock(profile, drafting).attach(engine)


@functools.lru_cache(maxsize=None)
def ar_reference(arch: str, prompt: tuple) -> list[int]:
    return SpeculativeEngine(tiny_model(arch)).generate(list(prompt), Drafter(), 64, SamplingConfig()).tokens


@functools.lru_cache(maxsize=None)
def cost_aware_run(arch: str, method: str, flat: bool = False) -> list:
    """Greedy output of `method` with cost-aware verification (the jagged profile, or the flat one) next to AR's,
    for both prompts: [(Generation, AR's tokens)]. Cached: the identity and chooser tests read the same runs."""
    model = tiny_model(arch)
    engine = cost_aware_engine(model, flat_profile() if flat else jagged_profile(), max_tree_nodes=128)
    runs = []
    for prompt in PROMPTS.values():
        reference = ar_reference(arch, tuple(prompt))
        corpus = [reference[i:i + 8] for i in range(0, len(reference), 5)]
        runs.append((engine.generate(prompt, METHODS[method](model, corpus), 64, SamplingConfig()), reference))
    return runs


def flat_profile(max_width: int = 129) -> ForwardCostProfile:
    """As on a GPU: width costs nothing, so the chooser verifies whole drafts."""
    widths = profile_widths(max_width)
    return ForwardCostProfile(widths, [1], [[PLAIN] * len(widths)])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", DRAFTING)
def test_greedy_token_identical_to_ar_with_cost_aware_verification(arch, method):
    outs = []
    for out, reference in cost_aware_run(arch, method):
        assert out.tokens == reference
        outs.append(out)
    # A random EAGLE-3 head is right about 1 time in 64 per node, and Lookahead's 27-node window costs over 4 plain
    # steps in the jagged profile: the chooser rightly finds them worth no width and they ride on probes only. Under
    # a flat profile they draft whole, and identity must hold through their accepted and rejected drafts too.
    if method in ("eagle3", "lookahead"):
        for out, reference in cost_aware_run(arch, method, flat=True):
            assert out.tokens == reference
            outs.append(out)
    assert_drafted(outs, method)   # drafts verified, some accepted and some rejected: identity was put to the test


def test_lookahead_s_window_rides_along_where_it_is_nearly_free_and_its_drafts_are_accepted():
    outs = cost_aware_run("llama", "lookahead", flat=True)
    assert all(out.tokens == reference for out, reference in outs)
    steps = [s for out, _ in outs for s in out.steps]
    assert sum(s.draft_size >= 27 for s in steps) > len(steps) // 2   # the 27-node window on most steps
    assert any(len(out.steps) < len(out.tokens) for out, _ in outs)   # and drafts from its pool accepted


def test_the_chooser_changes_what_most_methods_verify():
    """Cuts, extensions and skipped drafts happen in the identity runs above (not just whole drafts)."""
    changed = {}
    for method in DRAFTING:
        steps = [s for out, _ in cost_aware_run("llama", method) for s in out.steps]
        changed[method] = (sum(s.draft_size < s.proposed_size for s in steps),
                           sum(s.draft_size > s.proposed_size for s in steps),
                           sum(s.draft_size == 0 < s.proposed_size for s in steps))
    assert sum(cuts > 0 for cuts, _, _ in changed.values()) >= len(DRAFTING) // 2, changed
    assert any(extended for _, extended, _ in changed.values()), changed
    assert any(skipped for _, _, skipped in changed.values()), changed


def linear_profile(slope: float, max_width: int = 129) -> ForwardCostProfile:
    widths = profile_widths(max_width)
    return ForwardCostProfile(widths, [1], [[PLAIN * (1 + slope * (w - 1)) for w in widths]])


# One method per kind of draft the chooser cuts: a point-mass chain, a tree, a tree with auxiliary nodes, and a chain
# with draft probabilities (whose rows are cut with it). Each under a profile and prompt where the chooser verifies
# drafts, accepts and rejects some, and cuts some (on the plain test prompt PLD's draft is the target's 1% token and
# the chooser rightly verifies almost nothing; Lookahead's window is worth its width only where width is nearly free,
# as on a GPU, and there nothing is cut: the window rides along whole).
LAW_CASES = {"pld": (jagged_profile, [5, 3, 9, 5, 3, 9, 5]), "recycling": (jagged_profile, None),
             "lookahead": (flat_profile, None), "sps": (lambda: linear_profile(0.3), None)}


@pytest.mark.parametrize("method", sorted(LAW_CASES))
def test_sampling_follows_the_target_law_with_cost_aware_verification(method):
    from test_sampling import PROMPT
    model = tiny_model("qwen2", vocab=SMALL_VOCAB, seed=3)
    cfg = SamplingConfig(1.0)
    corpus = [[(7 * i + j * j) % SMALL_VOCAB for j in range(12)] for i in range(40)]
    make_profile, prompt = LAW_CASES[method]
    prompt = prompt or PROMPT
    runs = []
    counts = sample_pairs(model, METHODS[method](model, corpus), cfg, 1500, runs=runs, prompt=prompt,
                          engine=cost_aware_engine(model, make_profile()), rows=16)
    assert chi_square_pvalue(counts, exact_two_token_law(model, cfg, prompt), 1500) > ALPHA
    assert_drafted(runs, method)   # the chooser did not cut every draft: the law was tested through drafts
    assert_rows_drafted(runs, method, min_tokens=2)
    cuts = sum(0 < s.draft_size < s.proposed_size for r in runs for s in r.steps)
    assert cuts > 0 or method == "lookahead", f"{method}: no draft was cut"


@pytest.mark.parametrize("paradigm", PARADIGMS, ids=PARADIGM_IDS)
def test_both_paradigms_reproduce_ar_with_cost_aware_verification(tiny_model_dir, tmp_path, paradigm, monkeypatch):
    """Through the shared loop, with the jagged profile as the run's measured one and its clock: the loop's
    cost-aware wiring (profile recorded, verifier per run) with verdicts this machine's load cannot change."""
    from model.engine import decoder
    profile = jagged_profile()
    monkeypatch.setattr("evaluation.run.loop.measure_cost_profile", lambda engine, drafters, args: profile)
    init = decoder.SpeculativeEngine.__init__

    def on_profile_clock(self, *args, **kwargs):
        init(self, *args, **kwargs)
        ProfileClock(profile).attach(self)

    monkeypatch.setattr(decoder.SpeculativeEngine, "__init__", on_profile_clock)
    questions = two_questions_file(tmp_path)
    answers = run_answers(tiny_model_dir, questions, tmp_path / "ar.jsonl", "ar", *paradigm, "--save-token-ids")
    reference = [c["token_ids_sha1"] for line in answers for c in line["choices"]]
    corpus = corpus_of_answers(answers)   # REST retrieves from pieces of AR's answers
    sampled = "--temperature" in paradigm
    profile_flags = ["--cost-aware"]
    for method in DRAFTING:
        if sampled and method in SAMPLED_DRAFTS:
            continue
        answer = tmp_path / f"{method}.jsonl"
        assert run_paradigm(tiny_model_dir, questions, answer, method, *paradigm, *profile_flags,
                            corpus=corpus) == reference, method
        if method not in ("eagle3", "lookahead"):   # (they ride on probes under a CPU profile: see above)
            assert_drafted(step_log(answer), method)
    config = json.loads((tmp_path / "pld.config.json").read_text())
    assert config["cost_aware"] is True
    assert config["cost_profile"] == profile.to_dict()
    assert [s["cost_profile"] for s in config["sessions"]] == [profile.to_dict()]
    steps = [json.loads(line) for line in (tmp_path / "pld.steps.jsonl").read_text().splitlines()]
    assert all(s["draft_size"] <= 128 and "proposed_size" in s for s in steps)


def test_drafting_that_does_not_pay_is_asked_only_every_few_steps_and_resumes_when_it_pays():
    from model.engine.cost import PROBE_EVERY, PROBE_MAX
    verifier = CostAwareVerifier(jagged_profile())
    plain = verifier.profile.seconds[0][0]
    for _ in range(50):   # drafts that take twice a plain step and yield one token
        assert verifier.should_draft() or verifier.unverified
        verifier.record_step(proposed=4, emitted=1, seconds=2 * plain, context_length=1)
    assert verifier.gain < 0.6
    probes = []
    for step in range(3 * PROBE_MAX):
        if verifier.should_draft():
            probes.append(step)
            verifier.record_step(proposed=4, emitted=1, seconds=2 * plain, context_length=1)
        else:
            verifier.record_step(proposed=0, emitted=1, seconds=plain, context_length=1)
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert len(probes) >= 3 and all(PROBE_EVERY <= g <= PROBE_MAX for g in gaps) and gaps == sorted(gaps)
    for _ in range(30):   # the probes find drafts that now pay: 3 tokens for 1.5 plain steps
        verifier.record_step(proposed=4, emitted=3, seconds=1.5 * plain, context_length=1)
    assert verifier.gain > 1.5 and all(verifier.should_draft() for _ in range(10))
    for _ in range(100):  # steps without a proposal (nothing to say) are plain steps: they never silence a drafter
        verifier.record_step(proposed=0, emitted=1, seconds=plain, context_length=1)
    assert verifier.gain > 1.5


def test_probes_that_do_not_pay_come_ever_more_rarely_and_one_that_pays_brings_them_back():
    from model.engine.cost import PROBE_EVERY, PROBE_MAX
    verifier = CostAwareVerifier(jagged_profile())
    plain = verifier.profile.seconds[0][0]
    verifier.gain = 0.5   # drafting has not been paying

    def gaps_between_probes(probes: int, emitted: int) -> list[int]:
        gaps, since = [], 0
        while len(gaps) < probes:
            since += 1
            if verifier.should_draft():
                gaps.append(since)
                since = 0
                verifier.record_step(proposed=4, emitted=emitted, seconds=2 * plain, context_length=1)
            else:
                verifier.record_step(proposed=0, emitted=1, seconds=plain, context_length=1)
        return gaps

    assert gaps_between_probes(6, emitted=1) == [PROBE_EVERY, 2 * PROBE_EVERY, 4 * PROBE_EVERY, PROBE_MAX,
                                                 PROBE_MAX, PROBE_MAX]
    # A probe that pays (3 tokens for 2 plain steps) brings the first interval back; the gain is still low, so
    # drafting resumes only once enough probes have paid.
    assert gaps_between_probes(2, emitted=3) == [PROBE_MAX, PROBE_EVERY]
    assert gaps_between_probes(1, emitted=1) == [PROBE_EVERY]
    assert gaps_between_probes(2, emitted=1) == [2 * PROBE_EVERY, 4 * PROBE_EVERY]
    # A new round or sample is probed on its first step, and the interval starts again.
    verifier.begin_sequence()
    assert gaps_between_probes(2, emitted=1) == [1, 2 * PROBE_EVERY]   # that first probe did not pay
    # At batch > 1 the first step is probed too, but the interval stays as long as the probes before made it.
    assert gaps_between_probes(1, emitted=1) == [4 * PROBE_EVERY]
    verifier.begin_sequence(rows=8)
    assert gaps_between_probes(2, emitted=1) == [1, PROBE_MAX]
    assert gaps_between_probes(1, emitted=3) == [PROBE_MAX]   # one that pays brings the first interval back ...
    verifier.begin_sequence(rows=8)
    assert gaps_between_probes(2, emitted=1) == [1, 2 * PROBE_EVERY]   # ... across sequences too


def test_the_run_s_own_verification_times_replace_the_profile_once_seen_often_enough():
    from model.engine.cost import OBSERVED_MIN
    profile = ForwardCostProfile([1, 2, 3, 4, 5], [1], [[1.0, 2.0, 2.0, 2.0, 1.2]])   # width 5 looks cheap
    verifier = CostAwareVerifier(profile)
    pi = [0.5, 0.3, 0.2, 0.1]
    assert choose_nodes(pi, 0, lambda w: verifier.cost(w, 1)) == [0, 1, 2, 3]
    for _ in range(OBSERVED_MIN - 1):
        verifier.record_forward(1, 1.0)
        verifier.record_forward(5, 3.0)     # ... and is not
    assert verifier.cost(5, 1) == pytest.approx(1.2)   # too few observations yet
    verifier.record_forward(1, 1.0)
    verifier.record_forward(5, 3.0)
    assert verifier.cost(5, 1) == pytest.approx(3.0)
    assert verifier.cost(2, 1) == pytest.approx(2.0)   # never verified: the profile's
    assert choose_nodes(pi, 0, lambda w: verifier.cost(w, 1)) == []


def test_the_profile_covers_twice_the_largest_draft_and_the_baseline_only_the_dense_widths(tmp_path):
    from evaluation.run.loop import measure_cost_profile

    class Args:
        max_tree_nodes, cost_profile_contexts, cost_profile_repeats, seed, batch_size = 128, [8], 1, 0, 1
        model_path, cost_profile_cache, remeasure_cost_profile = "tiny", str(tmp_path), False

    engine = SpeculativeEngine(tiny_model("llama"))
    assert measure_cost_profile(engine, [Drafter()], Args).widths[-1] == 16
    assert measure_cost_profile(engine, [Drafter(), PromptLookupDrafter(num_pred_tokens=20)], Args).widths[-1] == 42


def test_the_likeliest_path_follows_first_children():
    from model.engine.cost import likeliest_path
    #        0 -> 1 -> 3        (children are listed likelier first)
    #        |    `-> 4
    #        2 -> 5
    assert likeliest_path([-1, 0, -1, 1, 1, 2]) == [0, 1, 3]
    assert likeliest_path([-1, 0, 1, 2]) == [0, 1, 2, 3]
    assert likeliest_path([]) == []


def test_a_new_sequence_keeps_each_estimate_but_lets_it_weigh_only_a_few_observations():
    from model.engine.cost import SEQUENCE_MEMORY
    estimate = AcceptanceEstimate()
    chain = DraftTree.chain([5, 6], source="s")
    for _ in range(200):
        estimate.update(chain, [0])            # the first node always right, the second always wrong
    before = dict(estimate.counts)
    estimate.shrink(SEQUENCE_MEMORY)
    for key, (hits, seen) in estimate.counts.items():
        assert seen == pytest.approx(min(before[key][1], SEQUENCE_MEMORY))
        assert hits / seen == pytest.approx(before[key][0] / before[key][1])


def test_a_source_cut_to_nothing_is_still_probed_and_recovers_when_its_drafts_come_right():
    """Without exploration a source whose estimate fell below every width's cost is never verified again, and
    never learns that its drafts came right (round 2 quoting round 1)."""
    from model.engine.cost import PROBE_EVERY, PROBE_MAX
    widths = list(range(1, 33))
    profile = ForwardCostProfile(widths, [1], [[0.1 if w == 1 else 0.15 for w in widths]])   # t(n)/t(1) = 1.5
    verifier = CostAwareVerifier(profile)
    chain = DraftTree.chain(list(range(10)), source="pld")

    def more(n: int) -> DraftTree:   # the drafter can always give more (wider forwards cost no more here)
        return DraftTree.chain(list(range(n)), source="pld")

    def step(right: int) -> int:
        """One engine step with a 10-token proposal of which the first `right` tokens are right: nodes verified."""
        proposal = chain if verifier.should_draft() else DraftTree([], [], source="skipped")
        planned = verifier.plan(proposal, 1, more) if proposal.tokens else proposal
        path = list(range(min(right, len(planned.tokens))))
        verifier.update(planned, path)
        width = 1 + len(planned.tokens)
        verifier.record_step(len(proposal.tokens), len(path) + 1, profile.ratio(width, 1) * 0.1, 1,
                             len(planned.tokens))
        return len(planned.tokens)

    wrong = [step(0) for _ in range(300)]
    late = wrong[-2 * PROBE_MAX:]
    assert 0 < sum(v > 0 for v in late) <= 2 * PROBE_MAX // PROBE_EVERY   # probed, ever more rarely
    assert all(v in (0, 10) for v in late)                                # a probe verifies the likeliest path
    verifier.begin_sequence()
    right = [step(10) for _ in range(12)]
    assert right[0] == 10 and all(v >= 10 for v in right[2:]), right


@pytest.mark.parametrize("flags, adaptive", [([], True), (["--no-adaptive"], False), (["--cost-aware"], False)])
def test_pld_drafts_whole_under_cost_aware_verification_so_one_rule_decides_the_length(flags, adaptive):
    from evaluation import inference_pld
    from evaluation.run.args import build_parser
    parser = build_parser("pld")
    inference_pld.add_args(parser)
    drafter = inference_pld.make_drafter(parser.parse_args(["--model-path", "m", *flags]), None, None)
    assert drafter.adaptive is adaptive
    assert drafter.parameters()["adaptive"] is adaptive   # what the run configuration records


def test_auxiliary_nodes_ride_along_while_cheap_and_otherwise_only_on_probes_within_their_bound():
    """Lookahead's window (auxiliary nodes) feeds its future drafts but is never accepted: when no draft node is
    worth verifying, a step where the window costs more than a plain step is plain; a probe takes the window along
    while the probe costs at most PROBE_COST plain steps, and leaves it out (probing the draft alone) otherwise."""
    aux = list(range(100, 127))

    def lookahead_tree(tokens):
        tree = DraftTree.chain(tokens, source="lookahead")
        tree.aux_tokens, tree.aux_depths, tree.aux_mask = aux, [1] * len(aux), None
        return tree

    def verifier(ratio: float) -> CostAwareVerifier:
        widths = list(range(1, 64))
        v = CostAwareVerifier(ForwardCostProfile(widths, [1], [[0.1] + [0.1 * ratio] * (len(widths) - 1)]))
        v.gain = 0.5   # drafting has not been paying
        v.estimate.path_probs = lambda t, size=None: [0.0] * len(t.tokens)   # and no node is worth its width
        return v

    for ratio, probed in ((1.4, "with the window"), (4.0, "without it")):   # a probe within PROBE_COST, or not
        v = verifier(ratio)
        for tokens in ([], [7, 8]):
            v.probing = False
            planned = v.plan(lookahead_tree(tokens), 1, lambda n: None)
            assert planned.tokens == [] and planned.aux_tokens == []           # a plain step
            v.probing = True
            planned = v.plan(lookahead_tree(tokens), 1, lambda n: None)
            if probed == "with the window":
                assert planned.aux_tokens == aux and planned.tokens == tokens   # the probe explores
            else:   # the draft's first node alone (one node at least), no window
                assert planned.aux_tokens == [] and planned.tokens == tokens[:1]
    cheap = CostAwareVerifier(ForwardCostProfile(list(range(1, 64)), [1], [[0.1] * 63]))   # a GPU: width is free
    planned = cheap.plan(lookahead_tree([]), 1, lambda n: None)
    assert planned.aux_tokens == aux


def test_a_probe_verifies_the_likeliest_path_as_far_as_its_cost_bound_allows():
    from model.engine.cost import PROBE_COST, probe_nodes
    tree = DraftTree([10, 11, 12, 13, 14, 15], [-1, -1, 0, 2, 3, 1], source="t")   # path 0 -> 2 -> 3 -> 4
    def cost(width):   # t(w)/t(1) grows by 0.2 a token
        return 1.0 + 0.2 * (width - 1)
    assert probe_nodes(tree, 0, cost) == ([0, 2], False)   # 3 tokens: 1.4 <= PROBE_COST < 1.6
    assert cost(3) <= PROBE_COST < cost(4)
    assert probe_nodes(tree, 0, lambda w: 1.0) == ([0, 2, 3, 4], False)   # free width: the whole path
    assert probe_nodes(tree, 0, lambda w: 9.0) == ([0], False)             # one node at least
    assert probe_nodes(tree, 2, lambda w: 1.0) == ([0, 2, 3, 4], True)     # auxiliary nodes ride while it is cheap
    assert probe_nodes(tree, 1, cost) == ([0], True)                        # 1 + 1 + 1 tokens: 1.4
    # At batch: no node worth its width (every estimate 0), so only the probe verifies, each row within the bound
    # and PROBE_NODES_AT_BATCH (1) draft nodes.
    verifier = CostAwareVerifier(ForwardCostProfile([1, 2, 3, 4, 5], [1], [[1.0, 1.2, 1.4, 1.6, 1.8]]))
    verifier.estimate.path_probs = lambda t, size=None: [0.0] * len(t.tokens)
    verifier.probing = True
    planned = verifier.plan_batch([tree, DraftTree.chain([1, 2, 3], source="t")], 1)
    assert [t.tokens for t in planned] == [[10], [1]]


def test_a_probe_with_only_auxiliary_nodes_is_spent_not_repeated_on_every_following_step():
    from model.engine.cost import PROBE_EVERY
    verifier = CostAwareVerifier(jagged_profile())
    plain = verifier.profile.seconds[0][0]
    verifier.gain = 0.5
    verifier.begin_sequence()
    drafted = []
    for step in range(4 * PROBE_EVERY):
        if verifier.should_draft():   # the window alone (27 nodes, nothing to verify): 2.5 plain steps
            drafted.append(step)
            verifier.record_step(proposed=27, emitted=1, seconds=2.5 * plain, context_length=1, verified=0)
        else:
            verifier.record_step(proposed=0, emitted=1, seconds=plain, context_length=1)
    assert drafted == [0, 2 * PROBE_EVERY]   # the first step of the sequence, then the doubled interval


def test_the_calibration_scales_expected_tokens_by_what_verified_drafts_delivered():
    """The chooser verifies the drafts whose estimate looks best, so the estimate of what it verifies runs high (and
    the prior is optimistic on purpose): accepted over expected draft tokens of recent verifications scales every
    estimate down (never up), and a draft that paid under the raw estimate stops paying once drafts fall short."""
    from model.engine.cost import CALIBRATION_WEIGHT
    profile = ForwardCostProfile([1, 2, 3, 4, 5], [1], [[1.0, 1.3, 1.6, 1.9, 2.2]])
    verifier = CostAwareVerifier(profile)
    assert verifier.factor() == 1.0
    chain = DraftTree.chain([1, 2, 3, 4], source="t")
    assert verifier.plan(chain, 1, lambda n: None).tokens == [1, 2, 3, 4]   # the prior (0.9) says it pays
    for _ in range(30):   # drafts half as good as their estimate: the first node accepted, never the rest
        expected = sum(verifier.estimate.path_probs(chain, 4))
        verifier.calibration = [verifier.calibration[0] * 0.98 + expected / 2, verifier.calibration[1] * 0.98 + expected]
    assert verifier.factor() == pytest.approx(
        (verifier.calibration[0] + CALIBRATION_WEIGHT) / (verifier.calibration[1] + CALIBRATION_WEIGHT))
    assert 0.5 < verifier.factor() < 0.6
    assert verifier._expected(chain) == pytest.approx([verifier.factor() * p for p in verifier.estimate.path_probs(chain)])
    # Recorded through the engine's hook: a verified chain whose nodes all fail lowers the factor.
    fresh = CostAwareVerifier(profile)
    for _ in range(10):
        fresh.update_row(chain, [], 4)
    assert fresh.factor() < 0.5
    assert fresh.plan(chain, 1, lambda n: None).tokens == []   # nothing pays any more: a plain step
    fresh.calibration = [1000.0, 10.0]
    assert fresh.factor() == 1.0   # better than estimated is left to the estimate itself
    fresh.begin_sequence()         # a new sequence: the calibration, like the counts, weighs 8 draft tokens at most
    assert fresh.calibration[1] == pytest.approx(8.0) and fresh.calibration[0] == pytest.approx(800.0)


def test_a_probe_step_verifies_no_wider_than_the_probe_bound_even_where_the_estimate_says_more_pays():
    """Within PROBE_COST; at batch > 1 also no more than PROBE_NODES_AT_BATCH draft nodes per row."""
    from model.engine.cost import PROBE_COST, PROBE_NODES_AT_BATCH
    widths = list(range(1, 12))
    profile = ForwardCostProfile(widths, [1], [[1.0 + 0.2 * (w - 1) for w in widths]])   # 3 tokens: 1.4 <= 1.5
    chain = DraftTree.chain(list(range(1, 11)), source="t")
    for planner in ("plan", "plan_batch"):
        verifier = CostAwareVerifier(profile)
        verifier.estimate.path_probs = lambda t, size=None: [1.0] * len(t.tokens)   # every node sure to pass
        def planned(probing):
            verifier.probing = probing
            if planner == "plan":
                return verifier.plan(chain, 1, lambda n: None).tokens
            return verifier.plan_batch([chain, chain], 1)[0].tokens
        assert planned(False) == chain.tokens               # a normal step bets on the whole chain
        # a probe looks within PROBE_COST (3 tokens), at batch within PROBE_NODES_AT_BATCH draft nodes as well
        assert planned(True) == ([1, 2] if planner == "plan" else [1])
        assert profile.ratio(3, 1) <= PROBE_COST < profile.ratio(4, 1) and PROBE_NODES_AT_BATCH == 1


def test_at_batch_a_step_is_worth_the_batch_steps_it_saves_not_the_tokens_its_rows_accept():
    """The batch runs until its last row is done: a row ahead of the others leaves early whatever it accepts now,
    and rows level with each other finish only as fast as the slowest of them."""
    from model.engine.cost import batch_steps_saved
    widths = [1, 2, 3]
    verifier = CostAwareVerifier(ForwardCostProfile(widths, [1], [[1.0, 1.5, 1.9]]))
    verifier.estimate.path_probs = lambda t, size=None: [0.95] * len(t.tokens)
    sure, nothing = DraftTree.chain([5, 6], source="t"), DraftTree([], [], source="t")

    def plan(trees, remaining):
        return [t.tokens for t in verifier.plan_batch(trees, 1, remaining)]

    # Level rows: row 1 has no draft, so the batch needs as many steps whatever row 0 accepts: a plain step.
    assert plan([sure, nothing], [40, 40]) == [[], []]
    assert plan([sure, nothing], None) == [[], []]
    # Both level rows draft surely enough: the wider forward pays for the steps both save.
    assert plan([sure, sure], [40, 40]) == [[5, 6], [5, 6]]
    # Row 0 lags by 2 tokens: its draft saves the batch steps; row 1's empty draft costs nothing.
    assert plan([sure, nothing], [40, 38]) == [[5, 6], []]
    # Row 0 is far ahead (2 tokens left): it leaves soon whatever it accepts, so its draft saves nothing.
    assert plan([sure, nothing], [2, 40]) == [[], []]
    assert plan([nothing, sure], [2, 40]) == [[], [5, 6]]
    # The expectation itself: one row, its expected extra tokens; level rows, the steps all of them save.
    assert batch_steps_saved([[0.5, 0.25]], [10]) == pytest.approx(0.75)
    assert batch_steps_saved([[0.5, 0.25], [0.5, 0.25]], [10, 10]) == pytest.approx(0.5 * 0.5 + 0.25 * 0.25)
    assert batch_steps_saved([[0.5, 0.25], []], [10, 9]) == pytest.approx(0.5)   # row 1 one token ahead
    assert batch_steps_saved([[1.0, 1.0, 1.0]], [2]) == pytest.approx(1.0)        # one token left to accept


class _Oracle(Drafter):
    """Drafts the next 3 tokens of a known continuation (all accepted), or 3 wrong ones where it has none."""

    def __init__(self, prompt, continuation):
        self.prompt, self.continuation = list(prompt), list(continuation)

    def propose(self, tokens, max_nodes):
        done = len(tokens) - len(self.prompt)
        ahead = self.continuation[done:done + 3] if self.continuation else []
        return DraftTree.chain(ahead or [0, 0, 0], source="oracle")


def test_the_gate_values_a_batch_step_by_how_much_nearer_it_brought_the_batch_s_end():
    """Row 0's drafts are always accepted (4 tokens a step), row 1's never: the mean row emits 2.5 tokens a step but
    the batch ends no sooner than row 1, so each step is worth one batch step, and the gate measures that."""
    model = tiny_model("llama")
    plain = SpeculativeEngine(model)
    prompts = [[5, 6, 7, 8, 9], [3, 17, 99, 250, 42]]
    reference = plain.generate(prompts[0], Drafter(), 24, SamplingConfig()).tokens
    worth = []

    class Spy(CostAwareVerifier):
        def record_step(self, proposed, emitted, *args, **kwargs):
            if proposed:
                worth.append(emitted)
            super().record_step(proposed, emitted, *args, **kwargs)

    # (on a clock where width and the oracle's drafting cost nothing: each such step costs one plain step)
    engine = ProfileClock(flat_profile(), drafting=0.0).attach(SpeculativeEngine(model, cost_aware=Spy(flat_profile())))
    rows = engine.generate_batch(prompts, [_Oracle(prompts[0], reference), _Oracle(prompts[1], [])], 24,
                                 SamplingConfig())
    assert rows[0].tokens == reference
    row0 = [s.accepted for s in rows[0].steps if s.draft_size]
    # Row 0 accepted whole drafts alongside row 1, after the first step's probe (one node a row at batch) and
    # until the token limit (24 tokens) cut the last.
    assert row0 == [2, 4, 4, 4, 4, 4, 2]
    assert worth and set(worth) == {1}             # ... and each such step brought the batch's end one step nearer
    worth.clear()
    alone = ProfileClock(flat_profile(), drafting=0.0).attach(
        SpeculativeEngine(model, cost_aware=Spy(flat_profile()))).generate(
        prompts[0], _Oracle(prompts[0], reference), 24, SamplingConfig())
    assert alone.tokens == reference and set(worth[:-1]) == {4}   # at batch 1: its tokens (the last step cut short)


def test_at_batch_drafters_whose_drafts_do_not_pay_or_are_cut_are_asked_only_on_probes():
    """The gain says drafting pays, but the last verified draft did not, or the chooser has verified nothing for
    PROBE_EVERY steps: at batch B the drafters (whose asking costs every row's drafting time) wait for the next
    probe, and are asked again once a verified draft pays."""
    from model.engine.cost import PROBE_EVERY
    verifier = CostAwareVerifier(jagged_profile())
    plain = verifier.profile.seconds[0][0]
    verifier.begin_sequence()
    verifier.gain = 2.0
    asked = []
    for step in range(1, 3 * PROBE_EVERY + 2):
        if verifier.should_draft(rows=8):
            asked.append(step)
            verifier.record_step(proposed=4, emitted=1, seconds=1.02 * plain, context_length=1,
                                 verified=4 if verifier.probing else 0)   # only probes verify anything
        else:
            verifier.record_step(proposed=0, emitted=1, seconds=plain, context_length=1)
    # The probe on the first step verified a draft that did not pay (the interval doubles), so the drafters wait for
    # the next probe, 2 x PROBE_EVERY steps later, which does not pay either.
    second = 1 + 2 * PROBE_EVERY
    assert asked == [1, second]
    # A probe that pays reopens the asking.
    verifier.unverified = verifier.interval - 1
    assert verifier.should_draft(rows=8) and verifier.probing
    verifier.record_step(proposed=4, emitted=3, seconds=1.02 * plain, context_length=1, verified=4)
    assert verifier.should_draft(rows=8) and not verifier.probing
    # ... until a verified draft does not pay (a batch step that brought the end only 1 step nearer at 1.4 plain steps'
    # cost), or the chooser cuts every draft for PROBE_EVERY steps.
    verifier.record_step(proposed=4, emitted=1, seconds=1.4 * plain, context_length=1, verified=4)
    assert not verifier.should_draft(rows=8)
    verifier.unverified = verifier.interval - 1
    assert verifier.should_draft(rows=8) and verifier.probing
    verifier.record_step(proposed=4, emitted=3, seconds=1.02 * plain, context_length=1, verified=4)
    for _ in range(PROBE_EVERY):
        assert verifier.should_draft(rows=8)
        verifier.record_step(proposed=4, emitted=1, seconds=1.02 * plain, context_length=1, verified=0)
    assert not verifier.should_draft(rows=8)
    # At batch 1 the drafter is still asked on every step while verified drafts pay.
    single = CostAwareVerifier(jagged_profile())
    single.begin_sequence()
    single.gain = 2.0
    for _ in range(3 * PROBE_EVERY):
        assert single.should_draft()
        single.record_step(proposed=4, emitted=1, seconds=1.02 * plain, context_length=1,
                           verified=4 if single.probing else 0)


def test_a_probe_whose_drafter_had_nothing_to_propose_is_not_spent():
    """A new sequence's first-step probe with an empty proposal: the next step is a probe again."""
    verifier = CostAwareVerifier(jagged_profile())
    plain = verifier.profile.seconds[0][0]
    verifier.gain = 0.5
    verifier.begin_sequence()
    assert verifier.should_draft() and verifier.probing
    verifier.record_step(proposed=0, emitted=1, seconds=plain, context_length=1)
    assert verifier.should_draft() and verifier.probing
