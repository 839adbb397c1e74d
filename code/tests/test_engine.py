"""The verification engine: tree forward, KV rollback, greedy identity with AR over every tree shape."""
import random

import pytest
import torch

from conftest import ARCHS, VOCAB, tiny_model
from model.engine import DraftError, Drafter, DraftTree, SamplingConfig, SpeculativeEngine, ThinkingBudget
from model.engine.kv_cache import PositionalKVCache
from model.engine.tree import tree_attention

PROMPT_RANDOM = [3, 17, 99, 250, 42, 8, 77, 301]
PROMPT_REPEAT = [5, 6, 7, 8, 9, 10, 5, 6, 7, 8, 9, 10, 5, 6, 7]


def ar_tokens(model, prompt, n):
    return SpeculativeEngine(model).generate(prompt, Drafter(), n, SamplingConfig()).tokens


class ScriptedDrafter(Drafter):
    """Proposes trees of a given shape around the true continuation, with wrong branches and corruptions."""

    def __init__(self, reference, shape, cap=64, seed=0):
        self.reference, self.shape, self.cap, self.rng = reference, shape, cap, random.Random(seed)

    def begin_sequence(self, prompt):
        self.start = len(prompt)

    def noise(self):
        return self.rng.randrange(VOCAB)

    def propose(self, tokens, max_nodes):
        truth = self.reference[len(tokens) - self.start:]
        if not truth or self.shape == "none":
            return None
        corrupt = lambda path, at: path[:at] + [self.noise()] + path[at + 1:] if at < len(path) else path
        if self.shape == "one":
            return DraftTree.chain([truth[0] if self.rng.random() < 0.6 else self.noise()])
        if self.shape == "chain":
            return DraftTree.chain(corrupt(truth[:8], self.rng.randrange(10)))
        if self.shape == "deep":
            return DraftTree.chain(corrupt(truth[:40], self.rng.randrange(30, 45)))
        if self.shape == "wide":
            paths = [[self.noise()] for _ in range(12)]
            paths.insert(self.rng.randrange(13), truth[:1])
            return DraftTree.from_paths(paths)
        if self.shape == "cap":  # a random tree of exactly `cap` nodes that contains a corrupted true path
            tokens_, parents = [], []
            for i, t in enumerate(corrupt(truth[:10], self.rng.randrange(12))):
                tokens_.append(t)
                parents.append(i - 1)
            while len(tokens_) < self.cap:
                parents.append(self.rng.randrange(-1, len(tokens_)))
                tokens_.append(self.noise())
            return DraftTree(tokens_, parents, source="cap")
        raise ValueError(self.shape)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("prompt", [PROMPT_RANDOM, PROMPT_REPEAT], ids=["random", "repeat"])
@pytest.mark.parametrize("shape", ["none", "one", "chain", "deep", "wide", "cap"])
def test_greedy_identical_to_ar_for_every_tree_shape(arch, prompt, shape):
    model = tiny_model(arch)
    reference = ar_tokens(model, prompt, 48)
    engine = SpeculativeEngine(model, max_tree_nodes=64)
    out = engine.generate(prompt, ScriptedDrafter(reference, shape), 48, SamplingConfig())
    assert out.tokens == reference
    if shape in ("chain", "deep", "cap"):
        assert len(out.steps) < len(reference)  # the drafts were really used


def test_tree_forward_logits_equal_each_path_decoded_alone():
    model = tiny_model("qwen3")
    engine = SpeculativeEngine(model)
    prefix = [11, 22, 33, 44, 55]
    tree = DraftTree([7, 8, 9, 10, 12, 13], [-1, 0, 0, -1, 3, 1])
    tree.validate(64, VOCAB)
    cache = PositionalKVCache(16)
    engine._append(cache, prefix[:-1])
    inputs = [prefix[-1]] + tree.tokens
    block = torch.from_numpy(tree_attention(tree.parents))
    logits = engine._forward(cache, [inputs], [block], [[0] + tree.depths])[0]
    for node in range(len(tree)):
        path, i = [], node
        while i >= 0:
            path.insert(0, tree.tokens[i])
            i = tree.parents[i]
        alone = model(torch.tensor([prefix + path])).logits[0, -1]
        torch.testing.assert_close(logits[node + 1], alone, rtol=0, atol=1e-10)


def test_kv_after_acceptance_equals_sequential_decoding():
    model = tiny_model("llama")
    engine = SpeculativeEngine(model)
    prefix = [11, 22, 33, 44]
    tree = DraftTree([7, 8, 9, 10], [-1, -1, 1, 2])  # accept nodes 1, 2, 3 (a non-prefix path)
    tree.validate(64, VOCAB)
    cache = PositionalKVCache(4)  # small: forces the buffers to grow
    engine._append(cache, prefix[:-1])
    engine._forward(cache, [[prefix[-1]] + tree.tokens], [tree_attention(tree.parents)], [[0] + tree.depths])
    cache.keep(len(prefix) - 1, [0, 2, 3, 4], torch.device("cpu"))
    reference = PositionalKVCache(64)
    engine._append(reference, prefix + [8, 9, 10])
    assert cache.get_seq_length() == reference.get_seq_length() == len(prefix) + 3
    for ours, theirs in zip(cache.layers, reference.layers):
        n = ours.length
        torch.testing.assert_close(ours.keys[:, :, :n], theirs.keys[:, :, :n], rtol=0, atol=1e-12)
        torch.testing.assert_close(ours.values[:, :, :n], theirs.values[:, :, :n], rtol=0, atol=1e-12)


def test_ar_matches_transformers_generate():
    model = tiny_model("qwen2")
    ours = ar_tokens(model, PROMPT_RANDOM, 30)
    theirs = model.generate(torch.tensor([PROMPT_RANDOM]), max_new_tokens=30, do_sample=False,
                            eos_token_id=None, pad_token_id=0)[0, len(PROMPT_RANDOM):].tolist()
    assert ours == theirs


def test_stop_token_and_budget_truncate_emitted_tokens():
    model = tiny_model("qwen2")
    reference = ar_tokens(model, PROMPT_RANDOM, 40)
    stop = reference[17]
    first = reference.index(stop)
    engine = SpeculativeEngine(model)
    out = engine.generate(PROMPT_RANDOM, ScriptedDrafter(reference, "deep"), 40, SamplingConfig(),
                          stop_tokens={stop})
    assert out.tokens == reference[: first + 1] and out.stopped
    out = engine.generate(PROMPT_RANDOM, ScriptedDrafter(reference, "deep"), 13, SamplingConfig())
    assert out.tokens == reference[:13] and not out.stopped


def test_draft_over_the_cap_is_a_clear_error():
    model = tiny_model("llama")
    engine = SpeculativeEngine(model, max_tree_nodes=8)
    reference = ar_tokens(model, PROMPT_RANDOM, 10)
    with pytest.raises(DraftError, match="exceeds the tree cap of 8"):
        engine.generate(PROMPT_RANDOM, ScriptedDrafter(reference, "deep"), 10, SamplingConfig())


@pytest.mark.parametrize("tree, message", [
    (DraftTree([1, 2], [-1, 5]), "parents must come before"),
    (DraftTree([1, VOCAB + 3], [-1, 0]), "token ids must lie"),
    (DraftTree([1], [-1, 0]), "parents"),
])
def test_malformed_drafts_are_rejected(tree, message):
    with pytest.raises(DraftError, match=message):
        tree.validate(64, VOCAB)


def test_drafter_that_proposes_nothing_costs_one_plain_step_per_token():
    model = tiny_model("llama")
    out = SpeculativeEngine(model).generate(PROMPT_RANDOM, Drafter(), 20, SamplingConfig())
    assert len(out.steps) == 20 and out.accept_lengths == [1] * 20
    assert all(s.draft_size == 0 for s in out.steps)


@pytest.mark.parametrize("shape", ["deep", "cap", "wide"])
def test_eager_attention_gets_an_additive_mask(shape):
    """Eager attention adds the mask to the scores: a boolean mask there would let tokens see the future."""
    model = tiny_model("llama", seed=4, attn="eager")
    reference = SpeculativeEngine(tiny_model("llama", seed=4)).generate(PROMPT_RANDOM, Drafter(), 40,
                                                                          SamplingConfig()).tokens
    assert ar_tokens(model, PROMPT_RANDOM, 40) == reference
    out = SpeculativeEngine(model).generate(PROMPT_RANDOM, ScriptedDrafter(reference, shape), 40, SamplingConfig())
    assert out.tokens == reference and len(out.steps) < 40


@pytest.mark.parametrize("shape", ["deep", "cap", "chain"])
def test_thinking_budget_is_forced_where_ar_forces_it(shape):
    """A step that would emit past the trigger is cut there, so the phrase lands at the same place as in AR."""
    model = tiny_model("qwen2")
    budget = ThinkingBudget(trigger_at=13, phrase=[1, 2, 3], end_token=VOCAB - 1)
    engine = SpeculativeEngine(model, max_tree_nodes=64)
    reference = engine.generate(PROMPT_REPEAT, Drafter(), 40, SamplingConfig(), budget=budget)
    assert reference.tokens[13:16] == [1, 2, 3] and reference.forced_tokens == 3
    out = engine.generate(PROMPT_REPEAT, ScriptedDrafter(reference.tokens, shape), 40, SamplingConfig(),
                          budget=budget)
    assert out.tokens == reference.tokens and out.forced_tokens == 3 and len(out.steps) < len(reference.steps)
