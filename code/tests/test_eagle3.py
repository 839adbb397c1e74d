"""EAGLE-3: loading the published head layouts, the draft's KV bookkeeping, the training-time test, the trainer,
and the CLIs. (Token identity with AR and the sampling law: test_methods_lossless.py, registry entries eagle3 and
samd-eagle3.)"""
import json
import os
import random

import pytest
import torch

from conftest import VOCAB, tiny_model
from methods import random_head
from model.eagle3 import Eagle3Drafter, load_head, save_head
from model.eagle3.checkpoint import default_layers
from model.eagle3.head import new_head
from model.eagle3.train import ttt_attention
from model.engine import Drafter, SamplingConfig, SpeculativeEngine
from model.engine.hidden import HiddenCapture
from model.errors import UserError
from test_cli import assert_one_line_error, run
from test_methods_lossless import PROMPTS

LAYERS = (0, 1, 1)


def write_head(head, directory, layout, layer_ids=(-1, 0, 0)):
    """`head` written as a published checkpoint of the given layout."""
    os.makedirs(directory, exist_ok=True)
    state = {k: v.detach().clone() for k, v in head.state_dict().items()}
    config = {"architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama",
              "hidden_size": head.config.hidden_size, "intermediate_size": head.config.intermediate_size,
              "num_attention_heads": head.config.num_attention_heads,
              "num_key_value_heads": head.config.num_key_value_heads, "num_hidden_layers": 1,
              "rms_norm_eps": head.config.rms_norm_eps, "rope_theta": 10000.0, "max_position_embeddings": 4096,
              "vocab_size": head.t2d.numel(), "draft_vocab_size": head.draft_vocab_size,
              "eagle_config": {"eagle_aux_hidden_state_layer_ids": list(layer_ids)}}
    if layout == "full-vocab":
        del state["d2t"], state["t2d"]
    if layout == "layers0-prefix":
        state = {("layers.0." + k[len("midlayer."):] if k.startswith("midlayer.") else k): v for k, v in state.items()}
    if layout == "safetensors-with-embedding":
        from safetensors.torch import save_file
        state["embed_tokens.weight"] = torch.randn(VOCAB, head.config.hidden_size, dtype=torch.float64)
        save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(directory, "model.safetensors"))
    else:
        torch.save(state, os.path.join(directory, "pytorch_model.bin"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    return state


@pytest.mark.parametrize("layout", ["official-bin", "safetensors-with-embedding", "layers0-prefix", "full-vocab"])
def test_loader_reads_every_published_layout(tmp_path, layout):
    target = tiny_model("qwen3")
    draft_ids = torch.arange(VOCAB) if layout == "full-vocab" else torch.arange(0, VOCAB, 3)
    torch.manual_seed(0)
    head = new_head(target, draft_ids)
    state = write_head(head, tmp_path, layout)
    loaded, embedding, layers = load_head(str(tmp_path), target)
    assert layers == (0, 1, 1)   # SpecForge ids count layer outputs: id i is the input of layer i + 1
    for key, value in head.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    if layout == "safetensors-with-embedding":
        assert torch.equal(embedding.weight, state["embed_tokens.weight"])
    else:
        assert embedding is target.get_input_embeddings()
    assert loaded.midlayer.self_attn.head_dim == 16   # Qwen3's explicit head_dim (64 / 4 heads would say 16 too)
    x = torch.randn(3, 64, dtype=torch.float64)
    assert torch.equal(loaded.logits(x), head.logits(x))


def test_head_dim_comes_from_the_weights(tmp_path):
    """A config without head_dim whose q_proj says otherwise (the Qwen3-head pitfall)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.for_model("qwen3", vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32)
    target = AutoModelForCausalLM.from_config(config, dtype=torch.float64)
    head = new_head(target, torch.arange(VOCAB))
    assert head.midlayer.self_attn.head_dim == 32
    write_head(head, tmp_path, "official-bin")
    loaded, _, _ = load_head(str(tmp_path), target)
    assert loaded.midlayer.self_attn.head_dim == 32


@pytest.mark.parametrize("change, fragment", [
    ("hidden", "trained on a target of hidden size"), ("no-d2t", "no d2t mapping"),
    ("layers", "reads target layers"), ("no-fc", "not an EAGLE-3 head"), ("no-config", "no config.json"),
    ("vocab", "draft_vocab_size")])
def test_loader_mismatches_are_one_line_errors(tmp_path, change, fragment):
    target = tiny_model("llama")
    head = new_head(target, torch.arange(0, VOCAB, 2))
    write_head(head, tmp_path, "official-bin", layer_ids=(5, 6, 7) if change == "layers" else (-1, 0, 0))
    state = torch.load(tmp_path / "pytorch_model.bin")
    config = json.loads((tmp_path / "config.json").read_text())
    if change == "hidden":
        state["fc.weight"] = torch.zeros(64, 3 * 32, dtype=torch.float64)
    if change == "no-d2t":
        del state["d2t"]
    if change == "no-fc":
        del state["fc.weight"]
    if change == "vocab":
        config["draft_vocab_size"] = 7
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(config))
    if change == "no-config":
        os.remove(tmp_path / "config.json")
    with pytest.raises(UserError, match=fragment):
        load_head(str(tmp_path), target)


def test_default_layers_are_eagle3s():
    assert default_layers(36) == (2, 18, 33) and default_layers(32) == (2, 16, 29)


def test_draft_cache_holds_exactly_the_accepted_context():
    """After a generation the draft's KV rows equal those of feeding the whole context's (states, next token) pairs
    at once: the right states with the right tokens at the right positions, speculative rows dropped."""
    target = tiny_model("llama")
    drafter = Eagle3Drafter(random_head(target), target.get_input_embeddings(), LAYERS, 60, 3, 64)
    prompt = PROMPTS["repeat"]
    gen = SpeculativeEngine(target).generate(prompt, drafter, 40, SamplingConfig())
    assert len(gen.steps) < len(gen.tokens)   # drafts were accepted along the way
    drafter.propose(prompt + gen.tokens, 128)  # feeds the last step's rows
    context = prompt + gen.tokens
    capture = HiddenCapture(target, LAYERS)
    with torch.inference_mode():
        target(input_ids=torch.tensor([context]))
    states = capture.take()
    capture.remove()
    fresh = Eagle3Drafter(drafter.head, target.get_input_embeddings(), LAYERS, 60, 3, 64)
    fresh.begin_sequence(context)
    fresh.observe_prompt(states[:-1])
    fresh.propose(context, 128)
    assert drafter.rows == fresh.rows == len(context) - 1
    for a, b in zip(drafter.batch.cache.layers, fresh.batch.cache.layers):
        assert torch.allclose(a.keys[:, :, :a.length], b.keys[:, :, :b.length], atol=1e-10)
        assert torch.allclose(a.values[:, :, :a.length], b.values[:, :, :b.length], atol=1e-10)


def prompt_drafter(target, prompt, **tree):
    """A drafter that has seen the prompt's states, as the engine's prefill would hand them over."""
    drafter = Eagle3Drafter(random_head(target), target.get_input_embeddings(), LAYERS, **tree)
    drafter.begin_sequence(prompt)
    capture = HiddenCapture(target, LAYERS)
    with torch.inference_mode():
        target(input_ids=torch.tensor([prompt]))
    drafter.observe_prompt(capture.take()[:-1])
    capture.remove()
    return drafter


def test_tree_keeps_the_best_nodes_with_their_ancestors():
    target = tiny_model("qwen2")
    prompt = PROMPTS["random"]
    drafter = prompt_drafter(target, prompt, total_tokens=60, depth=5, top_k=10)
    tree = drafter.propose(prompt, 128)
    tree.validate(128, VOCAB)
    assert len(tree) == 59 and 2 <= max(tree.depths) <= 6 and tree.depths.count(1) <= 10
    assert drafter.batch.cache.get_seq_length() == len(prompt) - 1   # the speculative rows were cut off
    capped = prompt_drafter(target, prompt, total_tokens=60, depth=5, top_k=10).propose(prompt, 7)
    assert len(capped) == 7 and set(capped.tokens) <= set(tree.tokens)   # the 7 best are among the 59 best


def test_ttt_attention_equals_dense_masked_attention():
    from transformers import LlamaConfig
    from model.eagle3.head import DraftAttention
    torch.manual_seed(0)
    attention = DraftAttention(LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                           head_dim=8)).double()
    rows = 6
    q = torch.randn(1, 4, rows, 8, dtype=torch.float64)
    keys = [torch.randn(1, 2, rows, 8, dtype=torch.float64) for _ in range(3)]
    values = [torch.randn(1, 2, rows, 8, dtype=torch.float64) for _ in range(3)]
    eye = torch.eye(rows, dtype=torch.bool)
    mask = torch.cat([torch.ones(rows, rows, dtype=torch.bool).tril(), eye, eye], 1)
    dense = attention.attend(q, torch.cat(keys, 2), torch.cat(values, 2), mask[None, None])
    assert torch.allclose(ttt_attention(attention, q, keys, values), dense, atol=1e-12)


# --- The trainer ---------------------------------------------------------------------------------------------------

def mean_accepted(target, head, layers, prompts):
    engine = SpeculativeEngine(target)
    tokens = steps = 0
    for prompt in prompts:
        reference = engine.generate(prompt, Drafter(), 32, SamplingConfig()).tokens
        out = engine.generate(prompt, Eagle3Drafter(head, target.get_input_embeddings(), layers, 20, 3, 4), 32,
                              SamplingConfig())
        assert out.tokens == reference
        tokens, steps = tokens + len(out.tokens), steps + len(out.steps)
    return tokens / steps


def test_trained_head_beats_a_random_head(tiny_model_dir, tmp_path):
    """On the target's own answers to other prompts (a learnable corpus), training lifts acceptance well above an untrained
    head's: a check that fails if training does nothing or trains on misaligned rows."""
    from model.eagle3.train import main
    from model.engine.loading import load_model
    target, tokenizer, _ = load_model(tiny_model_dir, "float64", "cpu")
    engine = SpeculativeEngine(target)
    rng = random.Random(0)
    words = "what is the sum of two and three please reason step by step answer five".split()

    def prompt():
        words_text = " ".join(rng.choice(words) for _ in range(5))
        text = tokenizer.apply_chat_template([{"role": "user", "content": words_text}], tokenize=False,
                                             add_generation_prompt=True)
        return words_text, tokenizer(text, add_special_tokens=False)["input_ids"]

    # The target's own greedy answers, kept as the token ids it produced (a random tiny model's output does not
    # survive decoding and re-encoding).
    # (decoded together: a batch of 16 rows, each refilled as its answer ends)
    data = tmp_path / "self.jsonl"
    prompts = [prompt()[1] for _ in range(60)]
    replies = engine.generate_batch(prompts, [Drafter() for _ in range(16)], 40, SamplingConfig())
    with open(data, "w") as f:
        for ids, reply in zip(prompts, replies):
            f.write(json.dumps({"input_ids": ids + reply.tokens, "loss_mask": [0] * len(ids) + [1] * len(reply.tokens)})
                    + "\n")
    out = tmp_path / "head"
    assert main(["--target", tiny_model_dir, "--data", str(data), "--output", str(out), "--draft-vocab", "256",
                 "--max-length", "128", "--epochs", "4", "--lr", "2e-3", "--layers", "0", "1", "1",
                 "--device", "cpu"]) == 0
    log = json.loads((out / "train_log.json").read_text())
    assert log["samples"] == 240 and log["draft_vocab"] == 256
    trained, _, layers = load_head(str(out), target)   # the official layout, read back by our loader
    assert layers == (0, 1, 1)
    prompts = [prompt()[1] for _ in range(4)]
    trained_mat = mean_accepted(target, trained, layers, prompts)
    untrained_mat = mean_accepted(target, new_head(target, trained.d2t + torch.arange(256)), layers, prompts)
    assert trained_mat > untrained_mat + 0.3, (trained_mat, untrained_mat)
    assert main(["--target", tiny_model_dir, "--data", str(data), "--output", str(out)]) == 2   # never overwritten


def test_regenerated_answers_are_the_targets_own_tokens(tiny_model_dir, tmp_path):
    """Batched (left-padded) generation gives each prompt the answer AR gives it alone; a rerun resumes."""
    from model.eagle3.regenerate import main
    from model.engine.loading import load_model
    data = tmp_path / "conv.jsonl"
    data.write_text("".join(json.dumps({"conversations": [{"from": "human", "value": text},
                                                          {"from": "gpt", "value": "ok"}]}) + "\n"
                            for text in ["What is two?", "The answer is five and three", "sum"]))
    out = tmp_path / "answers.jsonl"
    flags = ["--target", tiny_model_dir, "--data", str(data), "--output", str(out), "--max-new-tokens", "12",
             "--batch-size", "2", "--dtype", "float64", "--device", "cpu"]
    assert main(flags) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    target, tokenizer, _ = load_model(tiny_model_dir, "float64", "cpu")
    engine = SpeculativeEngine(target)
    for line in lines:
        prompt_len = line["loss_mask"].index(1)
        prompt = line["input_ids"][:prompt_len]
        ar = engine.generate(prompt, Drafter(), 12, SamplingConfig(), stop_tokens={tokenizer.eos_token_id}).tokens
        assert line["input_ids"][prompt_len:] == ar
    assert len(lines) == 3
    with open(out, "a") as f:
        f.write('{"input_ids": [1, 2')   # a torn line, as a killed run leaves
    assert main(flags) == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == lines


def test_trainer_reads_a_cut_sharegpt_file(tmp_path):
    from model.eagle3.data import read_conversations
    conversations = [{"id": str(i), "conversations": [{"from": "human", "value": f"q{i}"},
                                                      {"from": "gpt", "value": f"a{i}"}]} for i in range(3)]
    text = json.dumps(conversations, indent=2)
    path = tmp_path / "cut.json"
    path.write_text(text[: text.index('"a2"') + 2])   # cut inside the third conversation
    read = list(read_conversations([str(path)]))
    assert read == [[{"role": "user", "content": "q0"}, {"role": "assistant", "content": "a0"}],
                    [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]]


def test_assistant_mask_covers_the_replies_only():
    from conftest import make_tokenizer
    from model.eagle3.data import encode
    tokenizer = make_tokenizer()
    messages = [{"role": "user", "content": "What is two?"}, {"role": "assistant", "content": "The answer is 5."},
                {"role": "user", "content": "And three?"}, {"role": "assistant", "content": "Please reason."}]
    ids, mask = encode(tokenizer, messages, 512)
    replies = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert "The answer is 5." in replies and "Please reason." in replies
    assert "What is two" not in replies and "And three" not in replies


# --- CLIs ----------------------------------------------------------------------------------------------------------

@pytest.fixture
def head_dir(tiny_model_dir, tmp_path):
    from model.engine.loading import load_model
    target, _, _ = load_model(tiny_model_dir, "float32", "cpu")
    directory = tmp_path / "head"
    save_head(random_head(target), LAYERS, str(directory))
    return str(directory)


def questions_file(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question_id": 1, "category": "math500", "turns": ["What is 2 + 3?"]}) + "\n")
    return str(path)


def cli(method, model_dir, tmp_path, *flags):
    return run("-m", f"evaluation.inference_{method}", "--model-path", model_dir, "--question-file",
               questions_file(tmp_path), "--max-new-tokens", "8", "--warmup", "0", "--device", "cpu", "--dtype",
               "float32", "--answer-file", str(tmp_path / f"{method}.jsonl"), "--cost-profile-contexts", "16",
               "--cost-profile-repeats", "1", *flags)


def test_eagle3_cli_runs_with_the_seeds_flags(tiny_model_dir, head_dir, tmp_path):
    result = cli("eagle3", tiny_model_dir, tmp_path, "--ea-model-path", head_dir, "--total-token", "30",
                 "--depth", "4", "--top-k", "8", "--think-twice")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "eagle3.config.json").read_text())
    params = config["method_parameters"]
    assert (params["total_token"], params["depth"], params["top_k"]) == (30, 4, 8) and config["top_k"] == 0
    assert params["hidden_layers"] == [0, 1, 1]


def test_sam_eagle3_cli(tiny_model_dir, head_dir, tmp_path):
    result = cli("samd", tiny_model_dir, tmp_path, "--tree_method", "eagle3", "--tree_model_path", head_dir)
    assert result.returncode == 0, result.stderr
    params = json.loads((tmp_path / "samd.config.json").read_text())["method_parameters"]
    assert params["fallback"]["name"] == "eagle3"


@pytest.mark.parametrize("method, flags, fragment", [
    ("eagle3", [], "--ea-model-path is required"),
    ("eagle3", ["--ea-model-path", "/nonexistent/head"], "no such directory"),
    ("eagle3", ["--ea-model-path", "nobody/no-such-head"], "neither a directory nor a reachable hub id"),
    ("eagle3", ["--ea-model-path", "HEAD", "--depth", "0"], "--depth >= 1"),
    ("samd", ["--tree_method", "eagle3"], "needs --tree_model_path")])
def test_eagle3_cli_errors(tiny_model_dir, head_dir, tmp_path, method, flags, fragment):
    flags = [head_dir if f == "HEAD" else f for f in flags]
    result = cli(method, tiny_model_dir, tmp_path, *flags)
    assert_one_line_error(result, fragment)
