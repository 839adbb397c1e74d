"""Grouped-query attention without repeated keys and values (model/engine/attention.py) gives transformers' SDPA
results: on the engine's masked forwards (ragged rows, draft trees, padding) and on transformers' own masks."""
from __future__ import annotations

import pytest
import torch

from conftest import ARCHS, VOCAB, tiny_model
from model.engine import Drafter, DraftTree, SamplingConfig, SpeculativeEngine
from model.engine import attention
from model.engine.kv_cache import PositionalKVCache
from model.engine.tree import tree_attention


def engine_forward(model, prefixes, trees):
    """A ragged step of the engine: rows with caches of different lengths, each verifying its own tree."""
    engine = SpeculativeEngine(model)
    cache = PositionalKVCache(8, batch_size=len(prefixes))
    engine._append(cache, [p[:-1] for p in prefixes])
    return engine._forward(cache, [[p[-1]] + t.tokens for p, t in zip(prefixes, trees)],
                           [tree_attention(t.parents) for t in trees], [[0] + t.depths for t in trees])


@pytest.mark.parametrize("arch", ARCHS)
def test_engine_forwards_equal_transformers_sdpa_and_never_repeat_keys(arch, monkeypatch):
    prefixes = [[11, 22, 33, 44, 55, 66, 77], [7, 8, 9], [5, 5, 5, 5, 5]]
    trees = [DraftTree([7, 8, 9, 10], [-1, -1, 1, 2]), DraftTree([5, 6, 4, 3, 2], [-1, 0, -1, 2, 3]),
             DraftTree([], [])]
    for tree in trees:
        tree.validate(64, VOCAB)
    stock = engine_forward(tiny_model(arch, attn="sdpa"), prefixes, trees)
    grouped_model = tiny_model(arch)
    assert grouped_model.config._attn_implementation == attention.NAME
    # The grouped path itself runs (transformers' SDPA, which repeats the heads, is never called)...
    monkeypatch.setattr(attention, "sdpa_attention_forward", lambda *a, **k: pytest.fail("fell back to repeat_kv"))
    grouped = engine_forward(grouped_model, prefixes, trees)
    # ... and gives the same logits wherever a row has a token (padding's are never read).
    for row, tree in enumerate(trees):
        n = len(tree.tokens) + 1
        torch.testing.assert_close(grouped[row, :n], stock[row, :n], rtol=0, atol=1e-12)


@pytest.mark.parametrize("arch", ARCHS)
def test_transformers_own_padded_masks_are_built_for_the_grouped_path(arch):
    """generate() with a left-padded batch (EAGLE-3's data regeneration) builds SDPA's mask for it, not none."""
    stock, grouped = tiny_model(arch, attn="sdpa"), tiny_model(arch)
    torch.manual_seed(0)
    ids = torch.randint(2, 300, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, :5] = 0
    mask[2, :2] = 0
    with torch.no_grad():
        want = stock(input_ids=ids, attention_mask=mask).logits
        got = grouped(input_ids=ids, attention_mask=mask).logits
        alone = grouped(input_ids=ids[1:2, 5:]).logits[0]
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], rtol=0, atol=1e-12)
    # The padding is not attended: the row equals itself unpadded (up to RoPE at positions shifted by 5; attending
    # the padding would move the logits by ~0.1).
    torch.testing.assert_close(got[1, 5:], alone, rtol=0, atol=1e-6)
    options = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=1)
    assert torch.equal(grouped.generate(ids, **options), stock.generate(ids, **options))


def test_greedy_decoding_is_token_identical_to_transformers_sdpa():
    prompt = [5, 6, 7, 8, 9, 10, 11, 5, 6, 7, 8, 9]
    stock = SpeculativeEngine(tiny_model("qwen3", attn="sdpa")).generate_batch([prompt] * 2, [Drafter(), Drafter()],
                                                                             30, SamplingConfig())
    grouped = SpeculativeEngine(tiny_model("qwen3")).generate_batch([prompt] * 2, [Drafter(), Drafter()], 30,
                                                                    SamplingConfig())
    assert [g.tokens for g in grouped] == [s.tokens for s in stock]


def test_models_without_grouped_heads_or_without_sdpa_keep_their_attention():
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.for_model("llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=2)
    plain = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    assert attention.use_grouped_sdpa(plain)   # one head per key/value head: the function takes SDPA's own path
    ids = torch.tensor([[3, 4, 5, 6]])
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool).tril()
    with torch.no_grad():
        got = plain(input_ids=ids, attention_mask=mask).logits
        plain.set_attn_implementation("sdpa")
        torch.testing.assert_close(got, plain(input_ids=ids, attention_mask=mask).logits)
    eager = tiny_model("llama", attn="eager")
    assert not attention.use_grouped_sdpa(eager) and eager.config._attn_implementation == "eager"

