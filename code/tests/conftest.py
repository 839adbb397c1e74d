"""Shared fixtures: tiny random-initialised models of several architectures and an offline tokenizer."""
from __future__ import annotations

import functools
import os
import tempfile

# Offline and quiet, as the commands the tests run in this process are (tests/test_cli.py): set before transformers
# and huggingface_hub are imported, which read these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

# `make test` runs two pytest-xdist workers on two cores: each worker, and the CLI runs it starts, then uses one
# thread (two workers with two OpenMP threads each oversubscribe the cores, and spinning threads crawl).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
# Forward-cost profiles the tests' runs measure go to a folder of this session (inherited by the CLI runs the tests
# start), never to the user's ~/.cache, and no test reads a profile an earlier session left.
os.environ["SPECTTS_CACHE_DIR"] = tempfile.mkdtemp(prefix="spectts-test-cache-")

VOCAB = 384
ARCHS = ("llama", "qwen2", "qwen3")
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@functools.lru_cache(maxsize=None)
def tiny_model(arch: str = "llama", seed: int = 0, vocab: int = VOCAB, dtype=torch.float64,
               attn: str = "sdpa_grouped"):
    """`attn`: "sdpa_grouped" (what load_model gives runs: model/engine/attention.py), "sdpa" (transformers' own) or
    "eager". Every tiny model has grouped-query attention (4 query heads on 2 key/value heads)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from model.engine.attention import NAME, use_grouped_sdpa
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                  tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    if arch == "qwen3":
        common["head_dim"] = 16
    config = AutoConfig.for_model(arch, **common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa" if attn == NAME else attn)
    model.eval()
    if attn == NAME:
        assert use_grouped_sdpa(model)
    # Larger weights than the default init: sharper, more repetitive distributions, like a real LM's.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    return model


def make_tokenizer(thinking: bool = False):
    """A byte-level BPE trained on a few sentences: encodes any text, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    special = ["<bos>", "<eos>", "<unk>", "<|user|>", "<|assistant|>", "<|end|>"]
    if thinking:
        special += ["<think>", "</think>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["What is the sum of two and three? Please reason step by step, and put your final answer "
              "within \\boxed{}. The answer is 5. Previously I tried to solve the problem."] * 20
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 16, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny Llama + tokenizer with a chat template: what `--model-path` points at in CLI tests."""
    path = tmp_path_factory.mktemp("tiny-llama")
    model = tiny_model("llama", vocab=VOCAB, dtype=torch.float32)
    tokenizer = make_tokenizer()
    assert len(tokenizer) <= VOCAB
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def thinking_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-thinker")
    tokenizer = make_tokenizer(thinking=True)
    model = tiny_model("qwen3", seed=11, vocab=VOCAB, dtype=torch.float32)
    with torch.no_grad():  # never end on its own: the budget is what ends the thinking
        for token in (tokenizer.eos_token, "</think>"):
            model.get_output_embeddings().weight[tokenizer.convert_tokens_to_ids(token)] = 0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def two_questions_file(tmp_path) -> str:
    """A question file of two short math questions (the second quotes an answer: drafts find matches in it)."""
    import json
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"question_id": i, "category": "math500", "turns": [text]}) + "\n"
                            for i, text in enumerate(["What is 2 + 3?", "The answer is 5. The answer is"])))
    return str(path)
